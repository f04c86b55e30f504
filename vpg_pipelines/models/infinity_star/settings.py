"""The official InfinityStar inference settings and the schedule a call (frames, height, width) gets.

The released 720p model is run by ``tools/infer_video_720p.py`` with the values of
:data:`RELEASED_720P_ARGS`; the other official scripts (480p, Interact) change some of them
(:data:`VARIANT_ARGS`, by variant name); a ``config["args"]`` dict overrides any of the official
``Args`` names on top (the parity fixtures' shrunk repetitions, ...).
"""

from __future__ import annotations

import logging
import numbers
import re
from collections.abc import Mapping
from typing import Any

from .schedules import (
    FRAMES_PER_CLIP,
    VAE_STRIDE,
    VIDEO_SCHEDULES,
    get_dynamic_resolution_meta,
    get_first_full_spatial_size_scale_index,
    nearest_template,
    parse_repetition,
)

logger = logging.getLogger(__name__)

RELEASED_720P_ARGS: dict[str, Any] = {
    "pn": "0.90M",
    "fps": 16,
    "video_frames": 81,
    "dynamic_scale_schedule": "infinity_elegant_clip20frames_v2",
    "h_div_w_template": 0.571,  # the script's fixed target ratio (nearest template: 0.562, 16:9 portrait rows)
    "use_apg": 1,
    "use_cfg": 0,
    "cfg": 34.0,
    "apg_norm_threshold": 0.05,
    "tau_image": 1.0,
    "tau_video": 0.4,
    "image_scale_repetition": [3] * 15,
    "video_scale_repetition": [3] * 12 + [2, 1, 1],
    "append_duration2caption": 1,
    "use_two_stage_lfq": 1,
    "detail_scale_min_tokens": 750,
    "semantic_scales": 12,
    "max_repeat_times": 10000,
    "text_channels": 2048,
    "frames_inner_clip": FRAMES_PER_CLIP,
    "context_frames": 10000,
    "context_interval": 2,
    "context_from_largest_no": 1,
    "generation_duration": 5,
    "durations": None,
}
"""``tools/infer_video_720p.py`` (plus the official ``Args`` defaults of the clip-packing settings), and two
values the scripts keep outside ``Args``: ``generation_duration`` (a call's default length in seconds; the
480p script's variable of that name) and ``durations`` (the lengths in seconds its script accepts; ``None``:
any ``1 + 16 k`` frames up to ``video_frames``)."""

VARIANTS = ("720p", "480p", "interact")
"""The official inference scripts of the release, by variant name (``variant=`` of the loaders)."""

VARIANT_ARGS: dict[str, dict[str, Any]] = {
    "720p": {},  # tools/infer_video_720p.py: RELEASED_720P_ARGS themselves
    "480p": {  # tools/infer_video_480p.py:158-193
        "pn": "0.40M",
        "video_frames": 161,  # generation_duration * 16 + 1 for its longest duration (sizes the schedule table)
        "image_scale_repetition": [3] * 14,
        "video_scale_repetition": [3] * 12 + [2, 1],
        "detail_scale_min_tokens": 350,
        "semantic_scales": 11,
        "generation_duration": 5,  # ":158  generation_duration = 5  # or 10"
        "durations": [5, 10],  # README.md:137; other lengths fail the schedule's assertion there
    },
    "interact": {  # tools/infer_interact_480p.py:36-136 (the sampler of 5 s windows: the Interact pipeline's)
        "pn": "0.40M",
        "video_frames": 161,
        "dynamic_scale_schedule": "infinity_star_interact",
        "h_div_w_template": 0.571,  # ":87 h_div_w"; a run takes the template nearest its reference video
        "use_apg": 0,
        "use_cfg": 1,
        "cfg": 3.0,
        "apg_norm_threshold": 0.05,  # ":134" (over ":89"'s 0.15); unused with CFG
        "tau_image": 0.5,
        "tau_video": 0.5,
        "image_scale_repetition": [3] * 12 + [2, 1],
        "video_scale_repetition": [3] * 12 + [2, 1],
        "detail_scale_min_tokens": 350,
        "semantic_scales": 11,
        "max_repeat_times": 1000,
        "context_frames": 1000,
        "generation_duration": 5,  # one prompt per 5 s window ("<<<t=5s>>>")
        "durations": [5],
    },
}
"""Each official script's settings over :data:`RELEASED_720P_ARGS` (the registry's released entries and
``variant=`` of ``from_official`` apply them)."""

