"""The shipped workflows against the node definitions, without ComfyUI.

Our nodes' definitions are what the node classes report (``GET_NODE_INFO_V1``; on the pack's stand-in for
ComfyUI's schema API when ComfyUI is absent); the ComfyUI core nodes the workflows use come from
``tests/comfy/core_object_info.json``, a capture of a running server's ``/object_info``.
``test_comfy_nodes.py`` re-checks both against a real ComfyUI when ``COMFYUI_PATH`` is set, and
``tests/comfy/run_headless.sh`` runs the workflows.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import PIL.Image
import pytest

from comfy_nodes.extension import NODES
from comfy_nodes.sources import DEMO_CHOICE
from tests.comfy import make_thumbnails
from tests.helpers import comfy_workflow as wf
from tests.helpers.comfy import (
    REPO,
    SHARD_FOLDERS,
    T5_FOLDER,
    TINY,
    WORKFLOWS,
    declared_models,
    node_defs,
    node_infos,
)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_workflows_are_shipped():
    assert {p.name for p in WORKFLOWS} >= {"vpg_demo_cfg_prefix.json", "vpg_demo_side_by_side.json",
                                           "vpg_var_d16.json", "vpg_infinity_tiny.json", "vpg_infinity_2b.json",
                                           "vpg_infinitystar_tiny.json", "vpg_infinitystar_720p.json",
                                           "vpg_infinitystar_480p_i2v.json", "vpg_infinitystar_480p_continuation.json",
                                           "vpg_infinitystar_interact.json"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_node_definitions(path):
    ui = load(path)
    assert wf.validate(ui, node_defs(ui)) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_model_file_is_declared_with_a_download(path):
    ui = load(path)
    declared = {m["name"]: m for m in declared_models(ui)}
    for node in ui["nodes"]:
        if node["type"] != "VPGModelLoader":
            continue
        model_name, vae_file, text_encoder, _, quantization, offload, variant = node["widgets_values"]
        assert text_encoder in ("none", T5_FOLDER)
        assert (quantization, offload, variant) == ("auto", "auto", "auto")  # planned; variant from the file name
        if path.name in TINY:
            assert (model_name, vae_file) == (f"{TINY[path.name]}/model_index.json", "none")
            continue
        for name in (model_name, vae_file):
            if name in (DEMO_CHOICE, "none") or name in SHARD_FOLDERS:  # no single file to download
                continue
            assert name in declared, f"{name} has no properties.models entry (the frontend offers no download)"
            assert declared[name]["directory"] == "vpg" and declared[name]["url"].endswith("/" + name)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_each_workflow_has_its_thumbnail(path):
    """ComfyUI's template browser shows ``<name>.jpg`` beside ``<name>.json``; make_thumbnails.py makes each
    from that workflow's own run in run_headless.sh."""
    with PIL.Image.open(path.with_suffix(".jpg")) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == make_thumbnails.SIDE
    assert path.stem in make_thumbnails.RUNS


def test_var_workflow_points_at_the_official_file_names():
    ui = load(REPO / "workflows/vpg_var_d16.json")
    loader = next(n for n in ui["nodes"] if n["type"] == "VPGModelLoader")
    assert loader["widgets_values"][:2] == ["var_d16.pth", "vae_ch160v4096z32.pth"]


@pytest.mark.parametrize(("name", "files", "sampler"), [
    ("vpg_infinity_2b.json", ["infinity_2b_reg.pth", "infinity_vae_d32reg.pth", T5_FOLDER], "VPGTextImageSampler"),
    ("vpg_infinitystar_720p.json", ["infinitystar_8b_720p_weights", "infinitystar_videovae.pth", T5_FOLDER],
     "VPGVideoSampler"),
])
def test_text_workflows_point_at_the_official_files_and_settings(name, files, sampler):
    ui = load(REPO / "workflows" / name)
    assert _node(ui, "VPGModelLoader")["widgets_values"][:3] == files
    prompt = wf.to_api(ui, node_defs(ui))
    inputs = next(v["inputs"] for v in prompt.values() if v["class_type"] == sampler)
    if sampler == "VPGTextImageSampler":  # the released 2B: predict.py's settings
        assert (inputs["size"], inputs["tau"], inputs["cfg_insertion_layer"], inputs["top_k"], inputs["top_p"]) == (
            "1024x1024", 0.5, 0, 900, 0.97)
        assert next(v for v in prompt.values() if v["class_type"] == "VPGCFG")["inputs"]["cfg"] == 3.0
    else:  # the released 720p script: 81 frames, 720x1280, APG 34 / 0.05, taus 1 / 0.4
        assert (inputs["num_frames"], inputs["size"], inputs["tau_image"], inputs["tau_video"]) == (
            81, "720x1280", 1.0, 0.4)
        apg = next(v for v in prompt.values() if v["class_type"] == "VPGAPG")["inputs"]
        assert (apg["cfg"], apg["norm_threshold"]) == (34.0, 0.05)


