"""The node pack's memory logic without ComfyUI: the loader's quantization / offload choices, the sampler's
planned peak and its refusal naming what would fit."""

from __future__ import annotations

import dataclasses
import functools
import types

import pytest
import torch

from comfy_nodes import host
from comfy_nodes import memory as comfy_memory
from comfy_nodes.conditioning import VPGClassConditioning
from comfy_nodes.guidance import VPGCFG, VPGPrefixGuidance
from comfy_nodes.memory import default_call, loader_quantization, plan_run, quantize_loaded
from comfy_nodes.model import Placement, VPGModel
from comfy_nodes.samplers import VPGSampler
from comfy_nodes.sampling import generators
from comfy_nodes.sources import DEMO_CHOICE
from tests.helpers.comfy import load, run
from vpg_pipelines.memory.choose import MARGIN_BYTES, usable

pytest.importorskip("torchao", reason="TorchAO (the int8 back end) is in the test extra")


CPU = torch.device("cpu")


def _free_for(budget: int) -> int:
    """Free bytes whose usable part (:func:`usable`) is ``budget`` (tiny models: the fixed margin applies)."""
    return budget + MARGIN_BYTES


@pytest.fixture
def demo_model():
    pipe, kind = load(DEMO_CHOICE, "none", lambda name: name)
    model = run(VPGCFG, model=VPGModel(pipe, kind, DEMO_CHOICE), cfg=3.0)[0]
    return run(VPGPrefixGuidance, model=model, vpg_scale=1.5, corruption=0.5, mode="full", refresh="persistent",
               scales="all")[0]


def _call(model, batch=4):
    return dict(class_labels=[0, 1], num_images_per_prompt=batch // 2, guidance_scale=3.0,
                **model.prefix_kwargs(), generator=generators(0, batch), output_type="pt")


def test_usable_keeps_a_margin():
    assert usable(10 * 1024**3) == int(10 * 1024**3 * 0.95)
    assert usable(1024**3) == 1024**3 - MARGIN_BYTES


def test_loader_quantization_choices(demo_model):
    pipe = demo_model.pipeline
    assert loader_quantization(pipe, "int8", None, CPU) == "int8"
    assert loader_quantization(pipe, "auto", None, CPU) == "none"  # a CPU: nothing planned
    assert loader_quantization(pipe, "auto", 80 * 1024**3, CPU) == "none"
    with pytest.raises(ValueError, match="nf4"):
        loader_quantization(pipe, "nf4", None, CPU)
    call = default_call(pipe)
    plain = pipe.estimate_memory(**call)
    int8 = pipe.estimate_memory(quantization="int8", **call)
    full = min(plain.peak(m) for m in ("none", "model", "group"))
    assert int8.peak("none") < full  # room for a budget that only int8 meets
    budget = (int8.peak("none") + full) // 2
    assert loader_quantization(pipe, "auto", _free_for(budget), CPU) == "int8"
    # a Mac: float8 and bitsandbytes are refused, naming the device
    for lacking in ("fp8", "nf4"):
        with pytest.raises(ValueError, match=f"'{lacking}' is not available on 'mps'"):
            loader_quantization(pipe, lacking, None, torch.device("mps"))


def test_loader_auto_plans_only_the_formats_the_device_has(demo_model, monkeypatch):
    planned = {}

    def record(pipeline, free_bytes, quantizations, **call):
        planned[device] = quantizations
        return types.SimpleNamespace(quantization="none")

    monkeypatch.setattr(comfy_memory, "choose_savers", record)
    for device in ("cuda", "xpu", "mps", "cpu"):
        loader_quantization(demo_model.pipeline, "auto", 2**30, torch.device(device))
    assert planned == {"cuda": ("none", "int8", "nf4"), "xpu": ("none", "int8", "nf4"), "mps": ("none", "int8"),
                       "cpu": ("none", "int8")}


def test_quantize_loaded_applies_the_choice():
    pipe, _ = load(DEMO_CHOICE, "none", lambda name: name)
    assert quantize_loaded(pipe, "int8", None, CPU) == "int8"
    assert type(pipe.transformer.head.weight).__name__ == "Int8Tensor"


