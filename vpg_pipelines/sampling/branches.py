"""Batch layout of the guidance branches: rows ordered (prefix, condition, batch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BranchLayout:
    """``prefixes`` (1 clean, 2 clean+corrupted) x ``conditions`` (1, or 2 with CFG) x ``batch``.

    The corrupted group is last, so dropping it is a truncation of the rows; the null-condition
    group follows the real one inside each prefix group (the official CFG row order).
    """

    batch: int
    conditions: int
    prefixes: int
    null_only: bool = False
    """The condition axis is off and the one condition group holds the null rows (FasterVAR's CFG off)."""

    @property
    def condition_rows(self) -> int:
        return self.conditions * self.batch

    @property
    def rows(self) -> int:
        return self.prefixes * self.condition_rows

    def cond_index(self, prefixes: int | None = None) -> torch.Tensor:
        """Condition row of every batch row: ``0 .. condition_rows - 1`` repeated per prefix group."""
        first = self.batch if self.null_only else 0
        return torch.arange(first, first + self.condition_rows).repeat(self.prefixes if prefixes is None else prefixes)

    def prefix_index(self, prefixes: int | None = None) -> torch.Tensor:
        """Prefix branch of every row: 0 (clean) for the first group, 1 (corrupted) for the second."""
        groups = self.prefixes if prefixes is None else prefixes
        return torch.arange(groups).repeat_interleave(self.condition_rows)

    def split(self, tensor: torch.Tensor) -> torch.Tensor:
        """(rows, ...) -> (prefixes, conditions, batch, ...)."""
        return tensor.view(self.prefixes, self.conditions, self.batch, *tensor.shape[1:])

    def mix_conditions(self, hidden: torch.Tensor, strength: torch.Tensor | float) -> torch.Tensor:
        """CFG on hidden states ``(rows, N, D)``: both condition rows get ``s*c + (1-s)*u``.

        ``strength`` may be per token ``(N,)``; tokens whose strength is 1 are left untouched (the
        official sampler does not mix at scales with cfg = 1).
        """
        split = self.split(hidden)
        cond, uncond = split[:, 0], split[:, 1]
        if isinstance(strength, torch.Tensor):
            s = strength.to(hidden.dtype)[:, None]
            mixed = cond * s + uncond * (1 - s)
            keep = (strength == 1.0)[:, None]
            new = torch.stack([mixed, torch.where(keep, uncond, mixed)], dim=1)
        else:
            mixed = cond * strength + uncond * (1.0 - strength)
            new = torch.stack([mixed, mixed], dim=1)
        return new.reshape(hidden.shape)
