"""A reference video for InfinityStar-Interact: frames from a file or from memory, and the official choice of
the 81 frames that are encoded.

The official script reads its reference with OpenCV (``EncodedVideoOpencv.get_clip(duration - 5, duration,
81)``): ``duration = frame_count / fps``, ``start = ceil(fps * (duration - 5))``, ``end = min(ceil(fps *
duration), frame_count)``, the frames ``linspace(start, end - 1, 81)`` truncated to integers (so a frame can
repeat). A video of fewer than ``5 * fps`` frames fails there. :func:`last_seconds` is that rule.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

VIDEO_FILE_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")


@dataclass(frozen=True)
class ReferenceInfo:
    """What a call needs to know of its reference before reading it: the frame size ``(height, width)``,
    the frame count and the frame rate (``None`` for frames given in memory)."""

    height: int
    width: int
    frames: int | None
    fps: float | None


def is_video_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _check_path(value: Any) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"`video` {str(value)!r}: no such file")
    if path.suffix.lower() not in VIDEO_FILE_SUFFIXES:
        raise ValueError(f"`video` {path.name!r}: not a video file (one of {', '.join(VIDEO_FILE_SUFFIXES)})")
    return path


def _reader(path: Path):
    try:  # imageio (+ imageio-ffmpeg) is optional: the `video` extra
        import imageio.v2 as imageio
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("reading a video file needs imageio and imageio-ffmpeg: pip install 'vpg-pipelines[video]'"
                          ) from err
    try:
        return imageio.get_reader(str(path), format="FFMPEG")
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"`video` {path.name!r}: cannot be read as a video ({err})") from err


def inspect_reference(video: Any) -> ReferenceInfo:
    """The size (and, for a file, frame rate) of a reference, checking its type; reads no frames of a file.

    ``video``: a file path, a list of PIL images or ``(H, W, 3)`` arrays, an ``(F, H, W, 3)`` array (uint8, or
    float in [0, 1]) or an ``(F, 3, H, W)`` tensor in [0, 1].
    """
    if is_video_path(video):
        path = _check_path(video)
        reader = _reader(path)
        try:
            meta = reader.get_meta_data()
        finally:
            reader.close()
        width, height = (int(v) for v in meta["size"])
        return ReferenceInfo(height, width, None, float(meta["fps"]))
    frames = _memory_frames(video)
    return ReferenceInfo(int(frames.shape[1]), int(frames.shape[2]), int(frames.shape[0]), None)


def _memory_frames(video: Any) -> np.ndarray:
    """Frames given in memory as an ``(F, H, W, 3)`` array (uint8, or float in [0, 1]); checks the layout."""
    what = ("`video` must be a video file path, a list of PIL images or (H, W, 3) arrays, an (F, H, W, 3) array "
            "or an (F, 3, H, W) tensor in [0, 1]")
    if isinstance(video, torch.Tensor):
        if video.dim() != 4 or video.shape[1] != 3:
            raise ValueError(f"{what}; got a tensor of shape {tuple(video.shape)}")
        return video.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError(f"{what}; got an empty list")
        arrays = [np.asarray(f.convert("RGB")) if isinstance(f, PIL.Image.Image) else np.asarray(f) for f in video]
        if any(a.ndim != 3 or a.shape[-1] != 3 or a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"{what}; the list's frames must all be (H, W, 3) of one size")
        return np.stack(arrays)
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"{what}; got an array of shape {video.shape}")
        return video
    raise ValueError(f"{what}; got {type(video).__name__}")


def last_seconds(frame_count: int, fps: float, seconds: float, count: int) -> list[int]:
    """The official choice of ``count`` frames over the last ``seconds`` of a video (module docstring)."""
    duration = frame_count / fps
    start = math.ceil(fps * (duration - seconds))
    end = min(math.ceil(fps * duration), frame_count)
    return [int(i) for i in np.linspace(start, end - 1, count).astype(int)]


def reference_frames(video: Any, count: int, seconds: float, default_fps: float) -> list[PIL.Image.Image]:
    """The ``count`` frames of the reference that are encoded, as RGB PIL images.

    A file: its last ``seconds`` at its own frame rate (:func:`last_seconds`). Frames in memory: exactly
    ``count`` frames are the reference as given; more are taken as ``default_fps`` video and chosen by the
    same rule. Fewer than ``seconds`` of video is refused (the official reader fails on it).
    """
    if is_video_path(video):
        reader = _reader(_check_path(video))
        try:
            fps = float(reader.get_meta_data()["fps"])
            frames = np.stack([np.asarray(f)[..., :3] for f in reader])
        finally:
            reader.close()
    else:
        frames, fps = _memory_frames(video), float(default_fps)
        if frames.shape[0] == count:
            return [_to_pil(f) for f in frames]
    needed = math.ceil(seconds * fps)
    if frames.shape[0] < needed:
        raise ValueError(f"`video` has {frames.shape[0]} frames at {fps:g} fps ({frames.shape[0] / fps:.2f} s); the "
                         f"reference must be at least {seconds:g} s long ({needed} frames; or exactly {count} frames "
                         "given in memory)")
    return [_to_pil(frames[i]) for i in last_seconds(frames.shape[0], fps, seconds, count)]


def _to_pil(frame: np.ndarray) -> PIL.Image.Image:
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(np.ascontiguousarray(frame))
