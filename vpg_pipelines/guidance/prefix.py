"""Visual Prefix Guidance over the prefix axis: ``out = g~ + w * (g - g~)``.

``g`` is the (CFG-guided) prediction on the clean generated prefix, ``g~`` the same prediction on a
corrupted copy of that prefix (``corruption.py``). See ``docs/vpg.md`` for every option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

MODES = ("full", "token", "position", "codebook")
REFRESH = ("persistent", "resample")
SCALE_PRESETS = ("all", "semantic")


@dataclass(frozen=True)
class PrefixGuidance:
    """VPG settings.

    Args:
        scale: ``w`` (``vpg_scale``), >= 0. ``w = 1`` is plain sampling, ``w = 0`` the corrupted
            branch alone.
        corruption: fraction ``p`` in [0, 1] of the sites of each prefix scale that take a donor's
            input (``floor(p * n)`` sites).
        mode: ``"full"`` (donor's content and position; the paper's method), ``"token"`` (content
            only), ``"position"`` (position only), ``"codebook"`` (a random codebook entry's content).
        refresh: ``"persistent"`` (each scale corrupted once, kept in the corrupted branch's KV
            cache) or ``"resample"`` (a fresh corruption of the whole prefix at every guided step,
            recomputed from scratch).
        scales: ``"all"``, ``"semantic"`` (the model's early scales) or a list of scale indices.
        always_compute: run the corrupted branch even when it cannot change the result
            (``w == 1`` or ``p == 0``); for tests and measurements.
    """

    scale: float = 1.5
    corruption: float = 0.5
    mode: str = "full"
    refresh: str = "persistent"
    scales: str | Sequence[int] = "all"
    always_compute: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not self.scale >= 0:
            raise ValueError(f"`vpg_scale` must be a number >= 0, got {self.scale!r}")
        if isinstance(self.corruption, bool) or not isinstance(self.corruption, (int, float)) or not (
            0.0 <= self.corruption <= 1.0
        ):
            raise ValueError(f"`vpg_corruption` must be a number in [0, 1], got {self.corruption!r}")
        if self.mode not in MODES:
            raise ValueError(f"`vpg_mode` must be one of {MODES}, got {self.mode!r}")
        if self.refresh not in REFRESH:
            raise ValueError(f"`vpg_refresh` must be one of {REFRESH}, got {self.refresh!r}")
        scales_ok = self.scales in SCALE_PRESETS if isinstance(self.scales, str) else (
            isinstance(self.scales, Sequence)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in self.scales)
        )
        if not scales_ok:
            raise ValueError(
                f"`vpg_scales` must be 'all', 'semantic' or a list of integer scale indices, got {self.scales!r}"
            )

    @property
    def is_noop(self) -> bool:
        """True when the corrupted branch cannot change the output (and is therefore skipped)."""
        return not self.always_compute and (self.scale == 1.0 or self.corruption == 0.0)

    def guided_scales(self, num_scales: int, semantic: set[int]) -> set[int]:
        """Scale indices this guidance applies to (validated against ``num_scales``).

        ``semantic`` is the model's set of early ("semantic") scale indices.
        """
        if self.scales == "all":
            return set(range(num_scales))
        if self.scales == "semantic":
            return set(semantic)
        bad = [s for s in self.scales if not 0 <= s < num_scales]
        if bad:
            raise ValueError(f"`vpg_scales` entries must be in [0, {num_scales - 1}] for this model, got {bad}")
        return set(self.scales)

    def combine(self, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """``corrupted + w * (clean - corrupted)``."""
        return corrupted + (clean - corrupted) * self.scale
