"""The bidirectional MVTM transformer of the official MaskGIT (and a causal variant).

Post-LN BERT layers, LayerNorm eps 1e-12, tanh-GELU, learned positions with an embedding
LayerNorm, and an MLM head tied to the word embeddings plus a bias (spec §2).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TransformerConfig
from maskgit_core.errors import ConfigError

__all__ = ["MaskGITTransformer", "Attention", "TransformerLayer"]


class Attention(nn.Module):
    """Multi-head self-attention with q/k/v/out biases, through SDPA (fused kernels where present)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_dropout = cfg.attention_dropout
        self.causal = cfg.causal

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, Dh)
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv_cache: "KVCache | None" = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, H, L_total, Dh)
        causal = self.causal and (kv_cache is None or n > 1)
        if causal and k.shape[2] != n:
            raise ConfigError("a causal prefix longer than one token must be fed before the cache holds anything")
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attention_dropout if self.training else 0.0,
                                           is_causal=causal)  # (B, H, L, Dh)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class KVCache:
    """Keys/values of one layer for incremental causal decoding (the AR baseline)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class TransformerLayer(nn.Module):
    """Post-LN: a = LN(x + Drop(Attn(x))); y = LN(a + Drop(W2 gelu(W1 a)))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.attention_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:  # (B, L, D)
        a = self.attention_ln(x + self.dropout(self.attention(x, kv_cache)))
        h = self.output(F.gelu(self.intermediate(a), approximate="tanh"))
        return self.output_ln(a + self.dropout(h))


class MaskGITTransformer(nn.Module):
    """tokens (B, L) int64 -> logits (B, L, vocab_size) over all 2025 (official) rows.

    Sampling uses ``logits[..., :codebook_size]``. With ``causal=True`` it is the
    autoregressive baseline (position i predicts token i+1). ``gradient_checkpointing = True``
    (a training setting, not part of the config or the weights) recomputes each layer's activations in
    the backward pass instead of keeping them: less memory for larger models or micro-batches, ~1/3
    more compute; the gradients are the same.
    """

    gradient_checkpointing: bool = False

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.seq_len, cfg.hidden_size)
        self.embeddings_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.mlm_dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.mlm_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.mlm_bias)

    def forward(self, tokens: torch.Tensor, *, kv_caches: list[KVCache] | None = None,
                start_pos: int = 0) -> torch.Tensor:
        b, n = tokens.shape
        if start_pos + n > self.config.seq_len:
            raise ConfigError(f"sequence of length {start_pos + n} exceeds the model's {self.config.seq_len}")
        pos = torch.arange(start_pos, start_pos + n, device=tokens.device)
        x = self.word_embeddings(tokens) + self.position_embeddings(pos)[None]  # (B, L, D)
        x = self.dropout(self.embeddings_ln(x))
        recompute = self.gradient_checkpointing and self.training and kv_caches is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute:  # keep only each layer's input; its activations are recomputed in backward
                x = checkpoint(layer, x, use_reentrant=False)  # same dropout masks (RNG state preserved)
            else:
                x = layer(x, None if kv_caches is None else kv_caches[i])
        h = self.mlm_ln(F.gelu(self.mlm_dense(x), approximate="tanh"))  # (B, L, D)
        return h @ self.word_embeddings.weight.t() + self.mlm_bias  # (B, L, V)

    def new_kv_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Approximate training FLOPs per token (6N + attention), for MFU."""
        cfg = self.config
        n = self.num_params() - self.position_embeddings.weight.numel()
        attn = 12 * cfg.num_layers * cfg.hidden_size * cfg.seq_len
        return 6.0 * n + attn
