"""The shipped workflows and the node definitions they are checked against (without ComfyUI).

Our nodes' definitions come from ``comfy_nodes.specs``; the ComfyUI core nodes the workflows use come from
``tests/comfy/core_object_info.json``, a capture of a running server's ``/object_info``.
"""

from __future__ import annotations

import json
from pathlib import Path

from comfy_nodes import workflow as wf
from comfy_nodes.registry import companion_choices, loader_choices, text_encoder_choices
from comfy_nodes.specs import COMPANION_CHOICES, MODEL_CHOICES, NODE_SPECS, TEXT_ENCODER_CHOICES

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CORE = {k: v for k, v in json.loads((REPO / "tests/comfy/core_object_info.json").read_text()).items()
        if not k.startswith("_")}
TINY = {"vpg_infinity_tiny.json": "vpg-tiny-infinity", "vpg_infinitystar_tiny.json": "vpg-tiny-infinitystar"}
"""Workflows of the tiny saved folders that tests/comfy/make_standin_models.py writes (no download exists)."""
T5_FOLDER = "flan-t5-xl"
"""The one text encoder folder the workflows may name: the docs' place for google/flan-t5-xl."""


def declared_models(ui: dict) -> list[dict]:
    return [m for node in ui["nodes"] for m in node.get("properties", {}).get("models", [])]




def node_defs(ui: dict) -> dict[str, wf.NodeDef]:
    """Definitions as a ComfyUI whose models/vpg folder holds exactly the files the workflow declares, the
    tiny saved folders of make_standin_models.py, a shard folder when the workflow declares its VAE, and
    models/text_encoders holds the flan-T5-XL folder."""
    files = [m["name"] for m in declared_models(ui)]
    files += [f"{folder}/model_index.json" for folder in TINY.values()]
    if "infinitystar_videovae.pth" in files:
        files.append("infinitystar_8b_720p_weights/model.safetensors.index.json")
    dynamic = {MODEL_CHOICES: loader_choices(files), COMPANION_CHOICES: companion_choices(files),
               TEXT_ENCODER_CHOICES: text_encoder_choices([f"{T5_FOLDER}/config.json"])}
    return {**wf.defs_from_object_info(CORE), **wf.defs_from_specs(NODE_SPECS.values(), dynamic)}

