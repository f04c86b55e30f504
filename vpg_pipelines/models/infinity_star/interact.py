"""InfinityStar-Interact: one window of the interactive sampler, as a model of the shared loop.

Facts re-derived from the official ``tools/infer_interact_480p.py`` and ``ar_infer_infinity_star_interact``
(mode ``second_v_clip``) at FoundationVision/InfinityStar ``0446330``:

* A **window** generates 20 new latent frames (80 pixel frames, 5 s) from the 21 latent frames before it
  (the *context*) and the first latent frame of the reference video (kept for the whole story). Its steps
  are the 14 scales of one 20-frame clip with the image repetition list and the image temperature, the head
  *and* the codebook chosen by the scale's index (``< semantic_scales``: semantic), RoPE scale ids counting
  the window's steps from 0, frames 0..19, no scale attending to another.
* Two **visual conditions** are forwarded once per window into the KV cache after the text, each attending to
  its own tokens only: the context's frames 1..20 area-resized to the grid of clip scale 7 (RoPE scale id
  800, frames 1..20) and, at full size, [reference frame 0, context frames 19, 20] (id 801, frames 0, 19, 20).
  Every scale step sees the text, both conditions and itself. The conditions are continuous latents, the
  same for both CFG rows.
* The window's frames are the decode of ``[context frames 1..20, new 20]`` (40 latent frames), last 80
  frames kept; the next window's context is the last 21 latent frames of that.

``context_interval`` changes nothing here (every scale has one reference entry, multiplied by 0), and the
cache is rebuilt for every window: memory per window is constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..kv_cache import KVCache
from .adapter import InfinityStarAdapter, InfinityStarState
from .schedules import Scale, StepPlan, get_first_full_spatial_size_scale_index, plan_steps
from .settings import select_schedule

WINDOW_LATENT_FRAMES = 20
"""Latent frames a window generates (80 pixel frames, 5 s at 16 fps)."""
CONTEXT_LATENT_FRAMES = 21
"""Latent frames a window is conditioned on (81 pixel frames: what the reference's encoding gives)."""
REFERENCE_PIXEL_FRAMES = 81
REFERENCE_SECONDS = 5
WINDOW_PIXEL_FRAMES = 4 * WINDOW_LATENT_FRAMES
SEMANTIC_CONDITION_SCALE = 7
"""The clip scale whose grid the semantic condition takes (official ``semantic_scale_ind``)."""
DETAIL_CONTEXT_FRAMES = (18, 19)
"""Frames of the 20 kept context frames in the detail condition (official ``detail_frame_inds``)."""
SEMANTIC_CONDITION_ID = 800
DETAIL_CONDITION_ID = 801
"""RoPE scale ids of the two conditions (on the scale axis after the text, like the steps' ids)."""
CAPTION_FRAMES = 81
"""The official caption says ``<<<t=5s>>>`` for every window: ``caption(prompt, 81)``."""


def interact_args(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``overrides`` (official ``Args`` names) for the interact script's settings (``VARIANT_ARGS["interact"]``,
    which the pipeline's ``variant`` applies under them): as in the script, a given image repetition list is the
    video one too unless that is given."""
    args = dict(overrides or {})
    if "image_scale_repetition" in args and "video_scale_repetition" not in args:
        args["video_scale_repetition"] = args["image_scale_repetition"]
    return args


def window_schedule(args: Mapping[str, Any], height: int, width: int) -> list[Scale]:
    """The scales of one window at ``height`` x ``width`` pixels: the 20-frame clip of the 81-frame schedule
    (``pt2scale_schedule[21]`` without its image clip). ``ValueError`` names a size the schedules lack."""
    schedule = select_schedule(args, CAPTION_FRAMES, height, width)
    per_clip = get_first_full_spatial_size_scale_index(schedule) + 1
    return schedule[per_clip:]


def plan_window(
    schedule: Sequence[Scale],
    repetition: Sequence[int],
    semantic_scales: int,
    tau: float,
    semantic_bits: int = 16,
    detail_bits: int = 64,
    max_repeat_times: int = 1000,
) -> StepPlan:
    """The steps of one window: every scale of ``schedule`` (one clip) with ``repetition``, the semantic head
    and codebook for the scales before ``semantic_scales``, ``tau`` everywhere, nothing kept in the cache."""
    schedule = [tuple(int(v) for v in s) for s in schedule]
    if len(repetition) != len(schedule):
        raise ValueError(f"the repetition list has {len(repetition)} entries for {len(schedule)} scales")
    # the official interact sampler picks the codebook by the scale's index; with the detail threshold at the
    # first detail scale's area (the ladders grow), plan_steps' token rule agrees, checked below
    areas = [h * w for _, h, w in schedule]
    threshold = areas[semantic_scales] if semantic_scales < len(schedule) else areas[-1] + 1
    plan = plan_steps(schedule, list(repetition), list(repetition), semantic_scales=semantic_scales,
                      detail_scale_min_tokens=threshold, tau_image=tau, tau_video=tau, semantic_bits=semantic_bits,
                      detail_bits=detail_bits, max_repeat_times=max_repeat_times)
    steps = [dataclasses.replace(s, detail_codebook=not s.semantic_head) for s in plan.steps]
    plan.steps = steps
    return plan


def star_coordinates(grid: Scale, final: Scale, scale_id: int, frames: Sequence[int]) -> torch.Tensor:
    """``(t*h*w, 4)`` RoPE coordinates (scale axis, frame, row, column) of a ``grid`` whose rows / columns sit on
    the ``final`` grid (official ``get_visual_rope_embeds``); ``scale_id`` already offset by the text length."""
    t, h, w = grid
    if len(frames) != t:
        raise ValueError(f"{len(frames)} frame positions for a grid of {t} frames")
    _, big_h, big_w = final
    rows = (torch.arange(h) * (big_h / h)).round().long()
    cols = (torch.arange(w) * (big_w / w)).round().long()
    frame = torch.as_tensor(list(frames), dtype=torch.long)
    coords = torch.stack(torch.meshgrid(frame, rows, cols, indexing="ij"), dim=-1).reshape(-1, 3)
    return torch.cat([torch.full((coords.shape[0], 1), scale_id, dtype=torch.long), coords], dim=1)


@dataclass
class WindowCondition:
    """One visual condition of a window: ``content`` ``(B, n, 64)`` (per sample) and ``coords`` ``(n, 4)``."""

    name: str
    content: torch.Tensor
    coords: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.content.shape[1])


def window_conditions(plan: StepPlan, context: torch.Tensor, first_frame: torch.Tensor,
                      text_maxlen: int) -> list[WindowCondition]:
    """The semantic and detail conditions of a window from its ``context`` ``(B, 64, 21, H, W)`` and the
    reference's ``first_frame`` ``(B, 64, 1, H, W)``."""
    final = tuple(plan.schedule[-1])
    expected = (CONTEXT_LATENT_FRAMES, *final[1:])
    if context.dim() != 5 or tuple(context.shape[2:]) != expected:
        raise ValueError(f"the context must be (B, 64, {', '.join(map(str, expected))}), got {tuple(context.shape)}")
    if first_frame.dim() != 5 or tuple(first_frame.shape[2:]) != (1, *final[1:]):
        raise ValueError(f"the first frame must be (B, 64, 1, {final[1]}, {final[2]}), got {tuple(first_frame.shape)}")
    kept = context[:, :, 1:]  # the official sampler drops the first context frame
    semantic_grid = (WINDOW_LATENT_FRAMES, *plan.schedule[SEMANTIC_CONDITION_SCALE][1:])
    semantic = F.interpolate(kept, size=semantic_grid, mode="area")
    detail = torch.cat([first_frame, kept[:, :, list(DETAIL_CONTEXT_FRAMES)]], dim=2)
    detail_frames = [0] + [i + 1 for i in DETAIL_CONTEXT_FRAMES]
    out = []
    for name, latent, scale_id, frames in (
        ("semantic_condition", semantic, SEMANTIC_CONDITION_ID, range(1, WINDOW_LATENT_FRAMES + 1)),
        ("detail_condition", detail, DETAIL_CONDITION_ID, detail_frames),
    ):
        coords = star_coordinates(tuple(latent.shape[2:]), final, text_maxlen + scale_id, list(frames))
        out.append(WindowCondition(name, latent.flatten(2).transpose(1, 2), coords.to(latent.device)))
    return out


def next_context(context: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """The context of the next window: the last 21 latent frames of ``[context frames 1..20, window]``."""
    return torch.cat([context[:, :, -1:], window], dim=2)


def decode_input(context: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """What the official sampler decodes for a window: ``[context frames 1..20, window]`` (40 latent frames, of
    whose 157 pixel frames the last 80 are the window's)."""
    return torch.cat([context[:, :, 1:], window], dim=2)


@dataclass
class InteractState(InfinityStarState):
    """:class:`InfinityStarState` of one window plus its visual conditions."""

    conditions: list[WindowCondition] = field(default_factory=list)

    @property
    def condition_tokens(self) -> int:
        return sum(c.num_tokens for c in self.conditions)


class InfinityStarInteractAdapter(InfinityStarAdapter):
    """One window of InfinityStar-Interact through the shared loop: the prefix is the text and the two
    conditions (:meth:`prefill`); every step sees the whole prefix and itself."""

    def prepare_window(
        self,
        plan: StepPlan,
        text_features: Sequence[torch.Tensor],
        negative_text_features: Sequence[torch.Tensor | None] | None,
        context: torch.Tensor,
        first_frame: torch.Tensor,
        with_null: bool = True,
        forced_bits: Sequence[torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> InteractState:
        """:meth:`InfinityStarAdapter.prepare` plus the window's conditions (``context`` and ``first_frame``
        per sample: ``(B, 64, 21, H, W)`` and ``(B, 64, 1, H, W)``)."""
        state = self.prepare(plan, text_features, negative_text_features, with_null=with_null,
                             forced_bits=forced_bits, device=device, dtype=dtype)
        if context.shape[0] != state.batch_size or first_frame.shape[0] != state.batch_size:
            raise ValueError(f"the context and first frame must hold {state.batch_size} samples, got "
                             f"{context.shape[0]} and {first_frame.shape[0]}")
        conditions = window_conditions(plan, context.to(state.device, dtype), first_frame.to(state.device, dtype),
                                       state.text_maxlen)
        fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(InfinityStarState)}
        return InteractState(**fields, conditions=conditions)

    def num_prefix_tokens(self, state: InteractState) -> int:
        return state.prefix_tokens + state.condition_tokens

    def prefill(self, state: InteractState, kv_cache: KVCache) -> None:
        """The text (every condition row its own), then each condition attending to its own tokens only."""
        super().prefill(state, kv_cache)
        rows = self.num_condition_rows(state)
        visible, kv_cache.visible = kv_cache.visible, []
        try:
            for condition in state.conditions:
                content = condition.content.repeat(rows // state.batch_size, 1, 1)
                coords = condition.coords.expand(rows, -1, -1)
                self.transformer(inputs=content, position_ids=coords, kv_cache=kv_cache, store_kv=True, head="none")
        finally:
            kv_cache.visible = visible

    def _visibility(
        self, state: InteractState, steps: list, cached: int, sizes: list[int]
    ) -> tuple[list[tuple[int, int]], torch.Tensor | None]:
        """The whole prefix; several steps in one call see it and only themselves (no scale sees another)."""
        prefix = self.num_prefix_tokens(state)
        if cached != prefix:
            raise RuntimeError(f"a window's cache holds its prefix only ({prefix} tokens), found {cached}")
        ranges = [(0, prefix)]
        if len(steps) == 1:
            return ranges, None
        owner = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        allowed = torch.cat([torch.ones(len(owner), prefix, dtype=torch.bool), owner[:, None] == owner[None, :]], 1)
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf"))
        return ranges, mask.to(state.device)
