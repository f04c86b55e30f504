"""The node classes inside a real ComfyUI (no server): the schemas ComfyUI derives, execution, progress,
Cancel, errors, video files.

Runs only when ``COMFYUI_PATH`` points to a ComfyUI checkout whose requirements are importable (ComfyUI needs
torchvision); ``tests/comfy/conftest.py`` then puts it on ``sys.path`` before the pack is imported, so every
test in ``tests/comfy`` also runs on ComfyUI's real schema API. Skipped otherwise, with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfy_nodes import api, host
from comfy_nodes.extension import NODES
from comfy_nodes.model import VPGModel
from comfy_nodes.sampling import PREVIEW_MAX_SIZE
from comfy_nodes.sources import DEMO_CHOICE
from tests.helpers import comfy_workflow as wf
from tests.helpers.comfy import listed_files, node_infos

pytestmark = pytest.mark.skipif(
    not api.COMFYUI, reason="ComfyUI is not importable (set COMFYUI_PATH to a checkout with its requirements): "
                            "node classes not tested inside ComfyUI")
REPO = Path(__file__).resolve().parents[2]
NO_FILES = {"vae_file": "none", "text_encoder": "none", "dtype": "fp32", "quantization": "auto",
            "offload": "auto"}
LISTING = {host.MODELS: ["var_d16.pth", "vae_ch160v4096z32.pth", "run/model_index.json",
                         "infinitystar_8b_720p_weights/model.safetensors.index.json"],
           host.TEXT_ENCODERS: ["flan-t5-xl/model.safetensors"]}


@pytest.fixture(scope="module")
def comfyui():
    """ComfyUI's modules (already imported by the conftest) and the pack's node classes built on them."""
    import comfy.model_management
    import comfy.utils

    assert api.COMFYUI, "the pack was imported before ComfyUI (see tests/comfy/conftest.py)"
    nodes = SimpleNamespace(**{cls.__name__: cls for cls in NODES}, NODES=NODES, PREVIEW_MAX_SIZE=PREVIEW_MAX_SIZE)
    return {"mm": comfy.model_management, "utils": comfy.utils, "nodes": nodes}


def _model_choices() -> list[str]:
    return NODES[0].GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]["options"]


def _info_v1(cls) -> dict:
    """What ``GET /object_info`` reports for a classic node class."""
    inputs = cls.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()}, "output": cls.RETURN_TYPES}


def _real_defs(comfyui) -> dict[str, wf.NodeDef]:
    import nodes as comfy_core
    from comfy_extras import nodes_images, nodes_video

    mapping = {**comfy_core.NODE_CLASS_MAPPINGS, **nodes_images.NODE_CLASS_MAPPINGS}
    schema_nodes = {"SaveVideo": nodes_video.SaveVideo, "LoadVideo": nodes_video.LoadVideo}  # they report their own
    core = json.loads((REPO / "tests/comfy/core_object_info.json").read_text())
    infos = {name: schema_nodes[name].GET_NODE_INFO_V1() if name in schema_nodes else _info_v1(mapping[name])
             for name in core if not name.startswith("_")}
    infos.update(node_infos())
    return wf.defs_from_object_info(infos)


STANDIN_DUMP = """
import json
from comfy_nodes import api
from tests.helpers.comfy import listed_files, node_infos
assert not api.COMFYUI
with listed_files(json.loads(input())):
    print(json.dumps(node_infos()))
"""


def _comparable(infos: dict) -> dict:
    """``/object_info`` as JSON would carry it, without the module path ComfyUI's loader sets."""
    return {name: {k: v for k, v in info.items() if k != "python_module"}
            for name, info in json.loads(json.dumps(infos)).items()}


def test_the_stand_in_reports_what_comfyui_reports(comfyui):
    """The same node classes built on the stand-in (a Python without ComfyUI on its path) and on ComfyUI's
    schema API report the same ``/object_info``: what CI checks the workflows against is what ComfyUI sees."""
    with listed_files(LISTING):
        real = node_infos()
    standin = subprocess.run([sys.executable, "-c", STANDIN_DUMP], input=json.dumps(LISTING), text=True,
                             capture_output=True, cwd=REPO, check=True).stdout
    assert _comparable(json.loads(standin)) == _comparable(real)
    assert list(real) == [cls.GET_SCHEMA().node_id for cls in NODES]
    assert real["VPGModelLoader"]["input"]["required"]["model_name"][1]["options"][0] == DEMO_CHOICE


def test_captured_core_node_table_matches_this_comfyui(comfyui):
    core = {k: v for k, v in json.loads((REPO / "tests/comfy/core_object_info.json").read_text()).items()
            if not k.startswith("_")}
    real = _real_defs(comfyui)
    for name, ndef in wf.defs_from_object_info(core).items():  # file lists of the input folder aside
        assert _no_input_files(real[name]) == _no_input_files(ndef), name
    assert real["LoadImage"].input("image").upload and real["LoadVideo"].input("file").upload


