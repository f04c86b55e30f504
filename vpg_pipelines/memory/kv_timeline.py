"""The sampler's K/V cache, step by step, in bytes: a model of ``sampling/next_scale.py`` and
``models/kv_cache.py`` that allocates nothing.

What the sampler allocates (rows ``R`` = condition rows, ``2R`` while VPG's corrupted rows are in):

* the storage, ``2 x layers`` tensors ``(rows, kv_heads, capacity, head_dim)``, allocated by the first
  append of each layer (the text prefill for InfinityStar, else step 0). ``capacity`` is per layer: every
  token the layer stores (the prefix, and each step with ``store_kv``; an accelerator that prunes tokens
  stores fewer in some layers), or only up to the last guided step under ``persistent`` VPG (the corrupted
  rows are dropped there and the storage is rebuilt at full length);
* a cache under a K/V budget (ScaleKV) holds each layer at exactly its length instead: a step's append
  reallocates the layer (the old and the grown tensor alive together), and the budget's cut after the
  layer's attention gathers the kept entries into a new tensor that replaces the old one;
* ``persistent`` VPG, first guided step: the clean rows are duplicated (``select_rows``), or, when
  steps were stored after the first one, cloned (``clone_rows``), the earlier steps replayed corrupted
  into the clone (one step at a time under an accelerator), and the clone appended (``extend_rows``);
* ``resample`` VPG, every guided step: a clone of the first step's entries with room for the whole
  prefix (``clone_rows``), filled by a replay of the corrupted prefix and dropped after the step;
* after the last guided step the corrupted rows leave (``select_rows`` on the clean rows);
* the cache's row state (FastVAR's cached sub-layer outputs: copies made inside the forward of the fill
  scale, dropped after the last pruned scale) follows the rows through every rebuild.

``select_rows``, ``clone_rows`` and ``extend_rows`` rebuild one tensor at a time: a new tensor is
allocated while the old one is alive, and the copied rows are first gathered into a temporary
(``old[index, :, :length]``); those transients are part of the peaks below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..acceleration.base import Acceleration
from ..guidance.prefix import PrefixGuidance
from ..models.adapter import ScaleStep
from ..sampling.cache_lengths import CacheLengths, cache_lengths


@dataclass(frozen=True)
class KVGeometry:
    """Shape of the cache: ``layers`` layers of keys and values ``(rows, heads, tokens, head_dim)``."""

    layers: int
    heads: int
    head_dim: int
    element_size: int

    def unit(self, rows: int, tokens: int) -> int:
        """Bytes of one layer's keys (or values)."""
        return rows * self.heads * tokens * self.head_dim * self.element_size

    def storage(self, rows: int, tokens: int | Sequence[int]) -> int:
        """Bytes of keys and values of every layer (``tokens``: one count, or one per layer)."""
        per_layer = [tokens] * self.layers if isinstance(tokens, int) else list(tokens)
        return sum(2 * self.unit(rows, t) for t in per_layer)


@dataclass(frozen=True)
class Forward:
    """One transformer call: ``rows`` batch rows over the tokens of ``steps`` attending to ``cached``
    cache entries (before the call; the largest layer's), returning the logits of the last ``last_tokens``."""

    rows: int
    steps: tuple[int, ...]
    cached: int
    last_tokens: int | None = None


@dataclass
class KVStep:
    """The cache during one sampler step.

    Attributes:
        index: the step.
        rows: batch rows of the step's main forward.
        after: storage bytes after the step's forward (what ``SamplerTrace.cache_bytes`` records).
        end: storage bytes when the step is over (after the corrupted rows left, if they leave here).
        events: ``(what, cache bytes alive, forward running then or None)`` in order; transient
            allocations of the cache code included.
    """

    index: int
    rows: int
    after: int = 0
    end: int = 0
    events: list[tuple[str, int, Forward | None]] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(b for _, b, _ in self.events)


