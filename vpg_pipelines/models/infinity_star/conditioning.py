"""Image-to-video conditioning: the first frame as forced codes of the image clip (official i2v).

The official scripts encode the reference image with the video VAE, quantize it scale by scale with
the sampler's own schedule and repetitions (``video_encode`` in inference mode), and force those
bits for every step of the image clip (``gt_leak`` = the image clip's scales).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from .schedules import StepPlan
from .video_vae import InfinityStarVideoVAE


def center_crop_resize(image: PIL.Image.Image, height: int, width: int) -> torch.Tensor:
    """The official ``transform``: cover ``height x width`` (Lanczos), crop the centre, map to [-1, 1].

    Returns ``(3, height, width)`` float32.
    """
    image = image.convert("RGB")
    w, h = image.size
    if w / h <= width / height:
        size = (width, int(width / (w / h)))
    else:
        size = (int((w / h) * height), height)
    arr = np.asarray(image.resize(size, resample=PIL.Image.LANCZOS))
    top, left = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
    crop = torch.from_numpy(arr[top : top + height, left : left + width].copy()).permute(2, 0, 1)
    return crop.float().div(255).mul(2).sub(1)


def image_clip_bits(vae: InfinityStarVideoVAE, latent: torch.Tensor, plan: StepPlan) -> list[torch.Tensor]:
    """Bits of every image-clip step that rebuild ``latent`` by residual quantization.

    Args:
        latent: ``(B, 64, 1, H, W)`` continuous latent of the first frame on the image clip's grid.
        plan: the call's steps; one entry is returned per step of clip 0 (all repetitions).

    Each step quantizes (sign of each channel) the area-downsampled residual between ``latent`` and
    the codes accumulated so far, with the step's codebook, and adds its lifted codes, exactly as the
    sampler accumulates sampled codes.
    """
    grid = plan.clip_grid(0)
    if latent.dim() != 5 or tuple(latent.shape[2:]) != tuple(grid):
        raise ValueError(f"the image latent must be (B, {vae.codebook_dim}, *{tuple(grid)}), got {tuple(latent.shape)}")
    target = latent.float()
    summed = torch.zeros_like(target)
    out = []
    for step in (s for s in plan.steps if s.clip == 0):
        semantic = not step.detail_codebook
        book = vae.quantizer.lfq_semantic if semantic else vae.quantizer.lfq_detail
        residual = vae.quantizer.resize(target - summed, book.bits, step.grid, vae.quantizer.downsample_mode)
        _, bits = book.quantize(residual)
        out.append(bits)
        summed = summed + vae.codes_from_bits(bits, step.target, semantic=semantic).to(summed)
    return out
