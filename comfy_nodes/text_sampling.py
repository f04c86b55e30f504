"""Prompt conditioning and sampling for the text-conditioned kinds (Infinity images, InfinityStar videos).

Plain module like ``core``: ``nodes.py`` wraps these functions, CI tests them without ComfyUI.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.models.infinity.schedules import PIXEL_BUDGETS, TEMPLATE_GRIDS, schedule_from_template
from vpg_pipelines.models.infinity_star.settings import allowed_frame_counts, resolve_args, supported_sizes
from vpg_pipelines.sampling.next_scale import SamplerTrace

from .core import (
    SEED_MAX,
    SampleResult,
    ScaleProgress,
    VPGModel,
    VPGNodeError,
    _check_int,
    _check_model,
    generators,
    prefix_kwargs,
    scale_callback,
)
from .guidance_map import GuidanceMaps

DEFAULT_SIZE = "default"
"""The size entry that generates the pipeline's own default size (the saved / configured one)."""


def _size_label(height: int, width: int) -> str:
    return f"{height}x{width}"


def infinity_sizes() -> tuple[str, ...]:
    """``"default"`` and every ``HxW`` (height x width) of Infinity's official schedules (all aspect templates
    and pixel budgets); other sizes would only snap to one of these."""
    sizes = {schedule_from_template(t, pn).image_size for t in TEMPLATE_GRIDS for pn in PIXEL_BUDGETS}
    return (DEFAULT_SIZE, *(_size_label(h, w) for h, w in sorted(sizes, key=lambda s: (s[0] * s[1], s))))


def infinity_star_sizes() -> tuple[str, ...]:
    """``"default"`` and every ``HxW`` of InfinityStar's official schedules under the released settings."""
    sizes = supported_sizes(resolve_args())
    return (DEFAULT_SIZE, *(_size_label(h, w) for h, w in sorted(sizes, key=lambda s: (s[0] * s[1], s))))


STAR_MAX_FRAMES = max(allowed_frame_counts(resolve_args()))


def parse_size(text: str, node: str) -> tuple[int, int] | None:
    """``"default"`` -> ``None``; ``"HxW"`` -> ``(H, W)``."""
    value = str(text).strip().lower()
    if value == DEFAULT_SIZE:
        return None
    m = re.fullmatch(r"(\d+)\s*x\s*(\d+)", value)
    if not m:
        raise VPGNodeError(f"{node}: `size` must be 'default' or height x width like '1024x1024', got {text!r}")
    return int(m.group(1)), int(m.group(2))


# -- conditioning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VPGTextConditioning:
    """What flows through ``VPG_COND`` for text-conditioned models.

    Infinity: T5 features of the prompt (``embeds`` ``(1, L, C)`` + ``mask``) and, when a negative
    prompt is given, of it; encoded by the node with the pipeline's ``encode_prompt``. InfinityStar:
    the texts only: its official caption carries the clip duration (``<<<t=5s>>>``), known only to the
    sampler, so the pipeline encodes them there with the same T5.
    """

    prompt: str
    negative_prompt: str
    source: str
    kind: str
    embeds: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    negative_embeds: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None


def encode_text(model: VPGModel, prompt: str, negative_prompt: str = "") -> VPGTextConditioning:
    """The prompt (and optional negative prompt; empty = the model's learned null text) of a text model."""
    node = "VPG Text Encode"
    model = _check_model(model, node)
    if model.kind.conditioning != "text":
        raise VPGNodeError(f"{node}: {model.source} is a class-conditional model; use VPG Class Conditioning.")
    prompt, negative_prompt = str(prompt).strip(), str(negative_prompt or "").strip()
    if not prompt:
        raise VPGNodeError(f"{node}: `prompt` is empty; describe the image or video to generate.")
    pipe = model.pipeline
    if pipe.text_encoder is None or pipe.tokenizer is None:
        raise VPGNodeError(f"{node}: {model.source} was loaded without a text encoder; pick the T5 folder "
                           "(flan-t5-xl) as `text_encoder` in VPG Load Model.")
    if model.kind.media == "video":
        return VPGTextConditioning(prompt, negative_prompt, model.source, model.kind.name)
    device = next(pipe.text_encoder.parameters()).device
    embeds, mask = pipe.encode_prompt(prompt, device=device)
    neg_embeds = neg_mask = None
    if negative_prompt:
        neg_embeds, neg_mask = pipe.encode_prompt(negative_prompt, device=device)
        neg_embeds, neg_mask = neg_embeds.cpu(), neg_mask.cpu()
    return VPGTextConditioning(prompt, negative_prompt, model.source, model.kind.name, embeds.cpu(), mask.cpu(),
                               neg_embeds, neg_mask)