class _Cache:
    """The bytes of one ``KVCache`` object through the operations the sampler applies to it."""

    def __init__(self, g: KVGeometry, rows: int, grow: bool) -> None:
        self.g, self.rows, self.grow = g, rows, grow
        self.sizes = [0] * g.layers  # allocated entries per layer (0: not yet)
        self.state: dict[Any, int] = {}  # row state: key -> bytes of one row

    @property
    def total(self) -> int:
        return self.g.storage(self.rows, self.sizes) + sum(b * self.rows for b in self.state.values())

    def rebuild(self, rows: int, sizes: Sequence[int], lengths: Sequence[int], index_rows: int | None = None) -> int:
        """``select_rows``: each tensor replaced (the gathered rows a transient), then each row state. Returns
        the peak."""
        g, now, peak = self.g, self.total, self.total
        for layer in range(g.layers):
            if not self.sizes[layer]:
                continue
            for _ in range(2):
                new, old = g.unit(rows, sizes[layer]), g.unit(self.rows, self.sizes[layer])
                peak = max(peak, now + new + g.unit(rows, lengths[layer]))
                now += new - old
        for per_row in self.state.values():
            peak = max(peak, now + per_row * rows)
            now += per_row * (rows - self.rows)
        self.sizes = [s if self.sizes[i] else 0 for i, s in enumerate(sizes)]
        self.rows = rows
        return peak

    def step(self, during: Sequence[int], after: Sequence[int], state: dict[Any, int]) -> int:
        """A forward that appends up to ``during`` entries per layer, cuts to ``after`` (a budget) and ends with
        the row state ``state``. Returns the peak of what the cache code allocates meanwhile."""
        g, peak = self.g, self.total
        now = peak
        for layer in range(g.layers):
            need = during[layer]
            if self.grow and need > self.sizes[layer]:
                for _ in range(2):  # keys, then values: the grown tensor beside the old one
                    new, old = g.unit(self.rows, need), g.unit(self.rows, self.sizes[layer])
                    peak = max(peak, now + new)
                    now += new - old
                self.sizes[layer] = need
            elif not self.grow and not self.sizes[layer] and need:
                raise RuntimeError("a preallocated cache is allocated by `allocate` first")
            if after[layer] < need:
                for _ in range(2):  # keep_entries: the kept entries gathered into a new tensor
                    kept = g.unit(self.rows, after[layer])
                    peak = max(peak, now + kept)
                    if self.grow:
                        now += kept - g.unit(self.rows, self.sizes[layer])
                if self.grow:
                    self.sizes[layer] = after[layer]
        added = {k: b for k, b in state.items() if k not in self.state}
        self.state.update(added)
        return max(peak, self.total)

    def allocate(self, sizes: Sequence[int]) -> None:
        """The first append of a preallocated cache: every layer at its capacity."""
        self.sizes = list(sizes)


def guided_steps(steps: Sequence[ScaleStep], vpg: PrefixGuidance | None,
                 schedule_steps: Sequence[ScaleStep] | None = None) -> set[int]:
    """Indices of the steps the sampler guides with VPG (the prefix term's own rule on the schedule's steps,
    restricted to the steps the sampler runs, as ``next_scale`` uses it)."""
    if vpg is None:
        return set()
    schedule = list(schedule_steps or steps)
    return vpg.guided_steps(schedule, schedule[-1].scale + 1) & {s.index for s in steps}


