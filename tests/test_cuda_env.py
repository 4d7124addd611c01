"""TORCH_CUDA_ARCH_LIST with arch suffixes (9.0a) made the real deepspeed launch fail on an H100:
the sanitised value is what DeepSpeed 0.19's own op-builder parser accepts (checked on CPU)."""
from __future__ import annotations

import pytest

from pipeline.train.cuda_env import sanitize_cuda_arch_list, sanitize_environ


def _deepspeed_parses(arch_list: str) -> None:
    from deepspeed.ops.op_builder.builder import CUDAOpBuilder

    class Probe(CUDAOpBuilder):
        BUILD_VAR, NAME = "DS_BUILD_PROBE", "probe"

        def __init__(self):
            super().__init__(name=self.NAME)

        def absolute_name(self):
            return "probe"

        def sources(self):
            return []

    b = Probe()
    b.jit_mode, b._jit_arch_list = True, arch_list
    b.compute_capability_args()


@pytest.mark.parametrize("raw,clean", [("8.0;9.0a", "8.0;9.0"), ("9.0a 10.0f+PTX", "9.0;10.0+PTX"),
                                       ("8.6 8.6;9.0", "8.6;9.0"), ("7.5", "7.5")])
def test_suffixes_are_dropped_and_deepspeed_accepts_the_result(raw, clean):
    if any(c.isalpha() and c not in "PTX" for c in raw):
        with pytest.raises(ValueError, match="invalid literal for int"):
            _deepspeed_parses(raw)  # today's failure, reproduced
    assert sanitize_cuda_arch_list(raw) == clean
    _deepspeed_parses(clean)


def test_sanitize_environ_rewrites_only_the_arch_list():
    env = {"TORCH_CUDA_ARCH_LIST": "9.0a", "OTHER": "9.0a"}
    sanitize_environ(env)
    assert env == {"TORCH_CUDA_ARCH_LIST": "9.0", "OTHER": "9.0a"}
    empty: dict[str, str] = {}
    sanitize_environ(empty)
    assert empty == {}
