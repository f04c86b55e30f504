"""Key/value cache for next-scale sampling.

One object holds the self-attention keys and values of every layer. Storage is preallocated per
layer as ``(rows, heads, capacity, head_dim)`` and each scale is appended in place, so a step costs
no copy of the cache. Rows are the batch rows of the sampler (condition x prefix branches x batch);
:meth:`select_rows` rebuilds the storage for a new row layout (a branch group joins or leaves) and a
new capacity, which is how the corrupted VPG branch is added after the first scale and dropped
after the last guided scale with its memory freed.

Layers may hold different numbers of entries (an accelerator that prunes tokens in some blocks, or
compresses some layers' caches harder than others), so the capacity is per layer. A **budget**
(:class:`KVBudget`, set by the sampler for one step) compresses a layer right after its attention:
the layer keeps the entries the budget selects, per row and head (:meth:`KVCache.compress`). A cache
made with ``grow=True`` holds each layer at exactly its current length instead of a preallocated
capacity: appends reallocate, compression shrinks (what a budget needs to save memory).

It also holds the run's **memo**: values a transformer computes from the condition rows alone (AdaLN
modulations, cross-attention keys/values of the text), which do not change during a run, so each is
computed at the first step and reused (:meth:`memo_for`). Copies of the cache share it. And the
**row state**: per-row tensors an accelerator keeps beside the cache (e.g. FastVAR's cached sub-layer
outputs), which follow the rows through :meth:`select_rows` / :meth:`extend_rows` like the keys do.

An **offloaded** cache (``storage_device="cpu"``, what transformers calls an ``OffloadedCache``) keeps the
keys and values in host memory (pinned where CUDA is present) and hands each layer's attention a copy of
the entries it sees on the device of the step's keys, so the accelerator holds one or two layers' entries
instead of all of them. With ``prefetch`` the next layer's entries are copied while this layer computes
(on a side CUDA stream). The values are the same; only where they live changes.

The object is passed to the transformer as a keyword argument. Accelerate's offload hooks call
``.to()`` on arguments that have it and rebuild lists/dicts, so this class moves its tensors in
place and returns itself (see ``spec/diffusers_conventions.md`` §4); an offloaded cache's storage stays
where it is.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

Queries = Callable[[torch.Tensor], torch.Tensor]
"""``queries(positions) -> (rows, heads, len(positions), head_dim)``: a step's scoring queries of the tokens at
``positions`` (indices into the step's tokens), computed on demand by the transformer."""


class KVBudget(Protocol):
    """How many entries each layer keeps after one step's attention, and which (one step; set on
    :attr:`KVCache.budget` by the sampler)."""

    def capacity(self, layer: int, length: int) -> int | None:
        """Entries ``layer`` keeps when it holds ``length`` (this step's included); ``None``: all."""

    def select(self, layer: int, keys: torch.Tensor, queries: Queries, capacity: int) -> torch.Tensor:
        """``(rows, heads, capacity)`` indices (ascending) of the entries to keep among ``keys``
        ``(rows, heads, length, head_dim)``; ``queries(positions)`` gives the scoring queries of some of
        this step's tokens."""


@dataclass
class _Prefetched:
    """A layer's visible entries copied ahead of its append (``event``: when a CUDA side stream finishes)."""

    key: tuple
    pair: tuple[torch.Tensor, torch.Tensor]
    event: object | None


def per_layer(capacity: int | Sequence[int], num_layers: int) -> list[int]:
    """One capacity per layer from one value or a sequence of ``num_layers`` values."""
    if isinstance(capacity, int):
        return [capacity] * num_layers
    values = [int(c) for c in capacity]
    if len(values) != num_layers:
        raise ValueError(f"KVCache needs {num_layers} capacities (one per layer), got {len(values)}")
    return values


class KVCache:
    """Per-layer K/V storage with in-place appends.

    Args:
        num_layers: number of attention layers that use the cache.
        rows: number of batch rows.
        capacity: maximum number of cached tokens per row: one value, or one per layer.
        grow: hold each layer at exactly its length (appends reallocate, :meth:`keep_entries` shrinks)
            instead of preallocating ``capacity``.
        storage_device: keep the keys and values on this device (e.g. ``"cpu"``) instead of the device of
            the keys the layers append; ``None``: where they come from.
        prefetch: with ``storage_device``, copy the next layer's visible entries to the compute device while a
            layer computes (``None``: on CUDA only, where a side stream overlaps the copy).
    """

    def __init__(self, num_layers: int, rows: int, capacity: int | Sequence[int], grow: bool = False,
                 storage_device: torch.device | str | None = None, prefetch: bool | None = None) -> None:
        self.num_layers = num_layers
        self.rows = rows
        self.capacities = per_layer(capacity, num_layers)
        self.grow = grow
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers
        # Optional list of (start, end) token ranges that the current step may attend to (besides
        # its own new tokens). None means the whole cache. Used by models whose scales attend to a
        # subset of earlier scales (InfinityStar's `ref_sids`).
        self.visible: list[tuple[int, int]] | None = None
        self.budget: KVBudget | None = None
        self.memo: dict = {}
        self._memo_owner: object | None = None
        self.row_state: dict[Hashable, torch.Tensor] = {}
        self.storage_device = None if storage_device is None else torch.device(storage_device)
        self.prefetch = prefetch
        self.gathered_bytes = 0  # the largest device copy one offloaded append handed out (keys + values)
        self._next: _Prefetched | None = None
        self._stream = None
        self._device: torch.device | None = None

    @property
    def offloaded(self) -> bool:
        return self.storage_device is not None

    def _empty(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """New storage shaped ``shape``, of ``like``'s dtype, on the storage device (pinned host memory where
        CUDA copies from it) or on ``like``'s device."""
        if not self.offloaded:
            return like.new_empty(shape)
        pin = self.storage_device.type == "cpu" and torch.cuda.is_available()
        return torch.empty(shape, dtype=like.dtype, device=self.storage_device, pin_memory=pin)

    @property
    def capacity(self) -> int:
        """The largest layer capacity."""
        return max(self.capacities) if self.capacities else 0

    def memo_for(self, conditions: object) -> dict:
        """The memo of values computed from ``conditions`` (the run's condition rows, one object for
        the whole run); a different object starts an empty memo."""
        if self._memo_owner is not conditions:
            self.memo, self._memo_owner = {}, conditions
        return self.memo

    @property
    def length(self) -> int:
        """Number of tokens stored (after every layer has appended the current step) in the last layer."""
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
        if self.offloaded:
            return self._append_offloaded(layer, k, v, store)
        start, n = self.lengths[layer], k.shape[2]
        if store:
            self._store(layer, k, v)
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

    def _store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write this step's entries after ``layer``'s stored ones (growing or allocating its storage first)."""
        start, n = self.lengths[layer], k.shape[2]
        if self.grow:
            self._reserve(layer, start + n, k, v)
        else:
            if start + n > self.capacities[layer]:
                raise RuntimeError(f"KVCache capacity {self.capacities[layer]} of layer {layer} exceeded "
                                   f"({start} + {n} tokens)")
            if self.keys[layer] is None:
                self._allocate(layer, k, v)
        self.keys[layer][:, :, start : start + n] = k
        self.values[layer][:, :, start : start + n] = v
        self.lengths[layer] = start + n

    def _allocate(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """The preallocated storage of ``layer`` (its first append)."""
        self.keys[layer] = self._empty((self.rows, k.shape[1], self.capacities[layer], k.shape[3]), k)
        self.values[layer] = self._empty((self.rows, v.shape[1], self.capacities[layer], v.shape[3]), v)

    # -- offloaded storage ----------------------------------------------------------------------------------
    def _append_offloaded(self, layer: int, k: torch.Tensor, v: torch.Tensor, store: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`append` of an offloaded cache: the visible entries copied to ``k``'s device (prefetched or
        now), this step's entries after them, and (``store``) this step's entries written to the storage."""
        n = k.shape[2]
        self._device = k.device
        if self.keys[layer] is None and not store:
            return k, v
        gathered = self._take_prefetched(layer, k) or self._gather(layer, k, v)
        out_k, out_v = gathered
        out_k[:, :, out_k.shape[2] - n :] = k
        out_v[:, :, out_v.shape[2] - n :] = v
        if store:  # a blocking copy: the host storage is read by the next gather and by the row operations
            self._store(layer, k, v)
        self.gathered_bytes = max(self.gathered_bytes, 2 * out_k.numel() * out_k.element_size())
        if self._prefetching(k.device) and layer + 1 < self.num_layers:
            self._launch_prefetch(layer + 1, k, v)
        return out_k, out_v

    def _ranges(self, layer: int) -> list[tuple[int, int]]:
        end = self.lengths[layer]
        if self.visible is None:
            return [(0, end)] if end else []
        return [(a, b) for a, b in self.visible if b > a]

    def _gather(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New tensors on ``k``'s device holding ``layer``'s visible entries followed by room for ``k.shape[2]``
        entries (shaped, typed and placed like ``k`` / ``v``)."""
        ranges = self._ranges(layer) if self.keys[layer] is not None else []
        total, n = sum(b - a for a, b in ranges), k.shape[2]
        out = []
        for store, new in ((self.keys, k), (self.values, v)):
            dst = new.new_empty((self.rows, new.shape[1], total + n, new.shape[3]))
            position = 0
            for a, b in ranges:
                dst[:, :, position : position + b - a].copy_(store[layer][:, :, a:b], non_blocking=True)
                position += b - a
            out.append(dst)
        return out[0], out[1]

    def _prefetching(self, device: torch.device) -> bool:
        return self.prefetch if self.prefetch is not None else device.type == "cuda"

    def _key_of(self, layer: int, k: torch.Tensor) -> tuple:
        """What a gathered copy of ``layer`` depends on: its entries, the rows and the step's key layout."""
        return (layer, self.lengths[layer], self.rows, tuple(self._ranges(layer)), tuple(k.shape), k.dtype, k.device)

    def _launch_prefetch(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Start copying ``layer``'s visible entries to ``k``'s device, with room for a step like ``k`` / ``v``
        (on CUDA on a side stream; elsewhere now)."""
        self._next = None
        if self.keys[layer] is None:
            return
        device, key = k.device, self._key_of(layer, k)
        if device.type != "cuda":
            self._next = _Prefetched(key, self._gather(layer, k, v), None)
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._stream):
            pair = self._gather(layer, k, v)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._next = _Prefetched(key, pair, event)

    def _take_prefetched(self, layer: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The prefetched copy of ``layer`` if it is still what this append needs (same entries, rows, step)."""
        ready, self._next = self._next, None
        if ready is None or ready.key != self._key_of(layer, k):
            return None
        if ready.event is not None:
            stream = torch.cuda.current_stream(k.device)
            stream.wait_event(ready.event)
            for t in ready.pair:
                t.record_stream(stream)
        return ready.pair

    def _reserve(self, layer: int, size: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Grow a ``grow`` cache's layer to ``size`` entries: keys, then values, each copied and replaced."""
        end = self.lengths[layer]
        for store, new in ((self.keys, k), (self.values, v)):
            old = store[layer]
            if old is not None and old.shape[2] >= size:
                continue
            grown = self._empty((self.rows, new.shape[1], size, new.shape[3]), new)
            if old is not None:
                grown[:, :, :end] = old[:, :, :end]
            store[layer] = grown
            del old

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

    # -- budgets ------------------------------------------------------------------------------------------
    def compress(self, layer: int, queries: Queries) -> None:
        """Apply :attr:`budget` to ``layer`` after its attention (no-op without a budget or when the layer
        fits it). ``queries`` computes scoring queries of the step's tokens on demand."""
        if self.budget is None:
            return
        length = self.lengths[layer]
        capacity = self.budget.capacity(layer, length)
        if capacity is None or capacity >= length:
            return
        keys = self.keys[layer][:, :, :length]
        if self.offloaded:  # scored where the queries are
            keys = keys.to(self._device, non_blocking=True)
        index = self.budget.select(layer, keys, queries, capacity)
        del keys  # a view of the storage: keep_entries frees the storage it replaces
        self.keep_entries(layer, index)

    def keep_entries(self, layer: int, index: torch.Tensor) -> None:
        """Keep only the entries ``index`` ``(rows, heads, n)`` of ``layer`` (per row and head), in that order."""
        length = self.lengths[layer]
        self._next = None
        index = index.to(self.keys[layer].device, torch.long)
        for store in (self.keys, self.values):
            old = store[layer]
            kept = old[:, :, :length].gather(2, index[..., None].expand(-1, -1, -1, old.shape[3]))
            if self.grow:
                store[layer] = kept
            else:
                old[:, :, : index.shape[2]] = kept
            del old, kept
        self.lengths[layer] = int(index.shape[2])

    # -- row state ----------------------------------------------------------------------------------------
    def keep_state(self, key: Hashable, value: torch.Tensor) -> None:
        """Keep a copy of ``value`` ``(rows, ...)`` under ``key``: it follows the rows like the keys do."""
        if value.shape[0] != self.rows:
            raise RuntimeError(f"KVCache holds {self.rows} rows but got a row state of {value.shape[0]} rows")
        old = self.row_state.pop(key, None)
        reuse = old is not None and (old.shape, old.dtype, old.device) == (value.shape, value.dtype, value.device)
        stored = old if reuse else value.new_empty(value.shape)
        del old
        stored.copy_(value)
        self.row_state[key] = stored

    def drop_state(self, prefix: Hashable) -> None:
        """Forget every row state whose key is a tuple starting with ``prefix``."""
        for key in [k for k in self.row_state if isinstance(k, tuple) and k and k[0] == prefix]:
            del self.row_state[key]

    # -- rows -----------------------------------------------------------------------------------------------
    def _size(self, layer: int, capacities: list[int]) -> int:
        return self.lengths[layer] if self.grow else capacities[layer]

    def select_rows(self, index: torch.Tensor | list[int], capacity: int | Sequence[int] | None = None) -> KVCache:
        """Rebuild the storage as ``rows = old_rows[index]`` with a new capacity.

        Duplicating rows adds a branch group (e.g. the corrupted prefix branch starts as a copy of
        the clean rows after the single-site first scale); a prefix of the rows drops a group. Each
        layer is rebuilt and its old storage released before the next, so the peak stays near the
        larger of the two layouts. The row state follows, one tensor at a time, after the layers.
        """
        index = torch.as_tensor(index, dtype=torch.long)
        self._next = None
        capacities = self.capacities if capacity is None else per_layer(capacity, self.num_layers)
        for layer, (cap, length) in enumerate(zip(capacities, self.lengths)):
            if cap < length:
                raise RuntimeError(f"KVCache capacity {cap} is smaller than the {length} tokens of layer {layer}")
        for layer in range(self.num_layers):
            for store in (self.keys, self.values):
                old = store[layer]
                if old is None:
                    continue
                idx = index.to(old.device)
                new = self._empty((len(index), old.shape[1], self._size(layer, capacities), old.shape[3]), old)
                end = self.lengths[layer]
                new[:, :, :end] = old[idx, :, :end]
                store[layer] = new
                del old
        for key in list(self.row_state):
            old = self.row_state[key]
            self.row_state[key] = old[index.to(old.device)]
            del old
        self.rows = len(index)
        self.capacities = list(capacities)
        return self

    def clone_rows(self, index: torch.Tensor | list[int], length: int, capacity: int | Sequence[int]) -> KVCache:
        """A new cache holding the first ``length`` tokens of rows ``index`` (no row state: it belongs to
        later tokens)."""
        index = torch.as_tensor(index, dtype=torch.long)
        new = KVCache(self.num_layers, len(index), capacity, grow=self.grow, storage_device=self.storage_device,
                      prefetch=self.prefetch)
        for layer in range(self.num_layers):
            if self.keys[layer] is None:
                continue
            idx = index.to(self.keys[layer].device)
            size = length if self.grow else new.capacities[layer]
            for src, dst in ((self.keys, new.keys), (self.values, new.values)):
                old = src[layer]
                dst[layer] = new._empty((len(index), old.shape[1], size, old.shape[3]), old)
                dst[layer][:, :, :length] = old[idx, :, :length]
            new.lengths[layer] = length
        new.visible = self.visible
        new.memo, new._memo_owner = self.memo, self._memo_owner
        return new

    def extend_rows(self, other: KVCache, capacity: int | Sequence[int] | None = None) -> KVCache:
        """Append ``other``'s rows after this cache's rows (both must hold the same tokens count and the
        same row states)."""
        if other.lengths != self.lengths:
            raise RuntimeError(f"cannot stack caches of lengths {self.lengths} and {other.lengths}")
        if set(other.row_state) != set(self.row_state):
            raise RuntimeError("cannot stack caches with different row states")
        capacities = self.capacities if capacity is None else per_layer(capacity, self.num_layers)
        self._next = None
        for layer in range(self.num_layers):
            end = self.lengths[layer]
            for mine, theirs in ((self.keys, other.keys), (self.values, other.values)):
                a, b = mine[layer], theirs[layer]
                if a is None:
                    continue
                size = self._size(layer, capacities)
                new = self._empty((a.shape[0] + b.shape[0], a.shape[1], size, a.shape[3]), a)
                new[: a.shape[0], :, :end] = a[:, :, :end]
                new[a.shape[0] :, :, :end] = b[:, :, :end]
                mine[layer] = new
                del a, new  # the old tensor goes now, not when the loop rebinds the name
        for key in list(self.row_state):
            self.row_state[key] = torch.cat([self.row_state[key], other.row_state[key]])
        self.rows += other.rows
        self.capacities = list(capacities)
        return self

    def to(self, *args, **kwargs) -> KVCache:
        """Move the stored tensors in place (keeps the object identity for offload hooks); an offloaded cache's
        keys and values stay on its storage device."""
        for store in () if self.offloaded else (self.keys, self.values):
            for i, t in enumerate(store):
                if t is not None:
                    store[i] = t.to(*args, **kwargs)
        for key, value in self.memo.items():
            if isinstance(value, torch.Tensor):
                self.memo[key] = value.to(*args, **kwargs)
        for key, value in self.row_state.items():
            self.row_state[key] = value.to(*args, **kwargs)
        return self

    def memory_bytes(self) -> int:
        """Bytes of the keys, values and row states."""
        tensors = [t for s in (self.keys, self.values) for t in s if t is not None] + list(self.row_state.values())
        return sum(t.numel() * t.element_size() for t in tensors)
