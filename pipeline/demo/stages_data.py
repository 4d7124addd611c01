"""The demo's stages 4-5: the Ray tokenize job on the demo data, and the exactly-once check of its shards.

==========  ====================================================================================
tokenize    Ray tokenize job (``pipeline.data.tokenize_job.run_tokenize``) of data/train and data/val,
            Parquet + WebDataset, error report (the demo data holds bad files on purpose)
verify      ``pipeline.data.verify.verify_dataset`` against the source: exactly once, both formats agree
==========  ====================================================================================
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.demo.context import DemoContext

__all__ = ["stage_tokenize", "stage_verify"]


def stage_tokenize(ctx: DemoContext) -> None:
    """Tokenize data/train and data/val with the Ray job (one local Ray for both); tokens/{train,val}."""
    from pipeline.data.shards import read_manifest
    from pipeline.data.tokenize_job import TokenizeConfig, run_tokenize
    from pipeline.data.verify import read_error_report
    from pipeline.ray_session import ray_session

    settings = ctx.settings
    data = ctx.need("data", "dataset")
    tok = ctx.need("tokenizer", "train_tokenizer")
    out = ctx.out / "tokens"
    results: dict[str, Any] = {}
    with ray_session("local", num_cpus=settings.ray_cpus):
        for split in ("train", "val"):
            cfg = TokenizeConfig(source=str(data), out=str(out / split), tokenizer=str(tok), layout="imagenet",
                                 split=split, formats=("parquet", "webdataset"), unit_size=settings.tokenize_unit_size,
                                 batch_size=settings.tokenize_batch_size)
            ctx.say(f"  tokenizing {split} (Ray job, Parquet + WebDataset) ...")
            r = run_tokenize(cfg)
            m = r.manifest
            results[split] = {"images": m.counts["images"], "samples": m.counts["samples"],
                              "errors": m.counts["errors"], "units": r.units_total, "shards": len(m.shards),
                              "seconds": round(r.seconds, 1), "out": str(out / split)}
            ctx.say(f"  {split}: {m.counts['samples']} samples, {m.counts['errors']} errors of "
                    f"{m.counts['images']} images in {r.seconds:.1f} s")
    errors = [(k, r) for k, r in read_error_report(str(out / "train"), read_manifest(str(out / "train")).error_report)]
    ctx.paths["tokens"] = out / "train"
    ctx.paths["tokens_val"] = out / "val"
    ctx.metrics["tokenize"] = {**{f"{s}_{k}": v for s, d in results.items() for k, v in d.items()
                                  if k in ("images", "samples", "errors", "shards", "seconds")},
                               "error_report": [{"key": k, "reason": r} for k, r in errors]}
    lines = ["`maskgit-pipeline tokenize`'s Ray Data job (`pipeline.data.tokenize_job.run_tokenize`, local Ray "
             f"with {settings.ray_cpus} CPUs) wrote both shard formats (Parquet and WebDataset) to `tokens/train` and "
             "`tokens/val`; a manifest, written last, names every shard with its SHA-256.", "",
             "| split | images | samples | errors | shards | seconds |", "|---|---|---|---|---|---|"]
    for s, d in results.items():
        lines.append(f"| {s} | {d['images']} | {d['samples']} | {d['errors']} | {d['shards']} | {d['seconds']} |")
    bad_json = data / "bad_files.json"
    bad = json.loads(bad_json.read_text()) if bad_json.is_file() else {}
    err = dict(errors)
    lines += ["", f"Error report (`tokens/train/errors.jsonl`, {len(errors)} lines): the job records each unreadable "
              "file with its reason and goes on; files that decode are converted to RGB and kept."]
    if bad:
        lines += ["", "The dataset holds these bad files on purpose (`data/bad_files.json`):", "",
                  "| file | what | expected | got |", "|---|---|---|---|"]
        ok = 0
        for key, d in bad.items():
            got = f"error: {err[key][:90]}" if key in err else "kept (in the shards)"
            ok += (key in err) == (d["expect"] == "error")
            lines.append(f"| `{Path(key).name}` | {d['what']} | {d['expect']} | {got.replace('|', '/')} |")
        ctx.metrics["tokenize"]["bad_files_as_expected"] = f"{ok}/{len(bad)}"
    others = [(k, r) for k, r in errors if k not in bad]
    if others:
        lines += ["", "Other error-report lines:", ""] + [f"- `{k}`: {r}" for k, r in others]
    ctx.add_text("tokenize", *lines)


# ----------------------------------------------------------------------------- 5. verify

def stage_verify(ctx: DemoContext) -> None:
    """Exactly-once check of both token datasets against the source listing; fails on any problem."""
    from pipeline.data.verify import verify_dataset

    data = ctx.need("data", "dataset")
    rows = {}
    for split, key in (("train", "tokens"), ("val", "tokens_val")):
        rep = verify_dataset(str(ctx.need(key, "tokenize")), source=str(data), layout="imagenet", split=split)
        rows[split] = rep
        ctx.say(f"  verify {split}: {'OK' if rep.ok else 'PROBLEMS'}: {rep.samples} samples + {rep.errors} errors "
                f"of {rep.source_images} source images, {rep.shards} shards")
    m = {}
    for split, rep in rows.items():
        m.update({f"{split}_ok": rep.ok, f"{split}_source_images": rep.source_images,
                  f"{split}_samples": rep.samples, f"{split}_errors": rep.errors, f"{split}_shards": rep.shards,
                  f"{split}_exactly_once": rep.ok and rep.samples + rep.errors == rep.source_images})
        m[f"{split}_problems"] = rep.problems
    ctx.metrics["verify"] = m
    ctx.add_text("verify",
                 "`pipeline.data.verify.verify_dataset` read every shard of both formats (checksums), checked that "
                 "Parquet and WebDataset hold the same keys, labels and tokens, and that every source image is "
                 "in exactly one shard row or in the error report:", "",
                 "| split | source images | samples | errors | samples + errors | exactly once |",
                 "|---|---|---|---|---|---|",
                 *[f"| {s} | {r.source_images} | {r.samples} | {r.errors} | {r.samples + r.errors} | "
                   f"{'yes' if r.ok else 'NO: ' + '; '.join(r.problems[:3])} |" for s, r in rows.items()])
    bad = [s for s, r in rows.items() if not r.ok]
    if bad:
        raise RuntimeError(f"verify found problems in {bad}: {rows[bad[0]].problems[:3]}")

