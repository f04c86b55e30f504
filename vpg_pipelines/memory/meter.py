"""Live and peak bytes of the tensors a piece of code allocates, on the CPU or on the meta device.

:class:`TensorMeter` is a ``TorchDispatchMode``: every aten op that returns a fresh tensor (not a view
or an in-place result) adds its storage's bytes to the live total, and the storage's release (CPython
frees it when the last tensor or view on it goes) takes them off again. On the meta device nothing is
allocated, but shapes and dtypes are exact, so running a model's forward on meta weights under the
meter gives the tensor-level activation peak of the real-size model in milliseconds; that is how the
planner measures activations (``replay.py``). On the CPU the same meter measures a real run (tests
compare the planner's K/V timeline with it).

Tags attribute allocations to what made them (``with meter.tag("kv"): ...``): live and peak bytes
are kept per tag and in total. ``scaled_dot_product_attention`` is counted as the fused kernels run it
on a GPU (flash / memory-efficient: the output plus a float32 log-sum-exp per query row, no attention
matrix), whatever the device computes: on meta it is not computed at all.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass
class Window:
    """Peak bytes seen between :meth:`TensorMeter.open_window` and :meth:`TensorMeter.close_window` (total and per
    tag)."""

    peak: int = 0
    peak_by_tag: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class _FusedAttention(TorchFunctionMode):
    """Counts SDPA like the fused GPU kernels (see the module docstring)."""

    def __init__(self, meter: TensorMeter) -> None:
        super().__init__()
        self.meter = meter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, v = args[0], args[2]
        lse = q.shape[:-1].numel() * 4
        if q.device.type == "meta":  # the fused kernels' layout: (..., tokens, heads, dim) memory, transposed
            shape = (*q.shape[:-3], q.shape[-2], q.shape[-3], v.shape[-1]) if q.dim() >= 3 else (*q.shape[:-1],
                                                                                                  v.shape[-1])
            out = q.new_empty(shape)  # counted by the dispatch mode
            out = out.transpose(-3, -2) if q.dim() >= 3 else out
        else:
            with self.meter.paused():
                out = func(*args, **kwargs)
            self.meter.track(out)
        self.meter.bump(lse)
        return out


class TensorMeter(TorchDispatchMode):
    """Tracks the bytes of tensors allocated while it is active (``with TensorMeter() as meter``).

    Attributes:
        live / peak: bytes alive now / at most since entry (tensors allocated under the meter only).
        live_by_tag / peak_by_tag: the same per tag.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.live_by_tag: dict[str, int] = defaultdict(int)
        self.peak_by_tag: dict[str, int] = defaultdict(int)
        self._tags: list[str] = ["other"]
        self._tracked: dict[int, tuple[int, str]] = {}
        self._paused = 0
        self._windows: list[Window] = []
        self._attention = _FusedAttention(self)

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> TensorMeter:
        self._attention.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._attention.__exit__(*exc)

    @contextlib.contextmanager
    def tag(self, name: str) -> Iterator[None]:
        """Attribute what is allocated inside to ``name``."""
        self._tags.append(name)
        try:
            yield
        finally:
            self._tags.pop()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Allocations inside are not tracked (their frees neither)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def open_window(self) -> Window:
        """Start recording peaks into a new :class:`Window` (until :meth:`close_window`)."""
        win = Window(peak=self.live)
        for tag, value in self.live_by_tag.items():
            win.peak_by_tag[tag] = value
        self._windows.append(win)
        return win

    def close_window(self, win: Window) -> Window:
        self._windows.remove(win)
        return win

    # -- accounting --------------------------------------------------------------------------------
    def _raise_peaks(self, tag: str, extra: int = 0) -> None:
        total, by_tag = self.live + extra, self.live_by_tag[tag] + extra
        self.peak = max(self.peak, total)
        self.peak_by_tag[tag] = max(self.peak_by_tag[tag], by_tag)
        for win in self._windows:
            win.peak = max(win.peak, total)
            win.peak_by_tag[tag] = max(win.peak_by_tag[tag], by_tag)

    def bump(self, nbytes: int) -> None:
        """A transient of ``nbytes`` (allocated and released at once) on top of what is live."""
        self._raise_peaks(self._tags[-1], nbytes)

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage as allocated now (once), under the current tag."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._tracked:
            return
        nbytes, tag = storage.nbytes(), self._tags[-1]
        self._tracked[key] = (nbytes, tag)
        self.live += nbytes
        self.live_by_tag[tag] += nbytes
        self._raise_peaks(tag)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        nbytes, tag = self._tracked.pop(key)
        self.live -= nbytes
        self.live_by_tag[tag] -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._paused:
            return out
        schema_returns = func._schema.returns
        if any(r.alias_info is not None for r in schema_returns):
            return out  # a view or an in-place / out= result: nothing new
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in inputs:
                self.track(t)
        return out