def kv_timeline(
    steps: Sequence[ScaleStep],
    geometry: KVGeometry,
    condition_rows: int,
    guided: set[int],
    refresh: str = "persistent",
    prefix_tokens: int = 0,
    acceleration: Acceleration | None = None,
    width: int = 0,
    shared: int = 1,
) -> list[KVStep]:
    """The cache of a sampling run, step by step (see the module docstring).

    Args:
        steps: the steps the sampler runs.
        geometry: the cache's shape and element size.
        condition_rows: ``B`` without CFG, ``2B`` with it (the sampler's condition rows).
        guided: the VPG-guided step indices (:func:`guided_steps`).
        refresh: ``"persistent"`` or ``"resample"``.
        prefix_tokens: tokens prefilled before step 0 (InfinityStar's text).
        acceleration: the call's accelerator (entries per layer, budgets, row state).
        width: the transformer's width (row state of an accelerator).
        shared: leading steps the corrupted branch shares with the clean one
            (:meth:`~vpg_pipelines.guidance.prefix.PrefixGuidance.shared_steps`).
    """
    g, rows_c = geometry, condition_rows
    lengths = cache_lengths(steps, g.layers, prefix_tokens, acceleration)
    grow = acceleration is not None and acceleration.grows_cache
    persistent = bool(guided) and refresh == "persistent"
    first = min(guided) if guided else None
    last = max(guided) if guided else None
    full = lengths.capacity(len(steps) - 1)
    capacity = lengths.capacity(last) if persistent else full
    base = lengths.after[shared - 1][0]  # the shared steps' entries (the first step, conditioning)
    cache = _Cache(g, rows_c, grow)

    def state_of(position: int, ended: bool) -> dict[Any, int]:
        if acceleration is None:
            return {}
        held = acceleration.row_state(steps, position, g.layers, width, ended)
        return {k: _bytes(shape, dtype) for k, (shape, dtype) in held.items()}

    out: list[KVStep] = []
    for i, step in enumerate(steps):
        record = KVStep(step.index, cache.rows)
        events = record.events
        if i == 0 and prefix_tokens:
            cache.allocate(capacity)
            events.append(("prefill", cache.total, Forward(cache.rows, (), 0, prefix_tokens)))
        if persistent and step.index == first:
            if set(lengths.before[i]) == {base}:  # select_rows(list(range(R)) * 2): same capacity
                sizes = lengths.before[i] if grow else cache.sizes
                events.append(("join: duplicate rows", cache.rebuild(2 * rows_c, sizes, lengths.before[i]), None))
            else:  # clone_rows, the earlier steps replayed corrupted into the clone, extend_rows
                clone = _Cache(g, rows_c, grow)
                clone.sizes = [base] * g.layers if grow else list(cache.sizes)
                live = cache.total
                events.append(("join: clone rows", live + clone.total + g.unit(rows_c, base), None))
                chunk = [j for j in range(shared, i) if steps[j].store_kv]
                events += _replay(clone, live, base, lengths, chunk, steps, state_of, 1, acceleration is not None)
                events.append(("join: extend rows", _extend(cache, clone, lengths.before[i]), None))
            record.rows = cache.rows
        if not cache.sizes[0] and not grow and step.store_kv:
            cache.allocate(capacity)
        cached = max(lengths.before[i])
        peak = cache.step(lengths.during[i], lengths.after[i], state_of(i, False))
        events.append(("forward", peak, Forward(cache.rows, (step.index,), cached)))
        if step.index in guided and not persistent:  # resample: clone + replay of a fresh corrupted prefix
            clone = _Cache(g, rows_c, grow)
            clone.sizes = [base] * g.layers if grow else lengths.replay_capacity(i, shared)
            live = cache.total
            events.append(("resample: clone rows", live + clone.total + g.unit(rows_c, base), None))
            chunk = [j for j in range(shared, i) if steps[j].store_kv] + [i]
            events += _replay(clone, live, base, lengths, chunk, steps, state_of, step.num_sites,
                              acceleration is not None, label="resample")
        record.after = cache.total
        if persistent and step.index == last:  # select_rows(range(R), capacity=total)
            sizes = lengths.after[i] if grow else full
            events.append(("leave: drop corrupted rows", cache.rebuild(rows_c, sizes, lengths.after[i]), None))
        ended = state_of(i, True)
        cache.state = {k: b for k, b in cache.state.items() if k in ended}
        record.end = cache.total
        out.append(record)
    return out


def _bytes(shape: Sequence[int], dtype: Any) -> int:
    count = 1
    for n in shape:
        count *= n
    return count * dtype.itemsize


def _replay(clone: _Cache, live: int, base: int, lengths: CacheLengths, chunk: list[int], steps: Sequence[ScaleStep],
            state_of, last_tokens: int, stepwise: bool, label: str = "join") -> list[tuple[str, int, Forward]]:
    """The corrupted prefix replayed into ``clone`` after the ``base`` shared entries (one block-causal call, or
    one call per step under an accelerator), ``live`` bytes of the main cache alive meanwhile."""
    if not stepwise:
        return [(f"{label}: replay", live + clone.total,
                 Forward(clone.rows, tuple(steps[j].index for j in chunk), base, last_tokens))]
    events = []
    for n, j in enumerate(chunk):
        cached = max(lengths.before[j])
        peak = clone.step(lengths.during[j], lengths.after[j], state_of(j, False))
        tokens = last_tokens if n == len(chunk) - 1 else 1
        events.append((f"{label}: replay step {steps[j].index}", live + peak,
                       Forward(clone.rows, (steps[j].index,), cached, tokens)))
    return events


def _extend(cache: _Cache, clone: _Cache, lengths: Sequence[int]) -> int:
    """``extend_rows``: each tensor rebuilt with the clone's rows after the cache's (the clone alive throughout),
    then each row state concatenated. Returns the peak; ``cache`` holds both groups afterwards."""
    g = cache.g
    rows = cache.rows + clone.rows
    sizes = list(lengths) if cache.grow else list(cache.sizes)
    now = cache.total + clone.total
    peak = now
    for layer in range(g.layers):
        if not cache.sizes[layer]:
            continue
        for _ in range(2):
            new, old = g.unit(rows, sizes[layer]), g.unit(cache.rows, cache.sizes[layer])
            peak = max(peak, now + new)
            now += new - old
    for per_row in cache.state.values():
        peak = max(peak, now + per_row * rows)
        now += per_row * rows - per_row * cache.rows
    cache.sizes, cache.rows = sizes, rows
    return peak
