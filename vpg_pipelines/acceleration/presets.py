"""The accelerators by name: what ``acceleration="..."``, ``vpg generate --acceleration`` and the ComfyUI node
take. A name builds the method's shipped setting; a config object passes through unchanged; a mapping
``{"method": name, **settings}`` (the JSON form of a config) builds that method with those settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .base import Acceleration
from .fastervar.method import FasterVAR
from .fastvar import FastVAR
from .scalekv import INFINITY_2B_10, INFINITY_8B_10, ScaleKV

PRESETS: dict[str, tuple[Callable[[], Acceleration], str]] = {
    "fastvar": (FastVAR, "FastVAR's released Infinity setting: prune 40 % / 50 % of the 32x32 / 40x40 scales in "
                         "blocks 3-27, skip the 48x48 and 64x64 scales (Infinity)"),
    "scalekv": (ScaleKV, "ScaleKV's released 10 % K/V budget of the model (Infinity-2B or -8B, 1024x1024)"),
    "scalekv-2b": (lambda: ScaleKV(budget=INFINITY_2B_10), "ScaleKV's budget file of Infinity-2B (32 blocks)"),
    "scalekv-8b": (lambda: ScaleKV(budget=INFINITY_8B_10), "ScaleKV's budget file of Infinity-8B (40 blocks)"),
    "fastervar": (FasterVAR, "FasterVAR's released setting of the model: CFG off on the last 3 scales, the last run "
                             "scale low-rank (Infinity: rank preset 0.96 at the 40x40 scale, 48x48 / 64x64 skipped; "
                             "InfinityStar: rank 0.1 at the final scale)"),
    "fastervar-cfg0": (lambda: FasterVAR(low_rank=False), "FasterVAR's CFG off on the last 3 scales alone (and "
                                                          "Infinity's scale skipping), no low-rank scale"),
}
"""Name -> (builder, one-line description)."""

OFF = "none"

METHODS: dict[str, type[Acceleration]] = {FastVAR.name: FastVAR, FasterVAR.name: FasterVAR, ScaleKV.name: ScaleKV}
"""Method name -> config class (the ``"method"`` of a config mapping)."""


def acceleration_names() -> list[str]:
    """Every name ``acceleration=`` takes (``"none"`` first)."""
    return [OFF, *PRESETS]


def presets_for(model: str) -> list[str]:
    """The preset names whose method applies to the model kind ``model`` (``"infinity"``; empty: none)."""
    return [name for name, (build, _) in PRESETS.items() if model in build().models]


def acceleration_from_config(config: Mapping[str, Any]) -> Acceleration:
    """``{"method": "fastvar", "blocks": [0, 2], ...}`` -> ``FastVAR(blocks=(0, 2), ...)``."""
    method = config.get("method")
    if method not in METHODS:
        raise ValueError(f"an `acceleration` config names its \"method\", one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method].from_config({k: v for k, v in config.items() if k != "method"})


def resolve_acceleration(value: Any) -> Acceleration | None:
    """``None`` / ``"none"`` -> no accelerator; a preset name -> its setting; an :class:`Acceleration` as is; a
    config mapping -> :func:`acceleration_from_config`."""
    if value is None or value == OFF:
        return None
    if isinstance(value, Acceleration):
        return value
    if isinstance(value, str) and value in PRESETS:
        return PRESETS[value][0]()
    if isinstance(value, Mapping):
        return acceleration_from_config(value)
    raise ValueError(f"`acceleration` must be one of {acceleration_names()}, an accelerator from "
                     "vpg_pipelines.acceleration (FastVAR(...), FasterVAR(...), ScaleKV(...)) or its config "
                     f"{{'method': ..., ...}}, got {value!r}")
