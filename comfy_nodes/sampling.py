"""What the three sampler nodes share: per-output seeds, the progress bar with previews, Cancel, and the
guidance maps taken from the pipeline's trace step by step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from vpg_pipelines.sampling.next_scale import SamplerTrace

from . import host
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
            pixels = (decode()[0].permute(1, 2, 0).float().cpu().clamp(0, 1) * 255).to(torch.uint8).numpy()
            preview = ("JPEG", Image.fromarray(pixels), PREVIEW_MAX_SIZE)
        self.bar.update_absolute(index + 1, self.total, preview)
        host.check_interrupt()  # Cancel stops within one step


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
