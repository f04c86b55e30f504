"""GPU memory for the node pack: the loader's ``quantization`` / ``offload`` choices and the sampler's
planned peak, with a readable refusal when a run cannot fit, and the placement of the weights through
ComfyUI's model management (:mod:`comfy_nodes.host`).

``auto`` quantization (loader) plans the model's default call (its default size, one sample, its
default VPG) against the free memory at load time and quantizes only when no offload mode fits
without it (``vpg_pipelines.memory.choose``). ``auto`` offload (sampler) plans the actual call and takes
the least costly offload mode that fits; the mode is applied on the first run and kept for the loaded
model (leaving accelerate's sequential offload cannot restore the weights), so a later run that needs
another mode is refused with the option to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from vpg_pipelines.devices import check_saver, constraints, savers
from vpg_pipelines.memory import OFFLOAD_MODES
from vpg_pipelines.memory.choose import CANDIDATES, Choice, apply_activation_savers, choose_savers, usable
from vpg_pipelines.memory.offload import apply_offload
from vpg_pipelines.memory.planner import MemoryEstimate
from vpg_pipelines.memory.quantization import apply_quantization
from vpg_pipelines.memory.report import gib

from . import host
from .model import VPGModel, default_call

QUANTIZATION_CHOICES = ("auto", "none", "int8", "nf4", "fp8")
OFFLOAD_CHOICES = ("auto", *OFFLOAD_MODES)


def loader_quantization(pipeline: Any, choice: str, free_bytes: int | None, device: torch.device) -> str:
    """The quantization the loader applies for ``choice`` on ComfyUI's compute ``device`` (``auto``: planned,
    among the formats the device has; ``None`` free bytes: a CPU, where nothing is planned and the weights stay
    as loaded). ``choice`` is one of the widget's options; one the device lacks is refused, naming the device."""
    if choice != "auto":
        check_saver(choice, device)
        return choice
    if free_bytes is None:
        return "none"
    allowed = tuple(q for q in ("none", "int8", "nf4") if q in savers(device))
    return choose_savers(pipeline, free_bytes, quantizations=allowed, **default_call(pipeline)).quantization


def quantize_loaded(pipeline: Any, choice: str, free_bytes: int | None, device: torch.device) -> str:
    """Decide (:func:`loader_quantization`) and apply the loader's quantization; returns what was applied."""
    quantization = loader_quantization(pipeline, choice, free_bytes, device)
    dtype = pipeline.transformer.dtype
    apply_quantization(pipeline, quantization, torch.bfloat16 if quantization == "fp8" and dtype == torch.float32
                       else dtype)
    return quantization


@dataclass(frozen=True)
class RunPlan:
    """What the sampler will run with: the offload mode, its planned peak and the free memory it fits in."""

    offload: str
    peak: int
    free: int
    estimate: MemoryEstimate
    choice: Choice | None = None

    def describe(self) -> str:
        p = self.estimate.plans[self.offload].peak
        extra = "".join(f", {s}" for s in self.choice.savers()) if self.choice is not None else ""
        return (f"planned GPU peak {gib(self.peak)} of {gib(self.free)} free (offload {self.offload}{extra}; "
                f"at {p.name}: weights {gib(p.weights)} + K/V cache {gib(p.kv)} + activations {gib(p.activations)})")


def _alternatives(model: VPGModel, call: dict[str, Any], budget: int, applied: str | None) -> list[str]:
    """Readable changes that would make the run fit, cheapest first."""
    pipe = model.pipeline
    tips = []
    estimate = pipe.estimate_memory(**call)
    for offload in OFFLOAD_MODES:
        if offload != applied and estimate.peak(offload) <= budget:
            where = "VPG Load Model (reload)" if applied is not None else "VPG Load Model"
            tips.append(f"`offload` {offload} in {where} (planned {gib(estimate.peak(offload))})")
            break
    current = estimate.settings["quantization"]
    if current == "none":
        for quantization, offload in CANDIDATES:
            if quantization == "none" or (applied is not None and offload != applied):
                continue
            if not constraints(host.torch_device()).has_saver(quantization):
                continue
            peak = pipe.estimate_memory(quantization=quantization, **call).peak(offload)
            if peak <= budget:
                tips.append(f"`quantization` {quantization} with `offload` {offload} in VPG Load Model "
                            f"(planned {gib(peak)})")
                break
    prefix = call.get("vpg_scales")
    if call.get("vpg_scale", 1.0) != 1.0 and prefix == "all":
        lighter = pipe.estimate_memory(**{**call, "vpg_scales": "semantic"})
        mode = applied or "none"
        if lighter.peak(mode) <= budget:
            tips.append(f"`scales` semantic in VPG Prefix Guidance (planned {gib(lighter.peak(mode))})")
    return tips