def test_run_plan_picks_the_least_costly_offload_that_fits(demo_model):
    model = dataclasses.replace(demo_model, offload="auto")
    call = _call(model)
    estimate = model.pipeline.estimate_memory(**call)
    plan = plan_run(model, call, _free_for(estimate.peak("none")), "VPG Sampler")
    assert plan.offload == "none" and plan.peak == estimate.peak("none")
    assert "planned GPU peak" in plan.describe() and "K/V cache" in plan.describe()
    between = (estimate.peak("group") + estimate.peak("none")) // 2
    assert estimate.peak("group") < estimate.peak("none")
    assert plan_run(model, call, _free_for(between), "VPG Sampler").offload in ("model", "group")


def test_run_that_cannot_fit_is_refused_naming_what_would(demo_model):
    model = dataclasses.replace(demo_model, offload="none")
    call = _call(model)
    estimate = model.pipeline.estimate_memory(**call)
    free = _free_for(estimate.peak("group"))
    with pytest.raises(ValueError) as err:
        plan_run(model, call, free, "VPG Sampler")
    text = str(err.value)
    assert text.startswith("VPG Sampler: this run needs about")
    assert "`offload` " in text and "VPG Load Model" in text
    semantic = model.pipeline.estimate_memory(**{**call, "vpg_scales": "semantic"}).peak("none")
    if semantic <= usable(free):
        assert "`scales` semantic in VPG Prefix Guidance" in text


def test_an_applied_offload_is_kept_and_a_bigger_run_refused(demo_model):
    pipe = demo_model.pipeline
    model = dataclasses.replace(demo_model, offload="auto", placement=Placement(offload="none"))
    small, big = _call(model, batch=2), _call(model, batch=8)
    big_plan = pipe.estimate_memory(**big)
    budget = max(pipe.estimate_memory(**small).peak("none"), big_plan.peak("group"))
    assert big_plan.peak("none") > budget
    assert plan_run(model, small, _free_for(budget), "VPG Sampler").offload == "none"
    with pytest.raises(ValueError, match=r"`offload` (model|group) in VPG Load Model \(reload\)"):
        plan_run(model, big, _free_for(budget), "VPG Sampler")


class _GPU:
    """The host as a CUDA machine with ``free`` bytes: what prepare_run sees and does, recorded."""

    def __init__(self, monkeypatch, free: int) -> None:
        self.free, self.loads, self.freed = free, [], []
        monkeypatch.setattr(host, "on_accelerator", lambda: True)
        monkeypatch.setattr(host, "free_bytes", lambda: self.free)
        monkeypatch.setattr(host, "free_memory", self.freed.append)
        monkeypatch.setattr(host, "load_models", lambda handle, memory_required=0: self.loads.append(memory_required))


def test_sampler_plans_before_the_pipeline_runs_and_refuses_what_cannot_fit(demo_model, monkeypatch):
    cond = run(VPGClassConditioning, model=demo_model, classes="plant, flag")[0]
    model = dataclasses.replace(demo_model, offload="none", placement=Placement(handle="patcher"))
    call = dict(class_labels=list(cond.class_ids), num_images_per_prompt=1, guidance_scale=3.0,
                **model.prefix_kwargs(), generator=generators(0, 2), output_type="pt")
    peak = model.pipeline.estimate_memory(**call).peak("none")
    gpu = _GPU(monkeypatch, _free_for(peak))
    images = run(VPGSampler, model=model, conditioning=cond, seed=0, batch_size=1, top_k=900, top_p=0.96)[0]
    assert images.shape[0] == 2 and gpu.freed == [peak] and len(gpu.loads) == 1  # ComfyUI freed, then loaded
    assert model.placement.offload == "none"

    ran = []
    pipe = demo_model.pipeline
    original = type(pipe).__call__
    gpu.free, gpu.loads = _free_for(peak // 4), []
    with pytest.MonkeyPatch.context() as mp:
        recording = functools.wraps(original)(lambda self, **kw: ran.append(kw) or original(self, **kw))
        mp.setattr(type(pipe), "__call__", recording)  # same signature: the planner binds the call to it
        with pytest.raises(ValueError, match="^VPG Sampler: this run needs about"):
            run(VPGSampler, model=model, conditioning=cond, seed=0, batch_size=1, top_k=900, top_p=0.96)
    assert not ran and not gpu.loads  # refused before anything was placed or run


def test_model_default_memory_settings(demo_model):
    assert demo_model.offload == "auto" and demo_model.quantization == "none"
    assert demo_model.placement == Placement(handle=None, offload=None)
