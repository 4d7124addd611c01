"""The studio in a real browser: headless Chromium driven by Selenium generates a grid, paints a
mask with the mouse, inpaints and outpaints; the images the page shows must equal, pixel for
pixel, what ``python -m pipeline.cli sample`` / ``edit`` write for the same settings.

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian: ``apt-get install chromium
chromium-driver``; ``make test`` installs them when run as root) and the ``selenium`` package;
skips with the reason otherwise. Screenshots go to $MASKGIT_STUDIO_SCREENSHOTS (docs/studio/ for
the docs) or the test's tmp dir; $MASKGIT_STUDIO_DEMO_OUT runs it on the models `make demo` trained.
"""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tokenizer
import transformer
from transformer.editing import pixel_mask_to_token_mask

pytestmark = pytest.mark.integration  # a real Chromium against a real studio server

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"no real browser: needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver, "
                "or `make test` as root)", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny random models; or, with $MASKGIT_STUDIO_DEMO_OUT, the models `make demo` trained (for the
    docs' screenshots: the same test then checks the trained models against the CLI too)."""
    d = tmp_path_factory.mktemp("studio-browser")
    demo = os.environ.get("MASKGIT_STUDIO_DEMO_OUT")
    if demo:
        demo = Path(demo).resolve()
        for name, target in (("tok", demo / "tokenizer"), ("mvtm", demo / "runs" / "mvtm" / "export"),
                             ("ar", demo / "runs" / "ar" / "export")):
            (d / name).symlink_to(target, target_is_directory=True)
        return d
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("debug"), d / "tok")
    transformer.save(transformer.build("debug", latent_size=8), d / "mvtm")
    transformer.save(transformer.build("debug", latent_size=8, causal=True), d / "ar")
    return d


@pytest.fixture(scope="module")
def base(ckpts):
    from pipeline.studio import Studio, StudioPaths, serve_in_thread
    from pipeline.train.launcher import free_port

    studio = Studio(StudioPaths(model=ckpts / "mvtm", tokenizer=ckpts / "tok", ar_model=ckpts / "ar"))
    server, _ = serve_in_thread(studio, host="127.0.0.1", port=free_port())
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("MASKGIT_STUDIO_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _wait_attr(drv, name: str, value: str, timeout: float = 120.0) -> None:
    WebDriverWait(drv, timeout).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(name) == value)


def _pixels_of_url(url: str) -> np.ndarray:
    assert url and url.startswith("data:image/png;base64,"), url[:40] if url else url
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


