"""Time the OFFICIAL google-research/maskgit JAX modules on this CPU, for a side-by-side ratio
with bench/bench_models.py. Needs a Python with jax + flax + ml_collections and a checkout of
the official repository (not part of this project; pass its path):

    /path/to/jax-venv/bin/python bench/official_jax_speed.py --official-repo /path/to/maskgit

Random weights (speed does not depend on the values), float32, jit. Prints one JSON line.
For one CPU thread: XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official-repo", required=True)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precisions", default="default",
                    help="comma list of jax_default_matmul_precision values; 'default' leaves JAX's own "
                         "(TF32 for float32 on Ampere/Hopper GPUs), 'highest' is true float32")
    args = ap.parse_args()
    sys.path.insert(0, args.official_repo)
    import jax
    import jax.numpy as jnp
    from maskgit.configs import vqgan_config
    from maskgit.nets import maskgit_transformer, vqgan_tokenizer

    cpu_seconds: list[float] = []

    def best(fn):
        jax.block_until_ready(fn())
        t, c = float("inf"), float("inf")
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            t, c = min(t, time.perf_counter() - t0), min(c, time.process_time() - c0)
        cpu_seconds.append(c)
        return t

    rows = []
    for precision in args.precisions.split(","):
        ctx = jax.default_matmul_precision(None if precision == "default" else precision)
        with ctx:
            new = _time_all(jax, jnp, vqgan_config, vqgan_tokenizer, maskgit_transformer, best, args, precision)
        for r, c in zip(new, cpu_seconds[len(rows):]):
            r["cpu_seconds"] = c
        rows += new
    print(json.dumps({"jax": jax.__version__, "backend": jax.default_backend(), "rows": rows}))


def _time_all(jax, jnp, vqgan_config, vqgan_tokenizer, maskgit_transformer, best, args, precision):
    rows = []
    cfg = vqgan_config.get_config()
    vq = vqgan_tokenizer.VQVAE(config=cfg, dtype=jnp.float32, train=False)
    key = jax.random.PRNGKey(0)
    batches = [int(b) for b in args.batches.split(",")]
    # initialise encoder, quantizer and decoder together (VQVAE.__call__ passes a tuple to the decoder)
    params = vq.init(key, jnp.zeros((1, 256, 256, 3)),
                     method=lambda m, x: m.decode(m.encode({"image": x})[0]))
    enc = jax.jit(lambda p, x: vq.apply(p, {"image": x}, method=vq.encode_to_indices))
    dec = jax.jit(lambda p, ids: vq.apply(p, ids, method=vq.decode_from_indices))
    for b in batches:
        x = jax.random.uniform(key, (b, 256, 256, 3))
        t = best(lambda: enc(params, x))
        ids = enc(params, x)
        td = best(lambda: dec(params, ids))
        rows.append({"what": "official JAX VQGAN encode", "batch": b, "seconds": t, "images_per_s": b / t})
        rows.append({"what": "official JAX VQGAN decode", "batch": b, "seconds": td, "images_per_s": b / td})
    tf = maskgit_transformer.Transformer(vocab_size=2025, hidden_size=768, num_hidden_layers=24,
                                         num_attention_heads=16, intermediate_size=3072,
                                         max_position_embeddings=257)
    tparams = tf.init(key, jnp.zeros((1, 257), jnp.int32))
    fwd = jax.jit(lambda p, t: tf.apply(p, t, deterministic=True))
    for b in batches:
        toks = jax.random.randint(key, (b, 257), 0, 1024)
        t = best(lambda: fwd(tparams, toks))
        rows.append({"what": "official JAX transformer forward", "batch": b, "seconds": t,
                     "tokens_per_s": b * 257 / t, "ms_per_sequence": 1000 * t / b})
    for r in rows:
        r["precision"] = precision
    return rows


if __name__ == "__main__":
    main()
