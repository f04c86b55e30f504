"""FastVAR: cached token pruning at the largest scales, as its released Infinity code computes it.

Paper: Hang Guo, Yawei Li, Taolin Zhang, Jiangshan Wang, Tao Dai, Shu-Tao Xia, Luca Benini, "FastVAR: Linear
Visual Autoregressive Modeling via Cached Token Pruning", ICCV 2025 (arXiv:2503.23367). Code:
``csguoh/FastVAR`` at ``34cdd651``, folder ``Infinity/`` (``infinity/models/fastvar_basic.py``,
``fastvar_utils.py``, ``infinity.py``).

What it does, per row of the batch (``docs/acceleration.md``):

- at the pruned scales (template index 9, the 32x32 scale of the 1:1 1M schedule: 40 % dropped; index 10,
  40x40: 50 % dropped; ``int(L * ratio)`` tokens dropped), in blocks ``[3, 28)``, **each** residual sub-layer
  (self-attention, cross-attention, FFN) runs only on the tokens of the current residual stream farthest
  from the row's mean token (squared distance; ties: the lower index); kept tokens keep their RoPE
  positions and only their keys / values enter that block's cache;
- the dropped tokens receive the same sub-layer's output at the fill scale (index 8, 24x24), area-resized to
  the current grid (each output cell averages the input cells its window covers);
- the scales at indices 11 and 12 (48x48, 64x64) are not run: the image is decoded from the codes of the
  scales before them.

The released code hard-codes the 32-block Infinity-2B and the 1:1 grids; the rule here is keyed by the
template's scale index (the same scales on every 1:1 template, coherent on the others) and the block range is
clipped to the depth (their code's literal behaviour at another depth). Every row chooses its own tokens
(theirs does for its one conditional and one null row; here also for every prompt and VPG's corrupted rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..models.adapter import SUBLAYERS, RowBatch, ScaleStep, TokenPlan
from ..models.kv_cache import KVCache
from .base import Acceleration, AccelerationTarget, SelectionOverride, top_indices

STATE = "fastvar"
"""First element of the keys of FastVAR's row state: ``(STATE, block, sublayer)``."""


def farthest_from_mean(hidden: torch.Tensor, keep: int) -> torch.Tensor:
    """``(R, keep)`` ascending indices of each row's tokens farthest from that row's mean token (squared
    Euclidean distance over the channels; ties: the lower index)."""
    mean = hidden.mean(dim=1, keepdim=True)
    distance = (hidden - mean).pow(2).sum(dim=-1)
    return top_indices(distance, keep)