def plan_run(model: VPGModel, call: dict[str, Any], free_bytes: int, node: str) -> RunPlan:
    """The offload mode and planned peak of ``pipe(**call)`` for ``model`` in ``free_bytes``.

    ``model.offload`` is the loader's choice; ``model.placement.offload`` the mode already applied (kept
    once applied). Raises a ``ValueError`` titled ``node`` naming what would fit when nothing does.
    """
    pipe = model.pipeline
    applied = model.placement.offload
    budget = usable(free_bytes)
    if applied is not None or model.offload != "auto":
        offload = applied or model.offload
        estimate = pipe.estimate_memory(**call)
        peak = estimate.peak(offload)
    else:
        choice = choose_savers(pipe, free_bytes, quantizations=("none",), **call)
        offload, peak, estimate = choice.offload, choice.peak, choice.estimate
        if peak <= budget:
            return RunPlan(offload, peak, free_bytes, estimate, choice)
    if peak > budget:
        tips = _alternatives(model, call, budget, applied)
        advice = ("To make it fit, set " + "; or ".join(tips) + ".") if tips else (
            "Nothing the planner knows fits: lower `batch_size` or the size, or free GPU memory.")
        raise ValueError(
            f"{node}: this run needs about {gib(peak)} of GPU memory (offload {offload}) but {gib(free_bytes)} "
            f"are free (a margin of {gib(free_bytes - budget)} is kept). {advice}")
    return RunPlan(offload, peak, free_bytes, estimate)


def place_for_text_encoding(model: VPGModel) -> None:
    """Place the weights for VPG Text Encode: all on the GPU when the model runs without offloading (planned
    with its default call when ``offload`` is auto); otherwise the offload hooks move the text encoder."""
    placement = model.placement
    if placement.handle is None:
        return
    if placement.offload is not None or not host.on_accelerator():
        if placement.offload in (None, "none"):
            host.load_models(placement.handle)
        return
    offload = model.offload
    if offload == "auto":
        wanted = model.pipeline.estimate_memory(**default_call(model.pipeline)).peak("none")
        host.free_memory(wanted)
        offload = "none" if wanted <= usable(host.free_bytes() or 0) else "model"
    if offload == "none":
        host.load_models(placement.handle)
    else:
        apply_offload(model.pipeline, offload, host.torch_device())
    placement.offload = offload


def prepare_run(model: VPGModel, node: str, call: dict[str, Any]) -> None:
    """Before a sampler runs the pipeline: plan the call's GPU memory, report it, refuse a run that cannot
    fit, let ComfyUI unload other models for it, then place the weights (the offload mode on the first run)."""
    placement = model.placement
    if placement.handle is None:
        return
    if not host.on_accelerator():
        host.load_models(placement.handle)
        return
    wanted = model.pipeline.estimate_memory(**call).peak("none")
    host.free_memory(wanted)  # ComfyUI unloads other models first
    free = host.free_bytes() or 0
    if placement.offload == "none":  # our weights are on the GPU already
        free += host.loaded_bytes(placement.handle)
    plan = plan_run(model, call, free, node)
    logging.info("%s: %s", node, plan.describe())
    if plan.offload == "none":
        host.load_models(placement.handle, memory_required=max(0, plan.peak - sum(plan.estimate.weights.values())))
    elif placement.offload is None:
        apply_offload(model.pipeline, plan.offload, host.torch_device())
    placement.offload = plan.offload
    if plan.choice is not None:  # what the plan counted on: chunking, tiled decoding, the cache in host memory
        apply_activation_savers(model.pipeline, plan.choice.forward_chunking, plan.choice.vae_tiling,
                                plan.choice.kv_cache_offload)
