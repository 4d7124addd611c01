"""``maskgit-pipeline demo``: the whole pipeline, offline, on a few CPU cores, with a report.

The demo is a list of named stages (``STAGES``; stages 4-10 are in ``demo_stages.py``) run in
order on one ``DemoContext``. Each
stage reads what earlier stages left in ``ctx.paths`` / ``ctx.metrics`` and adds its own:

==================  ==============================================  ===========================
stage               does                                            leaves
==================  ==============================================  ===========================
dataset             built-in photos -> ImageNet-layout JPEGs        paths["data"]
train-tokenizer     small VQGAN on data/train                       paths["tokenizer"]
reconstructions     held-out PSNR, codebook usage, grids            metrics["reconstructions"]
tokenize            Ray tokenize job                                paths["tokens"]
verify              exactly-once check of the shards
train-mvtm          deepspeed, 2 CPU ranks                          paths["mvtm"]
train-ar            same-size AR baseline, same tokens              paths["ar"]
sample              per-class samples, step-by-step grid
edit                inpaint / outpaint / replace
evaluate            FID-proxy, CAS, decode time, schedules          claims
==================  ==============================================  ===========================

A stage that raises ``StageUnavailable`` is reported as "not available in this build" and the
demo goes on; one that needs a missing input is "skipped"; any other exception is "failed"
(with the message) and the demo goes on. The report is written after every stage, so a
partial run still leaves a readable report.md.

Library code: progress goes to ``logging`` and to the optional ``progress`` callback.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tokenizer.train import TrainConfig, train_preset

from pipeline.demo.data import DemoDataConfig
from maskgit_core.errors import ConfigError

__all__ = ["DemoSettings", "demo_settings", "DemoContext", "Stage", "StageRecord", "StageUnavailable",
           "StageSkipped", "STAGES", "run_demo", "write_report", "plot_curves", "save_grid",
           "stage_make_dataset", "stage_train_tokenizer", "stage_reconstructions", "stage_tokenize",
           "stage_verify", "stage_train_mvtm", "stage_train_ar", "stage_sample", "stage_edit", "stage_evaluate"]

log = logging.getLogger(__name__)


class StageUnavailable(Exception):
    """The stage's module is not part of this build; the message says which."""


class StageSkipped(Exception):
    """A stage's input is missing because an earlier stage did not produce it."""


@dataclass(kw_only=True, frozen=True)
class DemoSettings:
    """Sizes of one demo run (``demo_settings(quick)`` gives the two shipped ones)."""

    quick: bool
    """The ~3 minute variant the tests run."""
    data: DemoDataConfig
    """The built-in dataset."""
    tokenizer_preset: str = "demo"
    """Tokenizer architecture preset (32 px, 8x8 grid, 256 codes: the `demo` transformer preset's)."""
    tokenizer_train: TrainConfig
    """Tokenizer training recipe."""
    transformer_preset: str = "demo"
    """Transformer preset for MVTM and the AR baseline."""
    seed: int = 0
    """Seed of everything downstream of the dataset."""


def demo_settings(quick: bool) -> DemoSettings:
    """The shipped sizes: quick (tokenizer stages < 60 s on 2 idle cores) or full."""
    if quick:
        return DemoSettings(
            quick=True, data=DemoDataConfig(train_per_class=100, val_per_class=16, with_bad_files=True),
            # 300 steps of 16 beat 150 of 32 in about the same CPU time (20.5 vs 16.1 dB, BENCHMARKS.md).
            tokenizer_train=TrainConfig(steps=300, batch_size=16, warmup_steps=10, max_seconds=45.0,
                                        val_images=256, threads=1),
        )
    return DemoSettings(quick=False, data=DemoDataConfig(with_bad_files=True),
                        tokenizer_train=replace(train_preset("demo"), max_seconds=240.0, threads=1))


