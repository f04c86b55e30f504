"""Infinity's dynamic-resolution scale schedules and RoPE-2D positions.

Facts from the official ``infinity/utils/dynamic_resolution.py``: 15 aspect templates (h/w), each
with 13 latent grids; a pixel budget takes a prefix of them. A grid site is 16 px for both VAEs (the
8B model's patch-8 VAE works at 2h x 2w).

Positions. A site's RoPE position is a pair (row, column) on a 128 x 128 angle grid; we encode it as
the integer ``row * ROPE_GRID + column`` (a *position id*), which is what the transformer takes per
token. In the released "star" mode (``rope2d_normalized_by_hw`` = 2) every scale's sites are spread
over the last grid of the **1M** schedule of the same template, whatever the pixel budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

ROPE_GRID = 128
"""Side of the official RoPE angle grid (2048 px / 16)."""

PIXELS_PER_SITE = 16

_BASE_GRIDS: dict[float, tuple[tuple[int, int], ...]] = {
    1.0: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
          (48, 48), (64, 64)),
    1.25: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
           (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)),
    1.5: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
          (63, 42), (78, 52)),
    1.75: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
           (70, 40), (84, 48)),
    2.0: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
          (74, 37), (90, 45)),
    2.5: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
          (80, 32), (100, 40)),
    3.0: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
          (90, 30), (111, 37)),
}


def _with_inverses() -> dict[float, tuple[tuple[int, int], ...]]:
    grids = dict(_BASE_GRIDS)
    for ratio, hws in _BASE_GRIDS.items():
        if ratio != 1.0:  # the inverse ratio is written as int(1000 / r) / 1000, as the official table does
            grids[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in hws)
    return grids


TEMPLATE_GRIDS = _with_inverses()
"""Aspect template h/w -> its 13 latent grids (h, w)."""

H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(TEMPLATE_GRIDS)
PIXEL_BUDGETS: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
"""Pixel budget -> number of scales (a prefix of the template's grids)."""

ROPE_MODES = (0, 2)


def nearest_template(h_div_w: float) -> float:
    """The template aspect ratio nearest to ``h_div_w`` (first one on ties, like ``np.argmin``)."""
    if not (isinstance(h_div_w, (int, float)) and math.isfinite(h_div_w) and h_div_w > 0):
        raise ValueError(f"`h_div_w` must be a positive finite number, got {h_div_w!r}")
    return min(H_DIV_W_TEMPLATES, key=lambda t: abs(h_div_w - t))


def template_grids(h_div_w_template: float, pn: str = "1M") -> list[tuple[int, int]]:
    """The latent grids of a template and pixel budget."""
    if h_div_w_template not in TEMPLATE_GRIDS:
        raise ValueError(f"`h_div_w_template` must be one of {sorted(TEMPLATE_GRIDS)}, got {h_div_w_template!r}")
    if pn not in PIXEL_BUDGETS:
        raise ValueError(f"`pn` must be one of {list(PIXEL_BUDGETS)}, got {pn!r}")
    return list(TEMPLATE_GRIDS[h_div_w_template][: PIXEL_BUDGETS[pn]])


def rope_positions(grid: Sequence[int], final_grid: Sequence[int], mode: int = 2) -> torch.Tensor:
    """Position ids ``(h*w,)`` of a grid's sites, row-major.

    Mode 2 ("star"): site (i, j) sits at ``(round(i*Hf/h), round(j*Wf/w))`` computed in float32 with
    round-half-to-even, ``(Hf, Wf)`` being the final grid of the 1M schedule of the template.
    Mode 0: site (i, j) sits at (i, j).
    """
    h, w = int(grid[-2]), int(grid[-1])
    if mode == 2:
        hf, wf = int(final_grid[-2]), int(final_grid[-1])
        rows = (torch.arange(h) * (hf / h)).round().long()
        cols = (torch.arange(w) * (wf / w)).round().long()
    elif mode == 0:
        rows, cols = torch.arange(h), torch.arange(w)
    else:
        raise ValueError(f"`rope2d_normalized_by_hw` must be one of {ROPE_MODES}, got {mode!r}")
    if int(rows.max()) >= ROPE_GRID or int(cols.max()) >= ROPE_GRID:
        raise ValueError(f"grid {(h, w)} reaches beyond the {ROPE_GRID}x{ROPE_GRID} RoPE grid")
    return (rows[:, None] * ROPE_GRID + cols[None, :]).reshape(-1)


@dataclass(frozen=True)
class InfinitySchedule:
    """A scale schedule of the transformer, with everything derived from it.

    Attributes:
        grids: transformer grids ``(h, w)`` per scale.
        rope_final_grid: ``(Hf, Wf)``, the grid RoPE positions are spread over (mode 2).
        spatial_patchify: whether one transformer site is a 2x2 block of VAE sites (8B model).
        h_div_w_template: the aspect template (None for a custom schedule).
        pn: the pixel budget name (None for a custom schedule).
        rope_mode: ``rope2d_normalized_by_hw`` (2 for every released model).
        message: how the requested size was adjusted, if it was.
    """

    grids: tuple[tuple[int, int], ...]
    rope_final_grid: tuple[int, int]
    spatial_patchify: bool = False
    h_div_w_template: float | None = None
    pn: str | None = None
    rope_mode: int = 2
    message: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.grids:
            raise ValueError("a schedule needs at least one scale")
        if tuple(self.grids[0]) != (1, 1):
            raise ValueError(f"the first scale must be the 1x1 start token, got {self.grids[0]}")

    @property
    def num_scales(self) -> int:
        return len(self.grids)

    @property
    def scale_schedule(self) -> list[tuple[int, int, int]]:
        """The official ``(1, h, w)`` form."""
        return [(1, h, w) for h, w in self.grids]

    @property
    def vae_grids(self) -> list[tuple[int, int]]:
        """Grids at VAE resolution (``(2h, 2w)`` with spatial patchify)."""
        f = 2 if self.spatial_patchify else 1
        return [(h * f, w * f) for h, w in self.grids]

    @property
    def num_sites(self) -> list[int]:
        return [h * w for h, w in self.grids]

    @property
    def offsets(self) -> list[int]:
        """First token index of every scale, and the total number of tokens at the end."""
        out = [0]
        for n in self.num_sites:
            out.append(out[-1] + n)
        return out

    @property
    def image_size(self) -> tuple[int, int]:
        """Output (height, width) in pixels."""
        h, w = self.grids[-1]
        return h * PIXELS_PER_SITE, w * PIXELS_PER_SITE

    def position_ids(self, scale: int) -> torch.Tensor:
        """RoPE position ids ``(h*w,)`` of scale ``scale``."""
        return rope_positions(self.grids[scale], self.rope_final_grid, self.rope_mode)

    def all_position_ids(self) -> torch.Tensor:
        """Position ids of every token of the schedule, concatenated ``(L,)``."""
        return torch.cat([self.position_ids(k) for k in range(self.num_scales)])


def schedule_from_template(
    h_div_w_template: float = 1.0, pn: str = "1M", spatial_patchify: bool = False, rope_mode: int = 2
) -> InfinitySchedule:
    """The official schedule of a template and pixel budget (``dynamic_resolution_h_w[t][pn]``)."""
    grids = template_grids(h_div_w_template, pn)
    final = TEMPLATE_GRIDS[h_div_w_template][-1]
    return InfinitySchedule(tuple(grids), final, spatial_patchify, h_div_w_template, pn, rope_mode)


def schedule_for_size(
    height: int,
    width: int,
    pn: str | None = None,
    spatial_patchify: bool = False,
    rope_mode: int = 2,
) -> InfinitySchedule:
    """The schedule that generates an image closest to ``height x width`` pixels.

    The aspect ratio snaps to the nearest template; without ``pn`` the pixel budget whose output
    area is closest (in log scale) to the requested one is used. When the resulting size differs from
    the request, ``schedule.message`` says so and a warning is logged.
    """
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer number of pixels, got {value!r}")
    template = nearest_template(height / width)
    if pn is None:
        def distance(budget: str) -> float:
            h, w = TEMPLATE_GRIDS[template][PIXEL_BUDGETS[budget] - 1]
            return abs(math.log(h * w * PIXELS_PER_SITE**2 / (height * width)))

        pn = min(PIXEL_BUDGETS, key=distance)
    schedule = schedule_from_template(template, pn, spatial_patchify, rope_mode)
    out_h, out_w = schedule.image_size
    if (out_h, out_w) == (height, width):
        return schedule
    message = (
        f"Infinity generates only its template sizes: {height}x{width} (h/w {height / width:.3f}) snapped to "
        f"{out_h}x{out_w} (aspect template {template}, pixel budget {pn})"
    )
    logger.warning(message)
    return InfinitySchedule(schedule.grids, schedule.rope_final_grid, spatial_patchify, template, pn, rope_mode,
                            message)


def custom_schedule(
    grids: Sequence[Sequence[int]],
    h_div_w_template: float | None = None,
    spatial_patchify: bool = False,
    rope_mode: int = 2,
) -> InfinitySchedule:
    """A schedule from explicit ``(h, w)`` or ``(1, h, w)`` grids; RoPE spreads over the 1M final grid
    of ``h_div_w_template`` (default: the template nearest to the last grid's aspect)."""
    parsed = []
    for g in grids:
        g = tuple(int(x) for x in g)
        if len(g) == 3 and g[0] == 1:
            g = g[1:]
        if len(g) != 2 or min(g) < 1:
            raise ValueError(f"grids must be (h, w) or (1, h, w) with positive sides, got {g}")
        parsed.append(g)
    if not parsed:
        raise ValueError("`grids` must not be empty")
    if h_div_w_template is None:
        h_div_w_template = nearest_template(parsed[-1][0] / parsed[-1][1])
    elif h_div_w_template not in TEMPLATE_GRIDS:
        raise ValueError(f"`h_div_w_template` must be one of {sorted(TEMPLATE_GRIDS)}, got {h_div_w_template!r}")
    final = TEMPLATE_GRIDS[h_div_w_template][-1]
    pn = next((p for p, n in PIXEL_BUDGETS.items() if list(TEMPLATE_GRIDS[h_div_w_template][:n]) == parsed), None)
    return InfinitySchedule(tuple(parsed), final, spatial_patchify, h_div_w_template, pn, rope_mode)
