"""The guidance nodes: CFG, APG, Prefix Guidance, IGG, SSG, entropy temperature, and the Guidance Map.

Each term node is ComfyUI's PAG node in shape (``comfy_extras/nodes_pag.py``): ``VPG_MODEL`` in, a clone
with one more term out, the input unchanged. Whatever the graph order, the pipeline's chain applies
condition terms (CFG / APG, IGG) first, then Prefix Guidance, then SSG and the temperature in graph order
(``vpg_pipelines/guidance/chain.py``); each kind may appear once per chain.
"""

from __future__ import annotations

import re
from typing import Any

from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.base import GuidanceTerm
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.igg import SCHEDULES as IGG_SCHEDULES
from vpg_pipelines.guidance.igg import InformationGroundingGuidance
from vpg_pipelines.guidance.prefix import MODES, REFRESH, PrefixGuidance
from vpg_pipelines.guidance.ssg import INTERPOLATIONS, ScaledSpatialGuidance
from vpg_pipelines.guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS, EntropyAwareTemperature

from .api import io
from .errors import check_widgets, fail, index_ranges, title, translated
from .guidance_map import NORMALIZE, GuidanceMaps, render
from .model import CATEGORY, VPG_GUIDANCE, VPG_MODEL, VPGModel, default_call, model_input, vpg_model

SCALE_PRESETS = ("all", "semantic")


def _range_inputs() -> list[Any]:
    """diffusers guiders' ``start`` / ``stop``: the fractions of the sampling steps the term acts in."""
    return [io.Float.Input("start", default=0.0, min=0.0, max=0.99, step=0.01, round=0.01,
                           tooltip="Fraction of the steps before which the term does nothing (step i of N acts "
                                   "from int(start*N))."),
            io.Float.Input("stop", default=1.0, min=0.0, max=1.0, step=0.01, round=0.01,
                           tooltip="Fraction of the steps from which the term does nothing (acts before "
                                   "int(stop*N)).")]


def _check_range(node_title: str, start: float, stop: float) -> None:
    if stop < start:
        raise fail(node_title, f"`stop` ({stop:g}) must not be below `start` ({start:g}) (fractions of the steps)")


def attach(node_title: str, model: Any, term: GuidanceTerm) -> VPGModel:
    """A clone of ``model`` with ``term`` appended to its guidance terms (one of each kind)."""
    model = vpg_model(node_title, model)
    for other in model.guiders:
        if type(other) is type(term):
            raise fail(node_title, f"this model already has {other.describe()}; chain only one {node_title} node.")
    return model.clone(guiders=(*model.guiders, term))


def _cfg_free(node_title: str, model: VPGModel) -> None:
    if model.cfg is not None:
        raise fail(node_title, f"this model already has guidance ({model.describe()}); chain only one of "
                               "VPG CFG / VPG APG.")


class VPGCFG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGCFG",
            display_name="VPG CFG",
            category=CATEGORY,
            description="Classifier-free guidance for a VPG model (returns a patched copy; the input model is "
                        "unchanged).",
            inputs=[
                model_input(),
                io.Float.Input("cfg", default=1.5, min=0.0, max=30.0, step=0.05, round=0.05,
                               tooltip="The guidance_scale. VAR: linear ramp to 1+cfg at the last scale (0 = off); "
                                       "Infinity / InfinityStar: the official cfg, constant (1 = off; Infinity 2B: "
                                       "3)."),
            ],
            outputs=[VPG_MODEL.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model: VPGModel, cfg: float) -> io.NodeOutput:
        model = vpg_model(title(cls), model)
        _cfg_free(title(cls), model)
        check_widgets(cls, cfg=cfg)
        return io.NodeOutput(model.clone(cfg=ClassifierFreeGuidance(float(cfg), schedule=model.pipeline.cfg_schedule)))


class VPGAPG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGAPG",
            display_name="VPG APG",
            category=CATEGORY,
            description="Adaptive projected guidance for InfinityStar (its released setting: cfg 34, norm "
                        "threshold 0.05); use instead of VPG CFG. Returns a patched copy.",
            inputs=[
                model_input(),
                io.Float.Input("cfg", default=34.0, min=0.0, max=100.0, step=0.5, round=0.5,
                               tooltip="The official cfg of APG (1 = off)."),
                io.Float.Input("norm_threshold", default=0.05, min=0.0, max=10.0, step=0.01, round=0.01,
                               tooltip="Bound on the RMS of cond - uncond (apg_norm_threshold; 0 = no bound)."),
            ],
            outputs=[VPG_MODEL.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model: VPGModel, cfg: float, norm_threshold: float) -> io.NodeOutput:
        model = vpg_model(title(cls), model)
        if "apg" not in model.kind.guidance_kinds:
            raise fail(cls, f"{model.source} (kind {model.kind.name}) takes CFG only; use VPG CFG (APG is "
                            "InfinityStar's guidance).")
        _cfg_free(title(cls), model)
        check_widgets(cls, cfg=cfg, norm_threshold=norm_threshold)
        apg = AdaptiveProjectedGuidance(float(cfg), norm_threshold=float(norm_threshold), eta=0.0)
        return io.NodeOutput(model.clone(cfg=apg))