def _no_input_files(ndef: wf.NodeDef) -> wf.NodeDef:
    return dataclasses.replace(ndef, inputs=tuple(dataclasses.replace(i, options=None) if i.upload else i
                                                  for i in ndef.inputs))


@pytest.mark.parametrize("name", ["vpg_demo_cfg_prefix.json", "vpg_demo_side_by_side.json"])
def test_demo_workflows_validate_against_the_real_classes(comfyui, name):
    ui = json.loads((REPO / "workflows" / name).read_text())
    assert wf.validate(ui, _real_defs(comfyui)) == []


@pytest.fixture(scope="module")
def loaded(comfyui):
    return comfyui["nodes"].VPGModelLoader.execute(model_name=DEMO_CHOICE, **NO_FILES).result[0]


def test_node_chain_produces_images_and_never_mutates_inputs(comfyui, loaded):
    n = comfyui["nodes"]
    import comfy.model_patcher

    assert isinstance(loaded, VPGModel) and isinstance(loaded.placement.handle, comfy.model_patcher.ModelPatcher)
    cond = n.VPGClassConditioning.execute(model=loaded, classes="face-happy, plant").result[0]
    with_cfg = n.VPGCFG.execute(model=loaded, cfg=3.0).result[0]
    guided = n.VPGPrefixGuidance.execute(model=with_cfg, vpg_scale=1.5, corruption=0.5, mode="full",
                                         refresh="persistent", scales="all").result[0]
    assert loaded.cfg is None and loaded.prefix is None and with_cfg.prefix is None
    images, guidance = n.VPGSampler.execute(model=guided, conditioning=cond, seed=4, batch_size=2, top_k=0,
                                            top_p=0.95).result
    assert images.shape == (4, 32, 32, 3) and images.dtype == torch.float32
    assert images.device == comfyui["mm"].intermediate_device()
    (picture,) = n.VPGGuidanceMap.execute(guidance=guidance, normalize="per scale", cell=64).result
    assert picture.shape == (4, 64, 64 * 7, 3)


def test_progress_bar_ticks_once_per_scale_with_a_preview(comfyui, loaded):
    n, utils = comfyui["nodes"], comfyui["utils"]
    calls = []
    old = utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        calls.append((value, total, preview))

    utils.set_progress_bar_global_hook(hook)
    try:
        cond = n.VPGClassConditioning.execute(model=loaded, classes="hand").result[0]
        n.VPGSampler.execute(model=loaded, conditioning=cond, seed=0, batch_size=1, top_k=0, top_p=0.95)
    finally:
        utils.set_progress_bar_global_hook(old)
    assert [(v, t) for v, t, _ in calls] == [(k, 6) for k in range(1, 7)]
    fmt, image, size = calls[-1][2]
    assert fmt == "JPEG" and image.size == (32, 32) and size == n.PREVIEW_MAX_SIZE


def test_cancel_raises_comfyuis_interrupt(comfyui, loaded):
    n, mm = comfyui["nodes"], comfyui["mm"]
    cond = n.VPGClassConditioning.execute(model=loaded, classes="hand").result[0]
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            n.VPGSampler.execute(model=loaded, conditioning=cond, seed=0, batch_size=1, top_k=0, top_p=0.95)
    finally:
        mm.interrupt_current_processing(False)


def test_bad_inputs_raise_plain_value_errors(comfyui, loaded):
    n = comfyui["nodes"]
    with pytest.raises(ValueError, match="^VPG Load Model: `model_name` 'var_d30.pth' was not found"):
        n.VPGModelLoader.execute(model_name="var_d30.pth", **NO_FILES)
    with pytest.raises(ValueError, match="^VPG CFG: this model already has guidance") as info:
        n.VPGCFG.execute(model=n.VPGCFG.execute(model=loaded, cfg=1.0).result[0], cfg=2.0)
    assert type(info.value) is ValueError
    with pytest.raises(ValueError, match="^VPG Guidance Map: `guidance` must come from a VPG Sampler"):
        n.VPGGuidanceMap.execute(guidance=torch.zeros(1), normalize="per scale", cell=64)


def test_loader_reruns_when_the_chosen_file_changes(comfyui, tmp_path):
    import folder_paths

    n = comfyui["nodes"]
    folder_paths.add_model_folder_path("vpg", str(tmp_path))
    ckpt = tmp_path / "var_d16.pth"
    ckpt.write_bytes(b"1")
    os.utime(ckpt, (1000, 1000))
    first = n.VPGModelLoader.fingerprint_inputs(model_name="var_d16.pth", **NO_FILES)
    assert first == n.VPGModelLoader.fingerprint_inputs(model_name="var_d16.pth", **NO_FILES)
    os.utime(ckpt, (2000, 2000))
    assert first != n.VPGModelLoader.fingerprint_inputs(model_name="var_d16.pth", **NO_FILES)
    assert "var_d16.pth" in _model_choices()


