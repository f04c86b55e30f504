"""VPG Interact Sampler: InfinityStar-Interact's long video, one 5 s clip per line of its ``prompts``, continuing a
reference ``VIDEO`` or the ``story`` of another Interact Sampler.

A node of its own rather than a mode of VPG Video Sampler: none of that node's length, size, start image and two
temperatures applies here (a clip is always 5 s, the size follows the reference, one temperature), while the
prompts, the reference and the story are this model's alone (docs/comfyui.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vpg_pipelines.models.infinity_star.interact import REFERENCE_PIXEL_FRAMES, REFERENCE_SECONDS
from vpg_pipelines.pipelines.reference_video import last_seconds

from .api import io
from .errors import check_widgets, fail, run_pipeline, title, translated
from .guidance import check_scale_indices
from .memory import prepare_run
from .model import CATEGORY, VPG_STORY, Story, VPGModel, is_interact, model_input, vpg_model
from .sampling import Progress, generators, read_video, seed_input, video_guidance, video_outputs, video_step_callback

WIDGETS = {"prompt": ("prompts", None), "negative_prompt": ("negative_prompt", None)}
"""The pipeline's argument names as this node's widgets (the prompts are here, not in VPG Text Encode)."""
EXAMPLE_PROMPTS = ("The man turns to the camera and smiles.\n"
                   "He picks up the guitar and starts to play.\n"
                   "He stops playing and waves goodbye.")


def split_prompts(text: str) -> list[str]:
    """One prompt per line, in order; blank lines and surrounding spaces dropped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def reference_clip(node_title: str, video: Any) -> torch.Tensor | None:
    """The reference's 81 frames ``(81, 3, H, W)`` the pipeline encodes, chosen at the ``VIDEO``'s own frame rate as
    the official script chooses them from a file (its last 5 s); ``None`` when unconnected."""
    read = read_video(node_title, video)
    if read is None:
        return None
    frames, fps = read
    if frames.shape[0] < math.ceil(REFERENCE_SECONDS * fps):
        raise fail(node_title, f"`video` is {frames.shape[0] / fps:.2f} s long ({frames.shape[0]} frames at {fps:g} "
                               f"fps); the reference needs at least {REFERENCE_SECONDS:g} s")
    return frames[last_seconds(frames.shape[0], fps, REFERENCE_SECONDS, REFERENCE_PIXEL_FRAMES)]


def story_context(node_title: str, story: Any, model: VPGModel, batch_size: int) -> torch.Tensor | None:
    """The ``context_latents`` of a ``story`` made with the same model, for ``batch_size`` stories (one story
    continues into each of them); ``None`` when unconnected."""
    if story is None:
        return None
    if not isinstance(story, Story):
        raise fail(node_title, f"`story` must come from a VPG Interact Sampler, got {type(story).__name__}")
    if story.source != model.source:
        raise fail(node_title, f"the `story` was made with {story.source} but the model is {model.source}; a story "
                               "continues with the model that began it")
    if story.stories not in (1, batch_size):
        raise fail(node_title, f"the `story` holds {story.stories} stories but `batch_size` is {batch_size}; set "
                               f"`batch_size` to {story.stories} (or continue one story)")
    return story.context_latents


def _interact_model(node_title: str, value: Any) -> VPGModel:
    model = vpg_model(node_title, value)
    if not is_interact(model.pipeline):
        variant = getattr(model.pipeline, "variant", None)
        what = f"kind {model.kind.name}" + (f", variant {variant!r}" if variant else "")
        raise fail(node_title, f"`model` {model.source} is not InfinityStar-Interact ({what}); load "
                               "InfinityStarInteract_24K_iters in VPG Load Model (`variant` auto or interact)")
    if model.pipeline.text_encoder is None or model.pipeline.tokenizer is None:
        raise fail(node_title, f"{model.source} was loaded without a text encoder; pick the T5 folder (flan-t5-xl) "
                               "as `text_encoder` in VPG Load Model.")
    if model.acceleration is not None:
        raise fail(node_title, f"VPG Accelerate ({model.acceleration.name}) does not apply to InfinityStar-Interact; "
                               "remove it from the chain")
    return model


class VPGInteractSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGInteractSampler",
            display_name="VPG Interact Sampler",
            category=CATEGORY,
            description="InfinityStar-Interact: a long video, one 5 s clip per line of prompts, each continuing the "
                        "5 s before it, from a reference video or another Interact Sampler's story; with the "
                        "model's guidance chain. The new clips as an IMAGE batch and a VIDEO, and the story to "
                        "continue.",
            inputs=[
                model_input(),
                io.String.Input("prompts", default=EXAMPLE_PROMPTS, multiline=True,
                                tooltip="One prompt per line: clip 1, clip 2, ... (5 s each, in order). Blank lines "
                                        "are skipped. Describe what happens next, not the reference."),
                io.String.Input("negative_prompt", default="", multiline=True,
                                tooltip="For every clip; empty keeps the learned null text of CFG (the official "
                                        "default)."),
                seed_input("Story"),
                io.Int.Input("batch_size", default=1, min=1, max=16,
                             tooltip="Stories from the same prompts and reference (the VIDEO output plays them one "
                                     "after another)."),
                io.Float.Input("tau", default=0.5, min=0.01, max=5.0, step=0.01, round=0.01,
                               tooltip="Temperature of every step; official 0.5."),
                io.Video.Input("video", optional=True,
                               tooltip="The reference the story continues (e.g. Load Video), at least 5 s: its last "
                                       "5 s (at its own frame rate) are encoded; the clips take its aspect ratio. "
                                       "Connect this or story."),
                VPG_STORY.Input("story", optional=True,
                                tooltip="Instead of video: continue the story of another VPG Interact Sampler (the "
                                        "earlier clips are not made again)."),
            ],
            outputs=[io.Image.Output(display_name="frames"), io.Video.Output(display_name="video"),
                     VPG_STORY.Output(display_name="story")],
        )

    @classmethod
    def execute(cls, model: VPGModel, prompts: str, negative_prompt: str, seed: int, batch_size: int, tau: float,
                video: Any = None, story: Story | None = None) -> io.NodeOutput:
        node_title = title(cls)
        model = _interact_model(node_title, model)
        check_widgets(cls, prompts=prompts, negative_prompt=negative_prompt, seed=seed, batch_size=batch_size,
                      tau=tau)
        texts = split_prompts(prompts)
        if not texts:
            raise fail(node_title, "`prompts` is empty; write one prompt per line (one 5 s clip each, in order)")
        reference, context = reference_clip(node_title, video), story_context(node_title, story, model, batch_size)
        if reference is None and context is None:
            raise fail(node_title, "connect `video` (the reference the story continues, e.g. Load Video; at least "
                                   "5 s) or `story` (from another VPG Interact Sampler)")
        if reference is not None and context is not None:
            raise fail(node_title, "connect either `video` or `story`, not both: a story already continues its "
                                   "reference")
        pipe = model.pipeline
        call = dict(
            prompt=texts, negative_prompt=negative_prompt.strip() or None, video=reference, context_latents=context,
            num_videos_per_prompt=batch_size, **video_guidance(model), tau=float(tau), **model.prefix_kwargs(),
            guiders=list(model.guiders), generator=generators(seed, batch_size), output_type="pt",
        )
        with translated(node_title, WIDGETS):
            resolved = pipe.resolve_call(**{**call, "vpg_scales": "all"})  # any VPG scale list: the shape
        if model.prefix is not None:
            check_scale_indices(node_title, model.prefix.scales, resolved.num_scales)
        progress = Progress(resolved.total_steps)
        per_clip = len(resolved.steps)
        call["callback_on_step_end"] = video_step_callback(model, progress)
        # each clip's last decoded frame as the preview when the clip is done: at hand, no extra decode
        call["callback_on_clip_end"] = lambda _pipe, k, done: progress.show((k + 1) * per_clip, done["frames"][0, -1])
        out = run_pipeline(node_title, pipe, call, prepare=lambda c: prepare_run(model, node_title, c),
                           widgets=WIDGETS)
        frames, clip = video_outputs(out.frames, int(pipe.fps))
        return io.NodeOutput(frames, clip, Story(out.context_latents.cpu(), model.source))
