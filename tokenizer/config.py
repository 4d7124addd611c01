"""Configuration of the VQGAN tokenizer, with named presets.

The architecture is the official MaskGIT tokenizer (google-research/maskgit,
``nets/vqgan_tokenizer.py``); see ``../shared/spec/official-maskgit.md`` §1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from maskgit_core.errors import ConfigError

__all__ = ["VQGANConfig", "PRESETS", "preset", "config_from_dict"]



@dataclass(kw_only=True, frozen=True)
class VQGANConfig:
    """A VQGAN (encoder, vector quantizer, decoder) as in the official MaskGIT."""

    image_size: int = 256
    """Side of the square RGB images the tokenizer is trained for (pixels)."""
    filters: int = 128
    """Channels of the first level; level i has ``filters * channel_multipliers[i]``."""
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
    """One entry per level; there are ``len - 1`` 2x downsamplings."""
    num_res_blocks: int = 2
    """Residual blocks per level (and in the bottleneck)."""
    embedding_dim: int = 256
    """Channels of the latent vectors and the codebook entries."""
    codebook_size: int = 1024
    """Number of codebook entries K; token ids are 0..K-1."""
    num_groups: int = 32
    """GroupNorm groups; every level's channel count must be divisible by it."""
    norm_eps: float = 1e-6
    """GroupNorm epsilon (official: 1e-6)."""
    official_shortcut: bool = True
    """Reproduce the official ResBlock quirk: where channels change, the shortcut is a 1x1
    conv of the block's *output* (out = h + W h) and the input is dropped. The released
    weights depend on it; new models may turn it off for a conventional x -> W x shortcut."""
    commitment_cost: float = 0.25
    """Training only: weight of the commitment loss."""

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        if not self.channel_multipliers or any(m <= 0 for m in self.channel_multipliers):
            raise ConfigError(f"channel_multipliers must be positive integers, got {self.channel_multipliers}")
        object.__setattr__(self, "channel_multipliers", tuple(int(m) for m in self.channel_multipliers))
        if self.image_size % self.downsample_factor:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by the downsampling factor "
                f"{self.downsample_factor} (2 ** (len(channel_multipliers) - 1))"
            )
        for m in self.channel_multipliers:
            if (self.filters * m) % self.num_groups:
                raise ConfigError(
                    f"filters * multiplier = {self.filters * m} is not divisible by num_groups={self.num_groups}"
                )
        if self.codebook_size < 2:
            raise ConfigError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.embedding_dim <= 0 or self.num_res_blocks <= 0:
            raise ConfigError("embedding_dim and num_res_blocks must be positive")

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent token along each side (16 for the official model)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent token grid (16 at 256 px, 32 at 512 px)."""
        return self.image_size // self.downsample_factor

    @property
    def token_dtype(self) -> str:
        """The smallest exact storage type for token ids ('uint16' up to 65,536 codes)."""
        return "uint16" if self.codebook_size <= 65536 else "uint32"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_multipliers"] = list(self.channel_multipliers)
        return d

    def replace(self, **changes: Any) -> "VQGANConfig":
        return dataclasses.replace(self, **changes)


def config_from_dict(d: dict[str, Any], *, source: str = "config") -> VQGANConfig:
    """Build a config from a dict (e.g. config.json); unknown keys are an error, missing keys take
    the defaults (which keep the old behaviour) and are logged."""
    from maskgit_core.checkpoint_io import dataclass_from_dict

    return dataclass_from_dict(VQGANConfig, d, source=source)


PRESETS: dict[str, VQGANConfig] = {
    "official256": VQGANConfig(image_size=256),
    "official512": VQGANConfig(image_size=512),
    # Small models of the same family, conventional shortcut (the quirk is for old weights).
    # demo: 32 px -> 8x8 grid of 256 codes (the `demo` transformer preset's). Narrow at full
    # resolution, wide at 8x8: on a CPU this reached 23.4 dB held-out PSNR where (32, (1, 2, 2))
    # reached 21.9 dB in the same CPU time (docs/BENCHMARKS.md, "Demo data and tokenizer trainer").
    "demo": VQGANConfig(
        image_size=32, filters=16, channel_multipliers=(1, 2, 4), num_res_blocks=1,
        embedding_dim=32, codebook_size=256, num_groups=8, official_shortcut=False,
    ),
    "debug": VQGANConfig(
        image_size=32, filters=16, channel_multipliers=(1, 2, 2), num_res_blocks=1,
        embedding_dim=8, codebook_size=64, num_groups=4, official_shortcut=False,
    ),
}


def preset(name: str) -> VQGANConfig:
    """Return the named preset; unknown names list the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown tokenizer preset {name!r}; choose one of {sorted(PRESETS)}") from None
