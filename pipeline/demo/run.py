"""``maskgit-pipeline demo``: the whole pipeline, offline, on a few CPU cores, with a report.

The demo is a list of named stages (``STAGES``) run in order on one ``DemoContext``; every size
comes from one ``DemoSettings`` (``pipeline.demo.settings``). Each stage reads what earlier stages
left in ``ctx.paths`` / ``ctx.metrics`` and adds its own:

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

The stages live in ``stages_tokenizer`` (1-3), ``stages_data`` (4-5), ``stages_train`` (6-7),
``stages_generate`` (8-9) and ``evaluation`` (10); the report in ``report``.

A stage that raises ``StageUnavailable`` is reported as "not available in this build" and the
demo goes on; one that needs a missing input is "skipped"; any other exception is "failed"
(with the message) and the demo goes on. The report is written after every stage, so a
partial run still leaves a readable report.md.

Library code: progress goes to ``logging`` and to the optional ``progress`` callback.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from maskgit_core.errors import ConfigError

from pipeline.demo.context import DemoContext, StageRecord, StageSkipped, StageUnavailable
from pipeline.demo.evaluation import PAPER_CLAIMS, stage_evaluate
from pipeline.demo.report import write_report
from pipeline.demo.settings import DemoSettings
from pipeline.demo.stages_data import stage_tokenize, stage_verify
from pipeline.demo.stages_generate import stage_edit, stage_sample
from pipeline.demo.stages_tokenizer import stage_make_dataset, stage_reconstructions, stage_train_tokenizer
from pipeline.demo.stages_train import RANKS, stage_train_ar, stage_train_mvtm

__all__ = ["Stage", "STAGES", "run_demo"]

log = logging.getLogger(__name__)


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
    Stage("train_mvtm", f"Train MVTM (deepspeed, {RANKS} CPU ranks)", stage_train_mvtm),
    Stage("train_ar", f"Train the AR baseline (deepspeed, {RANKS} CPU ranks)", stage_train_ar),
    Stage("sample", "Sample per class", stage_sample),
    Stage("edit", "Inpaint, outpaint, replace", stage_edit),
    Stage("evaluate", "Evaluate", stage_evaluate),
)


def run_demo(out_dir: str | os.PathLike, *, settings: DemoSettings | None = None,
             progress: Callable[[str], None] | None = None, stages: tuple[Stage, ...] = STAGES
             ) -> tuple[DemoContext, list[StageRecord]]:
    """Run ``stages`` in order into ``out_dir`` with ``settings`` (default ``DemoSettings.full()``);
    return the context and per-stage records.

    Never raises for a stage's failure: it is recorded, reported and the demo goes on.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; pass a directory for the report")
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=out, settings=settings or DemoSettings.full(), progress=progress)
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
