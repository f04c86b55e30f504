"""The sampler nodes: class-conditional images (VAR), text-to-image (Infinity), text/image-to-video
(InfinityStar). Each runs the pipeline once with the model's guidance chain."""

from __future__ import annotations

import functools
import re
from typing import Any

import torch

from vpg_pipelines.models.infinity.schedules import PIXEL_BUDGETS, TEMPLATE_GRIDS, schedule_from_template
from vpg_pipelines.models.infinity_star.settings import resolve_args, supported_sizes
from vpg_pipelines.pipelines.call import ResolvedCall
from vpg_pipelines.sampling.next_scale import SamplerTrace

from . import host
from .api import io
from .conditioning import ClassConditioning, TextConditioning, class_names
from .errors import check_widgets, fail, run_pipeline, title, translated
from .guidance import check_scale_indices
from .guidance_map import GuidanceMaps
from .memory import prepare_run
from .model import CATEGORY, VPG_COND, VPG_GUIDANCE, VPGModel, is_interact, model_input, vpg_model
from .sampling import (
    Progress,
    generators,
    image_step_callback,
    read_video,
    seed_input,
    video_guidance,
    video_outputs,
    video_step_callback,
)

DEFAULT_SIZE = "default"
"""The size entry that generates the pipeline's own default size (the saved / configured one)."""
SAMPLER_OF = {"class": "VPG Sampler", "image": "VPG Text-to-Image Sampler", "video": "VPG Video Sampler"}


def _size_labels(sizes: Any) -> list[str]:
    return [DEFAULT_SIZE, *(f"{h}x{w}" for h, w in sorted(sizes, key=lambda s: (s[0] * s[1], s)))]


@functools.cache
def infinity_sizes() -> list[str]:
    """``"default"`` and every ``HxW`` of Infinity's official schedules (all aspect templates and pixel
    budgets); other sizes would only snap to one of these."""
    return _size_labels({schedule_from_template(t, pn).image_size for t in TEMPLATE_GRIDS for pn in PIXEL_BUDGETS})


@functools.cache
def infinity_star_sizes() -> list[str]:
    """``"default"`` and every ``HxW`` of InfinityStar's official schedules under the released settings."""
    return _size_labels(supported_sizes(resolve_args()))


