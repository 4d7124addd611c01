"""Convert official MaskGIT Flax checkpoints to this project's safetensors + config.json (and back)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import tokenizer as tok
import transformer as tfm
from maskgit_core.checkpoint_io import file_sha256
from maskgit_core.flax_msgpack import write_flax_msgpack
from tokenizer.official import load_official_tokenizer, state_dict_to_official as tokenizer_tree
from transformer.official import load_official_transformer, state_dict_to_official as transformer_tree
from maskgit_core.errors import ConfigError

__all__ = ["convert_official", "export_official"]

log = logging.getLogger(__name__)


def convert_official(*, out: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
                     transformer_path: str | os.PathLike | None = None, image_size: int | None = None,
                     num_classes: int = 1000, num_groups: int = 32, provenance: bool = True) -> dict[str, Path]:
    """Read the official msgpack files and write ``OUT/tokenizer/`` and/or ``OUT/transformer/``.

    The tokenizer's image size is not stored in its file: it is taken from the transformer's
    latent grid (16 -> 256 px, 32 -> 512 px) when both are given, else ``image_size`` (default 256).
    Each config.json records its source file's sha256, and its path unless ``provenance`` is false.
    """
    if tokenizer_path is None and transformer_path is None:
        raise ConfigError("give --tokenizer and/or --transformer")
    out = Path(out)
    written: dict[str, Path] = {}
    vq = None
    if tokenizer_path is not None:
        vq = load_official_tokenizer(tokenizer_path, image_size=image_size or 256, num_groups=num_groups)
    if transformer_path is not None:
        model = load_official_transformer(transformer_path, num_classes=num_classes,
                                          codebook_size=None if vq is None else vq.config.codebook_size)
        if vq is not None:
            size = model.config.latent_size * vq.config.downsample_factor
            if image_size is not None and image_size != size:
                raise ConfigError(f"--image-size {image_size} contradicts the transformer's "
                                  f"{model.config.latent_size}x{model.config.latent_size} grid ({size} px)")
            if vq.config.image_size != size:
                vq = load_official_tokenizer(tokenizer_path, image_size=size, num_groups=num_groups)
            tfm.check_pair(model.config, vq.config.codebook_size, vq.config.latent_size, source=str(transformer_path))
        written["transformer"] = tfm.save(model, out / "transformer",
                                          extra={"source": _source(transformer_path, provenance)})
    if vq is not None:
        written["tokenizer"] = tok.save(vq, out / "tokenizer", extra={"source": _source(tokenizer_path, provenance)})
    for k, v in written.items():
        log.info("wrote %s to %s", k, v)
    return written


def _source(path: str | os.PathLike, provenance: bool) -> dict[str, str]:
    src = {"sha256": file_sha256(path), "format": "official-flax-msgpack"}
    return {"file": os.fspath(path), **src} if provenance else src


def export_official(*, checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict[str, Path]:
    """Write a project checkpoint directory back as official-layout msgpack files
    (``tokenizer_checkpoint``, ``maskgit_checkpoint``), e.g. to run it in the official JAX code."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, load, flax_tree, name in (("tokenizer", tok.load, tokenizer_tree, "tokenizer_checkpoint"),
                                        ("transformer", tfm.load, transformer_tree, "maskgit_checkpoint")):
        try:
            model = load(checkpoint)
        except tok.CheckpointError:
            continue  # the directory holds the other kind of model
        write_flax_msgpack(flax_tree(model), out / name)
        written[kind] = out / name
    if not written:
        raise tok.CheckpointError(f"{checkpoint}: neither a tokenizer nor a transformer checkpoint directory")
    return written
