"""Studio API latency as a user sees it: one HTTP round trip (JSON encode, model, PNG/base64
encode) for a grid of 8 samples (T=8), the same with the AR baseline beside it, and one edit of
each kind, against a studio server on 127.0.0.1 in this process.

    .venv/bin/python bench/bench_studio.py                         # tiny random `debug` models
    .venv/bin/python bench/bench_studio.py --preset demo           # random models of the demo's sizes
    .venv/bin/python bench/bench_studio.py --demo-out demo-out     # the models `make demo` trained

Prints a table of the first call and the median and max over --repeats further calls, and
JSON with --json. Random weights decode as fast as trained ones of the same preset.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def _png_url(a: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _random_models(d: Path, preset: str):
    """Random weights of a preset pair: `debug` (the tests' sizes) or `demo` (17 classes with the
    null class of guidance, as `make demo` trains them)."""
    import tokenizer
    import transformer

    torch.manual_seed(0)
    kw = {"latent_size": 8} if preset == "debug" else {"num_classes": 17}
    extra = {} if preset == "debug" else {"null_label": 16}
    tokenizer.save(tokenizer.build(preset), d / "tok")
    transformer.save(transformer.build(preset, **kw), d / "mvtm", extra=extra)
    transformer.save(transformer.build(preset, causal=True, **kw), d / "ar", extra=extra)
    return d / "mvtm", d / "tok", d / "ar"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-out", default=None, help="Serve this demo run's models instead of random ones.")
    ap.add_argument("--preset", default="debug", choices=("debug", "demo"), help="Sizes of the random models.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pipeline.studio import Studio, StudioPaths, resolve_paths, serve_in_thread

    tmp = tempfile.TemporaryDirectory()
    if args.demo_out:
        paths, label = resolve_paths(model=None, tokenizer=None, ar_model=None, demo_out=args.demo_out), "demo"
    else:
        m, t, a = _random_models(Path(tmp.name), args.preset)
        paths, label = StudioPaths(model=m, tokenizer=t, ar_model=a), f"{args.preset} (random)"
    studio = Studio(paths)
    server, _ = serve_in_thread(studio)
    base = f"http://127.0.0.1:{server.server_port}"
    info = studio.info()
    s = info["image_size"]
    img = json.loads(urllib.request.urlopen(f"{base}/api/samples/{info['samples'][0]['id']}").read())["image"]
    mask = np.zeros((s, s), np.uint8)
    mask[s // 4:s // 2, s // 4:3 * s // 4] = 255
    gen = {"classes": [0, 1], "n": 4, "seed": 0, "steps": 8}
    calls = {
        "generate 8 (T=8)": ("/api/generate", gen),
        "generate 8 + AR 8": ("/api/generate", {**gen, "compare_ar": True}),
        "edit inpaint (T=12)": ("/api/edit", {"op": "inpaint", "image": img, "mask": _png_url(mask), "class": 1}),
        "edit replace (T=12, from 2)": ("/api/edit", {"op": "replace", "image": img, "mask": _png_url(mask), "class": 1}),
        "edit outpaint left+right": ("/api/edit", {"op": "outpaint", "image": img, "class": 1,
                                                   "extend": {"left": s // 2, "right": s // 2}}),
    }
    if paths.ar_model is None:
        del calls["generate 8 + AR 8"]
    rows = []
    for name, (path, body) in calls.items():
        t0 = time.perf_counter()
        _post(base + path, body)  # warm-up, reported as the first call
        first = time.perf_counter() - t0
        wall, model = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = _post(base + path, body)
            wall.append(time.perf_counter() - t0)
            model.append(out["seconds"] + (out["ar"]["seconds"] if out.get("ar") else 0.0))
        rows.append({"call": name, "first_s": first, "median_s": statistics.median(wall), "max_s": max(wall),
                     "model_median_s": statistics.median(model)})
    server.shutdown()
    meta = {"models": label, "image_size": s, "latent": info["latent_size"], "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0], "python": platform.python_version(),
            "torch": torch.__version__, "repeats": args.repeats}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))
        return
    print(f"# studio API round trips, {label} models ({s}x{s} px, {info['latent_size']}x{info['latent_size']} tokens), "
          f"{meta['threads']} torch threads, {meta['cpus']} CPUs, load {meta['load_avg']:.1f}")
    print(f"{'call':<30} {'first s':>8} {'median s':>9} {'max s':>8} {'in model s':>11}")
    for r in rows:
        print(f"{r['call']:<30} {r['first_s']:>8.3f} {r['median_s']:>9.3f} {r['max_s']:>8.3f} "
              f"{r['model_median_s']:>11.3f}")


if __name__ == "__main__":
    main()