def _file(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _cli(*args) -> None:
    """The command line in its own process, single-threaded like the test process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def _set(drv, elem_id: str, value) -> None:
    e = drv.find_element(By.ID, elem_id)
    e.clear()
    e.send_keys(str(value))


def _error(drv) -> str:
    e = drv.find_element(By.ID, "error")
    return e.text if e.is_displayed() else ""


def test_generate_paint_inpaint_outpaint_equal_the_cli(driver, base, ckpts, shots, tmp_path):
    drv = driver
    drv.get(base)
    _wait_attr(drv, "data-ready", "1")

    # ---- generate: classes 1 and 2, 4 each, seed 3, T=8, with the AR baseline beside it
    sel = Select(drv.find_element(By.ID, "gen-classes"))
    sel.deselect_all()
    sel.select_by_value("1")
    sel.select_by_value("2")
    _set(drv, "gen-n", 4)
    _set(drv, "gen-seed", 3)
    assert drv.find_element(By.ID, "gen-compare-ar").is_selected()  # on by default when an AR model is loaded
    drv.find_element(By.ID, "gen-run").click()
    _wait_attr(drv, "data-generated", "1")
    assert _error(drv) == ""
    drv.save_screenshot(str(shots / "generate.png"))
    grid = _pixels_of_url(drv.find_element(By.ID, "gen-grid").get_attribute("src"))
    ar_grid = _pixels_of_url(drv.find_element(By.ID, "ar-grid").get_attribute("src"))
    strip = _pixels_of_url(drv.find_element(By.ID, "gen-strip").get_attribute("src"))
    _cli("sample", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--classes", "1,2", "--per-class", 4,
         "--seed", 3, "--decode-steps", 8, "--save-steps", "--out", tmp_path / "grid.png")
    _cli("sample", "--checkpoint", ckpts / "ar", "--tokenizer", ckpts / "tok", "--classes", "1,2", "--per-class", 4,
         "--seed", 3, "--ar", "--out", tmp_path / "ar.png")
    assert np.array_equal(grid, _file(tmp_path / "grid.png"))
    assert np.array_equal(ar_grid, _file(tmp_path / "ar.png"))
    assert np.array_equal(strip, _file(tmp_path / "grid" / "steps" / "00000_class1.png"))
    assert "AR baseline" in drv.find_element(By.ID, "ar-caption").text
    assert " s" in drv.find_element(By.ID, "gen-caption").text

    # ---- edit: a built-in sample, a brush stroke with the mouse, inpaint with class 2 seed 5
    drv.find_element(By.ID, "tab-edit").click()
    drv.find_element(By.ID, "edit-load-sample").click()
    _wait_attr(drv, "data-image-loaded", "1")
    canvas = drv.find_element(By.ID, "edit-canvas")
    size = canvas.size["width"]  # displayed px; the canvas holds the 32 x 32 image
    (ActionChains(drv).move_to_element_with_offset(canvas, -size // 4, -size // 8).click_and_hold()
     .move_by_offset(size // 3, 0).move_by_offset(0, size // 4).release().perform())
    Select(drv.find_element(By.ID, "edit-class")).select_by_value("2")
    _set(drv, "edit-seed", 5)
    drv.find_element(By.ID, "edit-run").click()
    _wait_attr(drv, "data-edited", "1")
    assert _error(drv) == ""
    drv.save_screenshot(str(shots / "edit_inpaint.png"))
    out = _pixels_of_url(drv.find_element(By.ID, "edit-result").get_attribute("src"))
    image_url = drv.execute_script("return window.studio.image")
    mask_url = drv.execute_script("return window.studio.maskDataURL()")
    img, mask = _pixels_of_url(image_url), _pixels_of_url(mask_url)[:, :, 0] > 127
    assert img.shape == (32, 32, 3) and mask.shape == (32, 32)
    # the stroke went right from (8, 12) then down: painted pixels there, none in the far corner
    assert mask[12, 8:18].all() and mask[12:18, 18].all() and not mask[24:, 24:].any()
    Image.fromarray(img).save(tmp_path / "in.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    _cli("edit", "inpaint", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--image",
         tmp_path / "in.png", "--mask", tmp_path / "mask.png", "--class", 2, "--seed", 5, "--out", tmp_path / "inp.png")
    assert np.array_equal(out, _file(tmp_path / "inp.png"))
    keep = ~np.kron(pixel_mask_to_token_mask(mask, patch=4, dilation=1), np.ones((4, 4), bool))
    assert keep.any() and np.array_equal(out[keep], img[keep])  # unmasked region unchanged
    assert drv.find_element(By.ID, "edit-download").get_attribute("href") == \
        drv.find_element(By.ID, "edit-result").get_attribute("src")

    # ---- outpaint 8 px left and right
    drv.find_element(By.ID, "op-outpaint").click()
    _set(drv, "ext-left", 8)
    _set(drv, "ext-right", 8)
    drv.find_element(By.ID, "edit-run").click()
    _wait_attr(drv, "data-edited", "2")
    assert _error(drv) == ""
    drv.save_screenshot(str(shots / "outpaint.png"))
    wide = _pixels_of_url(drv.find_element(By.ID, "edit-result").get_attribute("src"))
    assert wide.shape == (32, 48, 3)
    _cli("edit", "outpaint", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--image",
         tmp_path / "in.png", "--extend", "left=8,right=8", "--class", 2, "--seed", 5, "--out", tmp_path / "out.png")
    assert np.array_equal(wide, _file(tmp_path / "out.png"))


def test_user_errors_show_in_the_page(driver, base, tmp_path):
    drv = driver
    drv.get(base)
    _wait_attr(drv, "data-ready", "1")
    drv.find_element(By.ID, "tab-edit").click()
    # a file that is not an image
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    drv.find_element(By.ID, "edit-file").send_keys(str(bad))
    WebDriverWait(drv, 60).until(lambda d: "not an image file" in _error(d))
    # replace with nothing painted
    drv.find_element(By.ID, "edit-load-sample").click()
    _wait_attr(drv, "data-image-loaded", "1")
    drv.find_element(By.ID, "op-replace").click()
    drv.find_element(By.ID, "edit-run").click()
    WebDriverWait(drv, 60).until(lambda d: "the mask is empty" in _error(d))
    assert "Traceback" not in drv.page_source
    # a bad parameter on the generate view
    drv.find_element(By.ID, "tab-generate").click()
    _set(drv, "gen-steps", 0)
    drv.find_element(By.ID, "gen-run").click()
    WebDriverWait(drv, 60).until(lambda d: "steps must be an integer" in _error(d))
    assert json.loads(drv.execute_script("return JSON.stringify(document.body.dataset)")).get("busy") == "0"


def test_upload_drag_a_box_and_replace_equal_the_cli(driver, base, ckpts, shots, tmp_path):
    from pipeline.generate import fit_image

    drv = driver
    drv.get(base)
    _wait_attr(drv, "data-ready", "1")
    drv.find_element(By.ID, "tab-edit").click()
    # upload a 40 x 48 photo-like PNG: the page shows the CLI's resize/crop of it
    src = np.random.default_rng(7).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(src).save(tmp_path / "upload.png")
    drv.find_element(By.ID, "edit-file").send_keys(str(tmp_path / "upload.png"))
    _wait_attr(drv, "data-image-loaded", "1")
    assert "input 40x48" in drv.find_element(By.ID, "edit-rule").text
    shown = _pixels_of_url(drv.execute_script("return window.studio.image"))
    assert np.array_equal(shown, np.asarray(fit_image(Image.fromarray(src), 32)[0]))
    # drag a box with the mouse, replace its content with class 3
    drv.find_element(By.ID, "tool-box").click()
    canvas = drv.find_element(By.ID, "edit-canvas")
    size = canvas.size["width"]
    (ActionChains(drv).move_to_element_with_offset(canvas, -size // 4, -size // 4).click_and_hold()
     .move_by_offset(size // 4, size // 8).move_by_offset(size // 8, size // 8).release().perform())
    mask = _pixels_of_url(drv.execute_script("return window.studio.maskDataURL()"))[:, :, 0] > 127
    ys, xs = np.nonzero(mask)
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    assert mask.sum() == h * w > 16  # a filled rectangle
    drv.find_element(By.ID, "op-replace").click()
    Select(drv.find_element(By.ID, "edit-class")).select_by_value("3")
    _set(drv, "edit-seed", 9)
    n = int(drv.find_element(By.TAG_NAME, "body").get_attribute("data-edited") or 0)
    drv.find_element(By.ID, "edit-run").click()
    _wait_attr(drv, "data-edited", str(n + 1))
    assert _error(drv) == ""
    drv.save_screenshot(str(shots / "edit_replace.png"))
    bbox = f"{ys.min()}_{xs.min()}_{h}_{w}"
    assert f"--bbox {bbox}" in drv.find_element(By.ID, "edit-cli").text
    out = _pixels_of_url(drv.find_element(By.ID, "edit-result").get_attribute("src"))
    _cli("edit", "replace", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--image",
         tmp_path / "upload.png", "--bbox", bbox, "--class", 3, "--seed", 9, "--out", tmp_path / "rep.png")
    assert np.array_equal(out, _file(tmp_path / "rep.png"))  # the CLI given the original upload
