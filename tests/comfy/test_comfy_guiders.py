"""The ComfyUI guidance nodes beyond CFG / Prefix Guidance (IGG, SSG, entropy temperature), without ComfyUI:
patched copies, errors, the same images as the pipeline, and the CFG → IGG → Prefix Guidance → SSG workflow
executed node by node with the plain node logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfy_nodes import core, guiders, registry
from comfy_nodes import workflow as wf
from comfy_nodes.registry import DEMO_CHOICE
from comfy_nodes.specs import NODE_SPECS
from tests.helpers.comfy import node_defs
from vpg_pipelines.guidance.igg import InformationGroundingGuidance
from vpg_pipelines.guidance.ssg import ScaledSpatialGuidance
from vpg_pipelines.guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS, EntropyAwareTemperature

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "workflows" / "vpg_demo_guidance_stack.json"


def _no_files(name):
    raise FileNotFoundError(name)


@pytest.fixture(scope="module")
def demo() -> core.VPGModel:
    pipe, kind = registry.load_pipeline(DEMO_CHOICE, "none", _no_files)
    return core.VPGModel(pipe, kind, DEMO_CHOICE)


def test_nodes_attach_one_term_each_and_never_mutate_their_input(demo):
    with_igg = guiders.apply_igg(demo, 1.5, "constant", 0.1, 0.9)
    with_ssg = guiders.apply_ssg(with_igg, 0.25, "nearest")
    stacked = guiders.apply_entropy_temperature(with_ssg, 2.0, 2.5, 0.5, 0.9, 0.0, 0.5)
    assert demo.guiders == () and len(with_igg.guiders) == 1 and len(with_ssg.guiders) == 2
    igg, ssg, temp = stacked.guiders
    assert isinstance(igg, InformationGroundingGuidance)
    assert (igg.guidance_scale, igg.schedule, igg.start, igg.stop) == (1.5, "constant", 0.1, 0.9)
    assert isinstance(ssg, ScaledSpatialGuidance) and (ssg.guidance_scale, ssg.interpolation) == (0.25, "nearest")
    assert isinstance(temp, EntropyAwareTemperature) and (temp.t0, temp.alpha, temp.theta, temp.base, temp.stop) == (
        2.0, 2.5, 0.5, 0.9, 0.5)
    assert stacked.pipeline is demo.pipeline and "IGG 1.5" in stacked.describe() and "SSG 0.25" in stacked.describe()


@pytest.mark.parametrize("call,match", [
    (lambda m: guiders.apply_igg(m, -1.0), "VPG IGG: `igg_scale`"),
    (lambda m: guiders.apply_igg(m, 1.0, "cosine"), "VPG IGG: `schedule`"),
    (lambda m: guiders.apply_ssg(m, 0.5, start=0.8, stop=0.2), "VPG SSG: need 0 <= start < 1"),
    (lambda m: guiders.apply_ssg(m, 0.5, "bicubic"), "VPG SSG: `interpolation`"),
    (lambda m: guiders.apply_entropy_temperature(m, alpha=0.0), "VPG Entropy Temperature: `alpha`"),
    (lambda m: guiders.apply_entropy_temperature(m, t0=0.0, theta=0.0), "t0 \\+ theta"),
    (lambda m: guiders.apply_ssg(guiders.apply_ssg(m, 0.5), 0.2), "already has SSG 0.5"),
    (lambda m: guiders.apply_ssg("model", 0.5), "VPG SSG: `model` must come from"),
])
def test_bad_inputs_name_the_node_and_the_input(demo, call, match):
    with pytest.raises(core.VPGNodeError, match=match):
        call(demo)


def test_sampler_passes_the_terms_to_the_pipeline(demo):
    model = core.apply_prefix_guidance(core.apply_cfg(demo, 3.0), 1.5, 0.5, "full", "persistent", "all")
    model = guiders.apply_ssg(guiders.apply_igg(model, 0.5), 0.25)
    cond = core.encode_classes(demo, "plant, flag")
    images = core.sample(model, cond, seed=3, batch_size=1, top_k=0, top_p=0.95).images
    expected = demo.pipeline(class_labels=list(cond.class_ids), guidance_scale=3.0, top_k=0, top_p=0.95,
                             vpg_scale=1.5, vpg_corruption=0.5, igg_scale=0.5, ssg_scale=0.25,
                             generator=core.generators(3, 2), output_type="pt").images
    assert torch.equal(images, expected.permute(0, 2, 3, 1).float())
    plain = core.sample(core.apply_cfg(demo, 3.0), cond, seed=3, batch_size=1, top_k=0, top_p=0.95).images
    assert not torch.equal(images, plain)


def test_igg_without_a_cfg_node_takes_cfg_s_place(demo):
    cond = core.encode_classes(demo, "plant")
    images = core.sample(guiders.apply_igg(demo, 1.0), cond, seed=0, top_k=0, top_p=0.95).images
    expected = demo.pipeline(class_labels=list(cond.class_ids), guidance_scale=0.0, igg_scale=1.0, vpg_scale=1.0,
                             top_k=0, top_p=0.95, generator=core.generators(0, 1), output_type="pt").images
    assert torch.equal(images, expected.permute(0, 2, 3, 1).float())


# -- the stacked workflow --------------------------------------------------------------------------------
def test_stack_workflow_chains_cfg_igg_prefix_ssg():
    ui = json.loads(STACK.read_text())
    prompt = wf.to_api(ui, node_defs(ui))
    ref = next(v for v in prompt.values() if v["class_type"] == "VPGSampler")["inputs"]["model"]
    order = []
    while ref is not None:
        node = prompt[ref[0]]
        order.append(node["class_type"])
        ref = node["inputs"].get("model")
    assert order[::-1] == ["VPGModelLoader", "VPGCFG", "VPGIGG", "VPGPrefixGuidance", "VPGSSG"]


def test_stack_workflow_runs_through_the_node_logic(demo):
    """Execute the workflow's API prompt with the plain node functions (what the node classes call)."""
    ui = json.loads(STACK.read_text())
    prompt = wf.to_api(ui, node_defs(ui))
    logic = {
        "VPGModelLoader": lambda i: demo,
        "VPGClassConditioning": lambda i: core.encode_classes(i["model"], i["classes"]),
        "VPGCFG": lambda i: core.apply_cfg(i["model"], i["cfg"]),
        "VPGIGG": lambda i: guiders.apply_igg(i["model"], i["igg_scale"], i["schedule"], i["start"], i["stop"]),
        "VPGPrefixGuidance": lambda i: core.apply_prefix_guidance(i["model"], i["vpg_scale"], i["corruption"],
                                                                  i["mode"], i["refresh"], i["scales"]),
        "VPGSSG": lambda i: guiders.apply_ssg(i["model"], i["ssg_scale"], i["interpolation"], i["start"], i["stop"]),
        "VPGSampler": lambda i: core.sample(i["model"], i["conditioning"], i["seed"], i["batch_size"], i["top_k"],
                                            i["top_p"]),
    }
    done: dict[str, object] = {}

    def run(key):
        if key not in done:
            node = prompt[key]
            inputs = {k: (run(v[0]) if isinstance(v, list) else v) for k, v in node["inputs"].items()}
            done[key] = logic[node["class_type"]](inputs)
        return done[key]

    sampler = next(k for k, v in prompt.items() if v["class_type"] == "VPGSampler")
    result = run(sampler)
    model = done[prompt[sampler]["inputs"]["model"][0]]
    assert [type(g).__name__ for g in model.guiders] == ["InformationGroundingGuidance", "ScaledSpatialGuidance"]
    assert result.images.shape == (4, 32, 32, 3) and torch.isfinite(result.images).all()


def test_entropy_temperature_node_defaults_are_the_papers():
    inputs = {i.name: i for i in NODE_SPECS["VPGEntropyTemperature"].inputs}
    for key, value in ENTROPY_TEMPERATURE_DEFAULTS._asdict().items():
        assert inputs[key].default == value
