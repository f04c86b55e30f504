"""The next-scale sampling loop shared by VAR, Infinity and InfinityStar.

Per step: build the rows every active guidance term needs (the condition axis for CFG / APG / IGG,
the prefix axis for VPG), run **one** transformer call, reduce the logits with the guidance chain
(``guidance/chain.py``: condition terms per prefix branch, then the prefix term, then the terms on the
guided logits such as SSG and temperature), sample, update the model state. The loop knows the axes,
not the terms: a new term is a file in ``guidance/`` (``docs/guidance.md``).

Prefix branch, ``persistent`` refresh: the corrupted rows join the batch at the first guided step
as a copy of the clean rows' cache (the single-site first scale is identical in both branches; a
later first guided step first replays the earlier scales, corrupted, in one block-causal call).
From then on every scale enters the corrupted rows corrupted once, and its keys/values stay in their
cache. After the last guided step the corrupted rows leave the batch and the cache (memory freed),
so the remaining steps cost exactly what CFG alone costs.

``resample`` refresh: at each guided step a fresh corruption of the whole prefix is drawn and the
corrupted branch is recomputed from the start token in a second, block-causal call.

Conditioning steps (codes given, not generated: InfinityStar's image-to-video image, a continued video;
``ScaleStep.conditioning``) are shared by both branches like the start token: the corrupted rows copy their
keys / values and never corrupt them, unless the prefix term says ``corrupt_conditioning`` (docs/vpg.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..guidance.base import GuidanceStep, GuidanceTerm
from ..guidance.chain import GuidanceChain
from ..guidance.corruption import CorruptionPattern
from ..models.adapter import HiddenHook, NextScaleAdapter, RowBatch, ScaleStep, StepInput
from ..models.kv_cache import KVCache
from .branches import BranchLayout

StepCallback = Callable[[ScaleStep, Any, torch.Tensor], bool | None]


@dataclass
class SamplerTrace:
    """What the loop did, step by step (for tests, guidance maps and debugging)."""

    rows: dict[int, int] = field(default_factory=dict)
    clean: dict[int, torch.Tensor] = field(default_factory=dict)
    corrupted: dict[int, torch.Tensor] = field(default_factory=dict)
    guided: dict[int, torch.Tensor] = field(default_factory=dict)
    codes: dict[int, torch.Tensor] = field(default_factory=dict)
    patterns: dict[int, CorruptionPattern] = field(default_factory=dict)
    resampled: dict[int, dict[int, CorruptionPattern]] = field(default_factory=dict)
    inputs: list[StepInput] = field(default_factory=list)
    cache_bytes: dict[int, int] = field(default_factory=dict)


class _Run:
    """State of one sampling run (kept off the public function for readability)."""

    def __init__(self, adapter, state, chain: GuidanceChain, generator, trace, keep_corrupted_rows):
        self.adapter, self.state, self.generator, self.trace = adapter, state, generator, trace
        self.steps: list[ScaleStep] = adapter.steps(state)
        self.num_scales = self.steps[-1].scale + 1
        self.chain = chain
        self.memories: dict[int, dict] = {}
        self.categories = getattr(adapter, "logit_categories", None)
        conditions = 2 if chain.uses_conditions([s.scale for s in self.steps], self.num_scales) else 1
        cond_rows = adapter.num_condition_rows(state)
        if cond_rows % conditions:
            raise ValueError(f"adapter built {cond_rows} condition rows, not a multiple of {conditions}")
        self.layout = BranchLayout(batch=cond_rows // conditions, conditions=conditions, prefixes=1)
        self.prefix = chain.prefix_term
        self.guided: set[int] = set()
        if self.prefix is not None:
            self.guided = self.prefix.guided_steps(self.steps, self.num_scales)
        self.persistent = bool(self.guided) and self.prefix.refresh == "persistent"
        # leading steps both branches share (the first step; conditioning codes unless VPG corrupts them)
        self.shared = self.prefix.shared_steps(self.steps) if self.guided else 1
        self.first = min(self.guided) if self.guided else None
        self.last = max(self.guided) if self.guided else None
        self.keep_corrupted_rows = keep_corrupted_rows
        prefix_tokens = getattr(adapter, "num_prefix_tokens", lambda _s: 0)(state)
        self.ends, total = [], prefix_tokens
        for s in self.steps:
            total += s.num_sites if s.store_kv else 0
            self.ends.append(total)
        self.total_tokens = total
        capacity = self.ends[self.last] if self.persistent and not keep_corrupted_rows else total
        self.cache = KVCache(adapter.num_layers, self.layout.condition_rows, capacity)
        if hasattr(adapter, "prefill"):
            adapter.prefill(state, self.cache)
        self.history: list[StepInput] = []

    # -- helpers -------------------------------------------------------------------------------
    def context(self, step: ScaleStep) -> GuidanceStep:
        """What the guidance terms see of this step (their run memories included)."""
        return GuidanceStep(step, len(self.steps), self.num_scales, self.categories, self.memories)

    def strength(self, step: ScaleStep) -> float:
        """The strength of the condition term that mixes at a hidden layer (1: no mixing)."""
        term = self.chain.hidden_term
        return term.strength(self.context(step)) if term is not None and self.layout.conditions == 2 else 1.0

    def draw(self, step: ScaleStep) -> CorruptionPattern:
        random_content = None
        if getattr(self.prefix, "uses_random_content", False):
            device = self.history[step.index].content.device

            def random_content(count: int, gen: torch.Generator | None) -> torch.Tensor:
                return self.adapter.random_content(count, gen, device)

        return self.prefix.draw(self.layout.batch, step.num_sites, self.generator, random_content)

    def corrupted_input(self, step: ScaleStep, pattern: CorruptionPattern) -> tuple[torch.Tensor, torch.Tensor]:
        inp = self.history[step.index]
        return self.prefix.corrupt(inp.content, inp.position_ids, pattern)

    def hidden_hook(self, strengths: torch.Tensor | float, prefixes: int) -> HiddenHook | None:
        """A condition term at a hidden layer (per prefix branch); ``strengths`` per token or one value."""
        term = self.chain.hidden_term
        if term is None or self.layout.conditions == 1:
            return None
        target = self.adapter.num_layers + term.layer
        if isinstance(strengths, float) and strengths == 1.0:
            return None
        layout = BranchLayout(self.layout.batch, self.layout.conditions, prefixes)

        def hook(block: int, hidden: torch.Tensor) -> torch.Tensor:
            if block != target:
                return hidden
            return layout.mix_conditions(hidden, strengths)

        return hook

    def reduce_conditions(self, logits: torch.Tensor, prefixes: int, step: ScaleStep) -> torch.Tensor:
        """(R, ...) logits -> (prefixes, B, ...) after the condition terms on each prefix branch."""
        split = BranchLayout(self.layout.batch, self.layout.conditions, prefixes).split(logits)
        return self.chain.reduce_conditions(split, self.context(step))

    def replay_corrupted(self, chunk: list[ScaleStep], patterns: dict[int, CorruptionPattern], cache: KVCache,
                         last_tokens: int | None) -> torch.Tensor:
        """One block-causal call of the corrupted rows over ``chunk`` (the steps' corrupted inputs)."""
        contents, positions, strengths = [], [], []
        conditions = self.layout.conditions
        for s in chunk:
            c, p = self.corrupted_input(s, patterns[s.index])
            contents.append(c.repeat(conditions, 1, 1))
            positions.append(p.repeat(conditions, 1))
            strengths.append(torch.full((s.num_sites,), self.strength(s)))
        batch = RowBatch(self.layout.cond_index(1), torch.cat(contents, 1), torch.cat(positions, 1), chunk)
        token_strengths = torch.cat(strengths).to(batch.content.device)
        hook = self.hidden_hook(token_strengths, prefixes=1)
        return self.adapter.forward(self.state, batch, cache, hook, last_tokens)

    def join_corrupted_rows(self) -> None:
        """Add the corrupted rows to the cache before the first guided step."""
        base = self.ends[self.shared - 1]
        rows = self.layout.condition_rows
        if self.cache.length == base:  # only the shared steps so far (the first scale, conditioning)
            self.cache.select_rows(list(range(rows)) * 2)
        else:
            corrupted = self.cache.clone_rows(list(range(rows)), base, self.cache.capacity)
            chunk = [s for s in self.steps[self.shared : self.first] if s.store_kv]
            for s in chunk:
                self.patterns[s.index] = self.draw(s)
            self.replay_corrupted(chunk, self.patterns, corrupted, last_tokens=1)
            self.cache.extend_rows(corrupted)
        self.layout = BranchLayout(self.layout.batch, self.layout.conditions, 2)

    def resampled_branch(self, step: ScaleStep) -> torch.Tensor:
        """The corrupted branch's logits at ``step`` from a fresh corruption of the whole prefix."""
        chunk = [s for s in self.steps[self.shared : step.index] if s.store_kv] + [step]
        patterns = {s.index: self.draw(s) for s in chunk}
        if self.trace is not None:
            self.trace.resampled[step.index] = patterns
        base = self.ends[self.shared - 1]
        capacity = base + sum(s.num_sites for s in chunk)
        cache = self.cache.clone_rows(list(range(self.layout.condition_rows)), base, capacity)
        logits = self.replay_corrupted(chunk, patterns, cache, last_tokens=step.num_sites)
        return self.reduce_conditions(logits, 1, step)[0]

    # -- the loop ------------------------------------------------------------------------------
    def run(self, on_step: StepCallback | None) -> Any:
        self.patterns: dict[int, CorruptionPattern] = {}
        for step in self.steps:
            if self.persistent and step.index == self.first:
                self.join_corrupted_rows()
            inp = self.adapter.step_input(self.state, step)
            self.history.append(inp)
            prefixes = self.layout.prefixes
            conditions = self.layout.conditions
            rows = self.layout.condition_rows
            positions = inp.position_ids.expand(rows, -1)
            content = None if inp.content is None else inp.content.repeat(conditions, 1, 1)
            if prefixes == 2 and step.index > self.last:  # kept rows (tests only): clean input, no draw
                content, positions = content.repeat(2, 1, 1), positions.repeat(2, 1)
            elif prefixes == 2:
                pattern = self.draw(step)
                self.patterns[step.index] = pattern
                corr_content, corr_positions = self.corrupted_input(step, pattern)
                content = torch.cat([content, corr_content.repeat(conditions, 1, 1)])
                positions = torch.cat([positions, corr_positions.repeat(conditions, 1)])
            batch = RowBatch(self.layout.cond_index(prefixes), content, positions, [step])
            strength = self.strength(step)
            hook = self.hidden_hook(strength, prefixes)
            logits = self.adapter.forward(self.state, batch, self.cache, hook, None)
            branches = self.reduce_conditions(logits, prefixes, step)
            clean, corrupted = branches[0], None
            if step.index in self.guided:
                corrupted = branches[1] if self.persistent else self.resampled_branch(step)
            ctx = self.context(step)
            out = self.chain.reduce_logits(self.chain.reduce_prefix(clean, corrupted, ctx), ctx)
            codes = self.adapter.sample(self.state, out, step, self.generator)
            self.adapter.update(self.state, codes, step)
            if self.trace is not None:
                self._record(step, batch.rows, clean, corrupted, out, codes, inp)
            if prefixes == 2 and step.index == self.last and not self.keep_corrupted_rows:
                self.cache.select_rows(list(range(rows)), capacity=self.total_tokens)
                self.layout = BranchLayout(self.layout.batch, conditions, 1)
            if on_step is not None and on_step(step, self.state, out):
                break
        return self.state

    def _record(self, step, rows, clean, corrupted, out, codes, inp) -> None:
        t = self.trace
        t.rows[step.index] = rows
        t.clean[step.index] = clean
        if corrupted is not None:
            t.corrupted[step.index] = corrupted
        t.guided[step.index] = out
        t.codes[step.index] = codes
        t.patterns.update(self.patterns)
        t.inputs.append(inp)
        t.cache_bytes[step.index] = self.cache.memory_bytes()


def run_next_scale(
    adapter: NextScaleAdapter,
    state: Any,
    *,
    cfg: GuidanceTerm | None = None,
    vpg: GuidanceTerm | None = None,
    guiders: list[GuidanceTerm] | GuidanceChain | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    on_step: StepCallback | None = None,
    trace: SamplerTrace | None = None,
    keep_corrupted_rows: bool = False,
) -> Any:
    """Sample every step of ``adapter`` into ``state`` and return it.

    Args:
        adapter: the model side (see ``adapter.py``); ``state`` its prepared per-call state.
        cfg: condition-axis guidance (``None`` or a strength of 1 everywhere: no null rows).
        vpg: prefix-axis guidance (``None``, ``w == 1`` or ``p == 0``: no corrupted rows).
        guiders: more terms (or a whole :class:`GuidanceChain`); ``cfg`` and ``vpg`` join them, and the
            chain orders them by stage (``guidance/chain.py``).
        generator: one generator, or one per sample (then sample ``b`` depends on ``generator[b]`` only).
        on_step: ``on_step(step, state, logits)`` after each step, with the guided logits the step
            sampled from; returning True stops the loop.
        trace: filled with per-step branch logits, patterns and cache sizes when given.
        keep_corrupted_rows: keep the corrupted rows after the last guided step (their logits are
            ignored); only useful to test that dropping them changes nothing.
    """
    extra = list(guiders.terms) if isinstance(guiders, GuidanceChain) else list(guiders or [])
    chain = GuidanceChain([cfg, vpg, *extra])
    return _Run(adapter, state, chain, generator, trace, keep_corrupted_rows).run(on_step)
