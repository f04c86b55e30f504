"""InfinityStar's scale schedules, clip packing and per-step bookkeeping.

Facts re-derived from the official ``infinity/schedules``:

* :func:`get_dynamic_resolution_meta` gives, per aspect-ratio template (h/w, three decimals) and
  pixel budget (``"0.06M"`` ...), the (t, h, w) latent grids of every scale. For the video schedules
  (``infinity_elegant_clip20frames_v2``, ``infinity_star_interact``) ``pt2scale_schedule[T]`` is the
  schedule of a video with ``T`` latent frames: first the image clip (t = 1, spatial ladder up to the
  full size), then one clip per 20 latent frames with the same spatial ladder.
* :func:`scale_pack_info` tells which frames a scale covers and which earlier scales it attends to
  (``ref_sids``); with the released settings an image scale refers to no earlier scale and a video
  scale to the largest scale of the previous clip.
* :func:`plan_steps` expands the scales into sampler steps with the scale-repetition lists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

VAE_STRIDE = 16
VIDEO_SCHEDULES = ("infinity_elegant_clip20frames_v2", "infinity_star_interact")
SCHEDULES = ("13_hand_craft", *VIDEO_SCHEDULES, "infinity_star_extract_features")
FRAMES_PER_CLIP = 20  # latent frames of one video clip
LATENT_FRAMES_PER_SECOND = 4  # 16 fps / temporal compression 4

_VIDEO_V2_RATIOS = (1, 100 / 116, 3 / 4, 2 / 3, 9 / 16, 1 / 2, 2 / 5, 1 / 3)
_VIDEO_V2_SIDES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 40, 60)
_VIDEO_V2_BUDGETS = {"0.06M": 11, "0.25M": 13, "0.40M": 14, "0.90M": 15}

_HAND_CRAFT_13 = {
    1.000: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
            (48, 48), (64, 64)],
    1.250: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
            (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)],
    1.500: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
            (63, 42), (78, 52)],
    1.750: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
            (70, 40), (84, 48)],
    2.000: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
            (74, 37), (90, 45)],
    2.500: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
            (80, 32), (100, 40)],
    3.000: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
            (90, 30), (111, 37)],
}
_HAND_CRAFT_BUDGETS = {"0.06M": 7, "0.25M": 10, "1M": 13}

Scale = tuple[int, int, int]


def video_v2_ladders() -> dict[float, list[tuple[int, int]]]:
    """The (h, w) ladder of each aspect ratio of the v2 video schedules (sides 1 ... 60)."""
    ladders = {}
    for h_div_w in _VIDEO_V2_RATIOS:
        steps = []
        for side in _VIDEO_V2_SIDES:
            pw = math.sqrt(side * side / h_div_w)
            steps.append((int(np.round(pw * h_div_w)), int(np.round(pw))))
        ladders[h_div_w] = steps
    return ladders


def _full_ratio_table(
    ladders: dict[float, list[tuple[int, int]]], budgets: dict[str, int], video_frames: int, fixed_t: bool
) -> dict[float, dict[str, dict]]:
    """Both orientations of every ratio, keyed by ``int(h/w * 1000) / 1000``, cut per pixel budget."""
    compressed = video_frames // 4 + 1
    full: dict[float, list[Scale]] = {}
    for ratio, hws in ladders.items():
        hws3 = [(1, h, w) for h, w in hws]
        real = hws3[-1][1] / hws3[-1][2]
        full[int(real * 1000) / 1000] = hws3
        if ratio != 1.0:
            full[int(1 / real * 1000) / 1000] = [(t, w, h) for t, h, w in hws3]
    table: dict[float, dict[str, dict]] = {}
    for ratio, hws3 in full.items():
        table[ratio] = {}
        for budget, count in budgets.items():
            scales = hws3[:count]
            if fixed_t:
                scales = [(min(1, compressed), h, w) for _, h, w in scales]
            last = hws3[count - 1]
            table[ratio][budget] = {"pixel": (last[1] * VAE_STRIDE, last[2] * VAE_STRIDE), "scales": scales}
    return table


def get_dynamic_resolution_meta(
    schedule: str, video_frames: int = 1000
) -> tuple[dict[float, dict[str, dict]], np.ndarray]:
    """Per template and pixel budget, the scale schedules of ``schedule`` (official structure).

    Returns ``(meta, templates)``: ``meta[h_div_w][budget]`` holds ``pixel`` and either
    ``image_scales`` / ``video_scales`` (``13_hand_craft``) or ``pt2scale_schedule`` (latent frames ->
    schedule), ``scales_in_one_clip`` and ``max_video_scales`` (video schedules).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}")
    compressed = video_frames // 4 + 1
    if schedule == "13_hand_craft":
        table = _full_ratio_table(_HAND_CRAFT_13, _HAND_CRAFT_BUDGETS, video_frames, fixed_t=True)
        ts = np.round(np.linspace(1, compressed, 7))
        for budgets in table.values():
            for entry in budgets.values():
                base = entry.pop("scales")
                entry["image_scales"] = base
                entry["video_scales"] = [(int(t), h, w) for t, (_, h, w) in zip(ts, base)]
    elif schedule in VIDEO_SCHEDULES:
        if (compressed - 1) % FRAMES_PER_CLIP:
            raise ValueError(
                f"`video_frames` {video_frames} gives {compressed} latent frames; the clip schedules need "
                f"1 + a multiple of {FRAMES_PER_CLIP} (e.g. 81 or 161 frames)"
            )
        table = _full_ratio_table(video_v2_ladders(), _VIDEO_V2_BUDGETS, video_frames, fixed_t=False)
        clips = (compressed - 1) // FRAMES_PER_CLIP
        for budgets in table.values():
            for entry in budgets.values():
                base = entry.pop("scales")
                per_clip = len(base)
                full = list(base) + [(FRAMES_PER_CLIP, h, w) for _ in range(clips) for _, h, w in base]
                pt2 = {1: list(base)}
                for pt in range(1 + LATENT_FRAMES_PER_SECOND, compressed + 1, LATENT_FRAMES_PER_SECOND):
                    n_clips = 1 + math.ceil((pt - 1) / FRAMES_PER_CLIP)
                    sched = full[: per_clip * n_clips]
                    last = (pt - 1) % FRAMES_PER_CLIP
                    if last > 0:
                        sched[-per_clip:] = [(last, h, w) for _, h, w in sched[-per_clip:]]
                    pt2[pt] = sched
                entry["pt2scale_schedule"] = pt2
                entry["image_scales"] = per_clip
                entry["scales_in_one_clip"] = per_clip
                entry["max_video_scales"] = len(pt2[compressed])
    else:  # infinity_star_extract_features
        table = _full_ratio_table(video_v2_ladders(), _VIDEO_V2_BUDGETS, video_frames, fixed_t=False)
        for budgets in table.values():
            for entry in budgets.values():
                base = entry.pop("scales")
                entry["pt2scale_schedule"] = {pt: [(pt, h, w) for _, h, w in base] for pt in range(1, compressed + 1)}
                entry["image_scales"] = entry["scales_in_one_clip"] = entry["max_video_scales"] = len(base)
    return table, np.array(list(table.keys()))


