"""The sampler's K/V cache, step by step, in bytes: a model of ``sampling/next_scale.py`` and
``models/kv_cache.py`` that allocates nothing.

What the sampler allocates (rows ``R`` = condition rows, ``2R`` while VPG's corrupted rows are in):

* the storage, ``2 x layers`` tensors ``(rows, kv_heads, capacity, head_dim)``, allocated by the first
  append of each layer (the text prefill for InfinityStar, else step 0). ``capacity`` is every stored
  token (the prefix, and each step with ``store_kv``), or only up to the last guided step under
  ``persistent`` VPG (the corrupted rows are dropped there and the storage is rebuilt at full length);
* ``persistent`` VPG, first guided step: the clean rows are duplicated (``select_rows``), or, when
  steps were stored after the first one, cloned (``clone_rows``), the earlier steps replayed corrupted
  into the clone, and the clone appended (``extend_rows``);
* ``resample`` VPG, every guided step: a clone of the first step's entries with room for the whole
  prefix (``clone_rows``), filled by a replay of the corrupted prefix and dropped after the step;
* after the last guided step the corrupted rows leave (``select_rows`` on the clean rows).

``select_rows``, ``clone_rows`` and ``extend_rows`` rebuild one tensor at a time: a new tensor is
allocated while the old one is alive, and the copied rows are first gathered into a temporary
(``old[index, :, :length]``); those transients are part of the peaks below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..guidance.prefix import PrefixGuidance
from ..models.adapter import ScaleStep


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

    def storage(self, rows: int, tokens: int) -> int:
        """Bytes of keys and values of every layer."""
        return 2 * self.layers * self.unit(rows, tokens)

    def rebuild_peak(self, old_rows: int, old_capacity: int, new_rows: int, new_capacity: int, length: int) -> int:
        """Peak of ``select_rows`` / ``extend_rows`` rebuilding the storage one tensor at a time.

        At tensor ``u`` (of ``2 x layers``) the new tensors ``0..u``, the old tensors ``u..`` and the gathered
        rows (``new_rows x length`` tokens) are alive; the extreme is the first or the last tensor.
        """
        n, o = self.unit(new_rows, new_capacity), self.unit(old_rows, old_capacity)
        gather = self.unit(new_rows, length)
        count = 2 * self.layers
        return max(n + count * o, count * n + o) + gather


@dataclass(frozen=True)
class Forward:
    """One transformer call: ``rows`` batch rows over the tokens of ``steps`` attending to ``cached``
    cache entries (before the call), returning the logits of the last ``last_tokens`` tokens."""

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


def guided_steps(steps: Sequence[ScaleStep], vpg: PrefixGuidance | None) -> set[int]:
    """Indices of the steps the sampler guides with VPG (the prefix term's own rule, as ``next_scale`` uses it)."""
    return set() if vpg is None else vpg.guided_steps(steps, steps[-1].scale + 1)


def kv_timeline(
    steps: Sequence[ScaleStep],
    geometry: KVGeometry,
    condition_rows: int,
    guided: set[int],
    refresh: str = "persistent",
    prefix_tokens: int = 0,
    shared: int = 1,
) -> list[KVStep]:
    """The cache of a sampling run, step by step (see the module docstring).

    Args:
        steps: the adapter's steps.
        geometry: the cache's shape and element size.
        condition_rows: ``B`` without CFG, ``2B`` with it (the sampler's condition rows).
        guided: the VPG-guided step indices (:func:`guided_steps`).
        refresh: ``"persistent"`` or ``"resample"``.
        prefix_tokens: tokens prefilled before step 0 (InfinityStar's text).
        shared: leading steps the corrupted branch shares with the clean one
            (:meth:`~vpg_pipelines.guidance.prefix.PrefixGuidance.shared_steps`).
    """
    g, rows_c = geometry, condition_rows
    ends, total = [], prefix_tokens
    for s in steps:
        total += s.num_sites if s.store_kv else 0
        ends.append(total)
    persistent = bool(guided) and refresh == "persistent"
    first = min(guided) if guided else None
    last = max(guided) if guided else None
    capacity = ends[last] if persistent else total
    rows, length, allocated = rows_c, 0, False
    out: list[KVStep] = []
    for step in steps:
        record = KVStep(step.index, rows)
        events = record.events
        if step.index == 0 and prefix_tokens:
            allocated = True
            events.append(("prefill", g.storage(rows, capacity), Forward(rows, (), 0, prefix_tokens)))
            length = prefix_tokens
        if persistent and step.index == first:
            base = ends[shared - 1]
            if length == base:  # select_rows(list(range(R)) * 2): same capacity
                events.append(("join: duplicate rows", g.rebuild_peak(rows_c, capacity, 2 * rows_c, capacity, length),
                               None))
            else:  # clone_rows, replay of the earlier steps corrupted, extend_rows
                live, clone = g.storage(rows_c, capacity), g.storage(rows_c, capacity)
                events.append(("join: clone rows", live + clone + g.unit(rows_c, base), None))
                chunk = tuple(s.index for s in steps[shared : step.index] if s.store_kv)
                events.append(("join: replay", live + clone, Forward(rows_c, chunk, base, 1)))
                peak = g.storage(2 * rows_c, capacity) + g.unit(rows_c, capacity) + clone
                events.append(("join: extend rows", peak, None))
            rows = 2 * rows_c
            record.rows = rows
        if not allocated:
            allocated = True
        storage = g.storage(rows, capacity)
        events.append(("forward", storage, Forward(rows, (step.index,), length)))
        length += step.num_sites if step.store_kv else 0
        if step.index in guided and not persistent:  # resample: clone + replay of a fresh corrupted prefix
            chunk = tuple(s.index for s in steps[shared : step.index] if s.store_kv) + (step.index,)
            base = ends[shared - 1]
            cap = base + sum(steps[i].num_sites for i in chunk)
            clone = g.storage(rows_c, cap)
            events.append(("resample: clone rows", storage + clone + g.unit(rows_c, base), None))
            events.append(("resample: replay", storage + clone, Forward(rows_c, chunk, base, step.num_sites)))
        record.after = storage
        if persistent and step.index == last:  # select_rows(range(R), capacity=total)
            events.append(("leave: drop corrupted rows", g.rebuild_peak(rows, capacity, rows_c, total, length), None))
            rows, capacity = rows_c, total
        record.end = g.storage(rows, capacity)
        out.append(record)
    return out
