"""Generation: sampling to images, editing, image I/O, and large sample sets (sharded, Ray).

API for other parts of the project (docs/GENERATE.md):
  sample_images(model, vq, labels, steps=8, schedule="cosine", seed=0, ...) -> (B, 3, H, W) in [0, 1]
  ar_sample_images(model, vq, labels, seed=0, ...)                         -> (B, 3, H, W) in [0, 1]
  edit_replace / edit_inpaint / edit_outpaint(model, vq, image, ...)        -> EditResult
"""
from pipeline.generate.editing import EditResult, edit_inpaint, edit_outpaint, edit_replace
from pipeline.generate.imageio import fit_image, load_image, load_mask, make_grid, save_png, to_uint8
from pipeline.generate.sampling import (ar_sample_images, decode_tokens, load_pair, sample_images,
                                        step_progression)

__all__ = ["load_pair", "sample_images", "ar_sample_images", "decode_tokens", "to_uint8", "make_grid",
           "save_png", "step_progression", "fit_image", "load_image", "load_mask", "EditResult",
           "edit_replace", "edit_inpaint", "edit_outpaint"]
