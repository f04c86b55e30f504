"""Adaptive projected guidance (APG) over the condition axis, as InfinityStar applies it to logits.

``diff = cond - uncond`` is scaled down so that its RMS over (sites, channels) is at most
``norm_threshold``, split into the parts parallel and orthogonal to ``cond`` (projection in float64
over the last two dimensions), and ``guided = cond + (s - 1) * (orthogonal + eta * parallel)``.
The interface mirrors :class:`~vpg_pipelines.guidance.cfg.ClassifierFreeGuidance`: both are
condition-axis terms of the guidance chain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config

from .base import MAX_STRENGTH, NEEDS_CONDITIONS, GuidanceStep, GuidanceTerm, strength_ok
from .cfg import SCHEDULES, ScaleSchedule


def _project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parts of ``v0`` parallel and orthogonal to ``v1`` over the last two dims (computed in float64)."""
    dtype = v0.dtype
    v0, v1 = v0.double(), v1.double()
    v1 = torch.nn.functional.normalize(v1, dim=[-1, -2])
    parallel = (v0 * v1).sum(dim=[-1, -2], keepdim=True) * v1
    return parallel.to(dtype), (v0 - parallel).to(dtype)


class AdaptiveProjectedGuidance(ScaleSchedule, GuidanceTerm):
    """APG with a per-scale strength ``s_k``.

    Args:
        scale: the guidance strength (InfinityStar's ``cfg``, 34 for the released 720p model), or one
            value per scale.
        norm_threshold: the RMS bound of the difference (``apg_norm_threshold``; 0 disables it).
        eta: weight of the parallel part (0 in the released settings).
        schedule: ``"constant"`` or ``"linear"`` (``1 + scale * k / (K - 1)``) as for CFG.
        layer: only 0 (logits) is supported; kept for interface parity with CFG.
        start, stop, enabled: see :class:`~vpg_pipelines.guidance.base.GuidanceTerm`; outside the
            range the strength is 1 (the conditional logits).
    """

    needs = NEEDS_CONDITIONS
    display_name = "APG"

    @register_to_config
    def __init__(
        self,
        scale: float | Sequence[float] = 34.0,
        norm_threshold: float = 0.05,
        eta: float = 0.0,
        schedule: str = "constant",
        layer: int = 0,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        if schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}")
        if layer != 0:
            raise ValueError(f"APG combines logits only: `layer` must be 0, got {layer}")
        if not (isinstance(norm_threshold, (int, float)) and norm_threshold >= 0):
            raise ValueError(f"`norm_threshold` must be a number >= 0, got {norm_threshold!r}")
        if not isinstance(eta, (int, float)) or eta != eta:
            raise ValueError(f"`eta` must be a number, got {eta!r}")
        values = list(scale) if isinstance(scale, Sequence) else [scale]
        if not values or not all(strength_ok(v, -MAX_STRENGTH) for v in values):
            raise ValueError(f"`guidance_scale` must be a number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] or a "
                             f"non-empty list of them, got {scale!r}")
        self.scale = scale
        self.norm_threshold = norm_threshold
        self.eta = eta
        self.schedule = schedule
        self.layer = layer

    def describe(self) -> str:
        return f"APG {self.scale:g}" if isinstance(self.scale, (int, float)) else "APG (per scale)"

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, step_scale: float) -> torch.Tensor:
        """Guided logits from ``cond`` / ``uncond`` ``(..., n, V)``; the norms run over the last two dims.

        A strength of 1 returns ``cond`` (the official sampler skips guidance there).
        """
        if step_scale == 1.0:
            return cond
        diff = cond - uncond
        if self.norm_threshold > 0:
            n, v = diff.shape[-2:]
            rms = 1 / math.sqrt(n * v) * diff.norm(p=2, dim=[-1, -2], keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / rms)
        parallel, orthogonal = _project(diff, cond)
        return cond + (step_scale - 1) * (orthogonal + self.eta * parallel)

    def reduce_conditions(self, cond: torch.Tensor, uncond: torch.Tensor | None, guided: torch.Tensor | None,
                          step: GuidanceStep) -> torch.Tensor:
        """APG of one prefix branch; after another condition term, its nudge ``apg - u`` is added."""
        s = self.strength(step)
        if uncond is None:
            if s != 1.0:
                raise ValueError("APG: `guidance_scale` was switched on during sampling, but this call started with "
                                 "guidance off and built no null-condition rows; start the call with guidance on")
            return cond if guided is None else guided
        out = self.combine(cond, uncond, s)
        return out if guided is None else guided + (out - uncond)
