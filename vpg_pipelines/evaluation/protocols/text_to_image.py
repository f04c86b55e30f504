"""Shared by the Infinity protocols (GenEval, DPG-Bench): the prompt call and the official evaluation settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...pipelines.pipeline_vpg_infinity import DEFAULT_VPG_SCALE
from .base import VPG_KEYS, Protocol, Sample

PAPER_SETTINGS = {"guidance_scale": 4.0, "tau": 1.0, "cfg_insertion_layer": 0, "top_k": 900, "top_p": 0.97,
                  "height": 1024, "width": 1024,
                  "vpg_scale": 1.5, "vpg_corruption": 0.5, "vpg_mode": "full", "vpg_refresh": "persistent",
                  "vpg_scales": "all"}
"""Infinity's official evaluation script (``scripts/eval.sh``: cfg 4, tau 1, CFG on the logits, the 1:1 "1M"
schedule, ``gen_one_img``'s top-k 900 / top-p 0.97) plus our documented VPG point (w 1.5, p 0.5)."""


class TextToImageProtocol(Protocol):
    pipeline = "VPGInfinityPipeline"
    sampling_keys = ("negative_prompt", "height", "width", "guidance_scale", "tau", "cfg_insertion_layer",
                     "top_k", "top_p", *VPG_KEYS)

    def call_inputs(self, samples: Sequence[Sample]) -> dict[str, Any]:
        return {"prompt": [s.condition for s in samples]}

    def preset(self, name: str, pipe) -> dict[str, Any]:
        return dict(PAPER_SETTINGS) if name == "paper" else {}

    def complete(self, call: dict[str, Any], pipe, preset: str) -> dict[str, Any]:
        if call.get("height") is None:
            call["height"] = int(pipe.config.default_height)
        if call.get("width") is None:
            call["width"] = int(pipe.config.default_width)
        if call.get("vpg_scale") is None:
            call["vpg_scale"] = DEFAULT_VPG_SCALE
        return call
