"""The four offload modes the planner plans for, applied with diffusers' own machinery.

* ``none`` — ``pipe.to(device)``.
* ``model`` — ``pipe.enable_model_cpu_offload(device=...)``: accelerate hooks move the text encoder in
  for the prompt and the transformer in for sampling (it stays for every scale); the pipelines'
  ``_exclude_from_cpu_offload = ["vae"]`` keeps the small VAE on the device, because the sampler uses
  its codebook inside the loop (a hooked VAE would push the transformer out at every scale), and the
  pipelines release the transformer before decoding.
* ``group`` — ``pipe.enable_group_offload(..., offload_type="block_level", num_blocks_per_group=1,
  use_stream=True where the device has streams: CUDA, ROCm, XPU)``: one transformer block (InfinityStar /
  Infinity: one block chunk) on the device at a time, the next one prefetched on a side stream (on ``mps``
  and the CPU each block is copied in when it runs); the text encoder is loaded for its
  forward only. The VAE is excluded and moved to the device. The transformers declare
  ``_skip_keys = ["kv_cache"]`` so the hooks never copy the cache.
* ``sequential`` — ``pipe.enable_sequential_cpu_offload(device=...)``: every layer loaded for its own
  forward (slowest, smallest).
"""

from __future__ import annotations

from typing import Any

import torch

from ..devices import pick_device, stream_capable
from .planner import OFFLOAD_MODES


def apply_offload(pipe: Any, mode: str, device: str | torch.device | None = None) -> Any:
    """Put ``pipe`` on ``device`` (default: :func:`~vpg_pipelines.devices.pick_device`'s) under offload
    ``mode``; returns ``pipe``."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"`offload` must be one of {OFFLOAD_MODES}, got {mode!r}")
    # a given device is taken as is (ComfyUI's may be one this package does not pick itself, e.g. DirectML)
    device = pick_device() if device is None else torch.device(device)
    if mode == "none":
        return pipe.to(device)
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_group_offload(
            onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
            num_blocks_per_group=1, use_stream=stream_capable(device), exclude_modules=["vae"],
        )
        pipe.vae.to(device)
    return pipe


def release_offloaded(pipe: Any, module: torch.nn.Module) -> None:
    """Under ``enable_model_cpu_offload``, move ``module`` back to the CPU now (no-op otherwise).

    The offload chain only moves a module out when the next hooked one runs; the VAE is not hooked
    (``_exclude_from_cpu_offload``), so the transformer would otherwise stay on the device while decoding.
    """
    for hook in getattr(pipe, "_all_hooks", None) or []:
        if getattr(hook, "model", None) is module:
            hook.offload()