@dataclass
class StageRecord:
    """How one stage went."""

    name: str
    title: str
    status: str = "pending"
    """ok | unavailable | skipped | failed | pending"""
    seconds: float = 0.0
    message: str = ""


@dataclass
class DemoContext:
    """Shared state of a demo run; stages read and add to it."""

    out: Path
    settings: DemoSettings
    paths: dict[str, Path] = field(default_factory=dict)
    """Artifacts by name: data, tokenizer, tokens, mvtm, ar, ..."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Per-stage metrics (stage name -> dict); written to metrics.json."""
    sections: dict[str, list[str]] = field(default_factory=dict)
    """Per-stage markdown lines for report.md."""
    figures: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Per-stage (caption, path relative to out) figures for report.md."""
    claims: list[dict[str, str]] = field(default_factory=list)
    """The paper's claims: {"claim", "measured", "verdict"}; the evaluate stage fills them in."""
    progress: Callable[[str], None] | None = None

    def need(self, key: str, stage: str) -> Path:
        """The artifact ``key``, or StageSkipped naming the stage that should have made it."""
        if key not in self.paths:
            raise StageSkipped(f"needs {key!r}, which stage {stage!r} did not produce")
        return self.paths[key]

    def say(self, msg: str) -> None:
        log.info(msg)
        if self.progress is not None:
            self.progress(msg)

    def add_figure(self, stage: str, caption: str, path: Path) -> None:
        self.figures.setdefault(stage, []).append((caption, os.path.relpath(path, self.out)))

    def add_text(self, stage: str, *lines: str) -> None:
        self.sections.setdefault(stage, []).extend(lines)


# ----------------------------------------------------------------------------- figures

def save_grid(images: np.ndarray, path: Path, *, nrow: int, scale: int = 3) -> Path:
    """(B, H, W, 3) uint8 -> a PNG grid, upscaled ``scale`` x (nearest) so 32 px images are visible."""
    from pipeline.generate import make_grid, save_png

    grid = make_grid(images, nrow=nrow)
    return save_png(np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1), path)


