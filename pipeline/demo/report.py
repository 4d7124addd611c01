"""The demo's report: metrics.json (every number) and report.md (stage table, per-stage text,
figures, metrics and the paper's claims), rewritten after every stage."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.demo.context import DemoContext, StageRecord

__all__ = ["write_report"]


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

    lines = [f"# MaskGIT pipeline demo ({ctx.settings.name})", "",
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
