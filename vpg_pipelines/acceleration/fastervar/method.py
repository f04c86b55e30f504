"""FasterVAR / StageVAR as one accelerator of the sampler.

Paper: Senmao Li et al., "FasterVAR: Plug-and-Play Acceleration for Visual Autoregressive Models" (StageVAR),
ICML 2026 (arXiv:2512.16483). Code: ``sen-mao/FasterVAR`` (Infinity fork at ``0653b99``, InfinityStar fork at
``74c82fc``). What it does, per call (``docs/acceleration.md``, rules in ``stages.py``, math in ``lowrank.py``):

- **CFG off on the last scales** ("semantic irrelevance"): from the first of the last ``cfg0_last_scales``
  scales on, the conditional rows leave the batch and the K/V cache and the step samples the null-condition
  rows' logits (no CFG / APG / IGG): the authors' ``cfg = 0``;
- **scale skipping** (Infinity): the scales after ``last_scale`` are not run;
- **low-rank last scale**: at the last run scale, every block group runs on ``r`` random mixtures of the
  scale's tokens; its outputs land at ``r`` positions drawn by importance, every other position takes the
  group's output at the previous scale, area-resized. Each row draws from its own features (theirs: the
  conditional and the null row each; here also every prompt and VPG's corrupted rows).

Randomness: sample ``b`` draws from its own generator on the hidden states' device, seeded ``seed + b``, or by
InfinityStar's rule from the call's generator (``initial_seed() + 12345``; one generator per sample: each its
own), so a sample's draws do not depend on the other samples of the batch. A sample's conditional and null rows
draw together, in that order (the authors' one call over their two rows); VPG's corrupted rows draw from a
generator of their own (seeded from the sample's seed), so that the clean rows draw the same with and without
VPG.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...models.adapter import RowBatch, ScaleStep
from ...models.kv_cache import KVCache
from ..base import Acceleration, AccelerationTarget, SelectionOverride
from .lowrank import draw_positions, gaussian_sketch, importance, project_tokens, rank_of, restore_tokens
from .presets import (
    INFINITY_CFG0_LAST_SCALES,
    INFINITY_LAST_SCALE,
    RANK_RATIO_PRESETS,
    SHIPPED_RANK_PRESET,
    STAR_CFG0_LAST_SCALES,
    STAR_RANK_RATIO,
    STAR_SEED_OFFSET,
)
from .stages import block_groups, cfg_off_scales, last_run_scale, low_rank_scale

CORRUPTED_SEED = 0x9E3779B97F4A7C15
"""Added (mod 2**64) to a sample's seed for its VPG-corrupted rows' generator (the 64-bit golden ratio, a usual
constant to derive an unrelated stream)."""

STATE = "fastervar"
"""First element of the keys of FasterVAR's row state: ``(STATE, group)``: a group's output at the fill scale."""

SHIPPED = {
    "infinity": (SHIPPED_RANK_PRESET, INFINITY_CFG0_LAST_SCALES, INFINITY_LAST_SCALE),
    "infinity_star": (STAR_RANK_RATIO, STAR_CFG0_LAST_SCALES, -1),
}
"""Per model kind: the authors' released ``(rank_ratio, cfg0_last_scales, last_scale)``."""