def nearest_template(h_div_w: float, templates: Sequence[float]) -> float:
    """The template closest to ``h_div_w`` (first one on ties, as ``np.argmin``)."""
    arr = np.asarray(templates, dtype=float)
    return float(arr[int(np.argmin(np.abs(arr - h_div_w)))])


def get_first_full_spatial_size_scale_index(schedule: Sequence[Scale]) -> int:
    """Index of the first scale whose (h, w) is the final (h, w): the last scale of the image clip."""
    for i, scale in enumerate(schedule):
        if tuple(scale[-2:]) == tuple(schedule[-1][-2:]):
            return i
    raise ValueError("empty schedule")


def video_scale_schedule(
    h_div_w: float, budget: str = "0.90M", video_frames: int = 81, latent_frames: int | None = None,
    schedule: str = "infinity_elegant_clip20frames_v2",
) -> list[Scale]:
    """The schedule the official scripts use: nearest template, budget, ``latent_frames`` (default all)."""
    meta, templates = get_dynamic_resolution_meta(schedule, video_frames)
    template = nearest_template(h_div_w, templates)
    if budget not in meta[template]:
        raise ValueError(f"`budget` must be one of {sorted(meta[template])}, got {budget!r}")
    pt2 = meta[template][budget]["pt2scale_schedule"]
    frames = (video_frames - 1) // 4 + 1 if latent_frames is None else latent_frames
    if frames not in pt2:
        raise ValueError(f"`latent_frames` must be one of {sorted(pt2)}, got {frames}")
    return [tuple(s) for s in pt2[frames]]