VARIANT_CHECKPOINTS = {"720p": "infinitystar_8b_720p_weights", "480p": "infinitystar_8b_480p_weights",
                       "interact": "InfinityStarInteract_24K_iters"}
"""The released transformer checkpoint each script loads."""

_VARIANT_NAMES = (("interact", re.compile(r"interact", re.IGNORECASE)), ("480p", re.compile(r"480p")),
                  ("720p", re.compile(r"720p")))

FIXED_ARGS = {"noise_input": 0, "apply_spatial_patchify": 0, "use_learnable_dim_proj": 0, "inner_scale_boost": 0,
              "use_two_stage_lfq": 1, "num_of_label_value": 2, "videovae": 10}
"""Official settings this port implements only with these values."""

PROMPT_SUFFIX = ", Close-up on big objects, emphasize scale and detail"
"""What the official scripts append to every caption."""


def variant_args(variant: str | None) -> dict[str, Any]:
    """The settings of an official script by variant name (``None``: the 720p script's)."""
    if variant is None:
        return {}
    if variant not in VARIANT_ARGS:
        raise ValueError(f"`variant` must be one of {VARIANTS} (the official scripts), got {variant!r}")
    return dict(VARIANT_ARGS[variant])


def variant_of_checkpoint(name: str) -> str | None:
    """The variant a released checkpoint's file or folder name says (``None``: the name says none)."""
    return next((variant for variant, pattern in _VARIANT_NAMES if pattern.search(name)), None)


def _number(args: dict, key: str, low: float, integer: bool = False) -> None:
    value = args[key]
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value >= low:
        what = "an integer" if integer else "a number"
        raise ValueError(f"config `args.{key}` must be {what} >= {low}, got {value!r}")


