"""How many K/V entries every layer of the sampler's cache holds, step by step.

Without an accelerator every layer stores every site of every storing step. An accelerator may store
fewer in some layers (token pruning appends only the kept tokens' keys) and keep fewer after a step
(a K/V budget), so the counts are per layer. The sampler sizes its cache with them and the memory
planner (``memory/kv_timeline.py``) models the same cache with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..acceleration.base import Acceleration
from ..models.adapter import ScaleStep


@dataclass(frozen=True)
class CacheLengths:
    """Entries per step (position in the run's steps) and layer.

    Attributes:
        steps: the steps the sampler runs.
        before: entries when the step starts.
        during: entries while the step's forward runs (its stored tokens appended; what the storage must hold).
        after: entries when the step is over (a budget applied).
        accelerated: whether an accelerator shaped the counts.
    """

    steps: tuple[ScaleStep, ...]
    before: tuple[tuple[int, ...], ...]
    during: tuple[tuple[int, ...], ...]
    after: tuple[tuple[int, ...], ...]
    accelerated: bool

    def capacity(self, upto: int) -> list[int]:
        """Per layer, the most entries held during steps ``0 .. upto`` (what a preallocated cache needs)."""
        return [max(column) for column in zip(*self.during[: upto + 1])]

    def replay_capacity(self, position: int, shared: int = 1) -> list[int]:
        """The capacity of the cache a ``resample`` replay of the prefix up to step ``position`` fills: one
        block-causal call over the ``shared`` leading steps' entries plus every later step of the chunk
        (unaccelerated), or the steps one by one, which store what the main cache stored (accelerated)."""
        if self.accelerated:
            return self.capacity(position)
        steps = self.steps
        chunk = [s for s in steps[shared:position] if s.store_kv] + [steps[position]]
        total = self.after[shared - 1][0] + sum(s.num_sites for s in chunk)
        return [total] * len(self.after[0])


def cache_lengths(steps: Sequence[ScaleStep], num_layers: int, prefix_tokens: int = 0,
                  acceleration: Acceleration | None = None) -> CacheLengths:
    """The entries of every layer around every step of ``steps`` (the sampler's run steps)."""
    held = [prefix_tokens] * num_layers
    before, during, after = [], [], []
    for step in steps:
        before.append(tuple(held))
        if step.store_kv:
            added = [step.num_sites if acceleration is None else acceleration.appended_entries(step, layer)
                     for layer in range(num_layers)]
            now = [h + a for h, a in zip(held, added)]
            during.append(tuple(now))
            if acceleration is not None:
                now = [acceleration.kept_entries(step, layer, n) for layer, n in enumerate(now)]
        else:
            now = list(held)
            during.append(tuple(now))
        after.append(tuple(now))
        held = now
    return CacheLengths(tuple(steps), tuple(before), tuple(during), tuple(after), acceleration is not None)
