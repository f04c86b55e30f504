"""Adaptive projected guidance (APG) over the condition axis, as InfinityStar applies it to logits.

Reference:
    Seyedmorteza Sadat, Otmar Hilliges and Romann M. Weber, "Eliminating Oversaturation and Artifacts of
    High Guidance Scales in Diffusion Models", ICLR 2025; arXiv:2410.02416 (2024),
    https://arxiv.org/abs/2410.02416.

``diff = cond - uncond`` is scaled down so that its RMS over (sites, channels) is at most
``norm_threshold``, split into the parts parallel and orthogonal to ``cond`` (projection in float64
over the last two dimensions, on the CPU for a device without float64), and
``guided = cond + (s - 1) * (orthogonal + eta * parallel)`` — the paper's projection and rescaling without
its momentum, as InfinityStar's sampler uses it. The interface
mirrors :class:`~vpg_pipelines.guidance.cfg.ClassifierFreeGuidance`: both are condition-axis terms of the
guidance chain and share :class:`~vpg_pipelines.guidance.cfg.StrengthSchedule`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config

from ..devices import compute_in_float64
from .base import NEEDS_CONDITIONS, GuidanceTerm, accepts_renamed_keywords
from .cfg import StrengthSchedule


def project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parts of ``v0`` parallel and orthogonal to ``v1`` over the last two dims, in the inputs' dtype."""
    v1 = torch.nn.functional.normalize(v1, dim=[-1, -2])
    parallel = (v0 * v1).sum(dim=[-1, -2], keepdim=True) * v1
    return parallel, v0 - parallel


def _project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`project` in float64 as the official sampler computes it: on the logits' device where it has
    float64, on the CPU where it has none (``mps``, ``xpu``; :func:`~vpg_pipelines.devices.compute_in_float64`)."""
    return compute_in_float64(project, v0, v1)


class AdaptiveProjectedGuidance(StrengthSchedule, GuidanceTerm):
    """APG with a per-scale strength ``s_k``.

    Args:
        guidance_scale (`float` or `list[float]`, defaults to 34.0): the strength ``s`` (InfinityStar's
            ``cfg``, 34 for the released 720p model), or one value per scale. ``scale=`` is its deprecated
            name (accepted with a ``FutureWarning`` until 0.2.0).
        norm_threshold (`float`, defaults to 0.05): the RMS bound of the difference
            (``apg_norm_threshold``; 0 disables it).
        eta (`float`, defaults to 0.0): weight of the parallel part (0 in the released settings).
        schedule (`str`, defaults to `"constant"`): ``"constant"`` or ``"linear"``
            (``1 + guidance_scale * k / (K - 1)``) as for CFG.
        layer (`int`, defaults to 0): only 0 (logits) is supported; kept for interface parity with CFG.
        start, stop, enabled: see :class:`~vpg_pipelines.guidance.base.GuidanceTerm`; outside the
            range the strength is 1 (the conditional logits).
    """

    needs = NEEDS_CONDITIONS
    display_name = "APG"

    @accepts_renamed_keywords
    @register_to_config
    def __init__(
        self,
        guidance_scale: float | Sequence[float] = 34.0,
        norm_threshold: float = 0.05,
        eta: float = 0.0,
        schedule: str = "constant",
        layer: int = 0,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        self._set_strength(guidance_scale, schedule)
        if layer != 0:
            raise ValueError(f"APG combines logits only: `layer` must be 0, got {layer}")
        if not (isinstance(norm_threshold, (int, float)) and norm_threshold >= 0):
            raise ValueError(f"`norm_threshold` must be a number >= 0, got {norm_threshold!r}")
        if not isinstance(eta, (int, float)) or eta != eta:
            raise ValueError(f"`eta` must be a number, got {eta!r}")
        self.norm_threshold = norm_threshold
        self.eta = eta
        self.layer = layer

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, strength: float) -> torch.Tensor:
        """Guided logits from ``cond`` / ``uncond`` ``(..., n, V)``; the norms run over the last two dims.

        A strength of 1 returns ``cond`` (the official sampler skips guidance there).
        """
        if strength == 1.0:
            return cond
        diff = cond - uncond
        if self.norm_threshold > 0:
            n, v = diff.shape[-2:]
            rms = 1 / math.sqrt(n * v) * diff.norm(p=2, dim=[-1, -2], keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / rms)
        parallel, orthogonal = _project(diff, cond)
        return cond + (strength - 1) * (orthogonal + self.eta * parallel)
