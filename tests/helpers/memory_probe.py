"""Measuring what a pipeline call allocates on the CPU, per sampler step (tests of the memory planner).

:func:`probe_call` runs ``pipe(...)`` under :class:`~vpg_pipelines.memory.meter.TensorMeter` with the
sampler's ``KVCache`` replaced by a subclass that tags everything the cache code allocates (storage,
its growth under a budget, rebuilds, clones, the gathered rows, kept entries, row state) as ``"kv"``; the
attention's concatenations are not cache.
Step windows end at ``callback_on_step_end``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import vpg_pipelines.models.kv_cache as kv_module
import vpg_pipelines.sampling.next_scale as sampler_module
from vpg_pipelines.memory.meter import TensorMeter, Window


def recording_cache(meter: TensorMeter) -> type:
    base = kv_module.KVCache

    class RecordingKVCache(base):
        def append(self, layer, k, v, store=True):
            if store and self.grow:  # a growing layer is reallocated inside append
                with meter.tag("kv"):
                    self._reserve(layer, self.lengths[layer] + k.shape[2], k, v)
            elif store and self.keys[layer] is None:  # the storage the base class would allocate here
                with meter.tag("kv"):
                    size = self.capacities[layer]
                    self.keys[layer] = k.new_empty((self.rows, k.shape[1], size, k.shape[3]))
                    self.values[layer] = v.new_empty((self.rows, v.shape[1], size, v.shape[3]))
            return super().append(layer, k, v, store)

        def keep_entries(self, *args, **kwargs):
            with meter.tag("kv"):
                return super().keep_entries(*args, **kwargs)

        def keep_state(self, *args, **kwargs):
            with meter.tag("kv"):
                return super().keep_state(*args, **kwargs)

        def select_rows(self, *args, **kwargs):
            with meter.tag("kv"):
                return super().select_rows(*args, **kwargs)

        def clone_rows(self, *args, **kwargs):
            with meter.tag("kv"):
                return super().clone_rows(*args, **kwargs)

        def extend_rows(self, *args, **kwargs):
            with meter.tag("kv"):
                return super().extend_rows(*args, **kwargs)

    return RecordingKVCache


@dataclass
class Probe:
    windows: list[Window] = field(default_factory=list)

    def kv_peak(self, step: int) -> int:
        return self.windows[step].peak_by_tag.get("kv", 0)

    def peak(self, step: int) -> int:
        return self.windows[step].peak


def probe_call(pipe, monkeypatch, **kwargs):
    """``(output, Probe)`` of ``pipe(**kwargs)``: per step, the peak of everything allocated and of the cache."""
    probe = Probe()
    with TensorMeter() as meter:
        cls = recording_cache(meter)
        monkeypatch.setattr(kv_module, "KVCache", cls)
        monkeypatch.setattr(sampler_module, "KVCache", cls)
        current = [meter.open_window()]

        def callback(_pipe, step_index, scale_index, callback_kwargs):
            probe.windows.append(meter.close_window(current[0]))
            current[0] = meter.open_window()
            return {}

        with torch.no_grad():
            out = pipe(callback_on_step_end=callback, **kwargs)
        meter.close_window(current[0])
    return out, probe
