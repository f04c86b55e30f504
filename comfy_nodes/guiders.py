"""Node logic of the guidance terms beyond CFG / APG and Prefix Guidance (no ComfyUI imports).

Each node takes a ``VPG_MODEL``, attaches one term and returns a patched copy (the input is never
changed), like VPG Prefix Guidance and ComfyUI's Perturbed-Attention Guidance. The terms travel in
``VPGModel.guiders`` in graph order and reach the pipeline as its ``guiders`` argument; the pipeline's
chain orders them by stage (``vpg_pipelines/guidance/chain.py``), so CFG → IGG → Prefix Guidance → SSG
is the order they act in.
"""

from __future__ import annotations

from typing import Any

from vpg_pipelines.guidance.base import GuidanceTerm
from vpg_pipelines.guidance.igg import SCHEDULES as IGG_SCHEDULES
from vpg_pipelines.guidance.igg import InformationGroundingGuidance
from vpg_pipelines.guidance.ssg import INTERPOLATIONS, ScaledSpatialGuidance
from vpg_pipelines.guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS as PAPER
from vpg_pipelines.guidance.temperature import EntropyAwareTemperature

from .core import VPGModel, VPGNodeError, _check_model


def _number(node: str, name: str, value: Any, low: float, high: float | None = None, exclusive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (value > low if exclusive else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"> {low:g}" if exclusive else f">= {low:g}"
        rng = f"in [{low:g}, {high:g}]" if high is not None and not exclusive else bound
        raise VPGNodeError(f"{node}: `{name}` must be a number {rng}, got {value!r}")
    return float(value)


def _range(node: str, start: Any, stop: Any) -> tuple[float, float]:
    start = _number(node, "start", start, 0.0, 1.0)
    stop = _number(node, "stop", stop, 0.0, 1.0)
    if not start < 1.0 or stop < start:
        raise VPGNodeError(f"{node}: need 0 <= start < 1 and start <= stop <= 1 (fractions of the steps), "
                           f"got start {start:g}, stop {stop:g}")
    return start, stop


def attach(model: Any, term: GuidanceTerm, node: str) -> VPGModel:
    """A copy of ``model`` with ``term`` appended to its guidance terms (one of each kind)."""
    model = _check_model(model, node)
    for other in model.guiders:
        if type(other) is type(term):
            raise VPGNodeError(f"{node}: this model already has {other.describe()}; chain only one {node} node.")
    return model.clone(guiders=(*model.guiders, term))


def apply_igg(model: Any, igg_scale: float, schedule: str = "linear", start: float = 0.0,
              stop: float = 1.0) -> VPGModel:
    """Information-Grounding Guidance (adds to CFG / APG; replaces CFG when the chain has none)."""
    node = "VPG IGG"
    w = _number(node, "igg_scale", igg_scale, 0.0)
    if schedule not in IGG_SCHEDULES:
        raise VPGNodeError(f"{node}: `schedule` must be one of {IGG_SCHEDULES}, got {schedule!r}")
    start, stop = _range(node, start, stop)
    igg = InformationGroundingGuidance(guidance_scale=w, schedule=schedule, start=start, stop=stop)
    return attach(model, igg, node)


def apply_ssg(model: Any, ssg_scale: float, interpolation: str = "linear", start: float = 0.0,
              stop: float = 1.0) -> VPGModel:
    """Scaled Spatial Guidance on the guided logits."""
    node = "VPG SSG"
    beta = _number(node, "ssg_scale", ssg_scale, 0.0)
    if interpolation not in INTERPOLATIONS:
        raise VPGNodeError(f"{node}: `interpolation` must be one of {INTERPOLATIONS}, got {interpolation!r}")
    start, stop = _range(node, start, stop)
    ssg = ScaledSpatialGuidance(guidance_scale=beta, interpolation=interpolation, start=start, stop=stop)
    return attach(model, ssg, node)


def apply_entropy_temperature(model: Any, t0: float = PAPER.t0, alpha: float = PAPER.alpha, theta: float = PAPER.theta,
                              base: float = 1.0, start: float = 0.0, stop: float = 1.0) -> VPGModel:
    """The entropy-aware temperature, applied after every other term."""
    node = "VPG Entropy Temperature"
    t0 = _number(node, "t0", t0, 0.0)
    alpha = _number(node, "alpha", alpha, 0.0, exclusive=True)
    theta = _number(node, "theta", theta, 0.0)
    base = _number(node, "base", base, 0.0, exclusive=True)
    if t0 + theta <= 0:
        raise VPGNodeError(f"{node}: `t0 + theta` must be > 0 (the temperature would be 0)")
    start, stop = _range(node, start, stop)
    return attach(model, EntropyAwareTemperature(base=base, t0=t0, alpha=alpha, theta=theta, start=start, stop=stop),
                  node)
