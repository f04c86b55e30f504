"""The ComfyUI guidance nodes beyond CFG / Prefix Guidance (IGG, SSG, entropy temperature), without ComfyUI:
patched copies, errors, the same images as the pipeline, and the CFG → IGG → Prefix Guidance → SSG workflow
executed node by node with the node classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfy_nodes.conditioning import VPGClassConditioning
from comfy_nodes.guidance import VPGCFG, VPGIGG, VPGSSG, VPGEntropyTemperature, VPGPrefixGuidance
from comfy_nodes.model import VPGModel
from comfy_nodes.samplers import VPGSampler
from comfy_nodes.sampling import generators
from comfy_nodes.sources import DEMO_CHOICE
from tests.helpers import comfy_workflow as wf
from tests.helpers.comfy import load, node_defs, prompt_runner, run
from vpg_pipelines.guidance.igg import InformationGroundingGuidance
from vpg_pipelines.guidance.ssg import ScaledSpatialGuidance
from vpg_pipelines.guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS, EntropyAwareTemperature

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "workflows" / "vpg_demo_guidance_stack.json"


def _no_files(name):
    raise FileNotFoundError(name)


@pytest.fixture(scope="module")
def demo() -> VPGModel:
    pipe, kind = load(DEMO_CHOICE, "none", _no_files)
    return VPGModel(pipe, kind, DEMO_CHOICE)


def igg(model, w, schedule="linear", start=0.0, stop=1.0):
    return run(VPGIGG, model=model, igg_scale=w, schedule=schedule, start=start, stop=stop)[0]


def ssg(model, beta, interpolation="linear", start=0.0, stop=1.0):
    return run(VPGSSG, model=model, ssg_scale=beta, interpolation=interpolation, start=start, stop=stop)[0]


def temperature(model, t0=2.5, alpha=3.0, theta=0.6, base=1.0, start=0.0, stop=1.0):
    return run(VPGEntropyTemperature, model=model, t0=t0, alpha=alpha, theta=theta, base=base, start=start,
               stop=stop)[0]


def images(model, cond, seed):
    return run(VPGSampler, model=model, conditioning=cond, seed=seed, batch_size=1, top_k=0, top_p=0.95)[0]


def test_nodes_attach_one_term_each_and_never_mutate_their_input(demo):
    with_igg = igg(demo, 1.5, "constant", 0.1, 0.9)
    with_ssg = ssg(with_igg, 0.25, "nearest")
    stacked = temperature(with_ssg, 2.0, 2.5, 0.5, 0.9, 0.0, 0.5)
    assert demo.guiders == () and len(with_igg.guiders) == 1 and len(with_ssg.guiders) == 2
    term_igg, term_ssg, temp = stacked.guiders
    assert isinstance(term_igg, InformationGroundingGuidance)
    assert (term_igg.guidance_scale, term_igg.schedule, term_igg.start, term_igg.stop) == (1.5, "constant", 0.1, 0.9)
    assert isinstance(term_ssg, ScaledSpatialGuidance)
    assert (term_ssg.guidance_scale, term_ssg.interpolation) == (0.25, "nearest")
    assert isinstance(temp, EntropyAwareTemperature) and (temp.t0, temp.alpha, temp.theta, temp.base, temp.stop) == (
        2.0, 2.5, 0.5, 0.9, 0.5)
    assert stacked.pipeline is demo.pipeline and "IGG 1.5" in stacked.describe() and "SSG 0.25" in stacked.describe()


@pytest.mark.parametrize("call,match", [
    (lambda m: igg(m, -1.0), r"^VPG IGG: `igg_scale` must be a number in \[0, 20\], got -1.0$"),
    (lambda m: igg(m, float("nan")), r"^VPG IGG: `igg_scale` must be a number in \[0, 20\], got nan$"),
    (lambda m: igg(m, 1.0, "cosine"), "^VPG IGG: `schedule` must be one of 'linear', 'constant', got 'cosine'"),
    (lambda m: ssg(m, 0.5, start=0.8, stop=0.2), r"^VPG SSG: `stop` \(0.2\) must not be below `start` \(0.8\)"),
    (lambda m: ssg(m, 0.5, "bicubic"), "^VPG SSG: `interpolation` must be one of"),
    (lambda m: temperature(m, alpha=0.0), r"^VPG Entropy Temperature: `alpha` must be a number in \[0.01, 50\]"),
    (lambda m: temperature(m, t0=0.0, theta=0.0), "^VPG Entropy Temperature: `t0` \\+ `theta` must be > 0"),
    (lambda m: ssg(ssg(m, 0.5), 0.2), "^VPG SSG: this model already has SSG 0.5"),
    (lambda m: ssg("model", 0.5), "^VPG SSG: `model` must come from"),
])
def test_bad_inputs_name_the_node_and_the_input(demo, call, match):
    with pytest.raises(ValueError, match=match):
        call(demo)


def test_sampler_passes_the_terms_to_the_pipeline(demo):
    model = run(VPGPrefixGuidance, model=run(VPGCFG, model=demo, cfg=3.0)[0], vpg_scale=1.5, corruption=0.5,
                mode="full", refresh="persistent", scales="all")[0]
    model = ssg(igg(model, 0.5), 0.25)
    cond = run(VPGClassConditioning, model=demo, classes="plant, flag")[0]
    got = images(model, cond, 3)
    expected = demo.pipeline(class_labels=list(cond.class_ids), guidance_scale=3.0, top_k=0, top_p=0.95,
                             vpg_scale=1.5, vpg_corruption=0.5, igg_scale=0.5, ssg_scale=0.25,
                             generator=generators(3, 2), output_type="pt").images
    assert torch.equal(got, expected.permute(0, 2, 3, 1).float())
    assert not torch.equal(got, images(run(VPGCFG, model=demo, cfg=3.0)[0], cond, 3))


def test_igg_without_a_cfg_node_takes_cfg_s_place(demo):
    cond = run(VPGClassConditioning, model=demo, classes="plant")[0]
    expected = demo.pipeline(class_labels=list(cond.class_ids), guidance_scale=0.0, igg_scale=1.0, vpg_scale=1.0,
                             top_k=0, top_p=0.95, generator=generators(0, 1), output_type="pt").images
    assert torch.equal(images(igg(demo, 1.0), cond, 0), expected.permute(0, 2, 3, 1).float())


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


def test_stack_workflow_runs_through_the_node_classes(demo):
    """Execute the workflow's API prompt as ComfyUI does: each node class's ``execute`` by input name (the
    loader's output is the already loaded demo)."""
    ui = json.loads(STACK.read_text())
    prompt = wf.to_api(ui, node_defs(ui))
    output = prompt_runner(prompt, demo)

    sampler = next(k for k, v in prompt.items() if v["class_type"] == "VPGSampler")
    got, _ = output(sampler, 0), output(sampler, 1)
    model = output(prompt[sampler]["inputs"]["model"][0], 0)
    assert [type(g).__name__ for g in model.guiders] == ["InformationGroundingGuidance", "ScaledSpatialGuidance"]
    assert got.shape == (4, 32, 32, 3) and torch.isfinite(got).all()


def test_entropy_temperature_node_defaults_are_the_papers():
    schema = VPGEntropyTemperature.define_schema()
    defaults = {i.id: i.default for i in schema.inputs if i.id in ("t0", "alpha", "theta")}
    assert defaults == ENTROPY_TEMPERATURE_DEFAULTS._asdict()
