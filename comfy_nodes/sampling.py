"""What the sampler nodes share: per-output seeds and the seed widget, the progress bar with previews, Cancel, the
guidance maps taken from the pipeline's trace step by step, and ComfyUI's ``VIDEO`` in and out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.sampling.next_scale import SamplerTrace

from . import host
from .api import io
from .errors import fail
from .guidance_map import change_map
from .model import SEED_MAX, VPGModel

PREVIEW_MAX_SIZE = 512
MAX_PREVIEWS = 16
"""At most about this many preview decodes per run (a video run has ~60 steps, each decode a VAE call)."""


def generators(seed: int, count: int) -> list[torch.Generator]:
    """Output ``i`` draws from ``seed + i``: the same seed gives the same first output at any batch size."""
    return [torch.Generator("cpu").manual_seed((seed + i) % (SEED_MAX + 1)) for i in range(count)]


@dataclass
class Progress:
    """One sampler's progress bar: a tick per step, with a JPEG preview of the partial image when someone
    watches (decoding it costs a VAE call, so it is skipped otherwise)."""

    total: int

    def __post_init__(self) -> None:
        self.bar = host.ProgressBar(max(1, self.total))

    def step(self, index: int, decode: Callable[[], torch.Tensor]) -> None:
        """Report step ``index`` done; ``decode()`` gives ``(1, 3, H, W)`` images in [0, 1] when a preview is due."""
        preview = None
        every = -(-self.total // MAX_PREVIEWS)
        if self.bar.hook is not None and (index % every == 0 or index == self.total - 1):
            preview = _preview(decode()[0])
        self.bar.update_absolute(index + 1, self.total, preview)
        host.check_interrupt()  # Cancel stops within one step

    def show(self, done: int, image: torch.Tensor) -> None:
        """Report ``done`` steps with ``image`` ``(3, H, W)`` in [0, 1] (already at hand) as the preview."""
        self.bar.update_absolute(done, self.total, _preview(image) if self.bar.hook is not None else None)
        host.check_interrupt()


def _preview(image: torch.Tensor) -> tuple[str, Image.Image, int]:
    """ComfyUI's preview of an ``(3, H, W)`` image in [0, 1]: a JPEG of at most :data:`PREVIEW_MAX_SIZE`."""
    pixels = (image.permute(1, 2, 0).float().cpu().clamp(0, 1) * 255).to(torch.uint8).numpy()
    return "JPEG", Image.fromarray(pixels), PREVIEW_MAX_SIZE


def site_grid(grid: tuple[int, int], sites: int) -> tuple[int, int]:
    """The transformer's token grid of a scale (a 2x2 spatial patchify halves the VAE grid)."""
    h, w = grid
    if h * w != sites and max(h // 2, 1) * max(w // 2, 1) == sites:
        return max(h // 2, 1), max(w // 2, 1)
    return h, w


def image_step_callback(model: VPGModel, trace: SamplerTrace, grids: list[tuple[int, int]],
                        maps: dict[int, torch.Tensor], progress: Progress) -> Callable[..., dict]:
    """The pipeline's ``callback_on_step_end`` for the image samplers: the step's trace becomes a guidance
    map (and is freed), then the progress bar ticks with a lazy preview and Cancel is checked."""
    pipe = model.pipeline

    def callback(_pipe: Any, step_index: int, scale_index: int, kwargs: dict) -> dict:
        clean, guided = trace.clean.pop(step_index, None), trace.guided.pop(step_index, None)
        for store in (trace.corrupted, trace.codes):
            store.pop(step_index, None)
        trace.inputs.clear()
        if clean is not None:
            maps[scale_index] = change_map(clean, guided, site_grid(grids[scale_index], clean.shape[1])).cpu()
        latents = kwargs["latents"]
        progress.step(scale_index, lambda: pipe.preview_image(latents[:1]))
        return {}

    return callback


def video_step_callback(model: VPGModel, progress: Progress) -> Callable[..., dict]:
    """The video sampler's ``callback_on_step_end``: a tick per (scale, repetition) step, and Cancel."""
    pipe = model.pipeline

    def callback(_pipe: Any, step_index: int, scale_index: int, kwargs: dict) -> dict:
        latents = kwargs["latents"]
        progress.step(step_index, lambda: pipe.preview_image(latents[:1]))
        return {}

    return callback


def seed_input(what: str) -> Any:
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip=f"{what} i of the batch uses seed + i.")


def read_video(node_title: str, video: Any) -> tuple[torch.Tensor, float] | None:
    """A ComfyUI ``VIDEO`` (Load Video, Create Video ...) as frames ``(F, 3, H, W)`` in [0, 1] and its frame rate
    (``None`` when unconnected)."""
    if video is None:
        return None
    if not callable(getattr(video, "get_components", None)):
        raise fail(node_title, f"`video` must be a VIDEO (e.g. from Load Video), got {type(video).__name__}")
    try:
        components = video.get_components()
    except Exception as err:  # a file ComfyUI cannot decode: av / OSError / ValueError, by backend
        raise fail(node_title, f"`video` cannot be read as frames ({err})") from err
    images, rate = components.images, components.frame_rate
    ok = isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[-1] in (1, 3, 4)
    if not ok or min(images.shape[:3]) < 1:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise fail(node_title, f"`video` must hold frames (F, H, W, 1/3/4 channels), got {got}")
    fps = float(rate) if rate is not None else 0.0
    if not (math.isfinite(fps) and fps > 0):
        raise fail(node_title, f"`video` must have a positive frame rate, got {rate!r}")
    pixels = images.detach().float().cpu()
    if not bool(torch.isfinite(pixels).all()):
        raise fail(node_title, "`video` holds NaN or infinite values; expected pixels in [0, 1]")
    rgb = pixels.expand(*pixels.shape[:3], 3) if pixels.shape[-1] == 1 else pixels[..., :3]
    return rgb.permute(0, 3, 1, 2), fps


def video_guidance(model: VPGModel) -> dict[str, Any]:
    """The video pipelines' guidance arguments of the model's VPG CFG / VPG APG node (off without one)."""
    guidance: dict[str, Any] = {"guidance_scale": model.cfg_strength(off=1.0), "guidance": "cfg"}
    if isinstance(model.cfg, AdaptiveProjectedGuidance):
        guidance |= {"guidance": "apg", "apg_norm_threshold": float(model.cfg.norm_threshold)}
    return guidance


def video_outputs(clips: torch.Tensor, fps: int) -> tuple[torch.Tensor, Any]:
    """A pipeline's ``(B, F, 3, H, W)`` frames as ComfyUI's IMAGE batch (video after video) and a ``VIDEO``."""
    clips = clips.float().cpu()
    frames = clips.permute(0, 1, 3, 4, 2).reshape(-1, clips.shape[-2], clips.shape[-1], 3).contiguous()
    frames = frames.to(host.intermediate_device())
    return frames, host.video(frames, fps)