def _check_text_inputs(model: Any, conditioning: Any, node: str, media: str) -> VPGModel:
    model = _check_model(model, node)
    if model.kind.conditioning != "text" or model.kind.media != media:
        other = {"class": "VPG Sampler", "image": "VPG Text-to-Image Sampler", "video": "VPG Video Sampler"}
        right = other["class"] if model.kind.conditioning == "class" else other[model.kind.media]
        raise VPGNodeError(f"{node}: {model.source} is a model of kind {model.kind.name}; use {right}.")
    if not isinstance(conditioning, VPGTextConditioning):
        raise VPGNodeError(f"{node}: `conditioning` must come from a VPG Text Encode node, "
                           f"got {type(conditioning).__name__}")
    if conditioning.source != model.source:
        raise VPGNodeError(f"{node}: the conditioning was made for {conditioning.source} but the model is "
                           f"{model.source}; connect VPG Text Encode to the same loader.")
    return model






def _check_float(node: str, name: str, value: Any, low: float, high: float | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value >= low
    if not ok or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise VPGNodeError(f"{node}: `{name}` must be a number {bound}, got {value!r}")


# -- Infinity: text to image -------------------------------------------------------------------------
def sample_text_image(
    model: VPGModel,
    conditioning: VPGTextConditioning,
    seed: int,
    size: str = DEFAULT_SIZE,
    batch_size: int = 1,
    tau: float = 0.5,
    cfg_insertion_layer: int = 0,
    top_k: int = 900,
    top_p: float = 0.97,
    on_scale: Callable[[ScaleProgress], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
    prepare: Callable[[dict], None] | None = None,
) -> SampleResult:
    """``batch_size`` images of the prompt with ``model``'s guidance (Infinity).

    Image ``i`` uses a generator seeded ``seed + i``. Without a VPG CFG node guidance is off (the official
    ``cfg`` 1); with one, its value is the official ``cfg`` (3 for the released 2B). ``size`` is
    ``"default"`` or one of :func:`infinity_sizes`. Callbacks as in :func:`core.sample`.
    """
    node = "VPG Text-to-Image Sampler"
    model = _check_text_inputs(model, conditioning, node, "image")
    _check_int("seed", seed, 0, SEED_MAX, node)
    _check_int("batch_size", batch_size, 1, 4096, node)
    _check_int("top_k", top_k, 0, 1 << 30, node)
    _check_float(node, "top_p", top_p, 0.0, 1.0)
    _check_float(node, "tau", tau, 1e-6)
    if isinstance(cfg_insertion_layer, bool) or not isinstance(cfg_insertion_layer, int) or cfg_insertion_layer > 0:
        raise VPGNodeError(f"{node}: `cfg_insertion_layer` must be 0 (logits) or a negative block offset, "
                           f"got {cfg_insertion_layer!r}")
    pipe = model.pipeline
    hw = parse_size(size, node)
    height, width = hw if hw is not None else (pipe.config.default_height, pipe.config.default_width)
    if hw is not None and pipe.schedule_for(height, width).image_size != (height, width):
        raise VPGNodeError(f"{node}: `size` {size!r} is not an Infinity schedule size; pick one from the list")
    trace = SamplerTrace()
    maps: dict[int, torch.Tensor] = {}
    num_scales = pipe.schedule_for(height, width).num_scales
    callback = scale_callback(model, trace, maps, num_scales, on_scale, check_interrupt)

    cond = conditioning
    negative = {}
    if cond.negative_embeds is not None:
        negative = dict(negative_prompt_embeds=cond.negative_embeds, negative_prompt_attention_mask=cond.negative_mask)
    call = dict(
        prompt_embeds=cond.embeds, prompt_attention_mask=cond.mask, **negative,
        height=height, width=width, num_images_per_prompt=batch_size,
        guidance_scale=model.cfg.guidance_scale if model.cfg is not None else 1.0,
        tau=float(tau), cfg_insertion_layer=int(cfg_insertion_layer), top_k=int(top_k), top_p=float(top_p),
        **prefix_kwargs(model), guiders=list(model.guiders), generator=generators(seed, batch_size),
        output_type="pt", callback_on_step_end=callback, trace=trace,
    )
    try:
        if prepare is not None:
            prepare(call)
        out = pipe(**call)
    except (TypeError, ValueError) as err:
        if isinstance(err, VPGNodeError):
            raise
        raise VPGNodeError(f"{node}: {err}") from err
    images = out.images.permute(0, 2, 3, 1).float().cpu().contiguous()
    guidance = GuidanceMaps(
        maps=[maps.get(k, torch.zeros(batch_size, *pipe.token_grid(k))) for k in range(num_scales)],
        images=images,
        description=model.describe(),
    )
    return SampleResult(images=images, guidance=guidance)




# -- InfinityStar: text to video ---------------------------------------------------------------------
@dataclass
class VideoResult:
    frames: torch.Tensor
    """``(videos * num_frames, H, W, 3)`` float32 in [0, 1] on the CPU: ComfyUI's IMAGE, video after video."""
    fps: int
    num_videos: int


def sample_video(
    model: VPGModel,
    conditioning: VPGTextConditioning,
    seed: int,
    num_frames: int = 81,
    size: str = DEFAULT_SIZE,
    batch_size: int = 1,
    tau_image: float = 1.0,
    tau_video: float = 0.4,
    start_image: torch.Tensor | None = None,
    on_scale: Callable[[ScaleProgress], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
    prepare: Callable[[dict], None] | None = None,
) -> VideoResult:
    """``batch_size`` videos of the prompt (InfinityStar), ``num_frames`` each at the pipeline's fps.

    Guidance: VPG APG (the released setting) or VPG CFG upstream; neither = off. Video ``i`` uses a
    generator seeded ``seed + i``. ``start_image`` (ComfyUI IMAGE, ``(N, H, W, C)`` in [0, 1]) turns on
    image-to-video: the pipeline's ``image``, whose codes fix the first (image) clip. ``N = 1``: the same
    start for every video; ``N = batch_size``: image ``i`` starts video ``i``. ``on_scale`` runs after every
    (scale, repetition) step.
    """
    node = "VPG Video Sampler"
    model = _check_text_inputs(model, conditioning, node, "video")
    _check_int("seed", seed, 0, SEED_MAX, node)
    _check_int("batch_size", batch_size, 1, 64, node)
    starts = _start_images(start_image, batch_size, node)
    _check_int("num_frames", num_frames, 1, 1 << 16, node)
    _check_float(node, "tau_image", tau_image, 1e-6)
    _check_float(node, "tau_video", tau_video, 1e-6)
    pipe = model.pipeline
    hw = parse_size(size, node)
    height, width = hw if hw is not None else pipe.default_size
    try:
        total = len(pipe.plan(num_frames, height, width, tau_image, tau_video).steps)
    except ValueError as err:
        raise VPGNodeError(f"{node}: {err}") from err

    def callback(_pipe: Any, step_index: int, scale_index: int, kwargs: dict) -> dict:
        latents = kwargs["latents"]
        if on_scale is not None:
            on_scale(ScaleProgress(step_index, total, lambda: model.kind.preview(pipe, latents[:1])))
        if check_interrupt is not None:
            check_interrupt()
        return {}

    guidance: dict[str, Any] = {"guidance_scale": 1.0, "guidance": "cfg"}
    if isinstance(model.cfg, AdaptiveProjectedGuidance):
        guidance = {"guidance_scale": float(model.cfg.guidance_scale), "guidance": "apg",
                    "apg_norm_threshold": float(model.cfg.norm_threshold)}
    elif model.cfg is not None:
        guidance = {"guidance_scale": float(model.cfg.guidance_scale), "guidance": "cfg"}
    prompt: str | list[str] = conditioning.prompt
    per_prompt, image = batch_size, None
    if starts is not None and len(starts) > 1:  # one image per video: the pipeline pairs images with prompts
        prompt, per_prompt, image = [conditioning.prompt] * batch_size, 1, starts
    elif starts is not None:
        image = starts[0]
    call = dict(
        prompt=prompt, negative_prompt=conditioning.negative_prompt or None, image=image,
        num_frames=num_frames, height=height, width=width, num_videos_per_prompt=per_prompt, **guidance,
        tau_image=float(tau_image), tau_video=float(tau_video), **prefix_kwargs(model),
        guiders=list(model.guiders), generator=generators(seed, batch_size), output_type="pt",
        callback_on_step_end=callback,
    )
    try:
        if prepare is not None:
            prepare(call)
        out = pipe(**call)
    except (TypeError, ValueError) as err:
        if isinstance(err, VPGNodeError):
            raise
        raise VPGNodeError(f"{node}: {err}") from err
    video = out.frames.float().cpu()  # (B, F, 3, H, W)
    frames = video.permute(0, 1, 3, 4, 2).reshape(-1, video.shape[-2], video.shape[-1], 3).contiguous()
    return VideoResult(frames=frames, fps=int(pipe.fps), num_videos=video.shape[0])


def _start_images(start_image: Any, batch_size: int, node: str) -> list[torch.Tensor] | None:
    """A ComfyUI IMAGE ``(N, H, W, C)`` as the pipeline's ``(3, H, W)`` images (alpha dropped, grey kept)."""
    if start_image is None:
        return None
    ok = isinstance(start_image, torch.Tensor) and start_image.dim() == 4 and start_image.shape[-1] in (1, 3, 4)
    if not ok or start_image.shape[0] not in (1, batch_size) or min(start_image.shape[1:3]) < 1:
        got = tuple(start_image.shape) if isinstance(start_image, torch.Tensor) else type(start_image).__name__
        raise VPGNodeError(f"{node}: `start_image` must be an IMAGE batch (N, H, W, 1/3/4 channels) of 1 image or "
                           f"batch_size ({batch_size}) images, got {got}")
    pixels = start_image.detach().float().cpu()
    if not bool(torch.isfinite(pixels).all()):
        raise VPGNodeError(f"{node}: `start_image` holds NaN or infinite values; expected pixels in [0, 1]")
    channels = pixels[..., :1] if pixels.shape[-1] == 1 else pixels[..., :3]
    return [img.permute(2, 0, 1) for img in channels]
