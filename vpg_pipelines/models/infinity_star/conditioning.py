"""Image-to-video and video continuation: the conditioning as forced codes of the first clips (official).

The official scripts encode the reference image (``tools/infer_video_*.py``) or the first 5 s of a video
(``tools/infer_video_480p.py``, continuation) with the video VAE, quantize the latent scale by scale with
the sampler's own schedule and repetitions (``video_encode`` in inference mode), and force those bits for
every step of the clips they cover (``gt_leak``: the image clip's scales, or the image clip's and the first
video clip's).
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch

from .schedules import FRAMES_PER_CLIP, StepPlan
from .video_vae import InfinityStarVideoVAE

CONDITION_SECONDS = 5
"""Continuation: the input's first 5 s are the condition (``get_clip(0, 5, 81)``, ``infer_video_480p.py:95``)."""
CONTINUATION_SECONDS = 10
"""Continuation makes 10 s videos only (``infer_video_480p.py:89-90``)."""


def cover_crop(image: PIL.Image.Image, height: int, width: int) -> np.ndarray:
    """The official ``transform`` up to its float conversion: resize to cover ``height x width`` (Lanczos,
    the new side truncated), crop the centre. Returns ``(height, width, 3)`` uint8 RGB."""
    image = image.convert("RGB")
    w, h = image.size
    if w / h <= width / height:
        size = (width, int(width / (w / h)))
    else:
        size = (int((w / h) * height), height)
    arr = np.asarray(image.resize(size, resample=PIL.Image.LANCZOS))
    top, left = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
    return arr[top : top + height, left : left + width].copy()


def center_crop_resize(image: PIL.Image.Image, height: int, width: int) -> torch.Tensor:
    """The official ``transform``: :func:`cover_crop`, then map to [-1, 1]. Returns ``(3, height, width)`` float32."""
    return to_pixels(torch.from_numpy(cover_crop(image, height, width)))


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1] (``to_tensor`` then ``2 x - 1``)."""
    return frames.movedim(-1, -3).float().div(255).mul(2).sub(1)


def clip_frame_indices(length: int, fps: float, seconds: float, count: int) -> np.ndarray:
    """The frames the official reader picks for the first ``seconds`` of a ``length``-frame video at ``fps``
    (``EncodedVideoDecord.get_clip(0, seconds, count)``): ``count`` indices spread evenly (floored) over the
    frames up to ``ceil(fps * seconds)``; a short or low-rate video repeats frames."""
    end = min(math.ceil(fps * seconds), length)
    return np.floor(np.linspace(0, end - 1, count)).astype(np.int64)


def condition_clips(condition_frames: int) -> int:
    """Clips a condition of ``condition_frames`` video frames fills: the image clip and its whole video clips
    (81 frames: 21 latent frames = 1 + 20, two clips; ``gt_leak`` = their scales)."""
    latent = (condition_frames - 1) // 4 + 1
    if (latent - 1) % FRAMES_PER_CLIP:
        raise ValueError(f"a condition of {condition_frames} frames does not fill whole clips")
    return 1 + (latent - 1) // FRAMES_PER_CLIP


def prefix_clip_bits(vae: InfinityStarVideoVAE, latent: torch.Tensor, plan: StepPlan,
                     num_clips: int = 1) -> list[torch.Tensor]:
    """Bits of every step of the first ``num_clips`` clips that rebuild ``latent`` by residual quantization.

    Args:
        latent: ``(B, 64, T, H, W)`` continuous latent on the final grid, at least the frames of those clips
            (the image clip: frame 0; video clip ``c``: its 20 frames).
        plan: the call's steps; one entry is returned per step of those clips (all repetitions), in order.

    Per clip, each step quantizes (sign of each channel) the area-downsampled residual between the clip's
    frames of ``latent`` and the codes accumulated so far, with the step's codebook, and adds its lifted
    codes, exactly as the sampler accumulates sampled codes; every clip starts from zero.
    """
    frames = sum(plan.clip_grid(c)[0] for c in range(num_clips))
    _, height, width = plan.clip_grid(0)
    if latent.dim() != 5 or latent.shape[2] < frames or tuple(latent.shape[3:]) != (height, width):
        raise ValueError(f"the condition latent must be (B, {vae.codebook_dim}, >= {frames}, {height}, {width}), "
                         f"got {tuple(latent.shape)}")
    out = []
    for clip in range(num_clips):
        start = plan.packs[plan.scales_per_clip * clip].frame_start
        target = latent[:, :, start : start + plan.clip_grid(clip)[0]].float()
        summed = torch.zeros_like(target)
        for step in (s for s in plan.steps if s.clip == clip):
            semantic = not step.detail_codebook
            book = vae.quantizer.lfq_semantic if semantic else vae.quantizer.lfq_detail
            residual = vae.quantizer.resize(target - summed, book.bits, step.grid, vae.quantizer.downsample_mode)
            _, bits = book.quantize(residual)
            out.append(bits)
            summed = summed + vae.codes_from_bits(bits, step.target, semantic=semantic).to(summed)
    return out


def image_clip_bits(vae: InfinityStarVideoVAE, latent: torch.Tensor, plan: StepPlan) -> list[torch.Tensor]:
    """Bits of every image-clip step that rebuild the first frame's ``latent`` ``(B, 64, 1, H, W)``
    (:func:`prefix_clip_bits` of the image clip)."""
    grid = plan.clip_grid(0)
    if latent.dim() != 5 or tuple(latent.shape[2:]) != tuple(grid):
        raise ValueError(f"the image latent must be (B, {vae.codebook_dim}, *{tuple(grid)}), got {tuple(latent.shape)}")
    return prefix_clip_bits(vae, latent, plan, 1)
