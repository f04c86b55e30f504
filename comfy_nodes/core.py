"""The node pack's logic without ComfyUI: model wrapper, conditioning, sampling.

``nodes.py`` turns these functions into ComfyUI nodes; everything here runs (and is tested) with
plain ``vpg_pipelines`` and torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.prefix import MODES, REFRESH, PrefixGuidance
from vpg_pipelines.sampling.next_scale import SamplerTrace

from .guidance_map import GuidanceMaps, change_map
from .registry import PipelineKind

SEED_MAX = 0xFFFFFFFFFFFFFFFF


class VPGNodeError(ValueError):
    """A bad node input or chain; the message names the input and what is allowed."""


@dataclass(frozen=True)
class VPGModel:
    """What flows through ``VPG_MODEL`` sockets: a pipeline plus the guidance chain applied to it.

    Immutable: guidance nodes return a patched copy (:meth:`clone`) that shares the pipeline's
    weights, so ComfyUI's cached outputs upstream never change.

    Attributes:
        pipeline: the loaded pipeline (``VPGVARPipeline`` or another registered kind).
        kind: its :class:`PipelineKind`.
        source: what was loaded (the loader's choice), shown in messages.
        cfg: classifier-free (or, for InfinityStar, adaptive projected) guidance, or ``None`` (off).
        prefix: Visual Prefix Guidance, or ``None`` (off).
        guiders: the other guidance terms (IGG, SSG, entropy temperature ...) in graph order; the
            pipeline's chain orders them by stage (``guiders.py``).
        handle: ComfyUI's ``ModelPatcher`` over the pipeline's modules (``None`` outside ComfyUI).
        offload: the loader's offload choice (``"auto"`` or a mode; see ``memory.py``).
        quantization: the transformer's weight format the loader applied.
    """

    pipeline: Any
    kind: PipelineKind
    source: str
    cfg: ClassifierFreeGuidance | AdaptiveProjectedGuidance | None = None
    prefix: PrefixGuidance | None = None
    handle: Any = None
    guiders: tuple = ()
    offload: str = "auto"
    quantization: str = "none"

    def clone(self, **changes: Any) -> VPGModel:
        return dataclasses.replace(self, **changes)

    @property
    def num_scales(self) -> int:
        return int(self.pipeline.num_timesteps or 0)

    def describe(self) -> str:
        name = "apg" if isinstance(self.cfg, AdaptiveProjectedGuidance) else "cfg"
        cfg = f"{name} {self.cfg.guidance_scale:g}" if self.cfg else "no CFG"
        vpg = f"VPG w={self.prefix.guidance_scale:g} p={self.prefix.corruption:g}" if self.prefix else "no VPG"
        others = "".join(f", {g.describe()}" for g in self.guiders)
        return f"{self.source} ({cfg}, {vpg}{others})"


def _check_model(model: Any, node: str) -> VPGModel:
    if not isinstance(model, VPGModel):
        raise VPGNodeError(
            f"{node}: `model` must come from a VPG Load Model node (or a VPG guidance node), got {type(model).__name__}"
        )
    return model


# -- guidance --------------------------------------------------------------------------------------
def apply_cfg(model: VPGModel, guidance_scale: float) -> VPGModel:
    """A copy of ``model`` with classifier-free guidance (the pipeline's ``guidance_scale``; 0 = off)."""
    model = _check_model(model, "VPG CFG")
    if model.cfg is not None:
        raise VPGNodeError(
            f"VPG CFG: this model already has CFG (cfg {model.cfg.guidance_scale:g}); remove one of the two VPG CFG "
            "nodes."
        )
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0:
        raise VPGNodeError(f"VPG CFG: `cfg` must be a number >= 0, got {guidance_scale!r}")
    cfg = ClassifierFreeGuidance(guidance_scale=float(guidance_scale), schedule=model.kind.cfg_schedule)
    return model.clone(cfg=cfg)


def apply_apg(model: VPGModel, guidance_scale: float, norm_threshold: float) -> VPGModel:
    """A copy of ``model`` with adaptive projected guidance (InfinityStar's released setting: 34, 0.05)."""
    model = _check_model(model, "VPG APG")
    if "apg" not in model.kind.guidance_kinds:
        raise VPGNodeError(f"VPG APG: {model.source} (kind {model.kind.name}) takes CFG only; "
                           "use VPG CFG (APG is InfinityStar's guidance).")
    if model.cfg is not None:
        raise VPGNodeError(f"VPG APG: this model already has guidance ({model.describe()}); chain only one of "
                           "VPG CFG / VPG APG.")
    for name, value in (("cfg", guidance_scale), ("norm_threshold", norm_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise VPGNodeError(f"VPG APG: `{name}` must be a number >= 0, got {value!r}")
    apg = AdaptiveProjectedGuidance(float(guidance_scale), norm_threshold=float(norm_threshold), eta=0.0)
    return model.clone(cfg=apg)


def parse_scales(text: str) -> str | list[int]:
    """``"all"``, ``"semantic"`` or comma-separated scale indices (``"1,2,3"``, ranges ``"1-4"``)."""
    value = str(text).strip().lower()
    if value in ("all", "semantic"):
        return value
    scales: list[int] = []
    for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", value))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise VPGNodeError(
                f"VPG Prefix Guidance: `scales` must be 'all', 'semantic' or scale indices like '1,2,3' or '1-4', "
                f"got {text!r}"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise VPGNodeError(f"VPG Prefix Guidance: `scales` range {part!r} is empty (write low-high)")
        scales.extend(range(lo, hi + 1))
    if not scales:
        raise VPGNodeError("VPG Prefix Guidance: `scales` is empty; use 'all', 'semantic' or indices like '1,2,3'")
    return sorted(set(scales))


def apply_prefix_guidance(
    model: VPGModel, vpg_scale: float, corruption: float, mode: str, refresh: str, scales: str
) -> VPGModel:
    """A copy of ``model`` with Visual Prefix Guidance, validated against the model's scales."""
    model = _check_model(model, "VPG Prefix Guidance")
    if model.prefix is not None:
        raise VPGNodeError(
            "VPG Prefix Guidance: this model already has Prefix Guidance "
            f"(vpg_scale {model.prefix.guidance_scale:g}); chain only one VPG Prefix Guidance node."
        )
    if mode not in MODES:
        raise VPGNodeError(f"VPG Prefix Guidance: `mode` must be one of {MODES}, got {mode!r}")
    if refresh not in REFRESH:
        raise VPGNodeError(f"VPG Prefix Guidance: `refresh` must be one of {REFRESH}, got {refresh!r}")
    try:
        scale_list = parse_scales(scales)
        args = (float(vpg_scale), float(corruption), mode, refresh, scale_list)
        if model.kind.prefix_scales is not None:
            prefix = model.pipeline.prefix_guidance(*args, num_scales=model.kind.prefix_scales(model.pipeline))
        else:
            prefix = model.pipeline.prefix_guidance(*args)
    except (TypeError, ValueError) as err:
        if isinstance(err, VPGNodeError):
            raise
        raise VPGNodeError(f"VPG Prefix Guidance: {err}") from err
    return model.clone(prefix=prefix)


# -- conditioning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VPGConditioning:
    """What flows through ``VPG_COND``: class ids for a class-conditional model.

    ``num_classes`` and ``source`` let the sampler reject conditioning made for another model.
    """

    class_ids: tuple[int, ...]
    names: tuple[str, ...]
    num_classes: int
    source: str


def class_names(model: VPGModel) -> list[str]:
    """The model's class names (first synonym of each class, by id)."""
    id2label = model.pipeline.config.id2label
    return [id2label[k].split(",")[0].strip() for k in sorted(id2label, key=int)]


def encode_classes(model: VPGModel, classes: str) -> VPGConditioning:
    """Class names (any synonym, case-insensitive) or ids, separated by commas or new lines."""
    model = _check_model(model, "VPG Class Conditioning")
    if model.kind.conditioning != "class":
        raise VPGNodeError(f"VPG Class Conditioning: {model.source} is a text-conditioned model; use a prompt node.")
    items = [p.strip() for p in re.split(r"[,\n;]+", str(classes)) if p.strip()]
    names = class_names(model)
    if not items:
        raise VPGNodeError(
            f"VPG Class Conditioning: `classes` is empty; give class names or ids, e.g. {', '.join(names[:3])}"
        )
    n = len(names)
    ids, shown = [], []
    for item in items:
        if re.fullmatch(r"\d+", item):
            idx = int(item)
            if not 0 <= idx < n:
                raise VPGNodeError(f"VPG Class Conditioning: class id {idx} is out of range [0, {n - 1}]")
            ids.append(idx)
        else:
            try:
                ids.extend(model.pipeline.get_label_ids(item))
            except ValueError as err:
                listing = ", ".join(names[:12]) + (", ..." if n > 12 else "")
                message = str(err).replace("`prompt` class name", "class name")
                raise VPGNodeError(f"VPG Class Conditioning: {message} This model's classes: {listing}") from err
        shown.append(names[ids[-1]])
    return VPGConditioning(tuple(ids), tuple(shown), n, model.source)


# -- sampling --------------------------------------------------------------------------------------
@dataclass
class ScaleProgress:
    """Handed to the per-scale callback; ``preview()`` decodes the partial image (first sample) on demand."""

    index: int
    total: int
    _decode: Callable[[], torch.Tensor]

    def preview(self) -> torch.Tensor:
        """(H, W, 3) float in [0, 1] on the CPU."""
        return self._decode()[0].permute(1, 2, 0).float().cpu()


@dataclass
class SampleResult:
    images: torch.Tensor
    """(B, H, W, 3) float32 in [0, 1] on the CPU: ComfyUI's IMAGE."""
    guidance: GuidanceMaps


def sample(
    model: VPGModel,
    conditioning: VPGConditioning,
    seed: int,
    batch_size: int = 1,
    top_k: int = 900,
    top_p: float = 0.96,
    on_scale: Callable[[ScaleProgress], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
    prepare: Callable[[dict], None] | None = None,
) -> SampleResult:
    """Generate ``batch_size`` images per class of ``conditioning`` with ``model``'s guidance.

    Image ``i`` uses its own generator seeded ``seed + i``, so the same seed gives the same first
    image whatever the batch size (and the same start in a side-by-side without/with VPG).
    ``on_scale`` runs after every scale, then ``check_interrupt`` (which raises to cancel: nothing
    is returned then). ``prepare(call_kwargs)`` runs just before the pipeline call (memory planning).
    Also returns the per-scale guidance maps (zeros where VPG was off).
    """
    model = _check_model(model, "VPG Sampler")
    if model.kind.conditioning != "class":
        other = "VPG Text-to-Image Sampler" if model.kind.media == "image" else "VPG Video Sampler"
        raise VPGNodeError(f"VPG Sampler: {model.source} is a text-conditioned {model.kind.name} model; use {other}.")
    if not isinstance(conditioning, VPGConditioning):
        raise VPGNodeError(
            "VPG Sampler: `conditioning` must come from a VPG Class Conditioning node, "
            f"got {type(conditioning).__name__}"
        )
    if conditioning.num_classes != len(class_names(model)) or conditioning.source != model.source:
        raise VPGNodeError(
            f"VPG Sampler: the conditioning was made for {conditioning.source} ({conditioning.num_classes} classes) "
            f"but the model is {model.source}; connect the conditioning node to the same loader."
        )
    _check_int("seed", seed, 0, SEED_MAX)
    _check_int("batch_size", batch_size, 1, 4096)
    _check_int("top_k", top_k, 0, 1 << 30)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 <= top_p <= 1.0:
        raise VPGNodeError(f"VPG Sampler: `top_p` must be a number in [0, 1], got {top_p!r}")

    pipe = model.pipeline
    total = len(conditioning.class_ids) * batch_size
    trace = SamplerTrace()
    maps: dict[int, torch.Tensor] = {}
    num_scales = model.num_scales
    callback = scale_callback(model, trace, maps, num_scales, on_scale, check_interrupt)
    cfg_scale = model.cfg.guidance_scale if model.cfg is not None else 0.0
    call = dict(class_labels=list(conditioning.class_ids), num_images_per_prompt=batch_size,
                guidance_scale=cfg_scale, top_k=int(top_k), top_p=float(top_p), **prefix_kwargs(model),
                guiders=list(model.guiders), generator=generators(seed, total), output_type="pt",
                callback_on_step_end=callback, trace=trace)
    try:
        if prepare is not None:
            prepare(call)
        out = pipe(**call)
    except (TypeError, ValueError) as err:
        if isinstance(err, VPGNodeError):
            raise
        raise VPGNodeError(f"VPG Sampler: {err}") from err
    images = out.images.permute(0, 2, 3, 1).float().cpu().contiguous()
    guidance = GuidanceMaps(
        maps=[maps.get(k, torch.zeros(total, *model.kind.grid(pipe, k))) for k in range(num_scales)],
        images=images,
        description=model.describe(),
    )
    return SampleResult(images=images, guidance=guidance)


def _check_int(name: str, value: Any, low: int, high: int, node: str = "VPG Sampler") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VPGNodeError(f"{node}: `{name}` must be an integer in [{low}, {high}], got {value!r}")


def prefix_kwargs(model: VPGModel) -> dict:
    """The ``vpg_*`` pipeline arguments of ``model``'s Prefix Guidance (off when none is attached)."""
    prefix = model.prefix or PrefixGuidance(guidance_scale=1.0)
    return dict(vpg_scale=prefix.guidance_scale, vpg_corruption=prefix.corruption, vpg_mode=prefix.mode,
                vpg_refresh=prefix.refresh, vpg_scales=prefix.scales)


def generators(seed: int, count: int) -> list[torch.Generator]:
    """Output ``i`` draws from ``seed + i``: the same seed gives the same first output at any batch size."""
    return [torch.Generator("cpu").manual_seed((seed + i) % (SEED_MAX + 1)) for i in range(count)]


def site_grid(model: VPGModel, scale: int, sites: int) -> tuple[int, int]:
    """The transformer's token grid of a scale (a 2x2 spatial patchify halves the VAE grid)."""
    h, w = model.kind.grid(model.pipeline, scale)
    if h * w != sites and max(h // 2, 1) * max(w // 2, 1) == sites:
        return max(h // 2, 1), max(w // 2, 1)
    return h, w


def scale_callback(
    model: VPGModel,
    trace: SamplerTrace,
    maps: dict[int, torch.Tensor],
    num_scales: int,
    on_scale: Callable[[ScaleProgress], None] | None,
    check_interrupt: Callable[[], None] | None,
) -> Callable[..., dict]:
    """The pipeline's ``callback_on_step_end`` for the image samplers: turns the step's trace into a
    guidance map (and frees the trace), reports progress with a lazy preview, then checks Cancel."""
    pipe = model.pipeline

    def callback(_pipe: Any, step_index: int, scale_index: int, kwargs: dict) -> dict:
        clean, guided = trace.clean.pop(step_index, None), trace.guided.pop(step_index, None)
        for store in (trace.corrupted, trace.codes):
            store.pop(step_index, None)
        trace.inputs.clear()
        if clean is not None:
            maps[scale_index] = change_map(clean, guided, site_grid(model, scale_index, clean.shape[1])).cpu()
        latents = kwargs["latents"]
        if on_scale is not None:
            on_scale(ScaleProgress(scale_index, num_scales, lambda: model.kind.preview(pipe, latents[:1])))
        if check_interrupt is not None:
            check_interrupt()
        return {}

    return callback