@pytest.fixture(scope="module")
def tiny_folders(comfyui, tmp_path_factory):
    """The tiny Infinity / InfinityStar saved folders in a models/vpg folder ComfyUI knows."""
    import importlib.util

    import folder_paths

    # by path: ComfyUI's own `tests` package shadows ours once its checkout is on sys.path
    spec = importlib.util.spec_from_file_location("vpg_standins", REPO / "tests/comfy/make_standin_models.py")
    standins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standins)
    target = tmp_path_factory.mktemp("vpg")
    standins.write_tiny(target)
    folder_paths.add_model_folder_path("vpg", str(target))
    return standins


def test_infinity_nodes_produce_images_and_guidance_maps(comfyui, tiny_folders):
    n = comfyui["nodes"]
    choice = f"{tiny_folders.TINY_INFINITY}/model_index.json"
    assert choice in _model_choices()
    model = n.VPGModelLoader.execute(model_name=choice, **NO_FILES).result[0]
    cond = n.VPGTextEncode.execute(model=model, prompt="a red cat", negative_prompt="").result[0]
    guided = n.VPGPrefixGuidance.execute(model=n.VPGCFG.execute(model=model, cfg=3.0).result[0], vpg_scale=2.0,
                                         corruption=0.5, mode="full", refresh="persistent", scales="all").result[0]
    images, guidance = n.VPGTextImageSampler.execute(model=guided, conditioning=cond, seed=0, size="default",
                                                     batch_size=1, tau=0.5, cfg_insertion_layer=0, top_k=900,
                                                     top_p=0.97).result
    assert images.shape == (1, 256, 256, 3) and images.device == comfyui["mm"].intermediate_device()
    (picture,) = n.VPGGuidanceMap.execute(guidance=guidance, normalize="per scale", cell=32).result
    assert picture.shape == (1, 32, 32 * 8, 3)
    with pytest.raises(ValueError, match="use VPG Text-to-Image Sampler") as info:
        n.VPGSampler.execute(model=model, conditioning=cond, seed=0, batch_size=1, top_k=0, top_p=0.9)
    assert type(info.value) is ValueError


def test_video_node_gives_frames_and_a_video_savevideo_can_write(comfyui, tiny_folders, tmp_path):
    from comfy_api.latest import InputImpl, Types

    n = comfyui["nodes"]
    model = n.VPGModelLoader.execute(model_name=f"{tiny_folders.TINY_INFINITY_STAR}/model_index.json",
                                     **NO_FILES).result[0]
    cond = n.VPGTextEncode.execute(model=model, prompt="a red fox", negative_prompt="").result[0]
    apg = n.VPGAPG.execute(model=model, cfg=34.0, norm_threshold=0.05).result[0]
    frames, video = n.VPGVideoSampler.execute(model=apg, conditioning=cond, seed=0, num_frames=17, size="default",
                                              batch_size=1, tau_image=1.0, tau_video=0.4).result
    h, w = model.pipeline.default_size
    assert frames.shape == (17, h, w, 3)
    parts = video.get_components()
    assert parts.frame_rate == 16 and torch.equal(parts.images, frames)
    path = tmp_path / "clip.mp4"
    video.save_to(str(path), format=Types.VideoContainer.MP4, codec=Types.VideoCodec.H264)
    written = InputImpl.VideoFromFile(str(path))
    assert written.get_dimensions() == (w, h) and abs(written.get_duration() - 17 / 16) < 0.1
    start = torch.rand(1, 30, 50, 3, generator=torch.Generator().manual_seed(0))  # ComfyUI IMAGE: the optional input
    stills = [n.VPGVideoSampler.execute(model=apg, conditioning=cond, seed=s, num_frames=1, size="default",
                                        batch_size=1, tau_image=1.0, tau_video=0.4, start_image=start).result[0]
              for s in (0, 1)]
    assert torch.equal(stills[0], stills[1])  # the start image fixes the image clip
    with pytest.raises(ValueError, match="`start_image` must be an IMAGE batch") as info:
        n.VPGVideoSampler.execute(model=apg, conditioning=cond, seed=0, num_frames=1, size="default", batch_size=1,
                                  tau_image=1.0, tau_video=0.4, start_image=start[0])
    assert type(info.value) is ValueError
    with pytest.raises(ValueError, match="takes CFG only"):
        n.VPGAPG.execute(model=n.VPGModelLoader.execute(model_name=DEMO_CHOICE, **NO_FILES).result[0], cfg=3.0,
                         norm_threshold=0.05)
