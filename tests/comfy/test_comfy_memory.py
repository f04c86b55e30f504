"""The node pack's memory logic without ComfyUI: the loader's quantization / offload choices, the sampler's
planned peak and its refusal naming what would fit."""

from __future__ import annotations

import dataclasses

import pytest

from comfy_nodes import core
from comfy_nodes.memory import (
    VPGMemoryError,
    default_call,
    loader_quantization,
    plan_run,
    quantize_loaded,
)
from comfy_nodes.registry import DEMO_CHOICE, load_pipeline
from vpg_pipelines.memory.choose import MARGIN_BYTES, usable

pytest.importorskip("torchao", reason="TorchAO (the int8 back end) is in the test extra")


def _free_for(budget: int) -> int:
    """Free bytes whose usable part (:func:`usable`) is ``budget`` (tiny models: the fixed margin applies)."""
    return budget + MARGIN_BYTES


@pytest.fixture
def demo_model():
    pipe, kind = load_pipeline(DEMO_CHOICE, "none", lambda name: name)
    model = core.VPGModel(pipe, kind, DEMO_CHOICE)
    return core.apply_prefix_guidance(core.apply_cfg(model, 3.0), 1.5, 0.5, "full", "persistent", "all")


def _call(model, batch=4):
    return dict(class_labels=[0, 1], num_images_per_prompt=batch // 2, guidance_scale=3.0,
                **core.prefix_kwargs(model), generator=core.generators(0, batch), output_type="pt")


def test_usable_keeps_a_margin():
    assert usable(10 * 1024**3) == int(10 * 1024**3 * 0.95)
    assert usable(1024**3) == 1024**3 - MARGIN_BYTES


def test_loader_quantization_choices(demo_model):
    pipe = demo_model.pipeline
    assert loader_quantization(pipe, "int8", None, cuda=False) == "int8"
    assert loader_quantization(pipe, "auto", None, cuda=False) == "none"  # a CPU: nothing planned
    assert loader_quantization(pipe, "auto", 80 * 1024**3, cuda=False) == "none"
    with pytest.raises(VPGMemoryError, match="nf4"):
        loader_quantization(pipe, "nf4", None, cuda=False)
    with pytest.raises(VPGMemoryError, match="quantization"):
        loader_quantization(pipe, "int4", None, cuda=False)
    call = default_call(pipe)
    plain = pipe.estimate_memory(**call)
    int8 = pipe.estimate_memory(quantization="int8", **call)
    full = min(plain.peak(m) for m in ("none", "model", "group"))
    assert int8.peak("none") < full  # room for a budget that only int8 meets
    budget = (int8.peak("none") + full) // 2
    assert loader_quantization(pipe, "auto", _free_for(budget), cuda=False) == "int8"


def test_quantize_loaded_applies_the_choice():
    pipe, _ = load_pipeline(DEMO_CHOICE, "none", lambda name: name)
    assert quantize_loaded(pipe, "int8", None, cuda=False) == "int8"
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
    with pytest.raises(VPGMemoryError) as err:
        plan_run(model, call, free, "VPG Sampler")
    text = str(err.value)
    assert text.startswith("VPG Sampler: this run needs about")
    assert "`offload` " in text and "VPG Load Model" in text
    semantic = model.pipeline.estimate_memory(**{**call, "vpg_scales": "semantic"}).peak("none")
    if semantic <= usable(free):
        assert "`scales` semantic in VPG Prefix Guidance" in text


def test_an_applied_offload_is_kept_and_a_bigger_run_refused(demo_model):
    pipe = demo_model.pipeline
    pipe._vpg_offload = "none"
    try:
        model = dataclasses.replace(demo_model, offload="auto")
        small, big = _call(model, batch=2), _call(model, batch=8)
        big_plan = pipe.estimate_memory(**big)
        budget = max(pipe.estimate_memory(**small).peak("none"), big_plan.peak("group"))
        assert big_plan.peak("none") > budget
        assert plan_run(model, small, _free_for(budget), "VPG Sampler").offload == "none"
        with pytest.raises(VPGMemoryError, match=r"`offload` (model|group) in VPG Load Model \(reload\)"):
            plan_run(model, big, _free_for(budget), "VPG Sampler")
    finally:
        del pipe._vpg_offload


def test_samplers_call_prepare_with_the_call_and_stop_on_a_refusal(demo_model):
    cond = core.encode_classes(demo_model, "plant, flag")
    seen = []
    result = core.sample(demo_model, cond, seed=0, batch_size=1, prepare=seen.append)
    assert result.images.shape[0] == 2
    assert seen and seen[0]["class_labels"] == list(cond.class_ids) and seen[0]["output_type"] == "pt"

    def refuse(call):
        raise VPGMemoryError("VPG Sampler: this run needs about 99 GiB")

    ran = []
    pipe = demo_model.pipeline
    original = type(pipe).__call__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(pipe), "__call__", lambda self, **kw: ran.append(kw) or original(self, **kw))
        with pytest.raises(core.VPGNodeError, match="^VPG Sampler: this run needs about 99 GiB$"):
            core.sample(demo_model, cond, seed=0, prepare=refuse)
    assert not ran  # refused before the pipeline ran


def test_model_default_memory_settings(demo_model):
    assert demo_model.offload == "auto" and demo_model.quantization == "none"
