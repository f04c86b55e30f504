"""``pipe.estimate_memory(...)`` and the activation savers' switches for the three pipelines."""

from __future__ import annotations

from typing import Any

import torch

from . import MemoryEstimate, estimate_memory


class MemorySaversMixin:
    """The pipeline-level switches of diffusers pipelines for activation memory: forward chunking of the
    transformer and tiled / sliced decoding of the VAE (each delegates to the component, which diffusers now
    recommends calling directly: ``pipe.transformer.enable_forward_chunking()``, ``pipe.vae.enable_tiling()``);
    and the K/V cache's place (the sampler's, so the pipeline's switch)."""

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 1) -> None:
        """``self.transformer.enable_forward_chunking(chunk_size, dim)``: the per-token parts of every block on
        ``chunk_size`` tokens at a time (outputs equal up to rounding; ``docs/memory.md``)."""
        self.transformer.enable_forward_chunking(chunk_size=chunk_size, dim=dim)

    def disable_forward_chunking(self) -> None:
        self.transformer.disable_forward_chunking()

    def enable_kv_cache_offload(self, device: torch.device | str = "cpu") -> None:
        """Keep the sampler's K/V cache on ``device`` (host memory by default) instead of the accelerator: each
        layer's attention gets a copy of the entries it sees, the next layer's copied meanwhile on a side CUDA
        stream (transformers' ``OffloadedCache``). Outputs are unchanged; the accelerator holds two layers'
        entries instead of all of them, the host the whole cache (``docs/memory.md``)."""
        self._kv_cache_device = torch.device(device)

    def disable_kv_cache_offload(self) -> None:
        self._kv_cache_device = None

    @property
    def kv_cache_device(self) -> torch.device | None:
        """Where the sampler keeps its K/V cache (``enable_kv_cache_offload``); ``None``: on the model's device."""
        return getattr(self, "_kv_cache_device", None)

    def enable_vae_tiling(self, **tile_kwargs: Any) -> None:
        """``self.vae.enable_tiling(**tile_kwargs)``: decode in overlapping spatial tiles (InfinityStar's video VAE)."""
        self._vae_saver("enable_tiling")(**tile_kwargs)

    def disable_vae_tiling(self) -> None:
        self._vae_saver("disable_tiling")()

    def enable_vae_slicing(self) -> None:
        """``self.vae.enable_slicing()``: decode one sample of the batch at a time."""
        self._vae_saver("enable_slicing")()

    def disable_vae_slicing(self) -> None:
        self._vae_saver("disable_slicing")()

    def _vae_saver(self, name: str):
        method = getattr(self.vae, name, None)
        if method is None:
            raise NotImplementedError(f"{name} is not implemented for {type(self.vae).__name__} (InfinityStar's "
                                      f"video VAE has it)")
        return method


class MemoryPlanningMixin(MemorySaversMixin):
    """Adds :meth:`estimate_memory` and the savers' switches (:class:`MemorySaversMixin`) to a VPG pipeline."""

    def estimate_memory(
        self,
        *,
        dtype: torch.dtype | None = None,
        quantization: str | None = None,
        text_tokens: int | None = None,
        stream: bool = True,
        forward_chunking: bool | int | None = None,
        vae_tiling: bool | dict | None = None,
        kv_cache_offload: bool | None = None,
        **call_kwargs: Any,
    ) -> MemoryEstimate:
        """Plan the accelerator memory of ``self(**call_kwargs)`` before running it.

        Returns a :class:`~vpg_pipelines.memory.MemoryEstimate`: weights per component, the K/V cache
        step by step (exact, VPG's corrupted rows joining and leaving included), the largest step's
        activations, decoding and the text encoder, and the peak (with the phase holding it) for each
        offload mode (``none``, ``model``, ``group``, ``sequential``). ``print()`` it for a summary.

        Args:
            dtype, quantization: plan for another compute dtype / weight format of the transformer
                (``"none"``, ``"int8"``, ``"nf4"``, ``"fp8"``) than the loaded one.
            text_tokens: prompt length to plan with when there is no tokenizer.
            stream: group offloading with CUDA streams (two blocks resident).
            forward_chunking, vae_tiling, kv_cache_offload: plan with these savers set otherwise than they are now (see
                :func:`vpg_pipelines.memory.estimate_memory`).
            **call_kwargs: the arguments the call would get (checked like the call checks them).
        """
        return estimate_memory(self, dtype=dtype, quantization=quantization, text_tokens=text_tokens,
                               stream=stream, forward_chunking=forward_chunking, vae_tiling=vae_tiling,
                               kv_cache_offload=kv_cache_offload,
                               **call_kwargs)

