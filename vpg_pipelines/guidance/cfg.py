"""Classifier-free guidance (CFG) over the condition axis: ``g = u + s_k * (c - u)``.

Reference:
    Jonathan Ho and Tim Salimans, "Classifier-Free Diffusion Guidance", NeurIPS 2021 Workshop on Deep
    Generative Models and Downstream Applications; arXiv:2207.12598 (2022),
    https://arxiv.org/abs/2207.12598.

The next-scale models apply it to logits with their own per-scale schedules (VAR's linear ramp,
Infinity's per-scale list); :class:`StrengthSchedule` holds that schedule for CFG and APG alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config

from .base import (
    MAX_STRENGTH,
    NEEDS_CONDITIONS,
    GuidanceStep,
    GuidanceTerm,
    accepts_renamed_keywords,
    strength_ok,
)

SCHEDULES = ("constant", "linear")


class StrengthSchedule:
    """The per-scale strength ``s_k`` of a condition term (CFG, APG) and the reduction they share.

    ``guidance_scale`` is a number with a ``schedule`` or one value per scale; ``k`` is the step's scale
    index (its resolution level) and ``K`` the run's number of scales. Mixed into a
    :class:`~vpg_pipelines.guidance.base.GuidanceTerm` that defines ``combine(cond, uncond, strength)``.
    """

    guidance_scale: float | Sequence[float]
    schedule: str

    def _set_strength(self, guidance_scale: float | Sequence[float], schedule: str) -> None:
        """Check and keep the strength and its schedule (the part of ``__init__`` CFG and APG share)."""
        if schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}")
        values = list(guidance_scale) if isinstance(guidance_scale, Sequence) else [guidance_scale]
        if not values or not all(strength_ok(v, -MAX_STRENGTH) for v in values):
            raise ValueError(f"`guidance_scale` must be a number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] or a "
                             f"non-empty list of them, got {guidance_scale!r}")
        self.guidance_scale = guidance_scale
        self.schedule = schedule

    def strength_at(self, scale_index: int, num_scales: int) -> float:
        """The strength ``s_k`` at scale ``scale_index`` of ``num_scales``."""
        if isinstance(self.guidance_scale, Sequence):
            if len(self.guidance_scale) != num_scales:
                raise ValueError(f"`guidance_scale` list has {len(self.guidance_scale)} values for {num_scales} "
                                 "scales")
            return float(self.guidance_scale[scale_index])
        if self.schedule == "linear":
            return 1.0 + float(self.guidance_scale) * scale_index / max(num_scales - 1, 1)
        return float(self.guidance_scale)

    def is_active(self, num_scales: int) -> bool:
        """Null rows are needed at every scale as soon as one scale is guided (their cache is shared)."""
        return self.uses_rows(list(range(num_scales)), num_scales)

    def uses_rows(self, step_scales: list[int], num_scales: int) -> bool:
        n = len(step_scales)
        return self.enabled and any(
            self.in_range(i, n) and self.strength_at(k, num_scales) != 1.0 for i, k in enumerate(step_scales)
        )

    def strength(self, step: GuidanceStep) -> float:
        """``s_k`` at this step; 1 (the conditional logits) when disabled or outside ``[start, stop)``."""
        return self.strength_at(step.step.scale, step.num_scales) if self.is_on(step) else 1.0

    def describe(self) -> str:
        if isinstance(self.guidance_scale, (int, float)):
            return f"{self.display_name} {self.guidance_scale:g}"
        return f"{self.display_name} (per scale)"

    def reduce_conditions(self, cond: torch.Tensor, uncond: torch.Tensor | None, guided: torch.Tensor | None,
                          step: GuidanceStep) -> torch.Tensor:
        """``combine(c, u, s_k)``; after another condition term (e.g. IGG listed first) its nudge
        ``combine(c, u, s_k) - u`` is added to that term's result instead."""
        s = self.strength(step)
        if uncond is None:
            if s != 1.0:
                raise ValueError(f"{self.display_name}: `guidance_scale` was switched on during sampling, but this "
                                 "call started with guidance off and built no null-condition rows; start the call "
                                 "with guidance on")
            return cond if guided is None else guided
        out = self.combine(cond, uncond, s)
        return out if guided is None else guided + (out - uncond)


class ClassifierFreeGuidance(StrengthSchedule, GuidanceTerm):
    """CFG with a per-scale strength ``s_k``.

    Args:
        guidance_scale (`float` or `list[float]`, defaults to 1.5): the strength ``s``, or one value per
            scale. ``scale=`` is its deprecated name (accepted with a ``FutureWarning`` until 0.2.0).
        schedule (`str`, defaults to `"constant"`): ``"constant"``: ``s_k = guidance_scale`` (Infinity's
            cfg list); ``"linear"``: VAR's ramp ``s_k = 1 + guidance_scale * k / (K - 1)`` (unguided first
            scale, ``1 + guidance_scale`` at the last). Ignored when ``guidance_scale`` is a list.
        layer (`int`, defaults to 0): ``0`` combines the logits; a negative value ``-n`` combines the hidden
            states after block ``depth - n`` instead (Infinity's ``cfg_insertion_layer``), after which both
            condition rows carry the guided state.
        start, stop, enabled: see :class:`~vpg_pipelines.guidance.base.GuidanceTerm`; outside
            ``[start, stop)`` (or disabled) the strength is 1: the conditional logits.

    ``guidance_scale`` may be changed between steps (the pipelines do so for ``pipe._guidance_scale``).
    """

    needs = NEEDS_CONDITIONS
    display_name = "CFG"

    @accepts_renamed_keywords
    @register_to_config
    def __init__(
        self,
        guidance_scale: float | Sequence[float] = 1.5,
        schedule: str = "constant",
        layer: int = 0,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        self._set_strength(guidance_scale, schedule)
        if isinstance(layer, bool) or not isinstance(layer, int) or layer > 0:
            raise ValueError(f"`layer` must be 0 (logits) or negative (after a block), got {layer}")
        self.layer = layer

    @staticmethod
    def combine(cond: torch.Tensor, uncond: torch.Tensor, strength: float) -> torch.Tensor:
        """``s * cond + (1 - s) * uncond`` (the official formulas of VAR and Infinity)."""
        return cond * strength + uncond * (1.0 - strength)

    def reduce_conditions(self, cond: torch.Tensor, uncond: torch.Tensor | None, guided: torch.Tensor | None,
                          step: GuidanceStep) -> torch.Tensor:
        """The official combination ``s·c + (1 - s)·u`` (see :meth:`StrengthSchedule.reduce_conditions`)."""
        if self.layer != 0:  # mixed at a hidden layer: both condition rows already carry the guided state
            return cond if guided is None else guided
        return super().reduce_conditions(cond, uncond, guided, step)
