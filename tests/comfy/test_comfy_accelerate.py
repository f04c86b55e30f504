"""The VPG Accelerate node without ComfyUI: a patched copy carrying the accelerator, the sampler's pipeline call
with it (the same image as the pipeline's ``acceleration=``), refusals in the node's words, and the shipped
workflow that chains it after Prefix Guidance executed node by node with the node classes."""

from __future__ import annotations

import json

import pytest
import torch

from comfy_nodes.accelerate import VPGAccelerate
from comfy_nodes.conditioning import VPGTextEncode
from comfy_nodes.guidance import VPGPrefixGuidance
from comfy_nodes.model import VPGModel
from comfy_nodes.samplers import VPGTextImageSampler
from comfy_nodes.sources import DEMO_CHOICE, NO_COMPANION
from tests.comfy import make_standin_models as standins
from tests.helpers import comfy_workflow as wf
from tests.helpers.comfy import REPO, load, node_defs, prompt_runner, run
from vpg_pipelines.acceleration import FastVAR, ScaleKV

PROMPT = "a red cat on the beach"
FASTVAR_TINY = '{"method": "fastvar", "blocks": [0, 2]}'  # the tiny model's 2 blocks prune
ACCELERATED = REPO / "workflows" / "vpg_infinity_tiny_fastvar.json"


def _no_files(name):
    raise FileNotFoundError(name)


def accelerate(model, preset="fastvar", config=""):
    return run(VPGAccelerate, model=model, preset=preset, config=config)[0]


def text_image(model, cond, seed, size="default"):
    return run(VPGTextImageSampler, model=model, conditioning=cond, seed=seed, size=size, batch_size=1, tau=0.5,
               cfg_insertion_layer=0, top_k=900, top_p=0.97)


@pytest.fixture(scope="module")
def infinity(tmp_path_factory) -> VPGModel:
    root = tmp_path_factory.mktemp("models")
    standins.tiny_infinity().save_pretrained(root / standins.TINY_INFINITY)
    pipe, kind = load(f"{standins.TINY_INFINITY}/model_index.json", NO_COMPANION, lambda name: root / name)
    return VPGModel(pipe, kind, "tiny infinity")


def test_the_node_patches_a_copy_with_the_preset_or_the_config(infinity):
    fast = accelerate(infinity)
    assert fast.acceleration == FastVAR() and infinity.acceleration is None  # the input is unchanged
    assert fast.describe().endswith(", fastvar)") and fast.pipeline is infinity.pipeline
    assert accelerate(infinity, "scalekv").acceleration == ScaleKV()
    configured = accelerate(infinity, "scalekv", FASTVAR_TINY)  # a config replaces the preset
    assert configured.acceleration == FastVAR(blocks=(0, 2))
    assert accelerate(infinity, "none").acceleration is None
    # chained after a guidance node, the guidance stays
    guided = run(VPGPrefixGuidance, model=infinity, vpg_scale=2.0, corruption=0.5, mode="full", refresh="persistent",
                 scales="semantic")[0]
    both = accelerate(guided)
    assert both.prefix == guided.prefix and both.acceleration == FastVAR()


def test_the_sampler_runs_the_pipeline_with_the_accelerator(infinity):
    model = accelerate(run(VPGPrefixGuidance, model=infinity, vpg_scale=2.0, corruption=0.5, mode="full",
                           refresh="persistent", scales="semantic")[0], config=FASTVAR_TINY)
    cond = run(VPGTextEncode, model=model, prompt=PROMPT, negative_prompt="")[0]
    images, maps = text_image(model, cond, seed=4, size="1024x1024")
    ref = infinity.pipeline(PROMPT, height=1024, width=1024, guidance_scale=1.0, tau=0.5, top_k=900, top_p=0.97,
                            vpg_scale=2.0, vpg_corruption=0.5, vpg_scales="semantic",
                            acceleration=FastVAR(blocks=(0, 2)), generator=[torch.Generator().manual_seed(4)],
                            output_type="pt").images
    torch.testing.assert_close(images, ref.permute(0, 2, 3, 1), atol=0, rtol=0)  # the same computation
    assert maps.description.endswith(", fastvar)")