def parse_scales(node_title: str, text: str) -> str | list[int]:
    """``"all"``, ``"semantic"`` or scale indices (``"1,2,3"``, ranges ``"1-4"``) -> the pipeline's ``vpg_scales``."""
    allowed = "'all', 'semantic' or scale indices like '1,2,3' or '1-4'"
    value = str(text).strip().lower()
    if value in SCALE_PRESETS:
        return value
    scales: list[int] = []
    for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", value))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise fail(node_title, f"`scales` must be {allowed}, got {text!r}")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if high < low:
            raise fail(node_title, f"`scales` range {part!r} is empty (write low-high, e.g. '1-4')")
        scales.extend(range(low, high + 1))
    if not scales:
        raise fail(node_title, f"`scales` is empty; use {allowed}")
    return sorted(set(scales))


def check_scale_indices(node_title: str, scales: str | list[int], num_scales: int) -> None:
    """Explicit scale indices must name scales of the model (``num_scales`` of them): say which do not."""
    if isinstance(scales, str):
        return
    beyond = [s for s in scales if s >= num_scales]
    if beyond:
        raise fail(node_title, f"`scales` asks for scale {index_ranges(beyond)}, but this model has {num_scales} "
                               f"scales (0-{num_scales - 1}); use 'all', 'semantic' or indices in 0-{num_scales - 1}")


class VPGPrefixGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGPrefixGuidance",
            display_name="VPG Prefix Guidance",
            category=CATEGORY,
            description="Visual Prefix Guidance: out = corrupted + w * (clean - corrupted), where the corrupted "
                        "branch sees a prefix whose sites were swapped with donors of the same scale. Chain after "
                        "VPG CFG.",
            inputs=[
                model_input(),
                io.Float.Input("vpg_scale", default=1.5, min=0.0, max=20.0, step=0.05, round=0.05,
                               tooltip="w; 1 = off. Paper values for VAR: d16 3.0, d20 2.4, d24 1.8, d30 1.3."),
                io.Float.Input("corruption", default=0.5, min=0.0, max=1.0, step=0.05, round=0.05,
                               tooltip="Fraction p of each prefix scale's sites that take a donor's input (0 = off)."),
                io.Combo.Input("mode", options=list(MODES), default="full",
                               tooltip="full: donor content+position (paper); token; position; codebook (random "
                                       "code)."),
                io.Combo.Input("refresh", options=list(REFRESH), default="persistent",
                               tooltip="persistent: each scale corrupted once (fast); resample: fresh corruption per "
                                       "step."),
                io.String.Input("scales", default="all",
                                tooltip="'all', 'semantic' (early scales) or scale indices like '1,2,3' or '1-4'."),
            ],
            outputs=[VPG_MODEL.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model: VPGModel, vpg_scale: float, corruption: float, mode: str, refresh: str,
                scales: str) -> io.NodeOutput:
        node_title = title(cls)
        model = vpg_model(node_title, model)
        if model.prefix is not None:
            raise fail(node_title, f"this model already has Prefix Guidance (vpg_scale "
                                   f"{model.prefix.guidance_scale:g}); chain only one VPG Prefix Guidance node.")
        check_widgets(cls, vpg_scale=vpg_scale, corruption=corruption, mode=mode, refresh=refresh, scales=scales)
        scale_list = parse_scales(node_title, scales)
        with translated(node_title):
            num_scales = model.pipeline.resolve_call(**default_call(model.pipeline)).num_scales
        check_scale_indices(node_title, scale_list, num_scales)
        with translated(node_title):
            prefix = PrefixGuidance(float(vpg_scale), float(corruption), mode, refresh, scale_list)
        return io.NodeOutput(model.clone(prefix=prefix))


class VPGIGG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGIGG",
            display_name="VPG IGG",
            category=CATEGORY,
            description="Information-Grounding Guidance: adds t * softmax(d d^T / sqrt(V)) d, d = cond - uncond over "
                        "the scale's sites, with t = 1 + w * k/(K-1); on top of VPG CFG / APG, or in CFG's place "
                        "when the chain has none. Returns a patched copy. Cost grows with the square of a scale's "
                        "sites.",
            inputs=[
                model_input(),
                io.Float.Input("igg_scale", default=1.0, min=0.0, max=20.0, step=0.05, round=0.05,
                               tooltip="w (0 still adds the grounding term with t = 1; remove the node to turn IGG "
                                       "off)."),
                io.Combo.Input("schedule", options=list(IGG_SCHEDULES), default="linear",
                               tooltip="linear: t = 1 + w*k/(K-1) (the paper); constant: t = 1 + w at every scale."),
                *_range_inputs(),
            ],
            outputs=[VPG_MODEL.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model: VPGModel, igg_scale: float, schedule: str, start: float, stop: float) -> io.NodeOutput:
        check_widgets(cls, igg_scale=igg_scale, schedule=schedule, start=start, stop=stop)
        _check_range(title(cls), start, stop)
        term = InformationGroundingGuidance(float(igg_scale), schedule=schedule, start=float(start), stop=float(stop))
        return io.NodeOutput(attach(title(cls), model, term))