@dataclass(frozen=True)
class FasterVAR(Acceleration):
    """FasterVAR's stages (the model's released setting by default).

    Args:
        rank_ratio: the mixtures per block group at the low-rank scale: a preset name of
            :data:`~.presets.RANK_RATIO_PRESETS` (``"0.96"``, one ratio per eighth of the depth) or a list of
            ratios (one per group), each giving ``⌊ratio·N⌋ + 1`` mixtures (Infinity's rule); or one number for
            every group, giving ``⌊N·ratio⌋`` (InfinityStar's rule). ``None``: the model's released value
            (Infinity ``"0.96"``, InfinityStar 0.1).
        low_rank: run the last scale low-rank (``False``: CFG off and skipping only, InfinityStar's
            ``fastervar_cfg0_eval.py`` default).
        cfg0_last_scales: scales at the end of the schedule that sample the null-condition rows alone (skipped
            scales count, as in the authors' ``cfg_list[-k:] = 0``); ``None``: 3, as released.
        last_scale: index of the last scale run (it runs low-rank; later ones are skipped); negative counts from
            the end (-1: the final scale). ``None``: the released rule (Infinity 10, InfinityStar -1).
        groups: the block groups a single ``rank_ratio`` number applies to (default: the model's block chunks,
            as theirs); a list of ratios defines its own groups.
        seed: sample ``b``'s draws come from a generator seeded ``seed + b``; ``None``: from the call's
            generator(s) (``initial_seed() + 12345``, InfinityStar's rule).
        selection_override: test hook: ``select(step, group, "positions", rows) -> (rows or fewer, r) positions or
            None`` (positions for fewer rows force the first rows; every row still draws, so the streams advance).
        draw_log: filled with ``{(step index, group): LowRankDraw}`` for every low-rank draw (a test and
            debugging aid; ``None``: nothing kept).
    """

    rank_ratio: str | float | tuple[float, ...] | None = None
    low_rank: bool = True
    cfg0_last_scales: int | None = None
    last_scale: int | None = None
    groups: int | None = None
    seed: int | None = None
    selection_override: SelectionOverride | None = field(default=None, compare=False, repr=False)
    draw_log: dict | None = field(default=None, compare=False, repr=False)
    # filled by resolve() (the call's model) and start() (one run)
    depth: int = field(default=0, compare=False, repr=False)
    num_scales: int = field(default=0, compare=False, repr=False)
    final_step: int = field(default=-1, compare=False, repr=False)
    run: _Run | None = field(default=None, compare=False, repr=False)

    name = "fastervar"
    models = ("infinity", "infinity_star")
    needs_stream_plans = True

    def __post_init__(self) -> None:
        ratio = self.rank_ratio
        if isinstance(ratio, str):
            if ratio not in RANK_RATIO_PRESETS:
                raise ValueError(f"`rank_ratio` must be one of the presets {list(RANK_RATIO_PRESETS)}, a ratio in "
                                 f"(0, 1] or a list of them, got {ratio!r}")
        elif ratio is not None:
            values = list(ratio) if isinstance(ratio, Sequence) else [ratio]
            if not values or not all(_is_number(v) and 0 < v <= 1 for v in values):
                raise ValueError(f"`rank_ratio` must be a preset name, a ratio in (0, 1] or a non-empty list of "
                                 f"them, got {ratio!r}")
            if isinstance(ratio, Sequence):
                object.__setattr__(self, "rank_ratio", tuple(float(v) for v in values))
        for name in ("cfg0_last_scales", "groups", "seed"):
            value = getattr(self, name)
            low = 1 if name == "groups" else 0
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"`{name}` must be an integer >= {low} or None, got {value!r}")
        if self.last_scale is not None and not (isinstance(self.last_scale, int)
                                                and not isinstance(self.last_scale, bool)):
            raise ValueError(f"`last_scale` must be a scale index (negative: from the end) or None, "
                             f"got {self.last_scale!r}")
        if not isinstance(self.low_rank, bool):
            raise ValueError(f"`low_rank` must be a bool, got {self.low_rank!r}")

    # -- resolving a call ----------------------------------------------------------------------------
    def resolve(self, target: AccelerationTarget) -> FasterVAR:
        """The released values of ``target``'s model filled in, the stages fixed for its schedule."""
        Acceleration.check(self, target)
        ratio, cfg0, last = SHIPPED[target.model]
        ratio = ratio if self.rank_ratio is None else self.rank_ratio
        cfg0 = cfg0 if self.cfg0_last_scales is None else self.cfg0_last_scales
        last = last if self.last_scale is None else self.last_scale
        if last < 0:
            last = target.num_scales + last
        if not 0 <= last:
            raise self.refuse(f"`last_scale` {self.last_scale} is before the first of the {target.num_scales} scales")
        groups = self.groups
        if not isinstance(ratio, (str, tuple)) and groups is None:
            groups = int(target.details.get("block_chunks", target.depth))
        resolved = dataclasses.replace(self, rank_ratio=ratio, cfg0_last_scales=cfg0, last_scale=last, groups=groups,
                                       depth=target.depth, num_scales=target.num_scales)
        kept = resolved.run_steps(target.steps)
        resolved = dataclasses.replace(resolved, final_step=kept[-1].index)
        resolved.check(target)
        return resolved

    def check(self, target: AccelerationTarget) -> None:
        super().check(target)
        if self.depth == 0:
            raise self.refuse("must be resolved for the call first (`FasterVAR.resolve`)")
        ratios = self.group_ratios()
        if self.groups is not None and len(ratios) != self.groups:
            raise self.refuse(f"has {len(ratios)} ratios in `rank_ratio` but `groups` is {self.groups}")

    # -- the rule ------------------------------------------------------------------------------------
    def group_ratios(self) -> tuple[float, ...]:
        """One ratio per block group (resolved settings)."""
        ratio = self.rank_ratio
        if isinstance(ratio, str):
            return RANK_RATIO_PRESETS[ratio]
        if isinstance(ratio, tuple):
            return ratio
        return (float(ratio),) * int(self.groups)

    @property
    def plus_one(self) -> bool:
        """Infinity's rank rule ``⌊ratio·N⌋ + 1`` for lists / presets, InfinityStar's ``⌊N·ratio⌋`` for a number."""
        return isinstance(self.rank_ratio, (str, tuple))

    def block_groups(self) -> list[tuple[int, range]]:
        return block_groups(self.depth, len(self.group_ratios()))

    @property
    def low_rank_at(self) -> int | None:
        """The scale run low-rank (``None``: none on this schedule)."""
        return low_rank_scale(self.num_scales, self.last_scale) if self.low_rank else None

    @property
    def fill_scale(self) -> int | None:
        """The scale whose group outputs fill the low-rank scale (the run scale before it)."""
        return None if self.low_rank_at is None else self.low_rank_at - 1

    def rank(self, ratio: float, tokens: int) -> int:
        return rank_of(ratio, tokens, self.plus_one)

    # -- what it needs from the sampler ---------------------------------------------------------------
    def run_steps(self, steps: Sequence[ScaleStep]) -> list[ScaleStep]:
        last = last_run_scale(self.num_scales or steps[-1].scale + 1, self.last_scale)
        kept = [s for s in steps if s.scale <= last]
        if len(kept) < len(steps) and kept:  # no later step attends to the new last step's keys
            kept[-1] = dataclasses.replace(kept[-1], store_kv=False)
        return kept

    def condition_off(self, step: ScaleStep) -> bool:
        return step.scale in cfg_off_scales(self.num_scales, int(self.cfg0_last_scales or 0))

    def start(self, batch: int, generator: torch.Generator | list[torch.Generator] | None) -> FasterVAR:
        """This setting with the run's random state: one seed per sample (see the module docstring)."""
        if self.seed is not None:
            seeds = [self.seed + b for b in range(batch)]
        elif isinstance(generator, (list, tuple)):
            seeds = [g.initial_seed() + STAR_SEED_OFFSET for g in generator]
        else:
            first = 0 if generator is None else generator.initial_seed()
            seeds = [first + STAR_SEED_OFFSET + b for b in range(batch)]
        return dataclasses.replace(self, run=_Run(seeds))

    def token_plan(self, step: ScaleStep, cache: KVCache, batch: RowBatch | None = None) -> _GroupPlan | None:
        if self.low_rank_at is None or step.scale not in (self.fill_scale, self.low_rank_at):
            return None
        if self.run is None or batch is None:
            raise RuntimeError("FasterVAR: plans are made for a started run's batches (`start`, then `token_plan`)")
        return _GroupPlan(self, step, cache, batch)

    def after_step(self, step: ScaleStep, cache: KVCache) -> None:
        if step.index == self.final_step:
            cache.drop_state(STATE)

    def row_state(self, steps: Sequence[ScaleStep], position: int, num_layers: int, width: int, ended: bool
                  ) -> dict[Any, tuple[tuple[int, ...], torch.dtype]]:
        """Every group's output at the fill scale (the residual stream, float32), from the fill scale's first
        forward to the end of the run."""
        fill = self.fill_scale
        step = steps[position]
        if fill is None or step.scale < fill or (ended and step.index == self.final_step):
            return {}
        grid = next(tuple(s.grid) for s in steps if s.scale == fill)
        return {(STATE, g): ((*grid, width), torch.float32) for g, _ in self.block_groups()}


