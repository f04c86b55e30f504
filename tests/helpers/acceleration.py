"""The accelerators' parity fixtures (``tests/fixtures/fastvar``, ``tests/fixtures/scalekv``) and recorders of
what an accelerator chose during a run (kept tokens of a token plan, kept cache entries of a K/V budget)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.helpers.shared import shared_path
from vpg_pipelines.acceleration import FastVAR, ScaleKV
from vpg_pipelines.loading.checkpoint import read_state_dict
from vpg_pipelines.loading.infinity import build_transformer, infer_transformer_config, load_official_infinity
from vpg_pipelines.models.adapter import SUBLAYERS, ScaleStep

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# -- FastVAR ----------------------------------------------------------------------------------------------
@cache
def fastvar_fixture():
    """``(models, vae, cases, meta)``: ``models`` the depth-32 fixture model ``"d32"`` and its first 8 blocks
    ``"d8"`` (README: their constructor at depth 8 holding blocks 0-7 in global order)."""
    root = FIXTURES / "fastvar"
    config = json.loads((root / "config.json").read_text())
    vae_path = shared_path(*Path(config["vae"]["path"]).parts[1:])
    d32, vae = load_official_infinity(root / "infinity.safetensors", vae_path, config=config)
    state = read_state_dict(root / "infinity.safetensors")
    blocks = re.compile(r"block_chunks\.(\d+)\.module\.(\d+)\.(.*)")
    d8_state = {}
    for key, value in state.items():
        m = blocks.match(key)
        if m is None:
            d8_state[key] = value
            continue
        g = int(m.group(1)) * 4 + int(m.group(2))  # the file's global block index (4 blocks per chunk)
        if g < 8:
            d8_state[f"block_chunks.{g // 2}.module.{g % 2}.{m.group(3)}"] = value
    d8_config = {**infer_transformer_config(state), "codebook_dim": vae.config.codebook_dim, "depth": 8,
                 "num_block_chunks": 4}
    d8 = build_transformer(d8_config, d8_state)
    cases = load_file(str(root / "cases.safetensors"))
    meta = json.loads((root / "cases.json").read_text())
    return {"d32": d32, "d8": d8}, vae, cases, meta


def fastvar_case(tag: str) -> dict:
    return next(c for c in fastvar_fixture()[3]["cases"] if c["tag"] == tag)


def stored_kept(cases: dict, case: dict, scale: int, block: int, sublayer: str) -> torch.Tensor:
    """``(rows, n)`` kept token indices FastVAR's code chose (its order: descending distance)."""
    i = case["pruned_layers"].index(block)
    return cases[f"sample.{case['tag']}.kept.scale{scale}"][i, SUBLAYERS.index(sublayer)].long()


def forced_selection(cases: dict, case: dict, rows: list[int] | None = None):
    """A ``with_selection`` hook that replays the stored kept tokens (rows ``rows`` of the case, default all)."""

    def select(step: ScaleStep, block: int, sublayer: str, _rows: int) -> torch.Tensor:
        kept = stored_kept(cases, case, step.scale, block, sublayer)
        return kept if rows is None else kept[rows]

    return select


@dataclass(frozen=True)
class RecordingFastVAR(FastVAR):
    """FastVAR that records every selection: ``log[(scale, block, sublayer)] = (R, n)`` kept indices."""

    log: dict = field(default_factory=dict, compare=False, repr=False)

    def token_plan(self, step, cache, batch=None):
        plan = super().token_plan(step, cache, batch)
        return None if plan is None else _RecordedPlan(plan, step, self.log)


class _RecordedPlan:
    def __init__(self, plan, step, log):
        self.plan, self.step, self.log = plan, step, log

    def keep(self, block, sublayer, hidden):
        kept = self.plan.keep(block, sublayer, hidden)
        if kept is not None:
            self.log[(self.step.scale, block, sublayer)] = kept.detach().clone()
        return kept

    def fill(self, block, sublayer, kept, out):
        return self.plan.fill(block, sublayer, kept, out)

    def record(self, block, sublayer, out):
        self.plan.record(block, sublayer, out)


def first_selection_mismatch(log: dict, cases: dict, case: dict, rows: list[int] | None = None) -> str | None:
    """The first (scale, block, sub-layer, row) whose recorded kept set differs from the stored one, with the
    stored relative gap at its keep/drop boundary (>= 1e-5 there means a bug, not rounding); ``None``: all equal.
    ``rows``: the stored rows the recorded rows are (default: the same rows)."""
    tag = case["tag"]
    for scale in sorted(int(k) for k in case["pruned_scales"]):
        for block in case["pruned_layers"]:
            for sublayer in SUBLAYERS:
                ours = log.get((scale, block, sublayer))
                theirs = stored_kept(cases, case, scale, block, sublayer)
                if rows is not None:
                    theirs = theirs[rows]
                for r in range(theirs.shape[0]):
                    if ours is None or not torch.equal(ours[r].sort().values, theirs[r].sort().values):
                        gaps = cases[f"sample.{tag}.kept_boundary_rel_gap.scale{scale}"]
                        i, j = case["pruned_layers"].index(block), SUBLAYERS.index(sublayer)
                        gap = float(gaps[i, j, r if rows is None else rows[r]])
                        return (f"{tag}: first differing kept set at scale {scale}, block {block}, {sublayer}, "
                                f"row {r}; stored boundary gap {gap:.2e} relative")
    return None