class VPGSSG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGSSG",
            display_name="VPG SSG",
            category=CATEGORY,
            description="Scaled Spatial Guidance: logits + beta * (logits - prior), the prior being the previous "
                        "scale's logits brought to the new grid in the frequency domain (DSE). No extra model pass. "
                        "Returns a patched copy.",
            inputs=[
                model_input(),
                io.Float.Input("ssg_scale", default=0.5, min=0.0, max=10.0, step=0.05, round=0.05,
                               tooltip="beta (0 = off)."),
                io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="linear",
                               tooltip="Kernel that brings the previous scale to the new grid before its low "
                                       "frequencies are restored exactly."),
                *_range_inputs(),
            ],
            outputs=[VPG_MODEL.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model: VPGModel, ssg_scale: float, interpolation: str, start: float,
                stop: float) -> io.NodeOutput:
        check_widgets(cls, ssg_scale=ssg_scale, interpolation=interpolation, start=start, stop=stop)
        _check_range(title(cls), start, stop)
        term = ScaledSpatialGuidance(float(ssg_scale), interpolation=interpolation, start=float(start),
                                     stop=float(stop))
        return io.NodeOutput(attach(title(cls), model, term))


class VPGEntropyTemperature(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGEntropyTemperature",
            display_name="VPG Entropy Temperature",
            category=CATEGORY,
            description="Entropy-aware temperature, after all guidance: each site is sampled at T = base * (t0 * "
                        "exp(-H/alpha) + theta), H the entropy of its guided distribution. Returns a patched copy.",
            inputs=[
                model_input(),
                io.Float.Input("t0", default=ENTROPY_TEMPERATURE_DEFAULTS.t0, min=0.0, max=10.0, step=0.05,
                               round=0.05, tooltip=f"T0 (paper: {ENTROPY_TEMPERATURE_DEFAULTS.t0:g})."),
                io.Float.Input("alpha", default=ENTROPY_TEMPERATURE_DEFAULTS.alpha, min=0.01, max=50.0, step=0.05,
                               round=0.05,
                               tooltip=f"alpha, in nats (paper: {ENTROPY_TEMPERATURE_DEFAULTS.alpha:g})."),
                io.Float.Input("theta", default=ENTROPY_TEMPERATURE_DEFAULTS.theta, min=0.0, max=10.0, step=0.05,
                               round=0.05,
                               tooltip=f"theta (paper: {ENTROPY_TEMPERATURE_DEFAULTS.theta:g})."),
                io.Float.Input("base", default=1.0, min=0.01, max=10.0, step=0.01, round=0.01,
                               tooltip="T_base, on top of the model's own temperature."),
                *_range_inputs(),
            ],
            outputs=[VPG_MODEL.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model: VPGModel, t0: float, alpha: float, theta: float, base: float, start: float,
                stop: float) -> io.NodeOutput:
        check_widgets(cls, t0=t0, alpha=alpha, theta=theta, base=base, start=start, stop=stop)
        if t0 + theta <= 0:
            raise fail(cls, "`t0` + `theta` must be > 0 (the temperature would be 0)")
        _check_range(title(cls), start, stop)
        term = EntropyAwareTemperature(base=float(base), t0=float(t0), alpha=float(alpha), theta=float(theta),
                                       start=float(start), stop=float(stop))
        return io.NodeOutput(attach(title(cls), model, term))


class VPGGuidanceMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGGuidanceMap",
            display_name="VPG Guidance Map",
            category=CATEGORY,
            description="Where Prefix Guidance changed the prediction most: one tile per scale (total-variation "
                        "distance between the token distributions before and after VPG), then the image with the "
                        "summed map over it.",
            inputs=[
                VPG_GUIDANCE.Input("guidance", tooltip="The guidance output of a VPG Sampler."),
                io.Combo.Input("normalize", options=list(NORMALIZE), default="per scale",
                               tooltip="per scale: each tile to its own maximum; shared: one maximum for all scales."),
                io.Int.Input("cell", default=128, min=16, max=1024, step=16, tooltip="Tile size in pixels."),
            ],
            outputs=[io.Image.Output(display_name="map")],
        )

    @classmethod
    def execute(cls, guidance: GuidanceMaps, normalize: str, cell: int) -> io.NodeOutput:
        if not isinstance(guidance, GuidanceMaps):
            raise fail(cls, "`guidance` must come from a VPG Sampler or VPG Text-to-Image Sampler, got "
                            f"{type(guidance).__name__}")
        check_widgets(cls, normalize=normalize, cell=cell)
        if not guidance.maps:
            raise fail(cls, "`guidance` holds no scales (the sampler ran no step)")
        return io.NodeOutput(render(guidance, normalize, cell))
