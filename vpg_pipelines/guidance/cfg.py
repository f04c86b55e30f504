"""Classifier-free guidance over the condition axis: ``g = u + s_k * (c - u)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config

from .base import MAX_STRENGTH, NEEDS_CONDITIONS, GuidanceStep, GuidanceTerm, strength_ok

SCHEDULES = ("constant", "linear")


class ScaleSchedule:
    """The per-scale strength of a condition term (CFG, APG): a number with a schedule, or one per scale.

    Expects ``scale``, ``schedule``, ``enabled`` and the range methods of :class:`GuidanceTerm`.
    """

    def scale_at(self, scale_index: int, num_scales: int) -> float:
        """The strength ``s_k`` at scale ``scale_index`` of ``num_scales``."""
        if isinstance(self.scale, Sequence):
            if len(self.scale) != num_scales:
                raise ValueError(f"`guidance_scale` list has {len(self.scale)} values for {num_scales} scales")
            return float(self.scale[scale_index])
        if self.schedule == "linear":
            return 1.0 + float(self.scale) * scale_index / max(num_scales - 1, 1)
        return float(self.scale)

    def is_active(self, num_scales: int) -> bool:
        """Null rows are needed at every scale as soon as one scale is guided (their cache is shared)."""
        return self.uses_rows(list(range(num_scales)), num_scales)

    def uses_rows(self, step_scales: list[int], num_scales: int) -> bool:
        n = len(step_scales)
        return self.enabled and any(
            self.in_range(i, n) and self.scale_at(k, num_scales) != 1.0 for i, k in enumerate(step_scales)
        )

    def strength(self, step: GuidanceStep) -> float:
        """``s_k`` at this step; 1 (the conditional logits) when disabled or outside ``[start, stop)``."""
        return self.scale_at(step.step.scale, step.num_scales) if self.is_on(step) else 1.0


class ClassifierFreeGuidance(ScaleSchedule, GuidanceTerm):
    """CFG with a per-scale strength ``s_k``.

    Args:
        scale: the guidance strength, or one value per scale (a list).
        schedule: ``"constant"``: ``s_k = scale`` (Infinity's cfg list); ``"linear"``: VAR's ramp
            ``s_k = 1 + scale * k / (K - 1)`` (unguided first scale, ``1 + scale`` at the last).
            Ignored when ``scale`` is a list.
        layer: ``0`` combines the logits; a negative value ``-n`` combines the hidden states after
            block ``depth - n`` instead (Infinity's ``cfg_insertion_layer``), after which both
            condition rows carry the guided state.
        start, stop, enabled: see :class:`~vpg_pipelines.guidance.base.GuidanceTerm`; outside
            ``[start, stop)`` (or disabled) the strength is 1: the conditional logits.

    ``scale`` may be changed between steps (the pipelines do so for ``pipe._guidance_scale``).
    """

    needs = NEEDS_CONDITIONS
    display_name = "CFG"

    @register_to_config
    def __init__(
        self,
        scale: float | Sequence[float] = 1.5,
        schedule: str = "constant",
        layer: int = 0,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        if schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer > 0:
            raise ValueError(f"`layer` must be 0 (logits) or negative (after a block), got {layer}")
        values = list(scale) if isinstance(scale, Sequence) else [scale]
        if not values or not all(strength_ok(v, -MAX_STRENGTH) for v in values):
            raise ValueError(f"`guidance_scale` must be a number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] or a "
                             f"non-empty list of them, got {scale!r}")
        self.scale = scale
        self.schedule = schedule
        self.layer = layer

    def describe(self) -> str:
        return f"CFG {self.scale:g}" if isinstance(self.scale, (int, float)) else "CFG (per scale)"

    @staticmethod
    def combine(cond: torch.Tensor, uncond: torch.Tensor, strength: float) -> torch.Tensor:
        """``s * cond + (1 - s) * uncond`` (the official formulas of VAR and Infinity)."""
        return cond * strength + uncond * (1.0 - strength)

    def reduce_conditions(self, cond: torch.Tensor, uncond: torch.Tensor | None, guided: torch.Tensor | None,
                          step: GuidanceStep) -> torch.Tensor:
        """The official combination ``s·c + (1 - s)·u``; after another condition term (e.g. IGG listed
        first) its nudge ``combine(c, u, s) - u`` is added to that term's result instead."""
        s = self.strength(step)
        if self.layer != 0:  # mixed at a hidden layer: both condition rows already carry the guided state
            return cond if guided is None else guided
        if uncond is None:
            if s != 1.0:
                raise ValueError("CFG: `guidance_scale` was switched on during sampling, but this call started with "
                                 "CFG off and built no null-condition rows; start the call with CFG on")
            return cond if guided is None else guided
        out = self.combine(cond, uncond, s)
        return out if guided is None else guided + (out - uncond)
