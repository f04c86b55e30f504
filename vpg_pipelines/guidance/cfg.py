"""Classifier-free guidance over the condition axis: ``g = u + s_k * (c - u)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """CFG with a per-scale strength ``s_k``.

    Args:
        scale: the guidance strength, or one value per scale (a list).
        schedule: ``"constant"``: ``s_k = scale`` (Infinity's cfg list); ``"linear"``: VAR's ramp
            ``s_k = 1 + scale * k / (K - 1)`` (unguided first scale, ``1 + scale`` at the last).
            Ignored when ``scale`` is a list.
        layer: ``0`` combines the logits; a negative value ``-n`` combines the hidden states after
            block ``depth - n`` instead (Infinity's ``cfg_insertion_layer``), after which both
            condition rows carry the guided state.
    """

    scale: float | Sequence[float] = 1.5
    schedule: str = "constant"
    layer: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.layer > 0:
            raise ValueError(f"`layer` must be 0 (logits) or negative (after a block), got {self.layer}")
        values = list(self.scale) if isinstance(self.scale, Sequence) else [self.scale]
        if not values or not all(isinstance(v, (int, float)) and v == v for v in values):
            raise ValueError(f"`guidance_scale` must be a number or a non-empty list of numbers, got {self.scale!r}")

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
        return any(self.scale_at(k, num_scales) != 1.0 for k in range(num_scales))

    @staticmethod
    def combine(cond: torch.Tensor, uncond: torch.Tensor, strength: float) -> torch.Tensor:
        """``s * cond + (1 - s) * uncond`` (the official formulas of VAR and Infinity)."""
        return cond * strength + uncond * (1.0 - strength)