@pytest.mark.parametrize(("name", "inputs", "apg"), [
    ("vpg_infinitystar_480p_i2v.json", {"num_frames": 81, "start_image": ["6", 0]}, True),
    ("vpg_infinitystar_480p_continuation.json", {"num_frames": 161, "video": ["6", 0]}, True),
    ("vpg_infinitystar_interact.json", {"tau": 0.5, "video": ["4", 0]}, False),
])
def test_480p_and_interact_workflows_run_their_scripts_from_an_input_file(name, inputs, apg):
    """480p (i2v: Load Image's example.png; continuation: Load Video, 10 s) with the 480p script's settings at
    480x848; Interact from Load Video with its script's CFG 3, one clip per prompt line; VPG on the semantic scales."""
    ui = load(REPO / "workflows" / name)
    prompt = wf.to_api(ui, node_defs(ui))
    loader = next(v["inputs"] for v in prompt.values() if v["class_type"] == "VPGModelLoader")
    checkpoint = "InfinityStarInteract_24K_iters" if "interact" in name else "infinitystar_8b_480p_weights"
    files = (checkpoint, "infinitystar_videovae.pth", T5_FOLDER)
    assert (loader["model_name"], loader["vae_file"], loader["text_encoder"]) == files
    sampler = next(v["inputs"] for v in prompt.values() if v["class_type"] in ("VPGVideoSampler", "VPGInteractSampler"))
    assert {k: sampler[k] for k in inputs} == inputs
    source = prompt[next(iter(v for k, v in inputs.items() if k in ("start_image", "video")))[0]]
    assert source["class_type"] == ("LoadImage" if "start_image" in inputs else "LoadVideo")
    assert set(source["inputs"]) == {"image" if "start_image" in inputs else "file"}  # not the upload button
    prefix = next(v["inputs"] for v in prompt.values() if v["class_type"] == "VPGPrefixGuidance")
    assert (prefix["vpg_scale"], prefix["corruption"], prefix["scales"]) == (1.5, 0.1, "semantic")
    if apg:
        assert sampler["size"] == "480x848" and (sampler["tau_image"], sampler["tau_video"]) == (1.0, 0.4)
        guidance = next(v["inputs"] for v in prompt.values() if v["class_type"] == "VPGAPG")
        assert (guidance["cfg"], guidance["norm_threshold"]) == (34.0, 0.05)
    else:
        assert next(v["inputs"] for v in prompt.values() if v["class_type"] == "VPGCFG")["cfg"] == 3.0
        assert len(sampler["prompts"].splitlines()) == 3


@pytest.mark.parametrize("name", ["vpg_infinitystar_tiny.json", "vpg_infinitystar_720p.json",
                                  "vpg_infinitystar_480p_i2v.json", "vpg_infinitystar_480p_continuation.json",
                                  "vpg_infinitystar_interact.json"])
def test_video_workflows_save_the_video_and_the_frames(name):
    ui = load(REPO / "workflows" / name)
    prompt = wf.to_api(ui, node_defs(ui))
    sampler = next(k for k, v in prompt.items() if v["class_type"] in ("VPGVideoSampler", "VPGInteractSampler"))
    save_video = next(v for v in prompt.values() if v["class_type"] == "SaveVideo")
    save_frames = next(v for v in prompt.values() if v["class_type"] == "SaveImage")
    assert save_video["inputs"]["video"] == [sampler, 1] and save_frames["inputs"]["images"] == [sampler, 0]


def test_demo_workflows_need_no_download():
    for name in ("vpg_demo_cfg_prefix.json", "vpg_demo_side_by_side.json"):
        ui = load(REPO / "workflows" / name)
        assert declared_models(ui) == []
        assert all(n["widgets_values"][0] == DEMO_CHOICE for n in ui["nodes"] if n["type"] == "VPGModelLoader")


