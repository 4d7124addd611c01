"""The VQGAN tokenizer of the official MaskGIT, in single-device PyTorch.

Images are (B, 3, H, W) float in [0, 1] (the official code feeds NHWC in [0, 1]);
token ids are (B, h, w) int64 with h = H / 16 for the official configs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import VQGANConfig
from .search import CodebookSearch, TorchSearch
from maskgit_core.errors import ConfigError

__all__ = ["ResBlock", "Encoder", "Decoder", "VectorQuantizer", "VQGAN", "VQOutput"]


class ResBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> conv3x3, plus a shortcut.

    Where channels change, ``official_shortcut=True`` reproduces the official quirk
    out = h + W h (W a 1x1 conv of the second conv's output h; the input is dropped);
    ``False`` gives the conventional out = h + W x.
    """

    def __init__(self, c_in: int, c_out: int, *, num_groups: int, eps: float, official_shortcut: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, c_out, eps=eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.official_shortcut = official_shortcut
        self.shortcut: nn.Conv2d | None = None
        if c_in != c_out:
            c_sc_in = c_out if official_shortcut else c_in
            self.shortcut = nn.Conv2d(c_sc_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.shortcut is None:
            return x + h
        return h + self.shortcut(h if self.official_shortcut else x)


def _level_channels(cfg: VQGANConfig) -> list[int]:
    return [cfg.filters * m for m in cfg.channel_multipliers]


class Encoder(nn.Module):
    """conv3x3 -> levels of ResBlocks with 2x average-pool between -> bottleneck blocks
    -> GN -> swish -> conv1x1 (with bias) to ``embedding_dim``."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        chans = _level_channels(cfg)
        blk = dict(num_groups=cfg.num_groups, eps=cfg.norm_eps, official_shortcut=cfg.official_shortcut)
        self.conv_in = nn.Conv2d(3, cfg.filters, 3, padding=1, bias=False)
        # Blocks in the official creation order (ResBlock_0, ResBlock_1, ...), so a
        # checkpoint maps by index; downsample_after[i] says a 2x pool follows block i.
        blocks, pool_after = [], []
        c = cfg.filters
        for level, c_level in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, c_level, **blk))
                pool_after.append(False)
                c = c_level
            if level < len(chans) - 1:
                pool_after[-1] = True
        for _ in range(cfg.num_res_blocks):
            blocks.append(ResBlock(c, c, **blk))
            pool_after.append(False)
        self.blocks = nn.ModuleList(blocks)
        self.pool_after = pool_after
        self.norm_out = nn.GroupNorm(cfg.num_groups, c, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(c, cfg.embedding_dim, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D, h, w)
        x = self.conv_in(x)
        for block, pool in zip(self.blocks, self.pool_after):
            x = block(x)
            if pool:
                x = F.avg_pool2d(x, 2, 2)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """conv3x3 (bias) -> bottleneck blocks -> levels in reverse, each followed (but the
    last) by nearest 2x upsampling and a conv3x3 with bias -> GN -> swish -> conv3x3 to RGB."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        chans = _level_channels(cfg)
        blk = dict(num_groups=cfg.num_groups, eps=cfg.norm_eps, official_shortcut=cfg.official_shortcut)
        c = chans[-1]
        self.conv_in = nn.Conv2d(cfg.embedding_dim, c, 3, padding=1, bias=True)
        blocks, up_after = [], []
        for _ in range(cfg.num_res_blocks):
            blocks.append(ResBlock(c, c, **blk))
            up_after.append(False)
        up_convs = []
        for level in reversed(range(len(chans))):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, chans[level], **blk))
                up_after.append(False)
                c = chans[level]
            if level > 0:
                up_after[-1] = True
                up_convs.append(nn.Conv2d(c, c, 3, padding=1, bias=True))
        self.blocks = nn.ModuleList(blocks)
        self.up_after = up_after
        self.up_convs = nn.ModuleList(up_convs)
        self.norm_out = nn.GroupNorm(cfg.num_groups, c, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1, bias=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, 3, H, W)
        x = self.conv_in(z)
        ups = iter(self.up_convs)
        for block, up in zip(self.blocks, self.up_after):
            x = block(x)
            if up:
                x = next(ups)(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(x)))


@dataclass
class VQOutput:
    """What a training forward pass returns."""

    recon: torch.Tensor  # (B, 3, H, W), unclipped
    ids: torch.Tensor  # (B, h, w) int64
    codebook_loss: torch.Tensor  # scalar, |sg(z) - e|^2
    commitment_loss: torch.Tensor  # scalar, |z - sg(e)|^2 (times commitment_cost)


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantizer; the search itself is a pluggable backend."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(cfg.codebook_size, cfg.embedding_dim))
        nn.init.uniform_(self.codebook, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        self.search: CodebookSearch = TorchSearch()

    def ids(self, z: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, h, w)
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        return self.search.search(flat, self.codebook.detach()).view(b, h, w)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, D, h, w)
        return F.embedding(ids, self.codebook).permute(0, 3, 1, 2)


class VQGAN(nn.Module):
    """Encoder + vector quantizer + decoder, with the official MaskGIT interfaces."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = VectorQuantizer(cfg)
        self.decoder = Decoder(cfg)

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) codebook entries."""
        return self.quantizer.codebook

    def set_search(self, search: CodebookSearch) -> None:
        """Swap the nearest-code backend (torch, FAISS, ...)."""
        self.quantizer.search = search

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        f = self.config.downsample_factor
        if images.shape[2] % f or images.shape[3] % f:
            raise ConfigError(f"image height and width must be multiples of {f}, got {tuple(images.shape[2:])}")

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D, h, w)
        self._check_images(images)
        if images.device.type == "cpu" and not torch.is_grad_enabled():
            # oneDNN's channels-last convolutions: the 32 px demo encoder went from 704 to 876 images/s
            # on one core of the 2-core box (batch 32); every inference caller takes this path, so the
            # ids the tokenize job writes stay those of ``encode``
            images = images.contiguous(memory_format=torch.channels_last)
        return self.encoder(images)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, h, w) latents -> (quantized (B, D, h, w), ids (B, h, w))."""
        ids = self.quantizer.ids(z)
        return self.quantizer.embed(ids), ids

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0,1] -> (B, h, w) int64
        return self.quantizer.ids(self.encode_latents(images))

    def decode(self, zq: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, 3, H, W), unclipped
        return self.decoder(zq)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, 3, H, W), unclipped
        k = self.config.codebook_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k):
            raise ConfigError(f"token ids must lie in [0, {k}), got [{int(ids.min())}, {int(ids.max())}]")
        return self.decoder(self.quantizer.embed(ids.long()))

    def forward(self, images: torch.Tensor) -> VQOutput:
        """Training pass: straight-through quantization, codebook and commitment losses."""
        z = self.encode_latents(images)
        ids = self.quantizer.ids(z)
        e = self.quantizer.embed(ids)
        codebook_loss = F.mse_loss(e, z.detach())
        commitment_loss = self.config.commitment_cost * F.mse_loss(z, e.detach())
        zq = z + (e - z).detach()  # straight-through estimator
        return VQOutput(self.decoder(zq), ids, codebook_loss, commitment_loss)
