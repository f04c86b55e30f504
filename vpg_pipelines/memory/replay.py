"""Activations measured by replaying a step's forward, or a decode, on the meta device.

A transformer's blocks are identical, so the activation peak of one sampler call is the peak of a
**one-block** copy of the transformer (same widths, heads, text and head layers) running the call:
the residual stream, the rotary tables, masks and logits are the same, and the widest block-internal
tensors are reached once per block. The copy lives on the meta device (no memory, exact shapes and
dtypes) and runs under :class:`~.meter.TensorMeter` with its cache storage allocated beforehand, so
what the meter counts is exactly what the forward allocates besides the cache (the ``store_kv=False``
concatenations and InfinityStar's gathered visible keys included). Decodes replay the whole VAE.

What is not counted: kernel workspaces that are not tensors (cuBLAS, cuDNN convolution workspaces)
and allocator rounding and fragmentation (the CUDA caching allocator rounds every block up to 512 B
and keeps freed blocks for reuse). ``scripts/gpu_check.sh`` compares the planner with
``torch.cuda.max_memory_allocated`` at the released sizes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn

from ..models.adapter import RowBatch, ScaleStep
from ..models.infinity.adapter import InfinityAdapter
from ..models.infinity.transformer import InfinityCondition
from ..models.infinity_star.adapter import InfinityStarAdapter
from ..models.kv_cache import KVCache
from ..models.var.adapter import VARAdapter, VARState
from .kv_timeline import Forward, KVGeometry
from .meter import TensorMeter

META = torch.device("meta")


def meta_copy(model: nn.Module, dtype: torch.dtype, **overrides: Any) -> nn.Module:
    """An empty (meta) copy of a diffusers model built from its config (``overrides`` applied), its
    floating tensors in ``dtype`` except the model's ``_keep_in_fp32_modules``."""
    cls = type(model)
    accepted = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in dict(model.config).items() if k in accepted}
    config.update(overrides)
    with init_empty_weights():
        copy = cls(**config)
    return cast_floating(copy.to(device=META), dtype).eval()


