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

Accelerators (``acceleration/``): the loop runs the steps the accelerator keeps (it may skip trailing
scales; guidance ``start`` / ``stop`` and VPG's scale choice still refer to the schedule's steps), and
hands every transformer call of a step the accelerator's token plan and K/V budget for that step, on
whichever rows the call has (clean, corrupted, null). A replay of several steps then runs one call per
step, so that each step is pruned and budgeted as in the main pass. The cache is sized per layer from
what the accelerator stores (``cache_lengths.py``).

Conditioning steps (codes given, not generated: InfinityStar's image-to-video image, a continued video;
``ScaleStep.conditioning``) are shared by both branches like the start token: the corrupted rows copy their
keys / values and never corrupt them, unless the prefix term says ``corrupt_conditioning`` (docs/vpg.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..acceleration.base import Acceleration
from ..guidance.base import GuidanceStep, GuidanceTerm
from ..guidance.chain import GuidanceChain
from ..guidance.corruption import CorruptionPattern
from ..models.adapter import HiddenHook, NextScaleAdapter, RowBatch, ScaleStep, StepInput
from ..models.kv_cache import KVCache
from .branches import BranchLayout
from .cache_lengths import cache_lengths

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

    def __init__(self, adapter, state, chain: GuidanceChain, generator, trace, keep_corrupted_rows,
                 acceleration: Acceleration | None = None, kv_cache_device: torch.device | str | None = None):
        self.adapter, self.state, self.generator, self.trace = adapter, state, generator, trace
        self.schedule_steps: list[ScaleStep] = adapter.steps(state)
        self.num_scales = self.schedule_steps[-1].scale + 1
        self.acceleration = acceleration
        self.steps = self.schedule_steps if acceleration is None else acceleration.run_steps(self.schedule_steps)
        if acceleration is not None and acceleration.needs_token_plans and not getattr(
                adapter, "supports_token_plans", False):
            raise ValueError(f"`acceleration` {acceleration.name!r} prunes tokens inside the transformer blocks, "
                             f"which {type(adapter).__name__} does not support")
        if acceleration is not None and acceleration.needs_stream_plans and not getattr(
                adapter, "supports_stream_plans", False):
            raise ValueError(f"`acceleration` {acceleration.name!r} runs transformer blocks on a reduced stream, "
                             f"which {type(adapter).__name__} does not support")
        self.chain = chain
        self.memories: dict[int, dict] = {}
        self.categories = getattr(adapter, "logit_categories", None)
        conditions = 2 if chain.uses_conditions([s.scale for s in self.steps], self.num_scales) else 1
        cond_rows = adapter.num_condition_rows(state)
        if cond_rows % conditions:
            raise ValueError(f"adapter built {cond_rows} condition rows, not a multiple of {conditions}")
        self.layout = BranchLayout(batch=cond_rows // conditions, conditions=conditions, prefixes=1)
        if acceleration is not None:
            self.acceleration = acceleration.start(self.layout.batch, generator)
        self.prefix = chain.prefix_term
        self.guided: set[int] = set()
        if self.prefix is not None:  # chosen on the schedule, so that skipping trailing steps moves nothing
            run = {s.index for s in self.steps}
            self.guided = self.prefix.guided_steps(self.schedule_steps, self.num_scales) & run
        self.persistent = bool(self.guided) and self.prefix.refresh == "persistent"
        # leading steps both branches share (the first step; conditioning codes unless VPG corrupts them)
        self.shared = self.prefix.shared_steps(self.steps) if self.guided else 1
        self.first = min(self.guided) if self.guided else None
        self.last = max(self.guided) if self.guided else None
        self.keep_corrupted_rows = keep_corrupted_rows
        prefix_tokens = getattr(adapter, "num_prefix_tokens", lambda _s: 0)(state)
        # step indices are positions in self.steps (an accelerator only drops trailing steps)
        self.lengths = cache_lengths(self.steps, adapter.num_layers, prefix_tokens, acceleration)
        shared_entries = set(self.lengths.after[self.shared - 1])
        if len(shared_entries) != 1:
            raise ValueError(f"`acceleration` {acceleration.name} prunes the conditioning steps that VPG's branches "
                             "share; leave `acceleration` out or set vpg_corrupt_conditioning=True")
        self.base = shared_entries.pop()  # entries of the shared steps (the first step, conditioning), every layer
        self.full_capacity = self.lengths.capacity(len(self.steps) - 1)
        limit = self.last if self.persistent and not keep_corrupted_rows else len(self.steps) - 1
        grow = acceleration is not None and acceleration.grows_cache
        self.cache = KVCache(adapter.num_layers, self.layout.condition_rows, self.lengths.capacity(limit), grow=grow,
                             storage_device=kv_cache_device)
        if hasattr(adapter, "prefill"):
            adapter.prefill(state, self.cache)
        self.history: list[StepInput] = []

    # -- helpers -------------------------------------------------------------------------------
    def context(self, step: ScaleStep) -> GuidanceStep:
        """What the guidance terms see of this step (their run memories included); fractions of the
        schedule's steps, whatever an accelerator skips."""
        return GuidanceStep(step, len(self.schedule_steps), self.num_scales, self.categories, self.memories)

    def forward(self, batch: RowBatch, cache: KVCache, hook: HiddenHook | None, last_tokens: int | None
                ) -> torch.Tensor:
        """One transformer call, with the accelerator's plan and budget for its (single) step."""
        if self.acceleration is None:
            return self.adapter.forward(self.state, batch, cache, hook, last_tokens)
        step = batch.steps[0]
        batch.token_plan = self.acceleration.token_plan(step, cache, batch)
        cache.budget = self.acceleration.kv_budget(step)
        try:
            return self.adapter.forward(self.state, batch, cache, hook, last_tokens)
        finally:
            cache.budget = None

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
        layout = replace(self.layout, prefixes=prefixes)

        def hook(block: int, hidden: torch.Tensor) -> torch.Tensor:
            if block != target:
                return hidden
            return layout.mix_conditions(hidden, strengths)

        return hook

    def reduce_conditions(self, logits: torch.Tensor, prefixes: int, step: ScaleStep) -> torch.Tensor:
        """(R, ...) logits -> (prefixes, B, ...) after the condition terms on each prefix branch (the null rows'
        logits as they are once the condition axis is off)."""
        split = replace(self.layout, prefixes=prefixes).split(logits)
        if self.layout.null_only:
            return split[:, 0]
        return self.chain.reduce_conditions(split, self.context(step))

    def replay_corrupted(self, chunk: list[ScaleStep], patterns: dict[int, CorruptionPattern], cache: KVCache,
                         last_tokens: int | None) -> torch.Tensor:
        """One block-causal call of the corrupted rows over ``chunk`` (the steps' corrupted inputs); with an
        accelerator one call per step (its plan and budget are per step), the last step's logits returned."""
        if self.acceleration is not None and len(chunk) > 1:
            for s in chunk[:-1]:
                self.replay_corrupted([s], patterns, cache, last_tokens=1)
            return self.replay_corrupted(chunk[-1:], patterns, cache, last_tokens)
        contents, positions, strengths = [], [], []
        conditions = self.layout.conditions
        for s in chunk:
            c, p = self.corrupted_input(s, patterns[s.index])
            contents.append(c.repeat(conditions, 1, 1))
            positions.append(p.repeat(conditions, 1))
            strengths.append(torch.full((s.num_sites,), self.strength(s)))
        batch = RowBatch(self.layout.cond_index(1), torch.cat(contents, 1), torch.cat(positions, 1), chunk,
                         prefix_index=torch.ones(self.layout.condition_rows, dtype=torch.long))
        token_strengths = torch.cat(strengths).to(batch.content.device)
        hook = self.hidden_hook(token_strengths, prefixes=1)
        return self.forward(batch, cache, hook, last_tokens)

    def join_corrupted_rows(self) -> None:
        """Add the corrupted rows to the cache before the first guided step."""
        base = self.base
        rows = self.layout.condition_rows
        if set(self.cache.lengths) == {base}:  # only the shared steps so far (the first scale, conditioning)
            self.cache.select_rows(list(range(rows)) * 2)
        else:
            corrupted = self.cache.clone_rows(list(range(rows)), base, self.cache.capacities)
            chunk = [s for s in self.steps[self.shared : self.first] if s.store_kv]
            for s in chunk:
                self.patterns[s.index] = self.draw(s)
            self.replay_corrupted(chunk, self.patterns, corrupted, last_tokens=1)
            self.cache.extend_rows(corrupted)
        self.layout = replace(self.layout, prefixes=2)

    def condition_axis_off(self) -> None:
        """The conditional rows leave the batch and the cache (every prefix group keeps its null rows)."""
        b, rows = self.layout.batch, self.layout.condition_rows
        self.cache.select_rows([p * rows + b + i for p in range(self.layout.prefixes) for i in range(b)])
        self.layout = replace(self.layout, conditions=1, null_only=True)

    def resampled_branch(self, step: ScaleStep) -> torch.Tensor:
        """The corrupted branch's logits at ``step`` from a fresh corruption of the whole prefix."""
        chunk = [s for s in self.steps[self.shared : step.index] if s.store_kv] + [step]
        patterns = {s.index: self.draw(s) for s in chunk}
        if self.trace is not None:
            self.trace.resampled[step.index] = patterns
        capacity = self.lengths.replay_capacity(step.index, self.shared)
        cache = self.cache.clone_rows(list(range(self.layout.condition_rows)), self.base, capacity)
        logits = self.replay_corrupted(chunk, patterns, cache, last_tokens=step.num_sites)
        return self.reduce_conditions(logits, 1, step)[0]

    # -- the loop ------------------------------------------------------------------------------
    def run(self, on_step: StepCallback | None) -> Any:
        self.patterns: dict[int, CorruptionPattern] = {}
        for step in self.steps:
            if self.acceleration is not None and self.layout.conditions == 2 and self.acceleration.condition_off(step):
                self.condition_axis_off()
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
            batch = RowBatch(self.layout.cond_index(prefixes), content, positions, [step],
                             prefix_index=self.layout.prefix_index(prefixes))
            strength = self.strength(step)
            hook = self.hidden_hook(strength, prefixes)
            logits = self.forward(batch, self.cache, hook, None)
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
                self.cache.select_rows(list(range(rows)), capacity=self.full_capacity)
                self.layout = replace(self.layout, prefixes=1)
            if self.acceleration is not None:
                self.acceleration.after_step(step, self.cache)
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
    acceleration: Acceleration | None = None,
    kv_cache_device: torch.device | str | None = None,
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
        acceleration: an accelerator (``vpg_pipelines.acceleration``), checked by the caller against the
            model and the schedule (a pipeline's ``resolve_call`` does).
        kv_cache_device: keep the K/V cache on this device (e.g. ``"cpu"``: an offloaded cache, see
            ``models/kv_cache.py``) instead of the model's; ``None``: the model's.
    """
    extra = list(guiders.terms) if isinstance(guiders, GuidanceChain) else list(guiders or [])
    chain = GuidanceChain([cfg, vpg, *extra])
    return _Run(adapter, state, chain, generator, trace, keep_corrupted_rows, acceleration, kv_cache_device
                ).run(on_step)