def test_refusals_name_the_node_and_the_widget(infinity):
    demo = VPGModel(*load(DEMO_CHOICE, "none", _no_files), DEMO_CHOICE)
    cond = run(VPGTextEncode, model=infinity, prompt=PROMPT, negative_prompt="")[0]
    cases = [
        (lambda: accelerate(demo), r"^VPG Accelerate: no accelerator applies to .* \(kind var\); the presets "
                                   r"fastvar, scalekv, scalekv-2b, scalekv-8b, fastervar, fastervar-cfg0 are for "
                                   r"Infinity and InfinityStar models"),
        (lambda: accelerate(infinity, "fast"), "^VPG Accelerate: `preset` must be one of 'none', 'fastvar'"),
        (lambda: accelerate(infinity, config="[1]"), "^VPG Accelerate: `config` must be a JSON object"),
        (lambda: accelerate(infinity, config="{method"), "^VPG Accelerate: `config` is not valid JSON"),
        (lambda: accelerate(infinity, config='{"method": "fastvar", "ratio": 2}'),
         r"^VPG Accelerate: `config`: 'fastvar' takes the settings \['prune_ratios'"),
        (lambda: accelerate(accelerate(infinity)), "^VPG Accelerate: this model already has fastvar; chain only one"),
        # checked against the sampler's call: the tiny model has 2 blocks, the released budgets 32 / 40
        (lambda: text_image(accelerate(infinity, "scalekv"), cond, 0),
         r"^VPG Text-to-Image Sampler: `preset` \(of VPG Accelerate\) 'scalekv' has budget tables for Infinity-2B"),
        (lambda: text_image(accelerate(infinity), cond, 0),
         r"^VPG Text-to-Image Sampler: `preset` \(of VPG Accelerate\) 'fastvar' does nothing on this schedule"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# -- the shipped workflow ----------------------------------------------------------------------------------
def _prompt() -> dict:
    ui = json.loads(ACCELERATED.read_text(encoding="utf-8"))
    return wf.to_api(ui, node_defs(ui))


def test_the_workflow_chains_cfg_prefix_accelerate():
    prompt = _prompt()
    sampler = next(v for v in prompt.values() if v["class_type"] == "VPGTextImageSampler")["inputs"]
    order, ref = [], sampler["model"]
    while ref is not None:
        node = prompt[ref[0]]
        order.append(node["class_type"])
        ref = node["inputs"].get("model")
    assert order[::-1] == ["VPGModelLoader", "VPGCFG", "VPGPrefixGuidance", "VPGAccelerate"]
    accelerate_inputs = next(v for v in prompt.values() if v["class_type"] == "VPGAccelerate")["inputs"]
    assert json.loads(accelerate_inputs["config"]) == json.loads(FASTVAR_TINY)
    assert sampler["size"] == "512x512"  # the 0.25M schedule reaches FastVAR's first pruned scale (32x32)


def test_the_workflow_runs_through_the_node_classes(infinity):
    """Execute the workflow's API prompt as ComfyUI does (each node's ``execute`` by input name; the loader's
    output is the loaded tiny model): the pipeline's own FastVAR image, which differs from the image without it."""
    prompt = _prompt()
    output = prompt_runner(prompt, infinity)

    sampler = next(k for k, v in prompt.items() if v["class_type"] == "VPGTextImageSampler")
    images = output(sampler, 0)
    assert output(prompt[sampler]["inputs"]["model"][0], 0).acceleration == FastVAR(blocks=(0, 2))
    settings = dict(height=512, width=512, guidance_scale=3.0, tau=0.5, top_k=900, top_p=0.97, vpg_scale=1.5,
                    vpg_corruption=0.5, vpg_mode="full", vpg_refresh="persistent", vpg_scales="all",
                    output_type="pt")
    ref = infinity.pipeline(PROMPT, acceleration=FastVAR(blocks=(0, 2)),
                            generator=[torch.Generator().manual_seed(0)], **settings).images
    torch.testing.assert_close(images, ref.permute(0, 2, 3, 1), atol=0, rtol=0)  # the same computation
    plain = infinity.pipeline(PROMPT, generator=[torch.Generator().manual_seed(0)], **settings).images
    assert not torch.equal(ref, plain)
