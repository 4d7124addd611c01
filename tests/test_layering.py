"""The layering of docs/ARCHITECTURE.md, checked on the import graph of every module (top-level and
function-level imports alike): model packages never reach up or sideways, pipeline rooms only
point down, and no import cycle exists between modules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("maskgit_core", "tokenizer", "transformer", "pipeline", "jobs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, resolved to absolute dotted names."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    mods = {_module_name(p): p for p in files}
    return {m: {i for i in _imports(p)} for m, p in mods.items()}


GRAPH = _graph()

# (modules whose name starts with this, imports that must not appear)
RULES = [
    ("maskgit_core", ("tokenizer", "transformer", "pipeline", "jobs", "ray", "deepspeed")),
    ("tokenizer", ("transformer", "pipeline", "jobs", "ray", "deepspeed")),
    ("transformer", ("tokenizer", "pipeline", "jobs", "ray", "deepspeed")),
    # data may use generate's image I/O (inspect's grid of decoded samples), nothing else of generate
    ("pipeline.data", ("pipeline.train", "pipeline.demo", "pipeline.cli", "pipeline.evaluation", "deepspeed",
                       "pipeline.generate.sampling", "pipeline.generate.editing", "pipeline.generate.sample_set",
                       *(f"pipeline.generate.{n}" for n in ("load_pair", "sample_images", "make_grid", "save_png",
                                                             "to_uint8")))),
    ("pipeline.generate", ("pipeline.train", "pipeline.demo", "pipeline.cli", "pipeline.data", "deepspeed")),
    ("pipeline.train", ("pipeline.generate", "pipeline.demo", "pipeline.cli", "ray")),
    # evaluation reads the sources the tokenize job reads (storage, sources, the ADM crop), nothing else
    # of data or of the models
    ("pipeline.evaluation", ("pipeline.train", "pipeline.generate", "pipeline.demo", "pipeline.cli", "transformer",
                             *(f"pipeline.data.{m}" for m in ("shards", "stream", "synthetic", "tokenize_job",
                                                               "tokenize_output", "tokenize_progress",
                                                               "tokenize_stages", "verify", "inspect")),
                             *(f"tokenizer.{m}" for m in ("config", "faiss_search", "model", "official", "search",
                                                           "train")))),
    ("pipeline.demo", ("pipeline.cli",)),
    # the studio serves generate's functions; it never trains, and only its CLI verb knows about it
    ("pipeline.studio", ("pipeline.cli", "pipeline.train", "pipeline.data", "deepspeed", "ray")),
]


def _violations(prefix: str, banned: tuple[str, ...]) -> list[str]:
    bad = []
    for mod, imports in GRAPH.items():
        if mod != prefix and not mod.startswith(prefix + "."):
            continue
        for imp in imports:
            if any(imp == b or imp.startswith(b + ".") for b in banned):
                bad.append(f"{mod} imports {imp}")
    return sorted(bad)


@pytest.mark.parametrize("prefix,banned", RULES, ids=[r[0] for r in RULES])
def test_imports_point_down(prefix, banned):
    assert any(m == prefix or m.startswith(prefix + ".") for m in GRAPH), f"no module under {prefix}"
    assert _violations(prefix, banned) == []


def test_the_rule_checker_sees_a_violation():
    """The checker itself: a graph edge that breaks a rule is reported (guards against a vacuous pass)."""
    GRAPH["tokenizer._probe"] = {"pipeline.data.shards"}
    try:
        assert _violations("tokenizer", ("pipeline",)) == ["tokenizer._probe imports pipeline.data.shards"]
    finally:
        del GRAPH["tokenizer._probe"]


def test_no_import_cycle_between_project_modules():
    internal = {m: {i for i in imps if i in GRAPH and i != m} for m, imps in GRAPH.items()}
    # a package importing its own submodules (``pipeline.cli`` -> ``pipeline.cli.data``) is not a cycle
    for m in internal:
        internal[m] = {i for i in internal[m] if not i.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(internal[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(internal):
        if m not in state:
            visit(m)
    assert cycles == []
