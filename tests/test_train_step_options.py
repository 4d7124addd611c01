"""The trainer's step-efficiency options on CPU: the GPU DeepSpeed configs use torch's fused AdamW
(`torch_adam` + `fused`: no DeepSpeed op is JIT-built on the GPU node), `compile=true` compiles the
model through DeepSpeed's `engine.compile()`, and `activation_checkpointing=true` recomputes layer
activations; both give the eager run's losses. Gradient checkpointing keeps dropout masks and gradients."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transformer
from pipeline.train.launcher import free_port

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import json, os, sys
import torch, torch.nn.functional as F
import deepspeed
from pipeline.train.config import TrainConfig
from pipeline.train.loop import _build_engine
from pipeline.train.shm import release_shm_workspace

deepspeed.init_distributed(dist_backend="gloo")
release_shm_workspace(0)
ds = json.load(open("jobs/ds_config.json"))
ds.pop("bf16")
ds.update(train_micro_batch_size_per_gpu=4, zero_optimization={"stage": 0})
g = torch.Generator().manual_seed(1)
batches = [(torch.randint(0, 64, (4, 17), generator=g), torch.randint(0, 64, (4, 17), generator=g))] * 3
out = {}
for name, kw in (("eager", {}), ("compiled", {"compile": True, "activation_checkpointing": True})):
    cfg = TrainConfig(data="unused", out="unused", model="debug", seed=0, warmup_steps=0, lr_schedule="constant",
                      model_overrides={"dropout": 0.0, "attention_dropout": 0.0}, **kw)
    run = _build_engine(cfg, ds, world=1)
    opt = run.engine.optimizer
    out[name] = {"optimizer": type(opt).__module__ + "." + type(opt).__name__, "fused": opt.defaults.get("fused"),
                 "compiled": bool(run.engine.is_compiled), "ckpt": run.engine.module.gradient_checkpointing,
                 "losses": []}
    for x, y in batches:
        logits = run.engine(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        run.engine.backward(loss)
        run.engine.step()
        out[name]["losses"].append(loss.item())
print("RESULT " + json.dumps(out))
"""


@pytest.mark.integration
def test_fused_adamw_compile_and_checkpointing_give_the_eager_losses(tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    for name in ("eager", "compiled"):
        assert out[name]["optimizer"] == "torch.optim.adamw.AdamW" and out[name]["fused"] is True
    assert out["compiled"]["compiled"] and out["compiled"]["ckpt"] and not out["eager"]["compiled"]
    assert out["compiled"]["losses"] == pytest.approx(out["eager"]["losses"], rel=1e-4)
    assert out["eager"]["losses"][-1] < out["eager"]["losses"][0]  # it trains (the same batch three times)


def test_gradient_checkpointing_same_gradients_with_dropout():
    torch.manual_seed(0)
    model = transformer.build("debug").train()
    tokens = torch.randint(0, 64, (3, model.config.seq_len))
    grads = []
    for ckpt in (False, True):
        model.gradient_checkpointing = ckpt
        model.zero_grad()
        torch.manual_seed(7)  # the same dropout masks in both runs
        model(tokens).float().square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7, msg=n)
    model.eval()
    with torch.no_grad():  # eval and inference never recompute
        model.gradient_checkpointing = True
        assert model(tokens).shape[:2] == tokens.shape