def plot_curves(path: Path, series: dict[str, tuple[list[float], list[float]]], *, title: str,
                xlabel: str = "step", ylabel: str = "loss", logy: bool = False) -> Path:
    """Line plot of named (x, y) series to a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- stages provided here

def stage_make_dataset(ctx: DemoContext) -> None:
    """Write the built-in dataset to OUT/data (ImageNet layout, JPEG) and a grid of it."""
    from pipeline.demo.data import make_demo_dataset
    from PIL import Image

    ds = make_demo_dataset(ctx.out / "data", ctx.settings.data)
    ctx.paths["data"] = ds.root
    ctx.metrics["dataset"] = {"classes": len(ds.classes), "train_images": ds.num_train, "val_images": ds.num_val,
                              "image_size": ctx.settings.data.image_size, "seed": ctx.settings.data.seed}
    per_class = 8
    rows = []
    for c in ds.classes:
        files = sorted((ds.val_dir / c["id"]).glob("*.JPEG"))[:per_class]
        rows += [np.asarray(Image.open(f).convert("RGB")) for f in files]
    grid = save_grid(np.stack(rows), ctx.out / "figures" / "data_grid.png", nrow=per_class)
    ctx.add_figure("dataset", f"Held-out images, one row per class ({len(ds.classes)} classes)", grid)
    ctx.add_text("dataset",
                 f"{len(ds.classes)} classes (one per scikit-image photo), {ds.num_train} train and {ds.num_val} "
                 f"held-out {ctx.settings.data.image_size} px JPEGs in the ImageNet folder layout at `data/`.",
                 "Classes: " + ", ".join(f"`{c['id']}`" for c in ds.classes) + ".")


def stage_train_tokenizer(ctx: DemoContext) -> None:
    """Train the small VQGAN on data/ and save it to OUT/tokenizer (safetensors + config.json)."""
    from tokenizer.train import train_tokenizer

    data = ctx.need("data", "dataset")
    cfg = ctx.settings.tokenizer_train

    def on_log(rec: dict) -> None:
        if rec["step"] % (cfg.log_every * 5) == 0:
            ctx.say(f"  tokenizer step {rec['step']}/{cfg.steps}: loss {rec['loss']:.4f}, "
                    f"train PSNR {rec['train_psnr']:.2f} dB, {rec['seconds']:.0f} s")

    res = train_tokenizer(data, model_config=ctx.settings.tokenizer_preset, config=cfg,
                          out=ctx.out / "tokenizer", on_log=on_log)
    ctx.paths["tokenizer"] = res.out
    ctx.metrics["train_tokenizer"] = res.metrics
    steps = [h["step"] for h in res.history]
    fig = plot_curves(ctx.out / "figures" / "tokenizer_loss.png",
                      {"total": (steps, [h["loss"] for h in res.history]),
                       "L1": (steps, [h["l1"] for h in res.history]),
                       "L2": (steps, [h["l2"] for h in res.history])},
                      title="Tokenizer training loss", logy=True)
    ctx.add_figure("train_tokenizer", "Tokenizer training losses", fig)
    m = res.metrics
    ctx.add_text("train_tokenizer",
                 f"Preset `{ctx.settings.tokenizer_preset}`, {m['steps']} steps of batch {cfg.batch_size} in "
                 f"{m['seconds']:.0f} s ({m['images_per_second']:.0f} images/s, {m['torch_threads']} threads). "
                 "Losses: L1 + L2 + codebook + commitment, dead-code restarts every "
                 f"{cfg.restart_every} steps ({m['dead_codes_restarted']} restarts in all). Perceptual and "
                 "adversarial terms: not used (no pretrained weights offline).")


def stage_reconstructions(ctx: DemoContext) -> None:
    """Held-out reconstruction PSNR and codebook usage of the trained tokenizer, plus a grid."""
    import torch

    import tokenizer
    from tokenizer.train import codebook_stats, psnr, read_images

    tok_dir = ctx.need("tokenizer", "train_tokenizer")
    data = ctx.need("data", "dataset")
    vq = tokenizer.load(tok_dir)
    files = sorted((data / "val").rglob("*.JPEG"))
    imgs = read_images(files, vq.config.image_size, [])
    with torch.no_grad():
        x = imgs.float() / 255.0  # (N, 3, S, S)
        ids = vq.encode(x)  # (N, h, w)
        recon = vq.decode_ids(ids).clamp(0, 1)
    p = psnr(recon, x)
    stats = codebook_stats(ids, vq.config.codebook_size)
    ctx.metrics["reconstructions"] = {"psnr_mean": float(p.mean()), "psnr_min": float(p.min()),
                                      "psnr_max": float(p.max()), "images": len(x), **stats,
                                      "tokenizer_sha256": vq.weights_sha256,
                                      "latent_grid": list(ids.shape[1:])}
    # One real/reconstruction pair per class where possible: every k-th held-out image.
    k = max(1, len(x) // 16)
    pick = torch.arange(0, len(x), k)[:16]
    pairs = torch.stack([x[pick], recon[pick]], dim=1).flatten(0, 1)  # (2n, 3, S, S), real, recon, ...
    arr = np.clip(np.rint(pairs.permute(0, 2, 3, 1).numpy() * 255.0), 0, 255).astype(np.uint8)
    fig = save_grid(arr, ctx.out / "figures" / "tokenizer_reconstructions.png", nrow=8)
    ctx.add_figure("reconstructions", "Held-out images (left of each pair) and their reconstructions "
                   "from 8x8 tokens (right)", fig)
    ctx.add_text("reconstructions",
                 f"Held-out reconstruction PSNR **{float(p.mean()):.2f} dB** (min {float(p.min()):.1f}, max "
                 f"{float(p.max()):.1f}) over {len(x)} images; codebook usage **{stats['usage']:.0%}** "
                 f"({stats['codes_used']}/{vq.config.codebook_size} codes), perplexity "
                 f"**{stats['perplexity']:.1f}**.")


# ----------------------------------------------------------------------------- hooks for other areas

def _require_module(name: str, what: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise StageUnavailable(f"{what}: module `{name}` is not in this build")


def stage_tokenize(ctx: DemoContext) -> None:
    """Hook (issue 3): tokenize ``paths["data"]`` (train and val) with the Ray job and
    ``paths["tokenizer"]``; set ``paths["tokens"]`` and ``metrics["tokenize"]``."""
    from pipeline.demo.stages import tokenize  # late import: demo_stages imports this module

    tokenize(ctx)


def stage_verify(ctx: DemoContext) -> None:
    """Hook (issue 3): verify ``paths["tokens"]`` against ``paths["data"]`` (exactly once);
    set ``metrics["verify"]``."""
    from pipeline.demo.stages import verify  # late import: demo_stages imports this module

    verify(ctx)


def stage_train_mvtm(ctx: DemoContext) -> None:
    """Hook (issue 4): train MVTM on ``paths["tokens"]`` through the deepspeed launcher on 2 CPU
    ranks; set ``paths["mvtm"]`` and ``metrics["train_mvtm"]`` (with a loss history for a curve)."""
    from pipeline.demo.stages import train_mvtm  # late import: demo_stages imports this module

    train_mvtm(ctx)


def stage_train_ar(ctx: DemoContext) -> None:
    """Hook (issue 4): the same-size causal AR baseline, same tokens, same steps; set ``paths["ar"]``."""
    from pipeline.demo.stages import train_ar  # late import: demo_stages imports this module

    train_ar(ctx)


def stage_sample(ctx: DemoContext) -> None:
    """Hook (issue 5): samples per class and the step-by-step decoding grid from ``paths["mvtm"]``."""
    from pipeline.demo.stages import sample  # late import: demo_stages imports this module

    sample(ctx)


def stage_edit(ctx: DemoContext) -> None:
    """Hook (issue 5): inpaint, outpaint and class-conditional replace, before/after grids."""
    from pipeline.demo.stages import edit  # late import: demo_stages imports this module

    edit(ctx)


def stage_evaluate(ctx: DemoContext) -> None:
    """Hook (issue 5): FID-proxy and CAS of MaskGIT (T=8) vs AR, decode time per image, FID-proxy
    vs steps per mask schedule; fill ``ctx.claims`` verdicts and ``metrics["evaluate"]``."""
    from pipeline.demo.stages import evaluate  # late import: demo_stages imports this module

    evaluate(ctx)


@dataclass(frozen=True)
class Stage:
    """A named step of the demo."""

    name: str
    title: str
    run: Callable[[DemoContext], None]


STAGES: tuple[Stage, ...] = (
    Stage("dataset", "Make the dataset", stage_make_dataset),
    Stage("train_tokenizer", "Train the tokenizer", stage_train_tokenizer),
    Stage("reconstructions", "Tokenizer reconstructions", stage_reconstructions),
    Stage("tokenize", "Tokenize through the Ray job", stage_tokenize),
    Stage("verify", "Verify the token shards", stage_verify),
    Stage("train_mvtm", "Train MVTM (deepspeed, 2 CPU ranks)", stage_train_mvtm),
    Stage("train_ar", "Train the AR baseline (deepspeed, 2 CPU ranks)", stage_train_ar),
    Stage("sample", "Sample per class", stage_sample),
    Stage("edit", "Inpaint, outpaint, replace", stage_edit),
    Stage("evaluate", "Evaluate", stage_evaluate),
)

PAPER_CLAIMS = (
    "MaskGIT (T=8) is better than or equal to the same-size AR baseline in FID-proxy and CAS",
    "MaskGIT decodes an image faster than the AR baseline",
    "The cosine mask schedule is at or near the best in FID-proxy",
)


# ----------------------------------------------------------------------------- report

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(ctx: DemoContext, records: list[StageRecord]) -> Path:
    """Write metrics.json and report.md (linking every figure) under ``ctx.out``."""
    metrics = {"settings": asdict(ctx.settings), "stages": [asdict(r) for r in records], **ctx.metrics,
               "claims": ctx.claims}
    tmp = ctx.out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, default=str) + "\n")
    os.replace(tmp, ctx.out / "metrics.json")

    lines = [f"# MaskGIT pipeline demo ({'quick' if ctx.settings.quick else 'full'})", "",
             "All numbers below were measured in this run; `metrics.json` holds them all."
             + (f" Total time: {ctx.metrics['total_seconds']:.0f} s." if "total_seconds" in ctx.metrics else ""), "",
             "| # | stage | status | seconds | note |", "|---|---|---|---|---|"]
    for i, r in enumerate(records, 1):
        note = r.message.replace("|", "\\|").splitlines()[0] if r.message else ""
        lines.append(f"| {i} | {r.title} | {r.status} | {r.seconds:.1f} | {note} |")
    lines.append("")
    for r in records:
        lines += [f"## {r.title}", ""]
        if r.status == "unavailable":
            lines += [f"Stage `{r.name}` not available in this build: {r.message}", ""]
            continue
        if r.status in ("skipped", "failed", "pending"):
            lines += [f"Stage `{r.name}` {r.status}" + (f": {r.message}" if r.message else "") + ".", ""]
            continue
        lines += ctx.sections.get(r.name, []) + [""]
        for caption, rel in ctx.figures.get(r.name, []):
            lines += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
        m = ctx.metrics.get(r.name)
        if isinstance(m, dict):
            flat = {k: v for k, v in m.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
            if flat:
                lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in flat.items()]
                lines.append("")
    lines += ["## The paper's claims in miniature", "", "| claim | measured | verdict |", "|---|---|---|"]
    for c in ctx.claims:
        lines.append(f"| {c['claim']} | {c['measured']} | {c['verdict']} |")
    lines.append("")
    tmp = ctx.out / "report.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, ctx.out / "report.md")
    return ctx.out / "report.md"


def run_demo(out_dir: str | os.PathLike, *, quick: bool = False, progress: Callable[[str], None] | None = None,
             stages: tuple[Stage, ...] = STAGES, settings: DemoSettings | None = None
             ) -> tuple[DemoContext, list[StageRecord]]:
    """Run the demo stages in order into ``out_dir``; return the context and per-stage records.

    Never raises for a stage's failure: it is recorded, reported and the demo goes on.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; pass a directory for the report")
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=out, settings=settings or demo_settings(quick), progress=progress)
    ctx.claims = [{"claim": c, "measured": "not measured in this build", "verdict": "not measured"}
                  for c in PAPER_CLAIMS]
    records = [StageRecord(s.name, s.title) for s in stages]
    t_all = time.perf_counter()
    for i, (stage, rec) in enumerate(zip(stages, records), 1):
        ctx.say(f"[{i}/{len(stages)}] {stage.title} ...")
        t0 = time.perf_counter()
        try:
            stage.run(ctx)
            rec.status = "ok"
        except StageUnavailable as e:
            rec.status, rec.message = "unavailable", str(e)
        except StageSkipped as e:
            rec.status, rec.message = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - a failed stage is reported, the demo goes on
            rec.status, rec.message = "failed", f"{type(e).__name__}: {e}"
            log.error("demo stage %s failed:\n%s", stage.name, traceback.format_exc())
        rec.seconds = time.perf_counter() - t0
        ctx.say(f"[{i}/{len(stages)}] {stage.title}: {rec.status} ({rec.seconds:.1f} s)"
                + (f" - {rec.message}" if rec.message else ""))
        write_report(ctx, records)
    ctx.metrics["total_seconds"] = round(time.perf_counter() - t_all, 1)
    write_report(ctx, records)
    return ctx, records
