"""Import torchvision beside the CPU build of torch, for the reference implementations the eval tests
compare with (pytorch-fid, torch-fidelity): both import it, neither needs its compiled ops."""
from __future__ import annotations

import importlib
import sys

import torch

__all__ = ["import_torchvision"]

_torchvision_ops: torch.library.Library | None = None  # kept alive: the schemas live as long as it


def import_torchvision() -> None:
    """Import torchvision, also where its compiled ops cannot load.

    PyPI's torchvision wheels are built against CUDA torch; beside the CPU build of torch their
    ``_C`` extension does not load, and ``import torchvision`` then fails in its fake-kernel
    registrations ('operator torchvision::nms does not exist'). pytorch-fid needs only torchvision's
    pure-Python Inception3 blocks, so declare the two operator schemas it registers against
    (without kernels) and import again. Where ``_C`` loads, the first import succeeds and this
    does nothing; where torchvision is absent, the callers' importorskip says so.
    """
    global _torchvision_ops
    try:
        importlib.import_module("torchvision")
        return
    except ImportError:
        return
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _torchvision_ops = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _torchvision_ops.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    importlib.import_module("torchvision")


