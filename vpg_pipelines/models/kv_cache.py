"""Key/value cache for next-scale sampling.

One object holds the self-attention keys and values of every layer. Storage is preallocated per
layer as ``(rows, heads, capacity, head_dim)`` and each scale is appended in place, so a step costs
no copy of the cache. Rows are the batch rows of the sampler (condition x prefix branches x batch);
:meth:`select_rows` rebuilds the storage for a new row layout (a branch group joins or leaves) and a
new capacity, which is how the corrupted VPG branch is added after the first scale and dropped
after the last guided scale with its memory freed.

It also holds the run's **memo**: values a transformer computes from the condition rows alone (AdaLN
modulations, cross-attention keys/values of the text), which do not change during a run, so each is
computed at the first step and reused (:meth:`memo_for`). Copies of the cache share it.

The object is passed to the transformer as a keyword argument. Accelerate's offload hooks call
``.to()`` on arguments that have it and rebuild lists/dicts, so this class moves its tensors in
place and returns itself (see ``spec/diffusers_conventions.md`` §4).
"""

from __future__ import annotations

import torch


class KVCache:
    """Preallocated per-layer K/V storage with in-place appends.

    Args:
        num_layers: number of attention layers that use the cache.
        rows: number of batch rows.
        capacity: maximum number of cached tokens per row.
    """

    def __init__(self, num_layers: int, rows: int, capacity: int) -> None:
        self.num_layers = num_layers
        self.rows = rows
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers
        # Optional list of (start, end) token ranges that the current step may attend to (besides
        # its own new tokens). None means the whole cache. Used by models whose scales attend to a
        # subset of earlier scales (InfinityStar's `ref_sids`).
        self.visible: list[tuple[int, int]] | None = None
        self.memo: dict = {}
        self._memo_owner: object | None = None

    def memo_for(self, conditions: object) -> dict:
        """The memo of values computed from ``conditions`` (the run's condition rows, one object for
        the whole run); a different object starts an empty memo."""
        if self._memo_owner is not conditions:
            self.memo, self._memo_owner = {}, conditions
        return self.memo

    @property
    def length(self) -> int:
        """Number of tokens stored (after every layer has appended the current step)."""
        return self.lengths[-1] if self.num_layers else 0

    def append(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, store: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's ``k``/``v`` (rows, heads, n, head_dim) and return everything visible.

        With ``store=False`` the new entries are attended to but not kept (scale repetitions whose
        K/V must not stay in the cache).
        """
        if k.shape[0] != self.rows:
            raise RuntimeError(f"KVCache holds {self.rows} rows but got keys for {k.shape[0]} rows")
        start, n = self.lengths[layer], k.shape[2]
        if store:
            if start + n > self.capacity:
                raise RuntimeError(f"KVCache capacity {self.capacity} exceeded ({start} + {n} tokens)")
            if self.keys[layer] is None:
                shape = (self.rows, k.shape[1], self.capacity, k.shape[3])
                self.keys[layer] = k.new_empty(shape)
                self.values[layer] = v.new_empty((self.rows, v.shape[1], self.capacity, v.shape[3]))
            self.keys[layer][:, :, start : start + n] = k
            self.values[layer][:, :, start : start + n] = v
            self.lengths[layer] = start + n
            if self.visible is None:
                return self.keys[layer][:, :, : start + n], self.values[layer][:, :, : start + n]
            old_k, old_v = self._visible(layer)
            new_k = self.keys[layer][:, :, start : start + n]
            new_v = self.values[layer][:, :, start : start + n]
            return torch.cat([old_k, new_k], dim=2), torch.cat([old_v, new_v], dim=2)
        if self.keys[layer] is None or start == 0:
            return k, v
        old_k, old_v = self._visible(layer)
        return torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)

    def _visible(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.lengths[layer]
        keys, values = self.keys[layer], self.values[layer]
        if self.visible is None:
            return keys[:, :, :end], values[:, :, :end]
        ks = [keys[:, :, a:b] for a, b in self.visible if b > a]
        vs = [values[:, :, a:b] for a, b in self.visible if b > a]
        if not ks:
            return keys[:, :, :0], values[:, :, :0]
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def select_rows(self, index: torch.Tensor | list[int], capacity: int | None = None) -> KVCache:
        """Rebuild the storage as ``rows = old_rows[index]`` with a new capacity.

        Duplicating rows adds a branch group (e.g. the corrupted prefix branch starts as a copy of
        the clean rows after the single-site first scale); a prefix of the rows drops a group. Each
        layer is rebuilt and its old storage released before the next, so the peak stays near the
        larger of the two layouts.
        """
        index = torch.as_tensor(index, dtype=torch.long)
        capacity = self.capacity if capacity is None else capacity
        if capacity < self.length:
            raise RuntimeError(f"KVCache capacity {capacity} is smaller than the stored {self.length} tokens")
        for layer in range(self.num_layers):
            for store in (self.keys, self.values):
                old = store[layer]
                if old is None:
                    continue
                idx = index.to(old.device)
                new = old.new_empty((len(index), old.shape[1], capacity, old.shape[3]))
                end = self.lengths[layer]
                new[:, :, :end] = old[idx, :, :end]
                store[layer] = new
                del old
        self.rows = len(index)
        self.capacity = capacity
        return self

    def clone_rows(self, index: torch.Tensor | list[int], length: int, capacity: int) -> KVCache:
        """A new cache holding the first ``length`` tokens of rows ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        new = KVCache(self.num_layers, len(index), capacity)
        for layer in range(self.num_layers):
            if self.keys[layer] is None:
                continue
            idx = index.to(self.keys[layer].device)
            for src, dst in ((self.keys, new.keys), (self.values, new.values)):
                old = src[layer]
                dst[layer] = old.new_empty((len(index), old.shape[1], capacity, old.shape[3]))
                dst[layer][:, :, :length] = old[idx, :, :length]
            new.lengths[layer] = length
        new.visible = self.visible
        new.memo, new._memo_owner = self.memo, self._memo_owner
        return new

    def extend_rows(self, other: KVCache, capacity: int | None = None) -> KVCache:
        """Append ``other``'s rows after this cache's rows (both must hold the same tokens count)."""
        if other.lengths != self.lengths:
            raise RuntimeError(f"cannot stack caches of lengths {self.lengths} and {other.lengths}")
        capacity = self.capacity if capacity is None else capacity
        for layer in range(self.num_layers):
            end = self.lengths[layer]
            for mine, theirs in ((self.keys, other.keys), (self.values, other.values)):
                a, b = mine[layer], theirs[layer]
                if a is None:
                    continue
                new = a.new_empty((a.shape[0] + b.shape[0], a.shape[1], capacity, a.shape[3]))
                new[: a.shape[0], :, :end] = a[:, :, :end]
                new[a.shape[0] :, :, :end] = b[:, :, :end]
                mine[layer] = new
        self.rows += other.rows
        self.capacity = capacity
        return self

    def to(self, *args, **kwargs) -> KVCache:
        """Move the stored tensors in place (keeps the object identity for offload hooks)."""
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                if t is not None:
                    store[i] = t.to(*args, **kwargs)
        for key, value in self.memo.items():
            if isinstance(value, torch.Tensor):
                self.memo[key] = value.to(*args, **kwargs)
        return self

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in (self.keys, self.values) for t in s if t is not None)
