"""Memory planning and memory savers for the VPG pipelines.

``estimate_memory(pipe, **call_kwargs)`` (also ``pipe.estimate_memory(...)``) plans the accelerator
memory of one ``pipe(...)`` call before it runs: weights per component, the K/V cache step by step
(exact), activations (meta-device replays), decoding and the prompt encoder, and the peak under each
offload mode. See ``docs/memory.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from .calls import plan_inputs
from .planner import OFFLOAD_MODES, MemoryEstimate, OffloadPlan, Phase, build_estimate
from .weights import QUANTIZATIONS, WeightLayout, weight_layout

__all__ = [
    "OFFLOAD_MODES",
    "QUANTIZATIONS",
    "MemoryEstimate",
    "OffloadPlan",
    "Phase",
    "WeightLayout",
    "estimate_memory",
    "weight_layout",
]


def estimate_memory(
    pipe: Any,
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
    """Plan the accelerator memory of ``pipe(**call_kwargs)`` without running it.

    Args:
        pipe: a ``VPGVARPipeline``, ``VPGInfinityPipeline`` or ``VPGInfinityStarPipeline`` (real, quantized
            or empty meta weights, e.g. :func:`vpg_pipelines.loading.auto.released_pipeline`).
        dtype: plan for this compute dtype instead of the pipeline's (weights cast to it).
        quantization: plan the transformer's weights in this format (:data:`QUANTIZATIONS`) instead of
            what they hold now.
        text_tokens: prompt length to plan with when the pipeline has no tokenizer (default: the
            model's maximum, 512).
        stream: group offloading with CUDA streams (two blocks resident instead of one).
        forward_chunking: plan with the transformer's forward chunking (``enable_forward_chunking``) set to
            this: ``None`` as it is now, ``False`` off, ``True`` the default chunk, or tokens per chunk.
        vae_tiling: plan InfinityStar's decode with tiling (``vae.enable_tiling``): ``None`` as it is now,
            ``False`` off, ``True`` the VAE's tile sizes, or a dict of ``enable_tiling``'s arguments.
        kv_cache_offload: plan with the K/V cache in host memory (``enable_kv_cache_offload``): ``None`` as the
            pipeline is set now. The estimate's ``kv`` timeline is then host memory.
        **call_kwargs: the arguments of the call, checked like the call checks them.
    """
    return build_estimate(plan_inputs(pipe, call_kwargs, dtype=dtype, quantization=quantization,
                                      text_tokens=text_tokens, stream=stream, forward_chunking=forward_chunking,
                                      vae_tiling=vae_tiling, kv_cache_offload=kv_cache_offload))