def test_side_by_side_differs_only_by_prefix_guidance():
    ui = load(REPO / "workflows/vpg_demo_side_by_side.json")
    prompt = wf.to_api(ui, node_defs(ui))
    samplers = [k for k, v in prompt.items() if v["class_type"] == "VPGSampler"]
    assert len(samplers) == 2
    a, b = (prompt[k]["inputs"] for k in samplers)
    assert {k: v for k, v in a.items() if k != "model"} == {k: v for k, v in b.items() if k != "model"}

    def chain(ref):  # node types from a sampler's model input back to the loader
        types = []
        while ref is not None:
            node = prompt[ref[0]]
            types.append(node["class_type"])
            ref = node["inputs"].get("model")
        return types

    assert sorted([chain(a["model"]), chain(b["model"])]) == [
        ["VPGCFG", "VPGModelLoader"], ["VPGPrefixGuidance", "VPGCFG", "VPGModelLoader"]]


def test_api_conversion_maps_widgets_by_name_and_drops_the_seed_control():
    ui = load(REPO / "workflows/vpg_demo_cfg_prefix.json")
    prompt = wf.to_api(ui, node_defs(ui))
    sampler = next(v for v in prompt.values() if v["class_type"] == "VPGSampler")
    node = next(n for n in ui["nodes"] if n["type"] == "VPGSampler")
    seed, control, batch, top_k, top_p = node["widgets_values"]
    assert control == "fixed"
    assert {k: sampler["inputs"][k] for k in ("seed", "batch_size", "top_k", "top_p")} == {
        "seed": seed, "batch_size": batch, "top_k": top_k, "top_p": top_p}
    assert sampler["inputs"]["model"][1] == 0 and sampler["inputs"]["conditioning"][1] == 0


# -- the checker must catch real mistakes --------------------------------------------------------------
def _node(ui, node_type):
    return next(n for n in ui["nodes"] if n["type"] == node_type)


def _drop_control(ui):
    _node(ui, "VPGSampler")["widgets_values"].pop(1)


def _bad_control(ui):
    _node(ui, "VPGSampler")["widgets_values"][1] = "sometimes"


def _seed_too_big(ui):
    _node(ui, "VPGSampler")["widgets_values"][0] = 2**64


def _corruption_out_of_range(ui):
    _node(ui, "VPGPrefixGuidance")["widgets_values"][1] = 1.5


def _unknown_mode(ui):
    _node(ui, "VPGPrefixGuidance")["widgets_values"][2] = "blur"


def _unknown_node(ui):
    _node(ui, "VPGCFG")["type"] = "VPGClassifierFree"


def _model_not_in_folder(ui):
    _node(ui, "VPGModelLoader")["widgets_values"][0] = "var_d30.pth"


def _wrong_link_type(ui):
    sampler = _node(ui, "VPGSampler")
    link_id = sampler["inputs"][1]["link"]  # conditioning
    link = next(lk for lk in ui["links"] if lk[0] == link_id)
    link[1], link[5] = _node(ui, "VPGCFG")["id"], "VPG_MODEL"


def _unconnected(ui):
    sampler = _node(ui, "VPGSampler")
    link_id = sampler["inputs"][1]["link"]
    sampler["inputs"][1]["link"] = None
    ui["links"] = [lk for lk in ui["links"] if lk[0] != link_id]
    for node in ui["nodes"]:
        for out in node["outputs"]:
            if out["links"] and link_id in out["links"]:
                out["links"].remove(link_id)


@pytest.mark.parametrize(("mutate", "message"), [
    (_drop_control, "control value"),
    (_bad_control, "control value"),
    (_seed_too_big, "above the maximum"),
    (_corruption_out_of_range, "above the maximum 1.0"),
    (_unknown_mode, "'blur' is not one of"),
    (_unknown_node, "unknown node type"),
    (_model_not_in_folder, "'var_d30.pth' is not one of"),
    (_wrong_link_type, "gives VPG_MODEL"),
    (_unconnected, "required input 'conditioning'"),
])
def test_checker_reports_broken_workflows(mutate, message):
    ui = copy.deepcopy(load(REPO / "workflows/vpg_demo_cfg_prefix.json"))
    defs = node_defs(ui)
    mutate(ui)
    errors = wf.validate(ui, defs)
    assert any(message in e for e in errors), errors
    with pytest.raises(ValueError, match="does not match the node definitions"):
        wf.to_api(ui, defs)


def test_each_node_class_executes_exactly_its_schema_inputs():
    """A converted workflow calls ``execute`` with the schema's input names: the two must agree."""
    infos = node_infos()
    assert [cls.GET_SCHEMA().node_id for cls in NODES] == list(infos)
    for cls in NODES:
        info = infos[cls.GET_SCHEMA().node_id]
        params = list(inspect.signature(cls.execute).parameters)
        assert params == [*info["input_order"]["required"], *info["input_order"].get("optional", [])], cls
        assert info["category"] == "sampling/vpg" and info["name"].startswith("VPG")
        assert info["display_name"].startswith("VPG ")