def cast_floating(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Floating parameters and buffers of ``model`` to ``dtype`` in place, ``_keep_in_fp32_modules`` to
    float32 (what ``from_pretrained(dtype=...)`` loads); returns ``model``."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        target = torch.float32 if any(part in keep for part in name.split(".")) else dtype
        for key, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor.is_floating_point() and tensor.dtype != target:
                setattr(module, key, type(tensor)(tensor.to(target)) if isinstance(tensor, nn.Parameter)
                        else tensor.to(target))
    return model


def peak_of(fn, *args, **kwargs) -> tuple[int, Any]:
    """``(peak bytes allocated while fn runs, its result)`` under a fresh :class:`TensorMeter`."""
    with torch.no_grad(), TensorMeter() as meter:
        result = fn(*args, **kwargs)
    return meter.peak, result


class StepReplay:
    """Activation peaks of one model's sampler calls (see the module docstring).

    Subclasses build a one-block meta transformer and its adapter (:meth:`_setup`) and the
    :class:`RowBatch` of a call (:meth:`_batch`).

    Args:
        transformer: the pipeline's transformer (any weights; only its config is read).
        steps: the adapter's steps of the planned call.
        condition_rows: the sampler's condition rows.
        dtype: the compute dtype.
        chunk_size (keyword): forward chunking of the planned model (``None``: off).
        kv_offload (keyword): the cache kept in host memory (``enable_kv_cache_offload``): each layer's attention
            reads a copy of its visible entries, and the next layer's copy is prefetched meanwhile.
    """

    def __init__(self, transformer: nn.Module, steps: Sequence[ScaleStep], condition_rows: int,
                 dtype: torch.dtype, **extra: Any) -> None:
        self.steps = list(steps)
        self.condition_rows = condition_rows
        self.dtype = dtype
        self.depth = int(transformer.config.depth)
        self.extra = extra
        self._cache: dict[Forward, int] = {}
        self._setup(transformer)
        chunk_size = extra.get("chunk_size")
        if chunk_size is not None:  # forward chunking is a setting of the model object, not of its config
            self.model.enable_forward_chunking(chunk_size)
        self.capacity = self.prefix_tokens + sum(s.num_sites for s in self.steps) + 1
        self._geometry: KVGeometry | None = None

    prefix_tokens = 0

    # -- per model -----------------------------------------------------------------------------------
    def _setup(self, transformer: nn.Module) -> None:
        raise NotImplementedError

    def _batch(self, forward: Forward) -> RowBatch:
        raise NotImplementedError

    def vocab(self, step: ScaleStep) -> int:
        """Logit values per site of ``step``."""
        raise NotImplementedError

    def state_bytes(self, index: int, batch: int) -> int:
        """The sampler state alive during step ``index`` (an estimate from the sizes): the clean input of
        every step so far (the sampler keeps them for VPG's corruptions), the model's latent, and the
        step's sampled codes with the tensors that fold them into the latent."""
        return 0

    def _history(self, index: int, batch: int, channels: int, size: int) -> int:
        return sum(batch * s.num_sites * channels * size for s in self.steps[: index + 1])

    def _run(self, forward: Forward, cache: KVCache, batch: RowBatch | None = None) -> torch.Tensor:
        batch = self._batch(forward) if batch is None else batch
        return self.adapter.forward(self.state, batch, cache, None, forward.last_tokens)

    # -- shared --------------------------------------------------------------------------------------
    def _first_call(self) -> Forward:
        if self.prefix_tokens:
            return Forward(self.condition_rows, (), 0, self.prefix_tokens)
        return Forward(self.condition_rows, (0,), 0)

    def geometry(self) -> KVGeometry:
        """The cache's shape per layer and its element size, read off the storage the model's first
        call allocates (the dtype the model's keys come out in)."""
        if self._geometry is None:
            forward = self._first_call()
            cache = KVCache(1, forward.rows, self.capacity)
            with torch.no_grad():
                self._run(forward, cache)
            keys = cache.keys[0]
            self.kv_dtype = keys.dtype
            self._geometry = KVGeometry(self.depth, int(keys.shape[1]), int(keys.shape[3]), keys.element_size())
            self._memo = (cache.memo, cache._memo_owner)
        return self._geometry

    def memo_bytes(self) -> int:
        """What the transformer keeps in the cache's memo for the whole run (``KVCache.memo``: values of
        the condition rows such as AdaLN modulations): entries keyed ``(name, layer)`` exist once per
        layer, the others once."""
        self.geometry()
        total = 0
        for key, value in self._memo[0].items():
            if isinstance(value, torch.Tensor):
                per_layer = isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], int)
                total += value.numel() * value.element_size() * (self.depth if per_layer else 1)
        return total

    def run_state_bytes(self, index: int, batch: int) -> int:
        """The sampler state (:meth:`state_bytes`) plus the run's memo, alive from the first step on."""
        return self.state_bytes(index, batch) + self.memo_bytes()

    def activation(self, forward: Forward) -> int:
        """Peak bytes the call allocates besides the cache storage (its logits included)."""
        if forward not in self._cache:
            g = self.geometry()
            offload = bool(self.extra.get("kv_offload"))  # storage on meta too: only the copies are counted
            cache = KVCache(1, forward.rows, self.capacity, storage_device=META if offload else None, prefetch=False)
            shape = (forward.rows, g.heads, self.capacity, g.head_dim)
            cache.keys[0] = torch.empty(shape, device=META, dtype=self.kv_dtype)
            cache.values[0] = torch.empty(shape, device=META, dtype=self.kv_dtype)
            cache.lengths[0] = forward.cached
            cache.memo, cache._memo_owner = dict(self._memo[0]), self._memo[1]  # filled at the first step
            batch = self._batch(forward) if forward.steps else None  # the call's inputs exist before it
            if batch is not None:
                batch.cond_index = batch.cond_index.to(META)
            peak, _ = peak_of(self._run, forward, cache, batch)
            # offloaded: the next layer's copy (the same size) is prefetched while this layer computes; added
            # to the whole forward's peak, which bounds it by at most that copy
            self._cache[forward] = peak + cache.gathered_bytes
        return self._cache[forward]

    def _rows_index(self, rows: int) -> torch.Tensor:
        return torch.arange(self.condition_rows).repeat(max(rows // self.condition_rows, 1))


class VARStepReplay(StepReplay):
    def _setup(self, transformer: nn.Module) -> None:
        self.model = meta_copy(transformer, self.dtype, depth=1)
        self.adapter = VARAdapter(self.model, vae=None)
        self.channels = int(transformer.config.vae_channels)
        labels = torch.zeros(self.condition_rows, dtype=torch.long, device=META)
        self.state = VARState(labels, torch.empty(0, device=META))

    def vocab(self, step: ScaleStep) -> int:
        return int(self.model.config.vocab_size)

    def state_bytes(self, index: int, batch: int) -> int:
        size = torch.empty((), dtype=self.extra.get("latent_dtype", self.dtype)).element_size()
        side = self.steps[-1].grid[0]
        latents = batch * self.channels * side * side * size
        n = self.steps[index].num_sites
        return self._history(index, batch, self.channels, size) + 3 * latents + batch * n * (8 + self.channels * size)

    def _batch(self, forward: Forward) -> RowBatch:
        steps = [self.steps[i] for i in forward.steps]
        tokens = sum(s.num_sites for s in steps)
        content = None if forward.steps == (0,) else torch.empty(forward.rows, tokens, self.channels, device=META,
                                                                   dtype=self.extra.get("latent_dtype", self.dtype))
        positions = torch.zeros(forward.rows, tokens, dtype=torch.long, device=META)
        return RowBatch(self._rows_index(forward.rows), content, positions, steps)


class InfinityStepReplay(StepReplay):
    def _setup(self, transformer: nn.Module) -> None:
        self.model = meta_copy(transformer, self.dtype, depth=1, num_block_chunks=1)
        self.bits = int(self.model.bits_per_site)
        width = int(transformer.config.embed_dim)
        text = int(self.extra.get("text_tokens", transformer.config.text_maxlen))
        rows = self.condition_rows
        condition = InfinityCondition(torch.empty(rows, width, device=META),
                                      torch.empty(rows, text, width, device=META, dtype=self.dtype),
                                      torch.ones(rows, text, dtype=torch.bool, device=META))
        self.state = SimpleNamespace(condition=condition, tau=[1.0] * (max(s.scale for s in self.steps) + 1))
        patch = 4 if transformer.config.apply_spatial_patchify else 1
        vae = SimpleNamespace(config=SimpleNamespace(codebook_dim=self.bits // patch))
        self.adapter = InfinityAdapter(self.model, vae)

    def vocab(self, step: ScaleStep) -> int:
        return 2 * self.bits

    def state_bytes(self, index: int, batch: int) -> int:
        patch = 2 if self.model.config.apply_spatial_patchify else 1
        h, w = self.extra.get("final_grid", self.steps[-1].grid)  # the latent's grid, whatever steps run
        latents = batch * (self.bits // patch**2) * (h * patch) * (w * patch) * 4
        n = self.steps[index].num_sites
        return self._history(index, batch, self.bits, 4) + 3 * latents + batch * n * self.bits * 12

    def _batch(self, forward: Forward) -> RowBatch:
        steps = [self.steps[i] for i in forward.steps]
        tokens = sum(s.num_sites for s in steps)
        content = None if forward.steps == (0,) else torch.empty(forward.rows, tokens, self.bits, device=META)
        positions = torch.zeros(forward.rows, tokens, dtype=torch.long, device=META)
        return RowBatch(self._rows_index(forward.rows), content, positions, steps)


class InfinityStarStepReplay(StepReplay):
    def _setup(self, transformer: nn.Module) -> None:
        self.model = meta_copy(transformer, self.dtype, depth=1, num_block_chunks=1)
        self.adapter = InfinityStarAdapter(self.model, SimpleNamespace(codebook_dim=64))
        plan = self.extra["plan"]
        text = int(self.extra.get("text_tokens", 512))
        channels = int(transformer.config.text_channels)
        batch = self.extra["batch"]
        features = [torch.empty(text, channels, device=META) for _ in range(batch)]
        state = self.adapter.prepare(plan, features, None, with_null=self.condition_rows > batch, device=META,
                                     dtype=torch.float32)
        state.prefix_lengths = None  # every row's text has the same (planned) length
        self.state = state
        self.prefix_tokens = text

    def vocab(self, step: ScaleStep) -> int:
        cfg = self.model.config
        bits = cfg.semantic_bits if step.semantic else cfg.detail_bits
        return int(bits * cfg.num_of_label_value)

    def state_bytes(self, index: int, batch: int) -> int:
        plan, step = self.extra["plan"], self.steps[index]
        clip = step.extra["clip"]
        grids = [plan.clip_grid(c) for c in range(clip + 1)]
        summed = sum(batch * 64 * t * h * w * 4 for t, h, w in grids)
        lifted = batch * 64 * grids[-1][0] * grids[-1][1] * grids[-1][2] * 4
        bits = self.vocab(step) // int(self.model.config.num_of_label_value)
        return self._history(index, batch, 64, 4) + summed + 2 * lifted + batch * step.num_sites * bits * 16

    def _batch(self, forward: Forward) -> RowBatch:
        steps = [self.steps[i] for i in forward.steps]
        tokens = sum(s.num_sites for s in steps)
        content = torch.empty(forward.rows, tokens, 64, device=META)
        positions = torch.zeros(forward.rows, tokens, dtype=torch.long, device=META)
        return RowBatch(self._rows_index(forward.rows), content, positions, steps)

    def _run(self, forward: Forward, cache: KVCache, batch: RowBatch | None = None) -> torch.Tensor:
        if not forward.steps:  # the text prefill
            return self.adapter.prefill(self.state, cache)
        return super()._run(forward, cache, batch)
