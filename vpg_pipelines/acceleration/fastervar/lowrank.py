"""FasterVAR's low-rank step as pure tensor functions (no model, no sampler).

At a low-rank scale each block group runs on ``r`` random mixtures of the scale's ``N`` tokens instead
of the tokens themselves, and its ``r`` outputs are written back at ``r`` positions drawn by importance;
every other position takes the group's output at the previous scale, resized to the current grid
("random projection + representative token restoration", Guo et al., FasterVAR / StageVAR, ICML 2026).

Order of the random draws (what makes a run reproducible from a seed, and equal to the authors' code on
the CPU): per group, first the positions (``torch.multinomial`` without replacement over the stacked
rows: ``rows * N`` exponential variates), then the sketch (``rows * N * r`` standard normals, row-major).
Both consume the generator by an amount fixed by the shapes, whatever the data, so a test may replace
the drawn positions (:func:`draw_positions` still draws) and the sketch that follows stays the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMPORTANCE_FLOOR = 0.1
"""The authors' constant ``c`` of the importance (``c·n_i / Σn``, renormalised): it cancels, but keeping
their order of operations keeps the probabilities, hence the draws, bitwise equal to theirs."""
TINY = 1e-12
"""Floor of the sums in the importance (an all-zero row would divide by zero)."""


def importance(x: torch.Tensor) -> torch.Tensor:
    """Draw probabilities ``(rows, N)`` float32 proportional to each token's squared norm in ``x (rows, N, C)``."""
    x = x.float()
    norm2 = torch.linalg.vector_norm(x, dim=2) ** 2
    weights = IMPORTANCE_FLOOR * norm2 / norm2.sum(dim=1, keepdim=True).clamp_min(TINY)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(TINY)


def draw_positions(prob: torch.Tensor, rank: int, generator: torch.Generator | None,
                   override: torch.Tensor | None = None) -> torch.Tensor:
    """``rank`` distinct positions per row ``(rows, rank)`` int64, drawn from ``prob (rows, N)``, in draw order.

    ``override`` (``(rows, rank)``) replaces the result after the draw, so the generator advances as usual
    (parity tests inject the positions the authors' run drew: the race is too fragile to reproduce from
    features that differ by rounding).
    """
    drawn = torch.multinomial(prob, rank, replacement=False, generator=generator)
    if override is None:
        return drawn
    if tuple(override.shape) != tuple(drawn.shape):
        raise ValueError(f"injected positions must be {tuple(drawn.shape)}, got {tuple(override.shape)}")
    return override.to(drawn)


def gaussian_sketch(rows: int, tokens: int, rank: int, generator: torch.Generator | None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """``(rows, tokens, rank)`` float32 standard normals times ``1/sqrt(rank)``."""
    sketch = torch.randn(rows, tokens, rank, generator=generator, device=device)
    return sketch * (1.0 / math.sqrt(rank))


def project_tokens(x: torch.Tensor, sketch: torch.Tensor) -> torch.Tensor:
    """``sketchᵀ x``: ``(rows, rank, C)`` mixtures of all ``N`` tokens of ``x`` (float32 math, ``x``'s dtype)."""
    return torch.bmm(sketch.transpose(1, 2), x.float()).to(x.dtype)


def resize_tokens(tokens: torch.Tensor, grid: tuple[int, ...], target: tuple[int, ...]) -> torch.Tensor:
    """Tokens ``(rows, prod(grid), C)`` on ``grid`` (``(h, w)`` or ``(t, h, w)``) area-resized to ``target``."""
    if len(grid) != len(target) or len(grid) not in (2, 3):
        raise ValueError(f"grids must both be (h, w) or (t, h, w), got {grid} and {target}")
    rows, n, channels = tokens.shape
    if n != math.prod(grid):
        raise ValueError(f"{n} tokens do not fill the grid {grid}")
    spatial = tokens.reshape(rows, *grid, channels).movedim(-1, 1)
    resized = F.interpolate(spatial, size=tuple(target), mode="area")
    return resized.movedim(1, -1).reshape(rows, math.prod(target), channels)


def restore_tokens(outputs: torch.Tensor, previous: torch.Tensor, previous_grid: tuple[int, ...],
                   grid: tuple[int, ...], positions: torch.Tensor) -> torch.Tensor:
    """The full-size group output ``(rows, N, C)``: ``previous`` (this group's output at the previous scale,
    ``(rows, N', C)`` on ``previous_grid``) area-resized to ``grid``, with ``outputs[:, j]`` written at
    ``positions[:, j]``."""
    if previous.shape[0] != outputs.shape[0] or positions.shape != outputs.shape[:2]:
        raise ValueError(f"rows / ranks disagree: outputs {tuple(outputs.shape)}, previous {tuple(previous.shape)}, "
                         f"positions {tuple(positions.shape)}")
    full = resize_tokens(previous, previous_grid, grid).to(outputs.dtype)
    index = positions[:, :, None].expand(-1, -1, outputs.shape[-1])
    return full.scatter_(1, index, outputs)


def rank_of(ratio: float, tokens: int, plus_one: bool) -> int:
    """Mixtures per row at a scale of ``tokens`` tokens, clamped to ``[1, tokens]``.

    ``plus_one``: the Infinity rule ``⌊ratio·N⌋ + 1`` (the rank-ratio presets); otherwise the InfinityStar
    rule ``⌊N·ratio⌋`` (``rp_rank_ratio``). Both in double precision, as the authors compute them.
    """
    rank = int(ratio * tokens) + (1 if plus_one else 0)
    return max(1, min(tokens, rank))
