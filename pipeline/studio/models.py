"""Which checkpoints the studio serves, and the class names and sample images that go with them.

Without ``--model`` the studio serves the newest models of a ``make demo`` run: the demo writes
``DEMO_OUT/tokenizer/`` (the VQGAN), ``DEMO_OUT/runs/mvtm/export/`` and ``DEMO_OUT/runs/ar/export/``
(the exported transformers), ``DEMO_OUT/tokens/train/manifest.json`` (the class table) and
``DEMO_OUT/data/val/<class>/*.JPEG`` (held-out images). With ``--model`` the class table is found
through the checkpoint's provenance: its ``config.json`` records the token data it was trained on
(``data``), whose manifest lists the classes.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from maskgit_core.errors import ConfigError

__all__ = ["StudioPaths", "resolve_paths", "class_table", "held_out_samples"]

log = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class StudioPaths:
    """The checkpoint directories the studio loads."""

    model: Path
    """The MaskGIT (MVTM) transformer export."""
    tokenizer: Path
    """The VQGAN tokenizer checkpoint."""
    ar_model: Path | None = None
    """The causal AR baseline export, for the side-by-side comparison (optional)."""
    data_root: Path | None = None
    """An ImageNet-layout image folder whose ``val/`` split offers held-out samples (optional)."""
    notes: list[str] = field(default_factory=list)
    """How each path was chosen, one line each (the CLI prints them)."""


def _newest(cands: list[Path]) -> Path | None:
    found = [c for c in cands if (c / "config.json").is_file()]
    return max(found, key=lambda c: (c / "config.json").stat().st_mtime) if found else None


def resolve_paths(*, model: str | os.PathLike | None, tokenizer: str | os.PathLike | None,
                  ar_model: str | os.PathLike | None, demo_out: str | os.PathLike = "demo-out") -> StudioPaths:
    """The explicit paths where given, else the newest exports of the demo run in ``demo_out``."""
    demo = Path(demo_out)
    notes = []
    from_demo = model is None
    if model is None:
        m = _newest(sorted(demo.glob("runs/mvtm/export*")))
        if m is None:
            raise ConfigError(f"no MaskGIT model found in {demo}/ (looked for {demo}/runs/mvtm/export/config.json): "
                              "run `make demo` first, or pass --model")
        notes.append(f"model: {m} (newest demo export)")
        model = m
        if ar_model is None:
            ar = _newest(sorted(demo.glob("runs/ar/export*")))
            if ar is not None:
                notes.append(f"AR baseline: {ar} (newest demo export)")
                ar_model = ar
    if tokenizer is None:
        cands = [Path(model), Path(model).parent] + ([demo / "tokenizer"] if from_demo else [])
        tok = next((c for c in cands if _is_kind(c, "maskgit-vqgan") or _is_kind(c / "tokenizer", "maskgit-vqgan")), None)
        if tok is None:
            raise ConfigError(f"no tokenizer found next to {model}" + (f" or in {demo}/tokenizer" if from_demo else "")
                              + ": pass --tokenizer DIR")
        notes.append(f"tokenizer: {tok}")
        tokenizer = tok
    data_root = demo / "data" if (demo / "data" / "val").is_dir() else None
    return StudioPaths(model=Path(model), tokenizer=Path(tokenizer), ar_model=Path(ar_model) if ar_model else None,
                       data_root=data_root, notes=notes)


def _is_kind(d: Path, kind: str) -> bool:
    try:
        return json.loads((d / "config.json").read_text()).get("kind") == kind
    except (OSError, ValueError):
        return False


def class_table(model_dir: str | os.PathLike, num_classes: int) -> list[dict]:
    """[{"index", "name"}] for every class the model knows: names from the manifest of the token
    data the checkpoint was trained on when it can be read, else the numbers."""
    names: dict[int, str] = {}
    try:
        meta = json.loads((Path(model_dir) / "config.json").read_text())
        data = meta.get("data")
        if data and "://" not in str(data):
            # a relative path (the demo records "demo-out/tokens/train") is relative to where training
            # ran: the current folder, or an ancestor of the checkpoint (demo-out/runs/mvtm/export)
            cands = [Path(data)] + ([a / data for a in Path(model_dir).resolve().parents]
                                    if not Path(data).is_absolute() else [])
            found = next((c / "manifest.json" for c in cands if (c / "manifest.json").is_file()), None)
            if found is None:
                raise FileNotFoundError(f"no manifest.json in {data}")
            man = json.loads(found.read_text())
            names = {int(c["index"]): str(c.get("name") or c.get("id")) for c in man.get("classes", [])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.info("no class names for %s (%s); showing numbers", model_dir, e)
    return [{"index": i, "name": names.get(i, f"class {i}")} for i in range(num_classes)]


def held_out_samples(data_root: Path | None, *, per_class: int = 1, limit: int = 16) -> list[dict]:
    """[{"id", "name", "path" | "photo"}]: the first held-out image of each class of ``data_root/val``,
    else the built-in photos the demo dataset is cut from."""
    out: list[dict] = []
    if data_root is not None:
        for cdir in sorted(p for p in (data_root / "val").iterdir() if p.is_dir()):
            for f in sorted(cdir.iterdir())[:per_class]:
                out.append({"id": f"val-{len(out)}", "name": f"{cdir.name} (held out)", "path": str(f)})
            if len(out) >= limit:
                break
    if not out:
        from pipeline.demo.data import PHOTOS

        out = [{"id": f"photo-{name}", "name": f"{name} (built-in photo)", "photo": name}
               for name in list(PHOTOS)[:limit]]
    return out
