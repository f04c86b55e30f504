"""The accelerators by name: what ``acceleration="..."``, ``vpg generate --acceleration`` and the ComfyUI node
take. A name builds the method's shipped setting; a config object passes through unchanged."""

from __future__ import annotations

from collections.abc import Callable
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


def acceleration_names() -> list[str]:
    """Every name ``acceleration=`` takes (``"none"`` first)."""
    return [OFF, *PRESETS]


def resolve_acceleration(value: Any) -> Acceleration | None:
    """``None`` / ``"none"`` -> no accelerator; a preset name -> its setting; an :class:`Acceleration` as is."""
    if value is None or value == OFF:
        return None
    if isinstance(value, Acceleration):
        return value
    if isinstance(value, str) and value in PRESETS:
        return PRESETS[value][0]()
    raise ValueError(f"`acceleration` must be one of {acceleration_names()} or an accelerator from "
                     f"vpg_pipelines.acceleration (FastVAR(...), FasterVAR(...), ScaleKV(...)), got {value!r}")