def resolve_args(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The released 720p settings updated with ``overrides`` (official ``Args`` names), validated."""
    args = dict(RELEASED_720P_ARGS)
    for key, value in dict(overrides or {}).items():
        if key == "video_fps":
            key = "fps"
        if key in FIXED_ARGS:
            if value != FIXED_ARGS[key]:
                raise ValueError(f"config `args.{key}` = {value!r} is not supported (only {FIXED_ARGS[key]!r})")
            continue
        if key not in RELEASED_720P_ARGS:
            logger.info("InfinityStar config: official setting %r does not affect inference here; ignored", key)
            continue
        args[key] = value
    for key in ("image_scale_repetition", "video_scale_repetition"):
        try:
            args[key] = parse_repetition(args[key])
        except (ValueError, TypeError) as err:
            raise ValueError(f"config `args.{key}`: {err}") from err
    if args["dynamic_scale_schedule"] not in VIDEO_SCHEDULES:
        raise ValueError(f"config `args.dynamic_scale_schedule` must be one of {VIDEO_SCHEDULES}, "
                         f"got {args['dynamic_scale_schedule']!r}")
    if args["use_apg"] + args["use_cfg"] != 1:
        raise ValueError("config `args.use_apg` and `args.use_cfg`: exactly one must be 1 (official assertion)")
    for key in ("cfg", "apg_norm_threshold", "h_div_w_template"):
        _number(args, key, 0.0)
    for key in ("tau_image", "tau_video"):
        _number(args, key, 1e-6)
    for key in ("fps", "video_frames", "semantic_scales", "detail_scale_min_tokens", "max_repeat_times",
                "frames_inner_clip", "context_frames", "context_interval", "context_from_largest_no"):
        _number(args, key, 0 if key.startswith("context") else 1, integer=True)
    if (args["video_frames"] - 1) % (4 * FRAMES_PER_CLIP):
        raise ValueError(f"config `args.video_frames` must be 1 + a multiple of {4 * FRAMES_PER_CLIP} "
                         f"(81, 161, ...), got {args['video_frames']}")
    meta, templates = get_dynamic_resolution_meta(args["dynamic_scale_schedule"], args["video_frames"])
    budgets = sorted(meta[float(templates[0])])
    if args["pn"] not in budgets:
        raise ValueError(f"config `args.pn` must be one of {budgets}, got {args['pn']!r}")
    args["cfg"] = float(args["cfg"])
    _check_durations(args)
    return args


def _check_durations(args: dict[str, Any]) -> None:
    """``durations`` and ``generation_duration``: whole lengths the schedule table of ``video_frames`` has."""
    lengths = [1] + list(range(1 + 4 * 4, args["video_frames"] + 1, 16))
    durations = args["durations"]
    if durations is not None:
        ok = isinstance(durations, (list, tuple)) and durations and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and 1 + args["fps"] * d in lengths
            for d in durations)
        if not ok:
            raise ValueError(f"config `args.durations` must be a list of seconds d with 1 + fps * d frames in "
                             f"{lengths}, got {durations!r}")
        args["durations"] = sorted(int(d) for d in durations)
    _number(args, "generation_duration", 1, integer=True)
    default = 1 + args["fps"] * args["generation_duration"]
    allowed = allowed_frame_counts(args)
    if default not in allowed:
        raise ValueError(f"config `args.generation_duration` = {args['generation_duration']} s gives {default} "
                         f"frames; allowed: {allowed}")


def supported_sizes(args: Mapping[str, Any]) -> dict[tuple[int, int], tuple[float, str]]:
    """``(height, width)`` in pixels -> (template, budget) for every template and pixel budget."""
    meta, templates = get_dynamic_resolution_meta(args["dynamic_scale_schedule"], args["video_frames"])
    sizes: dict[tuple[int, int], tuple[float, str]] = {}
    for budget in [args["pn"], *sorted(meta[float(templates[0])])]:  # the configured budget wins on ties
        for template in templates:
            pixel = tuple(int(v) for v in meta[float(template)][budget]["pixel"])
            sizes.setdefault(pixel, (float(template), budget))
    return sizes


def default_size(args: Mapping[str, Any]) -> tuple[int, int]:
    """The (height, width) of the official scripts: the configured budget at the template nearest the ratio."""
    meta, templates = get_dynamic_resolution_meta(args["dynamic_scale_schedule"], args["video_frames"])
    template = nearest_template(args["h_div_w_template"], templates)
    return tuple(int(v) for v in meta[template][args["pn"]]["pixel"])


def allowed_frame_counts(args: Mapping[str, Any]) -> list[int]:
    """Video lengths a call may ask for: ``1 + fps * d`` for the script's ``durations``; without a list, 1 (an
    image) and 1 + 16 k up to ``video_frames``."""
    if args.get("durations") is not None:
        return [1 + args["fps"] * d for d in args["durations"]]
    return [1] + list(range(1 + 4 * 4, args["video_frames"] + 1, 16))


def default_num_frames(args: Mapping[str, Any]) -> int:
    """A call's default length: ``generation_duration`` seconds (the official scripts' 5 s: 81 frames)."""
    return 1 + args["fps"] * args["generation_duration"]


def select_schedule(
    args: Mapping[str, Any], num_frames: int, height: int, width: int
) -> list[tuple[int, int, int]]:
    """The official scale schedule for a video of ``num_frames`` frames at ``height`` x ``width`` pixels.

    Raises ``ValueError`` naming the argument (with the allowed values) for an unsupported request.
    """
    frames = allowed_frame_counts(args)
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames not in frames:
        if args.get("durations") is not None:
            listed = " or ".join(f"{1 + args['fps'] * d} ({d} s)" for d in args["durations"])
            raise ValueError(f"`num_frames` must be {listed} for this model (the durations of its official "
                             f"script), got {num_frames!r}")
        raise ValueError(f"`num_frames` must be one of {frames} (1 + 16 k: whole latent seconds), got {num_frames!r}")
    sizes = supported_sizes(args)
    key = (height, width)
    if key not in sizes:
        listed = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
        raise ValueError(f"`height` x `width` = {height}x{width} is not a size of the official schedules; "
                         f"supported (height x width): {listed}")
    template, budget = sizes[key]
    meta, _ = get_dynamic_resolution_meta(args["dynamic_scale_schedule"], args["video_frames"])
    schedule = [tuple(s) for s in meta[template][budget]["pt2scale_schedule"][(num_frames - 1) // 4 + 1]]
    per_clip = get_first_full_spatial_size_scale_index(schedule) + 1
    for name in ("image_scale_repetition", "video_scale_repetition"):
        if len(args[name]) != per_clip:
            raise ValueError(
                f"`height` x `width` = {height}x{width} (budget {budget}) has {per_clip} scales per clip, but config "
                f"`args.{name}` has {len(args[name])} entries; pass repetition lists for this budget"
            )
    assert schedule[-1][1] * VAE_STRIDE == height and schedule[-1][2] * VAE_STRIDE == width
    return schedule
