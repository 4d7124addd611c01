# Two commands a user types: `make demo` and `make test`. Both create (or reuse) .venv/
# and install everything. GPU users override TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0"
# with a CUDA index) and EXTRAS="dev,gpu".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_OUT ?= demo-out

.PHONY: venv demo demo-quick test test-fast test-all browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/maskgit-pipeline demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(VENV)/bin/maskgit-pipeline demo --quick --out $(DEMO_OUT)

# The studio's browser test drives the system Chromium (tests/test_studio_browser.py). As root,
# install it when missing; otherwise that test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium + chromium-driver for the studio's browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: no /usr/bin/chromium or /usr/bin/chromedriver and not root: the browser test will skip"; \
	  fi; \
	fi

test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The developer loop (under 2 minutes on 2 CPU cores): no Ray, deepspeed launcher or demo runs.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

test-all: $(STAMP) browser
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