def _forced_rows(forced: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """The injected positions of ``rows`` (ascending) when the override covers them, else ``None``."""
    if forced is None or int(rows[0]) >= forced.shape[0]:
        return None
    if int(rows[-1]) >= forced.shape[0]:
        raise ValueError(f"FasterVAR: injected positions for the first {forced.shape[0]} rows split rows that draw "
                         f"together ({rows.tolist()})")
    return forced[rows]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class LowRankDraw:
    """One group's draw at a low-rank step: ``positions`` ``(R, r)`` (after any override) and the importance
    ``prob`` ``(R, N)`` they were drawn from, rows in the call's order."""

    positions: torch.Tensor
    prob: torch.Tensor


class _Run:
    """The random state of one sampling run: a generator per sample and prefix branch, made on first use on the
    hidden states' device."""

    def __init__(self, seeds: list[int]) -> None:
        self.seeds = seeds
        self.generators: dict[tuple[int, int, str], torch.Generator] = {}

    def generator(self, sample: int, branch: int, device: torch.device) -> torch.Generator:
        key = (sample, branch, str(device))
        if key not in self.generators:
            seed = self.seeds[sample] if branch == 0 else (self.seeds[sample] + CORRUPTED_SEED) % 2**64
            self.generators[key] = torch.Generator(device=device).manual_seed(seed)
        return self.generators[key]


class _GroupPlan:
    """FasterVAR's stream plan of one call: records the group outputs at the fill scale, runs the groups
    low-rank at the low-rank scale (:class:`~vpg_pipelines.models.adapter.StreamPlan`)."""

    def __init__(self, config: FasterVAR, step: ScaleStep, cache: KVCache, batch: RowBatch) -> None:
        self.config, self.step, self.cache = config, step, cache
        samples = len(config.run.seeds)
        sample = batch.cond_index.cpu() % samples  # condition rows: B conditional, then B null
        branch = torch.zeros_like(sample) if batch.prefix_index is None else batch.prefix_index.cpu()
        # rows that draw together, in row order (a sample's conditional row before its null row)
        self.draw_groups = [((b, p), torch.nonzero((sample == b) & (branch == p)).flatten())
                            for p in range(int(branch.max()) + 1) for b in range(samples)]
        self.low_rank = step.scale == config.low_rank_at
        ratios = config.group_ratios()
        self.starts = {blocks.start: (g, ratios[g]) for g, blocks in config.block_groups()}
        self.ends = {blocks[-1]: g for g, blocks in config.block_groups()}
        self.positions: dict[int, torch.Tensor] = {}

    def enter(self, block: int, hidden: torch.Tensor, positions: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.low_rank or block not in self.starts:
            return None
        group, ratio = self.starts[block]
        rows, tokens, _ = hidden.shape
        rank = self.config.rank(ratio, tokens)
        if rank >= tokens:  # all the tokens: the exact computation is cheaper than any mixture
            return None
        override = self.config.selection_override
        forced = None if override is None else override(self.step, group, "positions", rows)
        chosen = torch.empty(rows, rank, dtype=torch.long, device=hidden.device)
        mixed = hidden.new_empty(rows, rank, hidden.shape[-1])
        prob = hidden.new_empty(rows, tokens, dtype=torch.float32)
        for (sample, branch), own in self.draw_groups:
            if own.numel() == 0:
                continue
            generator = self.config.run.generator(sample, branch, hidden.device)
            index = own.to(hidden.device)
            x = hidden[index]
            prob[index] = importance(x)
            drawn = draw_positions(prob[index], rank, generator, _forced_rows(forced, own))
            sketch = gaussian_sketch(len(own), tokens, rank, generator, hidden.device)
            chosen[index] = drawn.to(hidden.device)
            mixed[index] = project_tokens(x, sketch)
        self.positions[group] = chosen
        if self.config.draw_log is not None:
            self.config.draw_log[(self.step.index, group)] = LowRankDraw(chosen.cpu(), prob.cpu())
        return mixed, positions[:, :rank]

    def leave(self, block: int, hidden: torch.Tensor) -> torch.Tensor | None:
        group = self.ends.get(block)
        if group is None:
            return None
        if not self.low_rank:  # kept on the scale's grid: the shape tells the restoration where it came from
            self.cache.keep_state((STATE, group), hidden.reshape(hidden.shape[0], *self.step.grid, hidden.shape[-1]))
            return None
        chosen = self.positions.pop(group, None)
        if chosen is None:
            return None
        fill = self.cache.row_state.get((STATE, group))
        if fill is None:
            raise RuntimeError(f"FasterVAR: block group {group} has no output of scale {self.config.fill_scale} "
                               "to restore the low-rank scale from")
        previous = fill.reshape(fill.shape[0], -1, fill.shape[-1])
        return restore_tokens(hidden, previous, tuple(fill.shape[1:-1]), tuple(self.step.grid), chosen)
