"""ScaleKV: scale-aware K/V cache compression, as its released Infinity code computes it.

Paper: Kunjun Li, Zigeng Chen, Cheng-Yen Yang, Jenq-Neng Hwang, "Memory-Efficient Visual Autoregressive
Modeling with Scale-Aware KV Cache Compression", NeurIPS 2025 (arXiv:2505.19602). Code:
``StargazerX0/ScaleKV`` at ``eb0615a1`` (``scale_kv.py``, ``enable_scale_kv_{2b,8b}.py``, ``budgets/``).

What it does (``docs/acceleration.md``): from the first scale whose cache exceeds a base capacity (650
entries) on, right after each layer's attention at every scale, the layer's cache is cut to that layer's
capacity at that scale: a *drafter* keeps many entries, a *refiner* few (which layers are drafters, and the
two capacities, come from a table the authors computed offline per released model). Per row and head, the
entries kept are 16 *window* tokens of the current scale (the centres of a 4x4 grid of patches) plus the
entries with the highest max-pooled attention score from those 16 window queries (raw projected queries:
no bias, normalisation or RoPE; scores summed over the queries; 1-D max pooling of width 5 along the cache;
ties at the cut: the lower index, as CUDA's ``topk`` decides them). Kept entries stay in token order.

The tables are the authors' (``budgets/2b_10%_budget.json``, ``budgets/8b_10%_budget.json``), written here as
our own data with their source lines; they were made for the 1:1 1024x1024 schedule of Infinity-2B (32
blocks) and Infinity-8B (40 blocks), and ScaleKV refuses other schedules and depths rather than guess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..models.adapter import ScaleStep
from ..models.kv_cache import KVBudget, Queries
from .base import Acceleration, AccelerationTarget, SelectionOverride, top_indices

SOURCE = "StargazerX0/ScaleKV@eb0615a100fa8a3ae59aef122e2107ba528b1341"


@dataclass(frozen=True)
class BudgetEntry:
    """The capacities of every layer at some scales: drafters keep ``drafter_capacity`` entries, the other
    layers (refiners) ``refiner_capacity``."""

    scales: tuple[int, ...]
    drafters: tuple[int, ...]
    drafter_capacity: int
    refiner_capacity: int
    source: str = ""


@dataclass(frozen=True)
class BudgetTable:
    """Per scale and layer, the entries a layer's cache keeps (ScaleKV's budget file of one model).

    Attributes:
        name: preset-style name.
        depth: the model's blocks (every layer is a drafter or a refiner).
        template: the schedule the table was made for (Infinity's ``(h_div_w_template, pn)``).
        entries: the scales it covers.
        source: where the numbers come from.
    """

    name: str
    depth: int
    template: tuple[float, str]
    entries: tuple[BudgetEntry, ...]
    source: str

    def entry(self, scale: int) -> BudgetEntry | None:
        return next((e for e in self.entries if scale in e.scales), None)

    def capacity(self, scale: int, layer: int) -> int | None:
        """Entries layer ``layer`` keeps after scale ``scale`` (``None``: the table has no such scale)."""
        entry = self.entry(scale)
        if entry is None:
            return None
        return entry.drafter_capacity if layer in entry.drafters else entry.refiner_capacity

    def first_blocks(self, depth: int) -> BudgetTable:
        """The table of the first ``depth`` blocks (what the authors' code applies to a shallower model: the
        capacities are looked up by block index; tests run tiny models with it)."""
        if not 1 <= depth <= self.depth:
            raise ValueError(f"`depth` must be in [1, {self.depth}], got {depth!r}")
        entries = tuple(replace(e, drafters=tuple(b for b in e.drafters if b < depth)) for e in self.entries)
        return replace(self, name=f"{self.name}[:{depth}]", depth=depth, entries=entries)


def _entry(scales, drafters, high, low, file, lines) -> BudgetEntry:
    return BudgetEntry(tuple(scales), tuple(drafters), high, low, f"{SOURCE}:budgets/{file}:{lines}")


INFINITY_2B_10 = BudgetTable(
    "infinity-2b-10%", 32, (1.0, "1M"),
    (_entry([7], [0, 23], 920, 632, "2b_10%_budget.json", "2-39"),
     _entry([8], [0, 23], 1490, 594, "2b_10%_budget.json", "40-77"),
     _entry([9], [0, 23], 2510, 526, "2b_10%_budget.json", "78-115"),
     _entry([10], [0, 23], 4100, 420, "2b_10%_budget.json", "116-153"),
     _entry([11, 12], [0], 6385, 465, "2b_10%_budget.json", "154-191")),
    f"{SOURCE}:budgets/2b_10%_budget.json (\"Scale N\" = scale index N - 2; \"Scale 13\" also serves index 12, "
    "scale_kv.py:167-186; Block b = 1: drafter, enable_scale_kv_2b.py:15-27)",
)
"""ScaleKV's budget for Infinity-2B (32 blocks), "10 %": on average 650 entries per layer at every scale."""

INFINITY_8B_10 = BudgetTable(
    "infinity-8b-10%", 40, (1.0, "1M"),
    (_entry([7], [0, 1, 2], 909, 629, "8b_10%_budget.json", "2-47"),
     _entry([8], [0, 1, 2], 1464, 584, "8b_10%_budget.json", "48-93"),
     _entry([9], [0, 1, 2], 2463, 503, "8b_10%_budget.json", "94-139"),
     _entry([10], [0, 1, 2], 4054, 374, "8b_10%_budget.json", "140-185"),
     _entry([11, 12], [0, 1, 2], 6200, 200, "8b_10%_budget.json", "186-231")),
    f"{SOURCE}:budgets/8b_10%_budget.json (read as the 2B file, enable_scale_kv_8b.py:15-27)",
)
"""ScaleKV's budget for Infinity-8B (40 blocks), "10 %"."""

RELEASED_TABLES = {32: INFINITY_2B_10, 40: INFINITY_8B_10}
"""The released table of each released depth (Infinity-2B: 32 blocks, Infinity-8B: 40)."""


def budget_table(name: str) -> BudgetTable:
    """A released table by its name (``"infinity-2b-10%"``), or its first ``N`` blocks (``"infinity-2b-10%[:N]"``,
    :meth:`BudgetTable.first_blocks`)."""
    tables = {t.name: t for t in RELEASED_TABLES.values()}
    base, _, rest = name.partition("[:")
    table = tables.get(base)
    if table is None or (rest and not (rest.endswith("]") and rest[:-1].isdigit())):
        raise ValueError(f"`budget` must be one of {sorted(tables)} (optionally its first N blocks: "
                         f"'infinity-2b-10%[:N]'), got {name!r}")
    return table.first_blocks(int(rest[:-1])) if rest else table


def window_positions(grid: Sequence[int], window: int) -> list[int]:
    """The window tokens of a ``(h, w)`` scale: the centres ``i * (h // g) + (h // g - 1) // 2`` (rows; columns
    likewise) of a ``g x g`` grid of patches, ``g = sqrt(window)``, as row-major positions, ascending."""
    h, w = int(grid[-2]), int(grid[-1])
    g = math.isqrt(window)
    ph, pw = h // g, w // g
    rows = [i * ph + (ph - 1) // 2 for i in range(g)]
    cols = [j * pw + (pw - 1) // 2 for j in range(g)]
    return sorted({r * w + c for r in rows for c in cols})


def pooled_scores(keys: torch.Tensor, window_queries: torch.Tensor, window: torch.Tensor, kernel_size: int
                  ) -> torch.Tensor:
    """``(R, H, length)`` scores of the cache entries ``keys`` ``(R, H, length, hd)``: the window queries'
    ``(R, H, w, hd)`` raw attention scores ``q.k / sqrt(hd)`` (float32; the window's own entries ``window``
    excluded), summed over the queries, max-pooled along the cache (width ``kernel_size``), the window -inf."""
    scores = torch.matmul(window_queries.float(), keys.float().transpose(-1, -2)) / math.sqrt(keys.shape[-1])
    scores[..., window] = float("-inf")
    pooled = F.max_pool1d(scores.sum(dim=2), kernel_size, stride=1, padding=kernel_size // 2)
    pooled[..., window] = float("-inf")
    return pooled


@dataclass(frozen=True)
class ScaleKV(Acceleration):
    """ScaleKV's K/V budget (the released table of the model's depth by default).

    Args:
        budget: the capacities per scale and layer; ``None``: the released table of the model's depth
            (:data:`RELEASED_TABLES`), picked when the call is resolved.
        base_capacity: no layer is compressed before the first scale whose cache exceeds it (650, as released).
        window: window tokens per scale (a square number: 16 = a 4 x 4 grid).
        kernel_size: width of the max pooling along the cache (odd).
        first_scale: the first compressed scale, set when the call is resolved (from ``base_capacity``).
        selection_override: test hook: ``select(step, layer, "kv", rows) -> (rows or fewer, H, capacity) indices
            or None``.
    """

    budget: BudgetTable | None = None
    base_capacity: int = 650
    window: int = 16
    kernel_size: int = 5
    first_scale: int | None = None
    selection_override: SelectionOverride | None = field(default=None, compare=False, repr=False)

    name = "scalekv"
    models = ("infinity",)
    grows_cache = True
    unset_fields = ("selection_override", "first_scale")

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> ScaleKV:
        """As :meth:`Acceleration.from_config`; ``budget`` names a released table (:func:`budget_table`)."""
        budget = settings.get("budget")
        if isinstance(budget, str):
            settings = {**settings, "budget": budget_table(budget)}
        return super().from_config(settings)

    def __post_init__(self) -> None:
        if math.isqrt(self.window) ** 2 != self.window or self.window < 1:
            raise ValueError(f"`window` must be a square number of tokens (16: a 4 x 4 grid), got {self.window!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd and positive, got {self.kernel_size!r}")
        if self.base_capacity < 1:
            raise ValueError(f"`base_capacity` must be positive, got {self.base_capacity!r}")

    # -- resolving a call --------------------------------------------------------------------------------
    def resolve(self, target: AccelerationTarget) -> ScaleKV:
        """This budget for ``target``: the released table of its depth when none is given, and the first
        compressed scale; raises where it does not apply."""
        Acceleration.check(self, target)
        table = self.budget or RELEASED_TABLES.get(target.depth)
        if table is None:
            raise self.refuse(f"has budget tables for Infinity-2B (32 blocks) and Infinity-8B (40 blocks) only; this "
                              f"transformer has {target.depth} blocks (pass `ScaleKV(budget=...)` with a table of "
                              "its depth)")
        resolved = replace(self, budget=table, first_scale=self._first_scale(target.steps))
        resolved.check(target)
        return resolved

    def _first_scale(self, steps: Sequence[ScaleStep]) -> int | None:
        total = 0
        for step in steps:
            total += step.num_sites
            if step.store_kv and total > self.base_capacity:
                return step.scale
        return None

    def check(self, target: AccelerationTarget) -> None:
        super().check(target)
        table = self.budget
        if table is None or self.first_scale is None:
            raise self.refuse("must be resolved for the call first (`ScaleKV.resolve`)")
        if target.template != table.template:
            raise self.refuse(f"budget {table.name!r} was made for Infinity's {table.template[0]:g}:1 "
                              f"{table.template[1]} schedule (1024x1024), not this call's schedule "
                              f"({target.template or 'custom'}); use height=width=1024")
        if target.depth != table.depth:
            raise self.refuse(f"budget {table.name!r} is for {table.depth} blocks; this transformer has "
                              f"{target.depth}")
        for step in target.steps:
            if self.compresses(step) and table.entry(step.scale) is None:
                raise self.refuse(f"budget {table.name!r} has no capacities for scale {step.scale}, whose cache "
                                  f"exceeds {self.base_capacity} entries")
            if self.compresses(step) and min(step.grid[-2:]) < math.isqrt(self.window):
                raise self.refuse(f"needs grids of at least {math.isqrt(self.window)} sites a side to place its "
                                  f"window, scale {step.scale} has {step.grid}")

    def start(self, batch: int, generator: torch.Generator | list[torch.Generator] | None) -> ScaleKV:
        """Refuse a setting that was not resolved for its call: unresolved, no scale would be compressed and the
        run would silently be an ordinary one (``run_next_scale`` takes what the pipelines resolved)."""
        if self.budget is None or self.first_scale is None:
            raise self.refuse("must be resolved for the call first (`ScaleKV(...).resolve(target)`, as the pipelines "
                              "do); unresolved it would compress nothing")
        return self

    # -- what it needs from a step -----------------------------------------------------------------------
    def compresses(self, step: ScaleStep) -> bool:
        """Whether the cache is compressed after ``step``'s attention: from the first scale whose cache exceeds
        the base capacity on (their trigger), never after a step that stores nothing (no effect on any output)."""
        return self.first_scale is not None and step.store_kv and step.scale >= self.first_scale

    def kv_budget(self, step: ScaleStep) -> KVBudget | None:
        return _ScaleKVStep(self, step) if self.compresses(step) else None

    def kept_entries(self, step: ScaleStep, layer: int, length: int) -> int:
        if not self.compresses(step):
            return length
        return min(length, self.budget.capacity(step.scale, layer))


class _ScaleKVStep:
    """ScaleKV's :class:`~vpg_pipelines.models.kv_cache.KVBudget` of one step."""

    def __init__(self, config: ScaleKV, step: ScaleStep) -> None:
        self.config, self.step = config, step
        self.window = window_positions(step.grid, config.window)

    def capacity(self, layer: int, length: int) -> int | None:
        return self.config.budget.capacity(self.step.scale, layer)

    def select(self, layer: int, keys: torch.Tensor, queries: Queries, capacity: int) -> torch.Tensor:
        rows, heads, length, _ = keys.shape
        override = self.config.selection_override
        forced = None if override is None else override(self.step, layer, "kv", rows)
        if forced is not None:
            forced = forced.to(keys.device, torch.long)
            if forced.shape[0] == rows:
                return forced
        first = 0 if forced is None else forced.shape[0]
        local = torch.tensor(self.window, device=keys.device)
        window = length - self.step.num_sites + local  # the current scale is the cache's last entries
        pooled = pooled_scores(keys[first:], queries(local)[first:], window, self.config.kernel_size)
        chosen = top_indices(pooled, capacity - len(self.window))
        own = torch.cat([chosen, window.expand(rows - first, heads, -1)], dim=-1).sort(dim=-1).values
        return own if forced is None else torch.cat([forced, own])