# -- ScaleKV ------------------------------------------------------------------------------------------------
@cache
def scalekv_fixture():
    """``(cases, meta, budgets)`` of the ScaleKV fixture (its models are the shared Infinity parity models)."""
    root = FIXTURES / "scalekv"
    cases = load_file(str(root / "cases.safetensors"))
    meta = json.loads((root / "cases.json").read_text())
    budgets = json.loads((root / "budgets.json").read_text())
    return cases, meta, budgets


def scalekv_case(tag: str) -> dict:
    return next(c for c in scalekv_fixture()[1]["cases"] if c["tag"] == tag)


class PositionTracker:
    """The original token position of every entry of a cache's layers, followed through compressions (the
    stored ``kept_positions`` index the uncompressed sequence; a budget selects cache entries)."""

    def __init__(self, offsets: list[int]) -> None:
        self.offsets = offsets
        self.positions: dict[int, torch.Tensor] = {}

    def current(self, step: ScaleStep, layer: int) -> torch.Tensor:
        """Positions of ``layer``'s entries once ``step`` has appended its tokens (``(n,)`` or ``(R, H, n)``)."""
        start = self.offsets[step.scale]
        new = torch.arange(start, start + step.num_sites)
        old = self.positions.get(layer)
        if old is None:
            return torch.arange(start + step.num_sites)
        return torch.cat([old, new.expand(*old.shape[:-1], -1)], dim=-1)

    def kept(self, step: ScaleStep, layer: int, index: torch.Tensor) -> torch.Tensor:
        """Record that ``layer`` kept the entries ``index`` ``(R, H, c)``; return their positions."""
        current = self.current(step, layer)
        kept = current.expand(*index.shape[:-1], -1).gather(-1, index.cpu())
        self.positions[layer] = kept
        return kept


@dataclass(frozen=True)
class RecordingScaleKV(ScaleKV):
    """ScaleKV that records every compression: ``chosen[(scale, layer, "kv")]`` the kept cache entries
    ``(R, H, c)``, and with a ``tracker`` ``log[(layer, scale)]`` their original token positions."""

    log: dict = field(default_factory=dict, compare=False, repr=False)
    chosen: dict = field(default_factory=dict, compare=False, repr=False)
    tracker: PositionTracker | None = field(default=None, compare=False, repr=False)

    def kv_budget(self, step):
        budget = super().kv_budget(step)
        return None if budget is None else _RecordedBudget(budget, step, self)


class _RecordedBudget:
    def __init__(self, budget, step, config):
        self.budget, self.step, self.config = budget, step, config

    def capacity(self, layer, length):
        return self.budget.capacity(layer, length)

    def select(self, layer, keys, queries, capacity):
        index = self.budget.select(layer, keys, queries, capacity)
        self.config.chosen[(self.step.scale, layer, "kv")] = index.detach().clone()
        if self.config.tracker is not None:
            self.config.log[(layer, self.step.scale)] = self.config.tracker.kept(self.step, layer, index)
        return index


def replayed(chosen: dict, all_rows: bool = False):
    """A ``with_selection`` hook that repeats recorded choices (keys ``(scale, index, part)``): for the first rows
    of a call (the others choose their own), or, with ``all_rows``, for every row (the record repeated)."""

    def select(step: ScaleStep, index: int, part: str, rows: int) -> torch.Tensor | None:
        kept = chosen.get((step.scale, index, part))
        if kept is None or not all_rows:
            return kept
        return kept.repeat(rows // kept.shape[0], *[1] * (kept.dim() - 1))

    return select


def forced_kv_selection(stored: dict, tracker: PositionTracker):
    """A ``with_selection`` hook for ScaleKV that keeps the stored positions (translated to cache entries)."""

    def select(step: ScaleStep, layer: int, part: str, _rows: int) -> torch.Tensor:
        wanted = stored[(layer, step.scale)]
        current = tracker.current(step, layer).expand(*wanted.shape[:-1], -1).contiguous()
        index = torch.searchsorted(current, wanted)
        assert torch.equal(current.gather(-1, index), wanted), "a stored position is not in the cache"
        tracker.positions[layer] = wanted
        return index

    return select


def stored_positions(tag: str) -> dict:
    """The fixture's kept positions of case ``tag`` by ``(layer, scale)``."""
    cases = scalekv_fixture()[0]
    out = {}
    for key, value in cases.items():
        m = re.fullmatch(rf"scalekv\.{re.escape(tag)}\.kept_positions\.layer(\d+)\.scale(\d+)", key)
        if m:
            out[(int(m.group(1)), int(m.group(2)))] = value.long()
    return out