def area_weights(source: int, target: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(target, source)`` averaging matrix of an area resize: output cell ``i`` averages the input cells
    ``floor(i*source/target) .. ceil((i+1)*source/target) - 1`` (``F.interpolate(mode="area")``'s windows)."""
    i = torch.arange(target, device=device)
    start = torch.div(i * source, target, rounding_mode="floor")
    stop = -torch.div(-(i + 1) * source, target, rounding_mode="floor")
    j = torch.arange(source, device=device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < stop[:, None])
    return inside.to(dtype) / (stop - start).to(dtype)[:, None]


def area_resize(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(R, h, w, C)`` -> ``(R, height, width, C)`` by window averages (two small matrix products, so it
    runs the same on every device; within float rounding of ``adaptive_avg_pool2d``)."""
    r, h, w, c = grid.shape
    rows = area_weights(h, height, grid.device, grid.dtype)
    cols = area_weights(w, width, grid.device, grid.dtype)
    return cols @ (rows @ grid.reshape(r, h, w * c)).view(r, height, w, c)


@dataclass(frozen=True)
class FastVAR(Acceleration):
    """FastVAR's cached token pruning (the released Infinity setting by default).

    Args:
        prune_ratios: ``(scale index, fraction of the scale's tokens dropped)`` pairs; the scale index is the
            position in Infinity's 13-grid templates (9: 32x32 and 10: 40x40 on 1:1).
        skip_scales: template scale indices not run at all (trailing scales only).
        fill_scale: the scale whose sub-layer outputs fill the dropped tokens (before every pruned scale).
        blocks: ``(first, stop)``: the blocks that prune, ``first <= block < stop`` (clipped to the depth).
        selection_override: test hook (:meth:`~.base.Acceleration.with_selection`): ``select(step, block,
            sublayer, rows) -> (rows or fewer, n) indices or None``.
    """

    prune_ratios: tuple[tuple[int, float], ...] = ((9, 0.4), (10, 0.5))
    skip_scales: tuple[int, ...] = (11, 12)
    fill_scale: int = 8
    blocks: tuple[int, int] = (3, 28)
    selection_override: SelectionOverride | None = field(default=None, compare=False, repr=False)

    name = "fastvar"
    models = ("infinity",)
    needs_token_plans = True

    def __post_init__(self) -> None:
        for scale, ratio in self.prune_ratios:
            if not (isinstance(scale, int) and scale >= 0 and 0.0 <= ratio < 1.0):
                raise ValueError(f"`prune_ratios` must be (scale index >= 0, ratio in [0, 1)) pairs, got "
                                 f"{self.prune_ratios!r}")
        first, stop = self.blocks
        if not 0 <= first < stop:
            raise ValueError(f"`blocks` must be (first, stop) with 0 <= first < stop, got {self.blocks!r}")
        pruned = [scale for scale, _ in self.prune_ratios]
        if pruned and not self.fill_scale < min(pruned):
            raise ValueError(f"`fill_scale` {self.fill_scale} must come before every pruned scale {pruned}")
        if set(self.skip_scales) & set(pruned) or self.fill_scale in self.skip_scales:
            raise ValueError("a scale is either pruned, skipped or the fill source")

    # -- the rule ------------------------------------------------------------------------------------
    def ratio(self, scale: int) -> float | None:
        """Fraction of scale ``scale``'s tokens dropped (``None``: not pruned)."""
        return dict(self.prune_ratios).get(scale)

    def kept_tokens(self, step: ScaleStep) -> int:
        """Tokens a pruned block computes at ``step``: ``L - int(L * ratio)`` (truncation, as theirs)."""
        ratio = self.ratio(step.scale)
        return step.num_sites if ratio is None else step.num_sites - int(step.num_sites * ratio)

    def prunes(self, block: int) -> bool:
        return self.blocks[0] <= block < self.blocks[1]

    # -- resolving a call ----------------------------------------------------------------------------
    def check(self, target: AccelerationTarget) -> None:
        super().check(target)
        if target.template is None:
            raise self.refuse("acts on scales by their index in Infinity's template schedules; this call's schedule "
                              "is not a template (use a `height` / `width` of a template size)")
        scales = [s.scale for s in target.steps]
        pruned = [k for k, _ in self.prune_ratios if k in scales]
        skipped = [k for k in self.skip_scales if k in scales]
        prunes_blocks = self.blocks[0] < target.depth
        if not skipped and not (pruned and prunes_blocks):
            size = "x".join(map(str, target.steps[-1].grid))
            raise self.refuse(f"does nothing on this schedule (largest grid {size}, {target.num_scales} scales): it "
                              f"prunes scales {[k for k, _ in self.prune_ratios]} in blocks {list(self.blocks)} and "
                              f"skips scales {list(self.skip_scales)} of Infinity's 13-scale templates; use 512x512 "
                              "(the 0.25M schedule) or larger")
        if skipped and any(k not in self.skip_scales for k in scales if k > min(skipped)):
            raise self.refuse(f"skips scales {skipped}, but later scales of this schedule are not skipped")
        if pruned and prunes_blocks and self.fill_scale not in scales:
            raise self.refuse(f"fills pruned tokens from scale {self.fill_scale}, which this schedule lacks")

    def run_steps(self, steps: Sequence[ScaleStep]) -> list[ScaleStep]:
        kept = [s for s in steps if s.scale not in self.skip_scales]
        if len(kept) < len(steps) and kept:  # no later step attends to the new last step's keys
            kept[-1] = replace(kept[-1], store_kv=False)
        return kept

    # -- what it needs from a step ---------------------------------------------------------------------
    def token_plan(self, step: ScaleStep, cache: KVCache, batch: RowBatch | None = None) -> TokenPlan | None:
        if step.scale != self.fill_scale and self.ratio(step.scale) is None:
            return None
        return _FastVARPlan(self, step, cache)

    def after_step(self, step: ScaleStep, cache: KVCache) -> None:
        if self.releases_state(step):
            cache.drop_state(STATE)

    def releases_state(self, step: ScaleStep) -> bool:
        """Whether the cached sub-layer outputs are dropped after ``step`` (no later pruned scale)."""
        return step.scale >= self.fill_scale and all(k <= step.scale for k, _ in self.prune_ratios)

    def appended_entries(self, step: ScaleStep, layer: int) -> int:
        return self.kept_tokens(step) if self.prunes(layer) else step.num_sites

    def row_state(self, steps: Sequence[ScaleStep], position: int, num_layers: int, width: int, ended: bool
                  ) -> dict[Any, tuple[tuple[int, ...], torch.dtype]]:
        """The fill scale's sub-layer outputs of every pruning block, float32 (the gated outputs are), from the
        fill scale's forward until a step after which no pruned scale follows."""
        fill = next((s for s in steps if s.scale == self.fill_scale), None)
        if fill is None or steps[position].scale < self.fill_scale:
            return {}
        if any(self.releases_state(s) for s in steps[:position]) or (ended and self.releases_state(steps[position])):
            return {}
        h, w = fill.grid
        blocks = range(self.blocks[0], min(self.blocks[1], num_layers))
        return {(STATE, b, name): ((h, w, width), torch.float32) for b in blocks for name in SUBLAYERS}


class _FastVARPlan:
    """FastVAR's :class:`~vpg_pipelines.models.adapter.TokenPlan` of one step (the fill scale or a pruned one)."""

    def __init__(self, config: FastVAR, step: ScaleStep, cache: KVCache) -> None:
        self.config, self.step, self.cache = config, step, cache
        self.pruning = config.ratio(step.scale) is not None
        self.kept = config.kept_tokens(step)

    def keep(self, block: int, sublayer: str, hidden: torch.Tensor) -> torch.Tensor | None:
        if not self.pruning or not self.config.prunes(block):
            return None
        override = self.config.selection_override
        chosen = None if override is None else override(self.step, block, sublayer, hidden.shape[0])
        if chosen is None:
            return farthest_from_mean(hidden, self.kept)
        chosen = chosen.to(hidden.device, torch.long)
        if chosen.shape[0] == hidden.shape[0]:
            return chosen
        return torch.cat([chosen, farthest_from_mean(hidden[chosen.shape[0]:], self.kept)])

    def record(self, block: int, sublayer: str, out: torch.Tensor) -> None:
        if self.step.scale == self.config.fill_scale and self.config.prunes(block):
            h, w = self.step.grid
            self.cache.keep_state((STATE, block, sublayer), out.reshape(out.shape[0], h, w, out.shape[-1]))

    def fill(self, block: int, sublayer: str, kept: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        source = self.cache.row_state.get((STATE, block, sublayer))
        if source is None:
            raise RuntimeError(f"FastVAR: block {block} has no {sublayer} output of scale {self.config.fill_scale} "
                               "to fill pruned tokens from")
        h, w = self.step.grid
        full = area_resize(source, h, w).reshape(out.shape[0], h * w, out.shape[-1]).to(out.dtype)
        return full.scatter(1, kept[..., None].expand(-1, -1, out.shape[-1]), out)
