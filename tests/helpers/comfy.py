"""The node pack in tests: the shipped workflows, the node definitions they are checked against, and a
model folder for the loader.

Our nodes' definitions are what the node classes themselves report (``GET_NODE_INFO_V1``, as ComfyUI's
``/object_info`` does): built on ComfyUI's schema API when ComfyUI is importable, on the pack's stand-in
otherwise. The ComfyUI core nodes the workflows use come from ``tests/comfy/core_object_info.json``, a
capture of a running server's ``/object_info``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from comfy_nodes import host, sources
from comfy_nodes.extension import NODES
from tests.helpers import comfy_workflow as wf
from vpg_pipelines.models.infinity_star.settings import VARIANT_CHECKPOINTS
from vpg_pipelines.registry import ModelKind, kind_of

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CORE = {k: v for k, v in json.loads((REPO / "tests/comfy/core_object_info.json").read_text()).items()
        if not k.startswith("_")}
TINY = {"vpg_infinity_tiny.json": "vpg-tiny-infinity", "vpg_infinity_tiny_fastvar.json": "vpg-tiny-infinity",
        "vpg_infinitystar_tiny.json": "vpg-tiny-infinitystar"}
"""Workflows of the tiny saved folders that tests/comfy/make_standin_models.py writes (no download exists)."""
T5_FOLDER = "flan-t5-xl"
"""The one text encoder folder the workflows may name: the docs' place for google/flan-t5-xl."""
SHARD_FOLDERS = tuple(VARIANT_CHECKPOINTS.values())
"""The released InfinityStar transformers: shard folders (``*.index.json``), which the frontend cannot download."""


def declared_models(ui: dict) -> list[dict]:
    return [m for node in ui["nodes"] for m in node.get("properties", {}).get("models", [])]


@contextmanager
def listed_files(listing: dict[str, list[str]]) -> Iterator[None]:
    """Make the host list exactly these files per model folder (``{"vpg": [...], "text_encoders": [...]}``)."""
    with mock.patch.object(host, "filenames", lambda folder: list(listing.get(folder, []))):
        yield


def node_infos() -> dict[str, dict[str, Any]]:
    """``/object_info`` of the pack's node classes (under the host's current model folders)."""
    return {info["name"]: info for info in (cls.GET_NODE_INFO_V1() for cls in NODES)}


def node_defs(ui: dict) -> dict[str, wf.NodeDef]:
    """Definitions as a ComfyUI whose models/vpg folder holds exactly the files the workflow declares, the
    tiny saved folders of make_standin_models.py, the shard folders the workflow's loaders name, and
    models/text_encoders holds the flan-T5-XL folder; its input folder holds the files the workflow's Load Image /
    Load Video nodes name."""
    files = [m["name"] for m in declared_models(ui)]
    files += [f"{folder}/model_index.json" for folder in dict.fromkeys(TINY.values())]  # two workflows share one
    loaded = {n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "VPGModelLoader"}
    files += [f"{folder}/model.safetensors.index.json" for folder in SHARD_FOLDERS if folder in loaded]
    with listed_files({host.MODELS: files, host.TEXT_ENCODERS: [f"{T5_FOLDER}/model.safetensors"]}):
        ours = node_infos()
    core = {name: with_input_files(ndef, ui) for name, ndef in wf.defs_from_object_info(CORE).items()}
    return {**core, **wf.defs_from_object_info(ours)}


def with_input_files(ndef: wf.NodeDef, ui: dict) -> wf.NodeDef:
    """``ndef`` with each file list of an upload widget (ComfyUI's input folder) holding the files ``ui``'s nodes of
    that type name."""
    named = tuple(sorted({n["widgets_values"][0] for n in ui["nodes"] if n["type"] == ndef.node_id}))
    inputs = tuple(dataclasses.replace(i, options=named) if i.upload else i for i in ndef.inputs)
    return dataclasses.replace(ndef, inputs=inputs)


def run(node: type, **inputs: Any) -> tuple:
    """Execute a node class as ComfyUI does (``execute`` by input name) and return its outputs."""
    return node.execute(**inputs).result


@pytest.fixture
def progress_hook():
    """ComfyUI's global progress hook (the stand-in's without ComfyUI), collecting ``(value, total, preview)``."""
    calls = []
    host.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total, preview)))
    yield calls
    host.set_progress_bar_global_hook(None)


def prompt_runner(prompt: dict, loaded: Any):
    """``output(key, slot)`` executing an API prompt as ComfyUI does: each node class's ``execute`` by input name,
    every node once; the loader's output is the already ``loaded`` model."""
    classes = {cls.GET_SCHEMA().node_id: cls for cls in NODES}
    done: dict[str, tuple] = {}

    def output(key: str, slot: int) -> Any:
        if key not in done:
            node = prompt[key]
            if node["class_type"] == "VPGModelLoader":
                done[key] = (loaded,)
            else:
                inputs = {k: (output(*v) if isinstance(v, list) else v) for k, v in node["inputs"].items()}
                done[key] = run(classes[node["class_type"]], **inputs)
        return done[key][slot]

    return output


def load(choice: str, vae_file: str, resolve: Any, dtype: str = "fp32",
         text_encoder: str = "none", variant: str = "auto") -> tuple[Any, ModelKind]:
    """The loader node's loading (:func:`comfy_nodes.sources.load_choice`) and the kind of what it loaded."""
    pipe = sources.load_choice(choice, vae_file, resolve, dtype, text_encoder, variant=variant)
    return pipe, kind_of(pipe)
