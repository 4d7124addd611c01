"""Every size and knob of one demo run, in one frozen dataclass with the two shipped presets.

``DemoSettings.full()`` is ``maskgit-pipeline demo`` (<= 15 min on 2 idle cores) and
``DemoSettings.quick()`` is ``demo --quick`` (what ``tests/test_demo.py`` runs). Any field can be
changed with ``dataclasses.replace``; the stages read these values and derive nothing from the
preset's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from maskgit_core.errors import ConfigError
from tokenizer.train import TrainConfig, train_preset

from pipeline.demo.data import DemoDataConfig

__all__ = ["DemoSettings"]

_POSITIVE_INTS = ("grid_per_class", "ray_cpus", "tokenize_unit_size", "tokenize_batch_size", "train_steps",
                  "sample_per_class", "eval_per_class", "ablation_per_class", "proxy_epochs", "proxy_width",
                  "proxy_feature_dim", "cas_epochs", "timing_images", "threads")


def _full_tokenizer_train() -> TrainConfig:
    return replace(train_preset("demo"), max_seconds=240.0, threads=1)


@dataclass(kw_only=True, frozen=True)
class DemoSettings:
    """Sizes of one demo run; the defaults are the full demo (``DemoSettings.full()``)."""

    name: str = "full"
    """Label of the run in the report title (the preset's name, ``full`` or ``quick``); changes nothing else."""
    seed: int = 0
    """Seed of everything downstream of the dataset (the dataset has ``data.seed``, the tokenizer
    ``tokenizer_train.seed``)."""

    # 1. dataset
    data: DemoDataConfig = field(default_factory=lambda: DemoDataConfig(with_bad_files=True))
    """The built-in dataset (the bad files show the tokenize job's error report)."""
    grid_per_class: int = 8
    """Held-out images per class (one row per class) in the dataset figure."""

    # 2-3. tokenizer
    tokenizer_preset: str = "demo"
    """Tokenizer architecture preset (32 px, 8x8 grid, 256 codes: the ``demo`` transformer preset's)."""
    tokenizer_train: TrainConfig = field(default_factory=_full_tokenizer_train)
    """Tokenizer training recipe."""

    # 4. tokenize
    ray_cpus: int = 2
    """CPUs of the local Ray that runs the tokenize job (one Ray for both splits)."""
    tokenize_unit_size: int = 512
    """Images per work unit of the tokenize job."""
    tokenize_batch_size: int = 128
    """Images per encoder batch of the tokenize job."""

    # 6-7. training
    transformer_preset: str = "demo"
    """Transformer preset for MVTM and the AR baseline."""
    train_steps: int = 1000
    """Optimizer steps of MVTM and of the AR baseline (the same for both)."""
    train_lr: float = 1e-3
    """Peak learning rate (the shipped CPU DeepSpeed config's 3e-3 left MVTM stuck at the unigram loss in a
    1000-step run on the full demo tokens; 1e-3 learns)."""

    # 8-9. sample, edit
    sample_per_class: int = 8
    """Samples per class (one row per class) in the sample figures."""
    edit_classes: tuple[int, ...] = (0, 2, 9, 13)
    """Classes whose first held-out image is inpainted, replaced and outpainted (classes beyond
    ``data.num_classes`` are left out)."""

    # 10. evaluate
    eval_per_class: int = 25
    """Generated images per class and model for FID-proxy / CAS (MaskGIT T=8 and AR)."""
    ablation_steps: tuple[int, ...] = (2, 4, 8, 12)
    """Numbers of decoding steps T of the schedule ablation (increasing)."""
    ablation_per_class: int = 8
    """Generated images per class for each (schedule, T) point of the ablation."""
    proxy_epochs: int = 8
    """Epochs of the proxy feature network on the real train images."""
    proxy_width: int = 16
    """Channels of the proxy network's first stage (16: 4x cheaper than 32 for ~0.8 held-out accuracy)."""
    proxy_feature_dim: int = 64
    """Feature size of the proxy network (FID-proxy dimension; small, as the sample counts are small)."""
    cas_epochs: int = 8
    """Epochs of the paper-style CAS classifier (trained on generated, tested on real)."""
    timing_images: int = 16
    """Images per model for the batch-1 decode latency."""
    threads: int = 1
    """Torch threads in the demo process for sampling/evaluation (1: see BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        where = "DemoSettings"
        if not self.name:
            raise ConfigError(f"{where}.name must be a non-empty label for the report title, got {self.name!r}")
        bad = {k: getattr(self, k) for k in _POSITIVE_INTS if getattr(self, k) < 1}
        if bad:
            raise ConfigError(f"{where}: {', '.join(f'{k}={v}' for k, v in bad.items())} must be >= 1; "
                              "pass positive sizes")
        if self.seed < 0 or self.train_lr <= 0:
            raise ConfigError(f"{where}: need seed >= 0 and train_lr > 0, got seed={self.seed}, "
                              f"train_lr={self.train_lr}")
        steps = tuple(self.ablation_steps)
        if not steps or steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"{where}.ablation_steps must be increasing numbers of decoding steps >= 1, "
                              f"got {self.ablation_steps}")
        nc = self.data.num_classes
        if any(c < 0 for c in self.edit_classes) or not any(c < nc for c in self.edit_classes):
            raise ConfigError(f"{where}.edit_classes must be class indices >= 0, at least one of them in [0, {nc}) "
                              f"(data.num_classes = {nc}), got {self.edit_classes}")
        self._check_presets()

    def _check_presets(self) -> None:
        import tokenizer
        import transformer

        for what, lookup, value in (("tokenizer_preset", tokenizer.preset, self.tokenizer_preset),
                                    ("transformer_preset", transformer.preset, self.transformer_preset)):
            try:
                lookup(value)
            except ConfigError as e:
                raise ConfigError(f"DemoSettings.{what}: {e}") from None

    @classmethod
    def full(cls) -> DemoSettings:
        """``maskgit-pipeline demo``: 200 + 25 images per class, the ``demo`` tokenizer recipe (<= 240 s),
        1000 training steps, the evaluation at 25 images per class."""
        return cls()

    @classmethod
    def quick(cls) -> DemoSettings:
        """``maskgit-pipeline demo --quick``: tokenizer stages < 60 s on 2 idle cores, 200 training steps."""
        return cls(
            name="quick",
            data=DemoDataConfig(train_per_class=100, val_per_class=16, with_bad_files=True),
            # 300 steps of 16 beat 150 of 32 in about the same CPU time (20.5 vs 16.1 dB, BENCHMARKS.md).
            tokenizer_train=TrainConfig(steps=300, batch_size=16, warmup_steps=10, max_seconds=45.0,
                                        val_images=256, threads=1),
            train_steps=200, eval_per_class=8, ablation_steps=(2, 4, 8), ablation_per_class=3,
            proxy_epochs=6, cas_epochs=6, timing_images=8,
        )
