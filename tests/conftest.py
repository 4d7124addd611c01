from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASKGIT_SHARED", REPO.parent / "shared"))
OFFICIAL_TINY = SHARED / "fixtures" / "official-tiny"

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# The test models are tiny: one thread is as fast, and two threads stall badly whenever other
# processes (Ray workers, deepspeed ranks) share the 2 cores. Subprocesses set their own.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def official_tiny() -> Path:
    """The official-code reference fixture; tests skip (with the reason) where it is absent."""
    if not (OFFICIAL_TINY / "reference.npz").is_file():
        pytest.skip(f"official fixtures not found at {OFFICIAL_TINY} (set MASKGIT_SHARED to the shared/ folder)")
    return OFFICIAL_TINY


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
