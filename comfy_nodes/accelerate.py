"""The VPG Accelerate node: a training-free accelerator (FastVAR, FasterVAR, ScaleKV) on a VPG model.

Chained like a guidance node (``VPG_MODEL`` in, a clone with the accelerator out, the input unchanged); the
sampler passes it to the pipeline as ``acceleration=`` (the same preset names and config mappings as the
Python keyword and ``vpg generate --acceleration``), where it acts on every row of a guided step, VPG's
corrupted rows included (docs/acceleration.md). Whether it applies to the sampler's size is checked when
the sampler resolves its call (an error naming this node's ``preset``).
"""

from __future__ import annotations

import json

from vpg_pipelines.acceleration import PRESETS, acceleration_names, presets_for, resolve_acceleration

from .api import io
from .errors import check_widgets, fail, title
from .model import CATEGORY, VPG_MODEL, VPGModel, model_input, vpg_model


def _preset_help() -> str:
    return "; ".join(f"{name}: {description}" for name, (_, description) in PRESETS.items())


class VPGAccelerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGAccelerate",
            display_name="VPG Accelerate",
            category=CATEGORY,
            description="A training-free accelerator for Infinity and InfinityStar models (FastVAR: token pruning "
                        "at the largest scales; FasterVAR: CFG off on the last scales and a low-rank last scale; "
                        "ScaleKV: a K/V cache budget), composed with every guidance node. Returns a patched copy.",
            inputs=[
                model_input(),
                io.Combo.Input("preset", options=acceleration_names(), default="fastvar",
                               tooltip=f"The authors' released setting by name (none = off). {_preset_help()}."),
                io.String.Input("config", default="", multiline=True,
                                tooltip="Optional, replaces the preset: a JSON object such as {\"method\": "
                                        "\"fastvar\", \"blocks\": [0, 2]} (the fields of FastVAR / FasterVAR / "
                                        "ScaleKV; docs/acceleration.md)."),
            ],
            outputs=[VPG_MODEL.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model: VPGModel, preset: str, config: str) -> io.NodeOutput:
        node_title = title(cls)
        model = vpg_model(node_title, model)
        check_widgets(cls, preset=preset, config=config)
        if model.acceleration is not None:
            raise fail(node_title, f"this model already has {model.acceleration.name}; chain only one "
                                   f"{node_title} node.")
        value = _config(node_title, config) if config.strip() else preset
        if value == "none":
            return io.NodeOutput(model.clone())
        allowed = presets_for(model.kind.name)
        if not allowed:
            raise fail(node_title, f"no accelerator applies to {model.source} (kind {model.kind.name}); the presets "
                                   f"{', '.join(PRESETS)} are for Infinity and InfinityStar models. Remove this "
                                   "node or set `preset` to none.")
        try:
            method = resolve_acceleration(value)
        except ValueError as err:
            plain = str(err).replace("an `acceleration` config", "the config").replace("`acceleration` ", "")
            raise fail(node_title, f"`config`: {plain}") from None
        if model.kind.name not in method.models:
            raise fail(node_title, f"{method.name} applies to {', '.join(method.models)} models, not {model.source} "
                                   f"(kind {model.kind.name}); use one of {', '.join(allowed)}")
        return io.NodeOutput(model.clone(acceleration=method))


def _config(node_title: str, text: str) -> dict:
    """The ``config`` widget's JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise fail(node_title, f"`config` is not valid JSON ({err}); write an object such as "
                               "{\"method\": \"fastvar\"} or leave it empty to use `preset`") from None
    if not isinstance(value, dict):
        raise fail(node_title, f"`config` must be a JSON object with a \"method\", got {type(value).__name__}")
    return value
