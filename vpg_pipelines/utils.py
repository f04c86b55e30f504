"""Small user-facing helpers."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import PIL.Image
import torch


def _frames_uint8(frames) -> list[np.ndarray]:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
        if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
            frames = frames.transpose(0, 2, 3, 1)  # (F, C, H, W) -> (F, H, W, C)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"`frames` array must be (frames, height, width, 3), got shape {frames.shape}")
        frames = list(frames)
    if not isinstance(frames, Sequence) or not frames:
        raise ValueError("`frames` must be a non-empty list of PIL images / arrays, or a (F, H, W, 3) array")
    out = []
    for frame in frames:
        arr = np.asarray(frame.convert("RGB")) if isinstance(frame, PIL.Image.Image) else np.asarray(frame)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        out.append(arr)
    return out


def export_to_video(frames, output_video_path: str | os.PathLike, fps: int = 16, quality: float = 8.0) -> str:
    """Write frames to an MP4 (H.264 through imageio-ffmpeg's bundled ffmpeg binary).

    Args:
        frames: one video: a list of PIL images or ``(H, W, 3)`` arrays (uint8, or float in [0, 1]),
            a ``(F, H, W, 3)`` array or a ``(F, 3, H, W)`` / ``(F, H, W, 3)`` tensor in [0, 1].
            Pass ``output.frames[0]`` of a pipeline call.
        output_video_path: the ``.mp4`` file to write.
        fps: frames per second (InfinityStar: 16).
        quality: imageio's ffmpeg quality, 0 (worst) to 10 (best).

    Returns:
        The path written.
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"`fps` must be a positive number, got {fps!r}")
    try:  # imageio (+ imageio-ffmpeg) is optional: the `video` extra
        import imageio.v2 as imageio
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("export_to_video needs imageio and imageio-ffmpeg: "
                          "pip install 'vpg-pipelines[video]'") from err
    arrays = _frames_uint8(frames)
    path = os.fspath(output_video_path)
    # libx264 with yuv420p needs even sides: imageio resizes odd ones (InfinityStar sizes are multiples of 16)
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
                            pixelformat="yuv420p", macro_block_size=2) as writer:
        for arr in arrays:
            writer.append_data(arr)
    return path


def read_video(
    path: str | os.PathLike, pick: Callable[[float], Sequence[int]] | None = None
) -> tuple[list[np.ndarray], float, int]:
    """Frames (RGB uint8 ``(H, W, 3)``) and the frame rate of a video file, read with imageio-ffmpeg.

    Args:
        path: the video file (anything ffmpeg reads: .mp4, .webm, .mov ...).
        pick: ``pick(fps)`` gives the indices of the frames to return (in that order, repeats allowed); frames
            after the largest are not decoded. ``None``: every frame.

    Returns:
        ``(frames, fps, decoded)``: ``decoded`` frames were read; fewer than the largest picked index + 1 means
        the video is shorter (the missing indices are left out of ``frames``).
    """
    try:  # imageio (+ imageio-ffmpeg) is optional: the `video` extra
        import imageio.v2 as imageio
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("reading a video needs imageio and imageio-ffmpeg: "
                          "pip install 'vpg-pipelines[video]'") from err
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such video file")
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        fps = float(reader.get_meta_data().get("fps") or 0.0)
        if not fps > 0:
            raise ValueError(f"{path}: the file does not tell its frame rate")
        wanted = None if pick is None else [int(i) for i in pick(fps)]
        keep = None if wanted is None else set(wanted)
        last = math.inf if wanted is None else max(wanted, default=-1)
        kept: dict[int, np.ndarray] = {}
        decoded = 0
        for frame in reader:
            if keep is None or decoded in keep:
                kept[decoded] = np.asarray(frame)[..., :3]
            decoded += 1
            if decoded > last:
                break
    finally:
        reader.close()
    order = range(decoded) if wanted is None else [i for i in wanted if i in kept]
    return [kept[i] for i in order], fps, decoded