@dataclass(frozen=True)
class ScalePack:
    """Clip packing of one scale: its clip, frame range and the earlier scales it attends to."""

    clip: int
    frame_start: int
    frame_end: int
    ref_sids: tuple[int, ...]


def scale_pack_info(
    schedule: Sequence[Scale],
    first_full_spatial_size_scale_index: int | None = None,
    frames_inner_clip: int = FRAMES_PER_CLIP,
    context_frames: int = 10000,
    context_from_largest_no: int = 1,
    context_interval: int = 2,
) -> list[ScalePack]:
    """Official ``get_scale_pack_info`` (``infinity_elegant``): frames and ``ref_sids`` per scale."""
    ffs = (get_first_full_spatial_size_scale_index(schedule) if first_full_spatial_size_scale_index is None
           else first_full_spatial_size_scale_index)
    per_clip = ffs + 1
    context_clips = context_frames // frames_inner_clip
    index = {(si // per_clip, si % per_clip): si for si in range(len(schedule))}
    packs = []
    for si in range(len(schedule)):
        clip = si // per_clip
        if clip == 0:
            start, end = 0, schedule[per_clip - 1][0]
        else:
            start = schedule[0][0] + (clip - 1) * frames_inner_clip
            end = start + schedule[per_clip * (clip + 1) - 1][0]
        if context_from_largest_no > 0:
            left = [] if si <= ffs else [clip - 1][:context_clips]
            refs = []
            for i, ref_clip in enumerate(left):
                inner = max(0, per_clip - context_from_largest_no - context_interval * i)
                if ref_clip != -1:
                    refs.append(index[(ref_clip, inner)])
        else:
            refs = list(range(si))
        packs.append(ScalePack(clip, start, end, tuple(refs)))
    return packs


def scale_repetitions(
    num_scales: int, per_clip: int, image_repetition: Sequence[int], video_repetition: Sequence[int]
) -> list[int]:
    """Repetitions of every scale: the image list for the first clip, the video list for the others."""
    if len(image_repetition) != per_clip or len(video_repetition) != per_clip:
        raise ValueError(
            f"the repetition lists must have one entry per scale of a clip ({per_clip}); got "
            f"{len(image_repetition)} (image) and {len(video_repetition)} (video)"
        )
    return [(image_repetition if si < per_clip else video_repetition)[si % per_clip] for si in range(num_scales)]


def parse_repetition(value: str | Sequence[int]) -> list[int]:
    """The official scripts pass repetition lists as JSON strings."""
    out = json.loads(value) if isinstance(value, str) else list(value)
    if not out or not all(isinstance(v, int) and v >= 1 for v in out):
        raise ValueError(f"a scale-repetition list must hold positive integers, got {value!r}")
    return out


@dataclass(frozen=True)
class StarStep:
    """One (scale, repetition) step of the InfinityStar sampler."""

    index: int
    scale: int
    repeat: int
    repeat_times: int
    real_sid: int  # position on the RoPE scale axis (counts repetitions)
    grid: Scale
    target: Scale  # the clip's full latent grid
    clip: int
    rel_scale: int  # index of the scale inside its clip
    frame_start: int
    ref_sids: tuple[int, ...]
    semantic_head: bool  # logits from ``semantic_head2`` (rel_scale < semantic_scales)
    detail_codebook: bool  # codes from the detail codebook (h * w >= detail_scale_min_tokens)
    tau: float
    store_kv: bool  # last repetition of a scale a later scale refers to

    @property
    def num_sites(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


@dataclass
class StepPlan:
    """Every step of one generation, plus the schedule facts the adapter needs."""

    schedule: list[Scale]
    packs: list[ScalePack]
    steps: list[StarStep]
    first_full_spatial_size_scale_index: int
    semantic_bits: int
    detail_bits: int
    referenced: set[int] = field(default_factory=set)

    @property
    def scales_per_clip(self) -> int:
        return self.first_full_spatial_size_scale_index + 1

    @property
    def num_clips(self) -> int:
        return len(self.schedule) // self.scales_per_clip

    def clip_grid(self, clip: int) -> Scale:
        """The full latent grid of ``clip`` (its last scale)."""
        return tuple(self.schedule[self.scales_per_clip * (clip + 1) - 1])

    def bits_of(self, step: StarStep) -> int:
        return self.detail_bits if step.detail_codebook else self.semantic_bits


def plan_steps(
    schedule: Sequence[Scale],
    image_repetition: Sequence[int] | str,
    video_repetition: Sequence[int] | str,
    semantic_scales: int = 12,
    detail_scale_min_tokens: int = 750,
    tau_image: float = 1.0,
    tau_video: float = 0.4,
    semantic_bits: int = 16,
    detail_bits: int = 64,
    max_repeat_times: int = 10000,
    keep_unreferenced_kv: bool = False,
    **pack_kwargs,
) -> StepPlan:
    """Expand ``schedule`` into sampler steps (official ``ar_infer_infinity_elegant`` order).

    A step keeps its keys/values only when it is the last repetition of a scale that a later scale
    refers to (``keep_unreferenced_kv`` keeps the last repetition of every scale instead; the
    official code frees the others once no later scale needs them).
    """
    schedule = [tuple(int(v) for v in s) for s in schedule]
    ffs = get_first_full_spatial_size_scale_index(schedule)
    per_clip = ffs + 1
    if len(schedule) % per_clip:
        raise ValueError(f"the schedule has {len(schedule)} scales, not a multiple of {per_clip} per clip")
    reps = scale_repetitions(len(schedule), per_clip, parse_repetition(image_repetition),
                             parse_repetition(video_repetition))
    packs = scale_pack_info(schedule, ffs, **pack_kwargs)
    referenced = {r for p in packs for r in p.ref_sids}
    steps: list[StarStep] = []
    real_sid = 0
    for si, grid in enumerate(schedule):
        clip, rel = si // per_clip, si % per_clip
        target = tuple(schedule[per_clip * (clip + 1) - 1])
        detail = grid[1] * grid[2] >= detail_scale_min_tokens
        semantic_head = rel < semantic_scales
        if semantic_head == detail and semantic_bits != detail_bits:
            raise ValueError(
                f"scale {si} {grid} would take logits from the {'semantic' if semantic_head else 'detail'} head "
                f"but codes from the {'detail' if detail else 'semantic'} codebook; check `semantic_scales` "
                f"({semantic_scales}) against `detail_scale_min_tokens` ({detail_scale_min_tokens})"
            )
        times = min(reps[si], max_repeat_times)
        for r in range(times):
            last = r == times - 1
            steps.append(StarStep(
                index=len(steps), scale=si, repeat=r, repeat_times=times, real_sid=real_sid + r, grid=grid,
                target=target, clip=clip, rel_scale=rel, frame_start=packs[si].frame_start,
                ref_sids=packs[si].ref_sids, semantic_head=semantic_head, detail_codebook=detail,
                tau=float(tau_image if si < per_clip else tau_video),
                store_kv=last and (keep_unreferenced_kv or si in referenced),
            ))
        real_sid += reps[si]  # the official counter advances by the full repetition count
    return StepPlan(schedule, packs, steps, ffs, semantic_bits, detail_bits, referenced)


def tau_list(schedule: Sequence[Scale], tau_image: float, tau_video: float) -> list[float]:
    """Per-scale temperatures of the official scripts (image clip, then video clips)."""
    split = get_first_full_spatial_size_scale_index(schedule) + 1
    return [tau_image] * split + [tau_video] * (len(schedule) - split)
