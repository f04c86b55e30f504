"""Argument checks shared by the pipelines: each raises one error that names the argument and its range."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from ..guidance.prefix import PrefixGuidance

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 exclusive: bool = False) -> None:
    """A finite real number in ``[low, high]`` (``(low, high]`` when ``exclusive``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and low is not None and (value <= low if exclusive else value < low):
        ok = False
    if ok and high is not None and value > high:
        ok = False
    if not ok:
        lower = f"{'>' if exclusive else '>='} {low}"
        rng = f"{'(' if exclusive else '['}{low}, {high}]" if high is not None else lower
        raise ValueError(f"`{name}` must be a finite number {rng}, got {value!r}")


def check_count(name: str, value: Any) -> None:
    """An integer >= 1 (``num_images_per_prompt``, ``num_videos_per_prompt``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")


def check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"`top_k` must be an integer >= 0 (0 disables it), got {top_k!r}")


def check_generator(generator: Any, batch: int) -> None:
    """One ``torch.Generator``, or a list of exactly ``batch`` of them (one per output)."""
    if isinstance(generator, list):
        if len(generator) != batch:
            raise ValueError(
                f"`generator`: you have passed a list of generators of length {len(generator)}, but requested "
                f"an effective batch size of {batch}. Make sure the batch size matches the generators."
            )
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise TypeError("`generator` list entries must be torch.Generator objects")
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {type(generator)}")


def check_output(output_type: Any, callback: Any, tensor_inputs: Any, allowed_inputs: Sequence[str]) -> None:
    """``output_type``, ``callback_on_step_end`` and ``callback_on_step_end_tensor_inputs``."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if callback is not None and not callable(callback):
        raise TypeError("`callback_on_step_end` must be callable")
    inputs = [] if tensor_inputs is None else tensor_inputs
    if not isinstance(inputs, (list, tuple)) or any(k not in allowed_inputs for k in inputs):
        raise ValueError(
            f"`callback_on_step_end_tensor_inputs` has to be in {list(allowed_inputs)}, but found {inputs}"
        )


def prefix_guidance(vpg_scale: float, vpg_corruption: float, vpg_mode: str, vpg_refresh: str,
                    vpg_scales: str | Sequence[int], num_scales: int,
                    corrupt_conditioning: bool = False) -> PrefixGuidance:
    """The call's VPG settings, explicit scale lists range-checked against ``num_scales``."""
    if isinstance(vpg_scales, tuple):
        vpg_scales = list(vpg_scales)
    guidance = PrefixGuidance(vpg_scale, vpg_corruption, vpg_mode, vpg_refresh, vpg_scales,
                              corrupt_conditioning=corrupt_conditioning)
    guidance.guided_scales(num_scales, set())
    return guidance