def parse_size(node_title: str, text: str) -> tuple[int, int] | None:
    """``"default"`` -> ``None``; ``"HxW"`` -> ``(H, W)``."""
    value = text.strip().lower()
    if value == DEFAULT_SIZE:
        return None
    m = re.fullmatch(r"(\d+)\s*x\s*(\d+)", value)
    if not m:
        raise fail(node_title, f"`size` must be 'default' or height x width like '1024x1024', got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _model_for(node_title: str, model: Any, conditioning: Any, want: str) -> VPGModel:
    """The model, if its kind is driven by this sampler (``want``: class / image / video) and the
    conditioning came from the same loader."""
    model = vpg_model(node_title, model)
    kind = model.kind
    have = "class" if kind.conditioning == "class" else kind.media
    if have != want:
        raise fail(node_title, f"{model.source} is a model of kind {kind.name}; use {SAMPLER_OF[have]}.")
    cond_type, maker = (ClassConditioning, "VPG Class Conditioning") if want == "class" else (
        TextConditioning, "VPG Text Encode")
    if not isinstance(conditioning, cond_type):
        raise fail(node_title, f"`conditioning` must come from a {maker} node, got {type(conditioning).__name__}")
    if conditioning.source != model.source:
        raise fail(node_title, f"the conditioning was made for {conditioning.source} but the model is {model.source}; "
                               f"connect {maker} to the same loader.")
    return model


def resolve(node_title: str, model: VPGModel, call: dict[str, Any]) -> ResolvedCall:
    """The call's steps and scales as the pipeline resolves them (every argument checked, in the node's
    words); Prefix Guidance's scale indices are checked against the call's own scales first."""
    with translated(node_title):
        resolved = model.pipeline.resolve_call(**{**call, "vpg_scales": "all"})  # any VPG scale list: the shape
    if model.prefix is not None:
        check_scale_indices(node_title, model.prefix.scales, resolved.num_scales)
    return resolved


def token_grids(resolved: ResolvedCall) -> list[tuple[int, int]]:
    """``(height, width)`` of each scale's token grid (its first step's), by scale index; the schedule's steps, so
    that scales an accelerator does not run have their grid too."""
    grids: dict[int, tuple[int, int]] = {}
    for step in resolved.schedule_steps or resolved.steps:
        grids.setdefault(step.scale, (int(step.grid[-2]), int(step.grid[-1])))
    return [grids[k] for k in range(resolved.num_scales)]


def _maps(maps: dict[int, torch.Tensor], grids: list[tuple[int, int]], batch: int) -> list[torch.Tensor]:
    """One map per scale; scales VPG did not guide are zero."""
    return [maps.get(k, torch.zeros(batch, *grid)) for k, grid in enumerate(grids)]


class VPGSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGSampler",
            display_name="VPG Sampler",
            category=CATEGORY,
            description="Samples every scale of the model with its guidance chain; a preview after each scale.",
            inputs=[
                model_input(),
                VPG_COND.Input("conditioning", tooltip="From VPG Class Conditioning (same loader as the model)."),
                seed_input("Image"),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per class."),
                io.Int.Input("top_k", default=900, min=0, max=100000,
                             tooltip="Keep the k most likely tokens (0 = off). VAR evaluation: 900."),
                io.Float.Input("top_p", default=0.96, min=0.0, max=1.0, step=0.01, round=0.01,
                               tooltip="Nucleus sampling (0 = off). VAR evaluation: 0.96."),
            ],
            outputs=[io.Image.Output(display_name="images"), VPG_GUIDANCE.Output(display_name="guidance")],
        )

    @classmethod
    def execute(cls, model: VPGModel, conditioning: ClassConditioning, seed: int, batch_size: int, top_k: int,
                top_p: float) -> io.NodeOutput:
        node_title = title(cls)
        model = _model_for(node_title, model, conditioning, "class")
        if conditioning.num_classes != len(class_names(model)):
            raise fail(node_title, f"the conditioning was made for {conditioning.num_classes} classes, the model has "
                                   f"{len(class_names(model))}; connect VPG Class Conditioning to the same loader.")
        check_widgets(cls, seed=seed, batch_size=batch_size, top_k=top_k, top_p=top_p)
        pipe = model.pipeline
        total = len(conditioning.class_ids) * batch_size
        trace, maps = SamplerTrace(), {}
        call = dict(class_labels=list(conditioning.class_ids), num_images_per_prompt=batch_size,
                    guidance_scale=model.cfg_strength(off=0.0), top_k=top_k, top_p=float(top_p),
                    **model.prefix_kwargs(), guiders=list(model.guiders), generator=generators(seed, total),
                    acceleration=model.acceleration,
                    output_type="pt", trace=trace)
        resolved = resolve(node_title, model, call)
        grids = token_grids(resolved)
        call["callback_on_step_end"] = image_step_callback(model, trace, grids, maps, Progress(len(resolved.steps)))
        out = run_pipeline(node_title, pipe, call, prepare=lambda c: prepare_run(model, node_title, c))
        images = out.images.permute(0, 2, 3, 1).float().cpu().contiguous()
        guidance = GuidanceMaps(_maps(maps, grids, total), images, model.describe())
        return io.NodeOutput(images.to(host.intermediate_device()), guidance)


class VPGTextImageSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGTextImageSampler",
            display_name="VPG Text-to-Image Sampler",
            category=CATEGORY,
            description="Samples every scale of a text-to-image model (Infinity) with its guidance chain; a preview "
                        "after each scale.",
            inputs=[
                model_input(),
                VPG_COND.Input("conditioning", tooltip="From VPG Text Encode (same loader as the model)."),
                seed_input("Image"),
                io.Combo.Input("size", options=infinity_sizes(), default=DEFAULT_SIZE,
                               tooltip="height x width of the official schedules; default: the model's (1024x1024 "
                                       "for the released models)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images of the prompt."),
                io.Float.Input("tau", default=0.5, min=0.01, max=5.0, step=0.01, round=0.01,
                               tooltip="Temperature (official: 0.5 for 2B, 1.0 for 8B)."),
                io.Int.Input("cfg_insertion_layer", default=0, min=-64, max=0,
                             tooltip="0: CFG on the logits (official); -n: on the hidden states after block depth-n."),
                io.Int.Input("top_k", default=900, min=0, max=100000, tooltip="Per-bit top-k (0 = off)."),
                io.Float.Input("top_p", default=0.97, min=0.0, max=1.0, step=0.01, round=0.01,
                               tooltip="Per-bit top-p (0 = off). Official: 0.97."),
            ],
            outputs=[io.Image.Output(display_name="images"), VPG_GUIDANCE.Output(display_name="guidance")],
        )

    @classmethod
    def execute(cls, model: VPGModel, conditioning: TextConditioning, seed: int, size: str, batch_size: int,
                tau: float, cfg_insertion_layer: int, top_k: int, top_p: float) -> io.NodeOutput:
        node_title = title(cls)
        model = _model_for(node_title, model, conditioning, "image")
        check_widgets(cls, seed=seed, size=size, batch_size=batch_size, tau=tau,
                      cfg_insertion_layer=cfg_insertion_layer, top_k=top_k, top_p=top_p)
        pipe = model.pipeline
        hw = parse_size(node_title, size)
        height, width = hw if hw is not None else (pipe.config.default_height, pipe.config.default_width)
        if pipe.schedule_for(height, width).image_size != (height, width):
            raise fail(node_title, f"`size` {size!r} is not an Infinity schedule size; pick one from the list")
        trace, maps = SamplerTrace(), {}
        cond = conditioning
        negative = {}
        if cond.negative_embeds is not None:
            negative = dict(negative_prompt_embeds=cond.negative_embeds,
                            negative_prompt_attention_mask=cond.negative_mask)
        call = dict(
            prompt_embeds=cond.embeds, prompt_attention_mask=cond.mask, **negative, height=height, width=width,
            num_images_per_prompt=batch_size, guidance_scale=model.cfg_strength(off=1.0), tau=float(tau),
            cfg_insertion_layer=cfg_insertion_layer, top_k=top_k, top_p=float(top_p), **model.prefix_kwargs(),
            guiders=list(model.guiders), generator=generators(seed, batch_size), output_type="pt", trace=trace,
            acceleration=model.acceleration,
        )
        resolved = resolve(node_title, model, call)
        grids = token_grids(resolved)
        call["callback_on_step_end"] = image_step_callback(model, trace, grids, maps, Progress(len(resolved.steps)))
        out = run_pipeline(node_title, pipe, call, prepare=lambda c: prepare_run(model, node_title, c))
        images = out.images.permute(0, 2, 3, 1).float().cpu().contiguous()
        guidance = GuidanceMaps(_maps(maps, grids, batch_size), images, model.describe())
        return io.NodeOutput(images.to(host.intermediate_device()), guidance)


def start_images(node_title: str, start_image: Any, batch_size: int) -> list[torch.Tensor] | None:
    """A ComfyUI IMAGE ``(N, H, W, C)`` as the pipeline's ``(3, H, W)`` images (alpha dropped, grey kept)."""
    if start_image is None:
        return None
    ok = isinstance(start_image, torch.Tensor) and start_image.dim() == 4 and start_image.shape[-1] in (1, 3, 4)
    if not ok or start_image.shape[0] not in (1, batch_size) or min(start_image.shape[1:3]) < 1:
        got = tuple(start_image.shape) if isinstance(start_image, torch.Tensor) else type(start_image).__name__
        raise fail(node_title, f"`start_image` must be an IMAGE batch (N, H, W, 1/3/4 channels) of 1 image or "
                               f"batch_size ({batch_size}) images, got {got}")
    pixels = start_image.detach().float().cpu()
    if not bool(torch.isfinite(pixels).all()):
        raise fail(node_title, "`start_image` holds NaN or infinite values; expected pixels in [0, 1]")
    channels = pixels[..., :1] if pixels.shape[-1] == 1 else pixels[..., :3]
    return [img.permute(2, 0, 1) for img in channels]


class VPGVideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGVideoSampler",
            display_name="VPG Video Sampler",
            category=CATEGORY,
            description="Samples a text-to-video model (InfinityStar) with its guidance chain, image-to-video from "
                        "an optional start_image, or continues an optional video (480p model): the frames as an IMAGE "
                        "batch and a VIDEO (at the model's fps) for Save Video.",
            inputs=[
                model_input(),
                VPG_COND.Input("conditioning", tooltip="From VPG Text Encode (same loader as the model)."),
                seed_input("Video"),
                io.Int.Input("num_frames", default=81, min=1, max=1025,
                             tooltip="1 (an image) or 1 + 16 k up to the model's length (81 = 5 s at 16 fps)."),
                io.Combo.Input("size", options=infinity_star_sizes(), default=DEFAULT_SIZE,
                               tooltip="height x width of the official schedules; default: the model's (720x1280 "
                                       "for the released 720p model)."),
                io.Int.Input("batch_size", default=1, min=1, max=16,
                             tooltip="Videos of the prompt (the VIDEO output plays them one after another)."),
                io.Float.Input("tau_image", default=1.0, min=0.01, max=5.0, step=0.01, round=0.01,
                               tooltip="Temperature of the first (image) clip; official 1.0."),
                io.Float.Input("tau_video", default=0.4, min=0.01, max=5.0, step=0.01, round=0.01,
                               tooltip="Temperature of the video clips; official 0.4."),
                io.Image.Input("start_image", optional=True,
                               tooltip="Optional: image-to-video. The first frame (cropped to the video size); one "
                                       "image for all videos or one per video (batch_size images)."),
                io.Video.Input("video", optional=True,
                               tooltip="Optional: video continuation (the 480p model). Its first 5 s (at its own "
                                       "frame rate) are kept and the next 5 s generated: set num_frames to 161."),
            ],
            outputs=[io.Image.Output(display_name="frames"), io.Video.Output(display_name="video")],
        )

    @classmethod
    def execute(cls, model: VPGModel, conditioning: TextConditioning, seed: int, num_frames: int, size: str,
                batch_size: int, tau_image: float, tau_video: float,
                start_image: torch.Tensor | None = None, video: Any = None) -> io.NodeOutput:
        node_title = title(cls)
        model = _model_for(node_title, model, conditioning, "video")
        if is_interact(model.pipeline):
            raise fail(node_title, f"{model.source} is InfinityStar-Interact (one 5 s clip per prompt, continuing a "
                                   "reference video); use VPG Interact Sampler.")
        check_widgets(cls, seed=seed, num_frames=num_frames, size=size, batch_size=batch_size, tau_image=tau_image,
                      tau_video=tau_video)
        starts = start_images(node_title, start_image, batch_size)
        continued = read_video(node_title, video)
        pipe = model.pipeline
        hw = parse_size(node_title, size)
        height, width = hw if hw is not None else pipe.default_size
        guidance = video_guidance(model)
        prompt: str | list[str] = conditioning.prompt
        per_prompt, image = batch_size, None
        if starts is not None and len(starts) > 1:  # one image per video: the pipeline pairs images with prompts
            prompt, per_prompt, image = [conditioning.prompt] * batch_size, 1, starts
        elif starts is not None:
            image = starts[0]
        call = dict(
            prompt=prompt, negative_prompt=conditioning.negative_prompt or None, image=image, num_frames=num_frames,
            height=height, width=width, num_videos_per_prompt=per_prompt, **guidance, tau_image=float(tau_image),
            tau_video=float(tau_video), **model.prefix_kwargs(), guiders=list(model.guiders),
            generator=generators(seed, batch_size), output_type="pt", acceleration=model.acceleration,
        )
        if continued is not None:
            call |= {"video": continued[0], "video_fps": continued[1]}
        call["callback_on_step_end"] = video_step_callback(model, Progress(len(resolve(node_title, model, call).steps)))
        out = run_pipeline(node_title, pipe, call, prepare=lambda c: prepare_run(model, node_title, c))
        return io.NodeOutput(*video_outputs(out.frames, int(pipe.fps)))
