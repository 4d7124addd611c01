"""Configuration of the MVTM bidirectional transformer, with named presets.

Token-id layout (as the official model): image tokens 0..K-1, class token K + label,
mask token = the last id (K + num_classes). Sequence = [class, h*w image tokens].
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from maskgit_core.checks import check_labels
from maskgit_core.errors import ConfigError

__all__ = ["TransformerConfig", "PRESETS", "preset", "config_from_dict"]



@dataclass(kw_only=True, frozen=True)
class TransformerConfig:
    """A BERT-style post-LN transformer over [class, image tokens], as the official MaskGIT."""

    codebook_size: int = 1024
    """K, the tokenizer's number of codes; image token ids are 0..K-1."""
    num_classes: int = 1000
    """Number of class labels; class tokens are K..K+num_classes-1."""
    latent_size: int = 16
    """Side of the latent grid (16 at 256 px); the sequence has latent_size**2 + 1 tokens."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_layers: int = 24
    """Number of transformer layers."""
    num_heads: int = 16
    """Attention heads; hidden_size must be divisible by it."""
    intermediate_size: int = 3072
    """Width of the MLP's hidden layer."""
    dropout: float = 0.1
    """Dropout on embeddings, attention output and MLP output (training only)."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities (training only)."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon everywhere (official: 1e-12)."""
    causal: bool = False
    """True for the autoregressive baseline: causal attention, next-token prediction."""
    initializer_range: float = 0.02
    """Std of the truncated-normal (+-2 sigma) initialisation; biases start at zero."""

    def __post_init__(self) -> None:
        for name in ("codebook_size", "num_classes", "latent_size", "hidden_size", "num_layers",
                     "num_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0):
            raise ConfigError("dropout rates must lie in [0, 1)")

    @property
    def vocab_size(self) -> int:
        """K + num_classes + 1 (2025 for the official model)."""
        return self.codebook_size + self.num_classes + 1

    @property
    def mask_token_id(self) -> int:
        """The last row of the embedding (the official -1 wraps there)."""
        return self.vocab_size - 1

    @property
    def num_image_tokens(self) -> int:
        return self.latent_size * self.latent_size

    @property
    def seq_len(self) -> int:
        """1 class token + latent_size**2 image tokens (257 at 256 px)."""
        return self.num_image_tokens + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def class_token(self, label: int) -> int:
        check_labels(label, self.num_classes, what="class label")
        return self.codebook_size + label

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)


def config_from_dict(d: dict[str, Any], *, source: str = "config") -> TransformerConfig:
    """Build a config from a dict (e.g. config.json); unknown keys are an error, missing keys take
    the defaults (which keep the old behaviour) and are logged."""
    from maskgit_core.checkpoint_io import dataclass_from_dict

    return dataclass_from_dict(TransformerConfig, d, source=source)


PRESETS: dict[str, TransformerConfig] = {
    "official256": TransformerConfig(latent_size=16),
    "official512": TransformerConfig(latent_size=32),
    "base": TransformerConfig(hidden_size=512, num_layers=12, num_heads=8, intermediate_size=2048),
    "small": TransformerConfig(hidden_size=256, num_layers=6, num_heads=4, intermediate_size=1024),
    # The demo's grid is 8x8 (32 px images through a 4x tokenizer) with 256 codes.
    "demo": TransformerConfig(codebook_size=256, num_classes=16, latent_size=8, hidden_size=192,
                              num_layers=4, num_heads=4, intermediate_size=768),
    "debug": TransformerConfig(codebook_size=64, num_classes=10, latent_size=4, hidden_size=32,
                               num_layers=2, num_heads=2, intermediate_size=64),
}


def preset(name: str) -> TransformerConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown transformer preset {name!r}; choose one of {sorted(PRESETS)}") from None
