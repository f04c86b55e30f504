"""Images and videos handed to the InfinityStar pipeline (image-to-video, video continuation), checked and
brought to what the official ``transform`` makes of them.

A video is a file path (read with imageio-ffmpeg, ``utils.read_video``), a list of frames (PIL images,
``(H, W, 3)`` arrays, ``(3, H, W)`` tensors in [0, 1]), an ``(F, H, W, 3)`` array or an ``(F, 3, H, W)``
tensor in [0, 1]. Continuation keeps what the official 480p script keeps: the input's first 5 s resampled
to 81 frames (``get_clip(0, 5, 81)``), each resized to cover the video and centre-cropped.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..models.infinity_star.conditioning import clip_frame_indices, cover_crop
from ..utils import read_video

VIDEO_FORMS = ("a file path, a list of frames (PIL images, (H, W, 3) arrays, (3, H, W) tensors in [0, 1]), an "
               "(F, H, W, 3) array or an (F, 3, H, W) tensor in [0, 1]")


def is_image(value: Any) -> bool:
    """A PIL image, an ``(H, W, C)`` array or a ``(C, H, W)`` tensor (C = 1, 3 or 4)."""
    if isinstance(value, PIL.Image.Image):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 3 and value.shape[-1] in (1, 3, 4)
    if isinstance(value, torch.Tensor):
        return value.dim() == 3 and value.shape[0] in (1, 3)
    return False


def to_pil(value: Any) -> PIL.Image.Image:
    """An image of :func:`is_image`'s forms as an RGB PIL image (floats in [0, 1] rounded to uint8)."""
    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().permute(1, 2, 0).numpy()
    arr = np.asarray(value)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return PIL.Image.fromarray(arr[..., :3])


def is_video(value: Any) -> bool:
    """One video in any of :data:`VIDEO_FORMS` (a list: non-empty, every entry an image)."""
    if isinstance(value, (str, os.PathLike)):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 4 and value.shape[-1] in (1, 3, 4)
    if isinstance(value, torch.Tensor):
        return value.dim() == 4 and value.shape[1] in (1, 3)
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_image(f) for f in value)


def videos_of(video: Any, batch: int) -> list[Any]:
    """``video`` as a list of videos: one for all ``batch`` prompts, or a list of one per prompt."""
    if is_video(video):
        return [video]
    if isinstance(video, (list, tuple)) and len(video) in (1, batch) and all(is_video(v) for v in video):
        return list(video)
    raise TypeError(f"`video` must be one video ({VIDEO_FORMS}) or a list of one per prompt ({batch}), got "
                    f"{_describe(video)}")


def check_video_fps(video_fps: Any) -> None:
    if video_fps is not None and (isinstance(video_fps, bool) or not isinstance(video_fps, numbers.Real)
                                  or not math.isfinite(video_fps) or video_fps <= 0):
        raise ValueError(f"`video_fps` must be a positive number (frames per second of `video`), got {video_fps!r}")


def condition_frames(video: Any, fps: float | None, default_fps: float, seconds: float, count: int, height: int,
                     width: int) -> torch.Tensor:
    """The first ``seconds`` of one video as the official continuation reads them: ``count`` frames picked by
    :func:`~vpg_pipelines.models.infinity_star.conditioning.clip_frame_indices`, each covered and
    centre-cropped to ``height x width``. Returns ``(count, height, width, 3)`` uint8.

    ``fps``: the frame rate of ``video`` (``None``: a file's own, else ``default_fps``). Raises ``ValueError``
    naming ``video`` when it is shorter than ``seconds`` or cannot be read.
    """
    needed: list[int] = []

    def pick(rate: float) -> np.ndarray:
        # a video at least `seconds` long has ceil(rate * seconds) frames to choose from: pick from those
        needed.append(math.ceil(rate * seconds))
        return clip_frame_indices(needed[0], rate, seconds, count)

    if isinstance(video, (str, os.PathLike)):
        try:
            frames, rate, decoded = read_video(video, pick if fps is None else (lambda _rate: pick(fps)))
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"`video` {os.fspath(video)!r} cannot be read as a video: {err}") from None
        rate = float(fps) if fps is not None else rate
    else:
        listed = _frame_list(video)
        rate = float(fps) if fps is not None else float(default_fps)
        indices = pick(rate)
        decoded = min(len(listed), needed[0])
        frames = [listed[i] for i in indices if i < decoded]
    if decoded < needed[0]:
        raise ValueError(f"`video` is {decoded / rate:.2f} s long ({decoded} frames at {rate:g} fps); continuation "
                         f"needs at least {seconds:g} s (its first {seconds:g} s are the condition)")
    cropped: dict[int, np.ndarray] = {}
    out = []
    for frame in frames:
        key = id(frame)  # a frame picked twice is cropped once
        if key not in cropped:
            cropped[key] = cover_crop(to_pil(frame), height, width)
        out.append(cropped[key])
    return torch.from_numpy(np.stack(out))


def _frame_list(video: Any) -> Sequence[Any]:
    """The frames of an in-memory video, each in a form :func:`to_pil` takes."""
    if isinstance(video, np.ndarray):
        return list(video)
    if isinstance(video, torch.Tensor):
        return list(video.detach().cpu())
    return list(video)


def _describe(value: Any) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a {type(value).__name__} of {len(value)} ({', '.join(kinds) or 'nothing'})"
    return type(value).__name__
