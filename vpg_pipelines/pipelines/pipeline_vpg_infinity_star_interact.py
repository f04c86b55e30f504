"""Long interactive video with InfinityStar-Interact and Visual Prefix Guidance: one clip per prompt."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, replace_example_docstring

from ..guidance.apg import AdaptiveProjectedGuidance
from ..guidance.base import MAX_STRENGTH, GuidanceTerm
from ..guidance.cfg import ClassifierFreeGuidance
from ..guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS
from ..memory.offload import release_offloaded
from ..models.adapter import ScaleStep
from ..models.infinity_star.adapter import plan_scale_steps
from ..models.infinity_star.conditioning import center_crop_resize
from ..models.infinity_star.interact import (
    CAPTION_FRAMES,
    CONTEXT_LATENT_FRAMES,
    REFERENCE_PIXEL_FRAMES,
    REFERENCE_SECONDS,
    WINDOW_PIXEL_FRAMES,
    InfinityStarInteractAdapter,
    decode_input,
    interact_args,
    next_context,
    plan_window,
    window_schedule,
)
from ..models.infinity_star.schedules import StepPlan, get_dynamic_resolution_meta, nearest_template
from ..models.infinity_star.transformer import InfinityStarTransformer
from ..models.infinity_star.video_vae import InfinityStarVideoVAE
from ..sampling.next_scale import SamplerTrace, run_next_scale
from .call import ResolvedCall, bind_arguments, callback_tensor_inputs, frozen
from .checks import check_count, check_generator, check_number, check_output
from .guiders import CallGuidance, check_guidance_args
from .pipeline_vpg_infinity_star import (
    DEFAULT_VPG_CORRUPTION,
    DEFAULT_VPG_SCALE,
    GUIDANCE,
    VPGInfinityStarPipeline,
    _check_embeds,
    count_prompts,
)
from .reference_video import ReferenceInfo, inspect_reference, reference_frames

VARIANT = "interact"
"""The registry's variant (``settings.VARIANT_ARGS``) this pipeline runs."""
CONTEXT_FRAMES = 1 + CONTEXT_LATENT_FRAMES
"""Latent frames of ``context_latents``: the reference's first latent frame, then the last 21 of the story."""

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from vpg_pipelines import VPGInfinityStarInteractPipeline, export_to_video

        >>> # the released InfinityStarInteract_24K_iters checkpoint with the InfinityStar video VAE and flan-T5-XL
        >>> # (files from the hub, not available offline, hence SKIP)
        >>> pipe = VPGInfinityStarInteractPipeline.from_official(
        ...     "InfinityStarInteract_24K_iters", "infinitystar_videovae.pth", text_encoder="google/flan-t5-xl",
        ...     torch_dtype=torch.bfloat16,
        ... ).to("cuda")  # doctest: +SKIP
        >>> out = pipe(
        ...     ["The man turns to the camera and smiles.", "He picks up the guitar and starts to play."],
        ...     video="reference.mp4", generator=torch.Generator().manual_seed(0),
        ... )  # doctest: +SKIP
        >>> export_to_video(out.frames[0], "story.mp4", fps=pipe.fps)  # doctest: +SKIP
        'story.mp4'

        ```
"""


@dataclass
class InfinityStarInteractPipelineOutput(BaseOutput):
    r"""Output of [`VPGInfinityStarInteractPipeline`].

    Args:
        frames: per story the frames of all its clips one after another (80 per clip): a list of PIL frames
            (``"pil"``), an array ``(B, F, H, W, 3)`` (``"np"``), a tensor ``(B, F, 3, H, W)`` in [0, 1] (``"pt"``),
            or the clips' latents ``(B, 64, 20 * clips, h, w)`` (``"latent"``).
        clips: the same, clip by clip: ``clips[k]`` is clip ``k`` of every story (views of ``frames``; the official
            script writes one file per clip).
        context_latents: ``(B, 64, 22, h, w)``: the reference's first latent frame, then the story's last 21 latent
            frames. Pass it as ``context_latents`` to continue the stories with more prompts.
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor
    clips: list[Any]
    context_latents: torch.Tensor


@dataclass(frozen=True)
class InteractCall(ResolvedCall):
    """:meth:`VPGInfinityStarInteractPipeline.resolve_call`'s result. ``steps`` are the steps of one clip (every
    clip runs the same ones); also the clip ``plan``, the number of clips, the bits forced per clip (``None`` for a
    clip without), and the reference's size and frame information (``None`` with ``context_latents``)."""

    plan: StepPlan
    num_clips: int
    forced_codes: tuple[tuple[torch.Tensor, ...] | None, ...]
    reference: ReferenceInfo | None

    @property
    def total_steps(self) -> int:
        """Sampler steps of the whole call (steps per clip x clips)."""
        return len(self.steps) * self.num_clips


class VPGInfinityStarInteractPipeline(VPGInfinityStarPipeline):
    r"""Long interactive video with InfinityStar-Interact and Visual Prefix Guidance: a reference video, then one
    5-second clip per prompt, each conditioned on the 5 seconds before it.

    The components and loading are [`VPGInfinityStarPipeline`]'s; the settings default to the official
    ``tools/infer_interact_480p.py`` (480p budget, plain CFG 3, temperature 0.5, the interact schedule).

    Components:
        transformer ([`InfinityStarTransformer`]): the InfinityStar-Interact transformer.
        vae ([`InfinityStarVideoVAE`]): the video VAE (encodes the reference, decodes every clip).
        text_encoder ([`~transformers.T5EncoderModel`], *optional*): flan-T5-XL. Without it, pass
            ``prompt_embeds``.
        tokenizer ([`~transformers.PreTrainedTokenizer`], *optional*): its tokenizer.
        official_args (`dict`, *optional*): official ``Args`` settings over the interact script's values.
        prompt_suffix (`str`): appended to every prompt (the interact script appends nothing).

    Each component computes where it is placed: ``pipe.text_encoder.to("cuda:1")`` and ``pipe.vae.to("cuda:1")``
    with ``pipe.transformer.to("cuda:0")`` run the prompts and the video coding on the second GPU (the official
    script's ``two_gpu_infer``, which its release leaves unused); tensors move between components at their
    boundaries.
    """

    _callback_tensor_inputs = ["latents", "logits"]
    _num_clips = 1

    def __init__(
        self,
        transformer: InfinityStarTransformer,
        vae: InfinityStarVideoVAE,
        text_encoder: Any = None,
        tokenizer: Any = None,
        official_args: dict | None = None,
        prompt_suffix: str = "",
        variant: str | None = VARIANT,
    ) -> None:
        if variant not in (None, VARIANT):
            raise ValueError(f"`variant` of {type(self).__name__} must be {VARIANT!r} (the Interact script), got "
                             f"{variant!r}; load other checkpoints with VPGInfinityStarPipeline")
        super().__init__(transformer, vae, text_encoder, tokenizer, official_args=interact_args(official_args),
                         prompt_suffix=prompt_suffix, variant=VARIANT)
        self._clip_index = 0

    # -- properties -------------------------------------------------------------------------------
    @property
    def call_defaults(self) -> dict[str, Any]:
        """What a call uses for the arguments left ``None`` (the interact script's settings)."""
        a = self._args
        return {"guidance_scale": a["cfg"], "guidance": "apg" if a["use_apg"] else "cfg",
                "apg_norm_threshold": a["apg_norm_threshold"], "tau": a["tau_image"]}

    @property
    def clip_frames(self) -> int:
        """Frames of one clip (80: 5 s at 16 fps)."""
        return WINDOW_PIXEL_FRAMES

    @property
    def current_clip(self) -> int:
        """The clip being generated (0-based), in a ``callback_on_step_end``."""
        return self._clip_index

    def _default_call_shape(self) -> tuple[tuple[ScaleStep, ...], int]:
        plan = self.plan(*self.default_size)
        return tuple(plan_scale_steps(plan)), len(plan.schedule)

    @property
    def num_timesteps(self) -> int:
        """Sampler steps of the current (else the last, else a default one-clip) call: steps per clip x clips."""
        return len(self._shape()[0]) * self._num_clips

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The output ``(height, width)`` for a reference of ``height`` x ``width`` pixels: the configured budget at
        the aspect template nearest to the reference's (official)."""
        meta, templates = get_dynamic_resolution_meta(self._args["dynamic_scale_schedule"], self._args["video_frames"])
        template = nearest_template(height / width, templates)
        return tuple(int(v) for v in meta[template][self._args["pn"]]["pixel"])

    def plan(self, height: int, width: int, tau: float | None = None) -> StepPlan:
        """The (scale, repetition) steps of one clip at ``height`` x ``width``; ``ValueError`` names a bad size."""
        a = self._args
        schedule = window_schedule(a, height, width)
        cfg = self.transformer.config
        return plan_window(schedule, a["image_scale_repetition"], a["semantic_scales"],
                           float(a["tau_image"] if tau is None else tau), semantic_bits=cfg.semantic_bits,
                           detail_bits=cfg.detail_bits, max_repeat_times=a["max_repeat_times"])

    def component_device(self, name: str) -> torch.device:
        """Where component ``name`` computes: its weights' device, or the execution device for a component under
        offload hooks (its weights resting on the CPU) or without weights."""
        module = getattr(self, name, None)
        if not isinstance(module, torch.nn.Module):
            return self._execution_device
        tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
        device = tensor.device if tensor is not None else torch.device("meta")
        if device.type == "meta":
            return self._execution_device
        if device.type == "cpu" and any(hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook")
                                        for m in module.modules()):
            return self._execution_device
        return device

    # -- validation -----------------------------------------------------------------------------
    def _check_interact_inputs(self, a: dict[str, Any]) -> tuple[int, ReferenceInfo | None]:
        """Every argument that does not need the clip schedule; returns (clips, reference info)."""
        prompt, embeds = a["prompt"], a["prompt_embeds"]
        channels = self.transformer.config.text_channels
        clips = count_prompts(prompt, embeds, a["prompt_attention_mask"], channels, self.text_encoder, self.tokenizer,
                              each=" (one per clip)")
        if a["prompt_attention_mask"] is not None and embeds is None:
            raise ValueError("`prompt_attention_mask` was given without `prompt_embeds`")
        negative, negative_embeds = a["negative_prompt"], a["negative_prompt_embeds"]
        if negative is not None and negative_embeds is not None:
            raise ValueError("Pass at most one of `negative_prompt` and `negative_prompt_embeds`.")
        if negative is not None:
            listed = [negative] if isinstance(negative, str) else negative
            if not isinstance(listed, (list, tuple)) or not all(isinstance(n, str) for n in listed):
                raise TypeError(f"`negative_prompt` must be a `str` or a list of `str`, got {negative!r}")
            if len(listed) not in (1, clips):
                raise ValueError(f"`negative_prompt` has {len(listed)} entries for {clips} clips (give 1 or {clips})")
            if any(listed) and (self.text_encoder is None or self.tokenizer is None):
                raise ValueError("`negative_prompt` needs a `text_encoder`; pass `negative_prompt_embeds` instead")
        if negative_embeds is not None:
            n = _check_embeds("negative_prompt_embeds", negative_embeds, a["negative_prompt_attention_mask"], channels)
            if n not in (1, clips):
                raise ValueError(f"`negative_prompt_embeds` has {n} rows for {clips} clips (give 1 or {clips})")
        elif a["negative_prompt_attention_mask"] is not None:
            raise ValueError("`negative_prompt_attention_mask` was given without `negative_prompt_embeds`")
        video, context = a["video"], a["context_latents"]
        if (video is None) == (context is None):
            raise ValueError("Pass exactly one of `video` (the reference video the story starts from) and "
                             "`context_latents` (a previous call's `context_latents`, to continue its stories); "
                             "InfinityStar-Interact always continues a video")
        reference = inspect_reference(video) if video is not None else None
        if context is not None:
            dim = self.vae.codebook_dim
            if not isinstance(context, torch.Tensor) or context.dim() != 5 or context.shape[1] != dim or (
                    context.shape[2] != CONTEXT_FRAMES):
                shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
                raise ValueError(f"`context_latents` must be a (stories, {dim}, {CONTEXT_FRAMES}, h, w) tensor (a "
                                 f"previous call's output), got {shape}")
        check_count("num_videos_per_prompt", a["num_videos_per_prompt"])
        if context is not None and context.shape[0] not in (1, a["num_videos_per_prompt"]):
            raise ValueError(f"`context_latents` holds {context.shape[0]} stories for num_videos_per_prompt = "
                             f"{a['num_videos_per_prompt']}")
        check_number("guidance_scale", a["guidance_scale"], low=0.0, high=MAX_STRENGTH)
        if a["guidance"] not in GUIDANCE:
            raise ValueError(f"`guidance` must be one of {GUIDANCE}, got {a['guidance']!r}")
        check_number("apg_norm_threshold", a["apg_norm_threshold"], low=0.0)
        check_number("tau", a["tau"], low=0.0, exclusive=True)
        for name in ("sample_posterior", "reseed_each_clip"):
            if not isinstance(a[name], bool):
                raise ValueError(f"`{name}` must be a bool, got {a[name]!r}")
        if a["callback_on_clip_end"] is not None and not callable(a["callback_on_clip_end"]):
            raise TypeError("`callback_on_clip_end` must be callable")
        if a["trace"] is not None and not isinstance(a["trace"], list):
            raise ValueError("`trace` must be a list (one SamplerTrace is appended per clip)")
        check_generator(a["generator"], a["num_videos_per_prompt"])
        return clips, reference

    def _check_size(self, height: Any, width: Any) -> None:
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 16 or value % 16:
                raise ValueError(f"`{name}` must be a positive multiple of 16, got {value!r}")

    def resolve_call(self, **call_kwargs: Any) -> InteractCall:
        """The call ``self(**call_kwargs)`` would make, checked and resolved, without running it (a reference
        file's frames are not read: its length is checked when the call reads it).

        Arguments left ``None`` take :attr:`call_defaults`; ``height`` / ``width`` both ``None`` follow the
        reference (:meth:`size_for`) or ``context_latents``. See :class:`InteractCall`.
        """
        a = bind_arguments(self, call_kwargs)
        tensor_inputs = callback_tensor_inputs(a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"])
        for name, value in self.call_defaults.items():
            if a[name] is None:
                a[name] = value
        clips, reference = self._check_interact_inputs(a)
        check_output(a["output_type"], a["callback_on_step_end"], tensor_inputs, self._callback_tensor_inputs)
        context = a["context_latents"]
        if a["height"] is None and a["width"] is None:
            if context is not None:
                a["height"], a["width"] = int(context.shape[3]) * 16, int(context.shape[4]) * 16
            else:
                a["height"], a["width"] = self.size_for(reference.height, reference.width)
        self._check_size(a["height"], a["width"])
        if context is not None and (a["height"] // 16, a["width"] // 16) != tuple(context.shape[3:]):
            raise ValueError(f"`height` x `width` = {a['height']}x{a['width']} needs latents of {a['height'] // 16}x"
                             f"{a['width'] // 16}; `context_latents` are {context.shape[3]}x{context.shape[4]}")
        plan = self.plan(a["height"], a["width"], float(a["tau"]))
        stories = a["num_videos_per_prompt"]
        num_scales = len(plan.schedule)
        vpg = self.prefix_guidance(a["vpg_scale"], a["vpg_corruption"], a["vpg_mode"], a["vpg_refresh"],
                                   a["vpg_scales"], num_scales)
        extra = (a["igg_scale"], a["ssg_scale"], a["entropy_temperature"], a["entropy_temperature_t0"],
                 a["entropy_temperature_alpha"], a["entropy_temperature_theta"], a["guiders"])
        check_guidance_args(*extra)
        if a["guidance"] == "apg":
            term = AdaptiveProjectedGuidance(float(a["guidance_scale"]), norm_threshold=float(a["apg_norm_threshold"]),
                                             eta=0.0)
        else:
            term = ClassifierFreeGuidance(float(a["guidance_scale"]), schedule=self.cfg_schedule)
        steps = tuple(plan_scale_steps(plan))
        scales = [step.scale for step in steps]
        guidance = CallGuidance(term, vpg, *extra, step_scales=scales)
        return InteractCall(
            arguments=frozen(a), batch=stories, steps=steps, num_scales=num_scales, guidance=guidance,
            with_null=guidance.chain.uses_conditions(scales, num_scales), callback_tensor_inputs=tuple(tensor_inputs),
            plan=plan, num_clips=clips, forced_codes=self._forced_per_clip(a["prefix_codes"], plan, clips, stories),
            reference=reference,
        )

    def _forced_per_clip(self, prefix_codes: Any, plan: StepPlan, clips: int,
                         stories: int) -> tuple[tuple[torch.Tensor, ...] | None, ...]:
        if prefix_codes is None:
            return (None,) * clips
        if not isinstance(prefix_codes, (list, tuple)) or len(prefix_codes) != clips:
            raise ValueError(f"`prefix_codes` must be a list with one entry per clip ({clips}): a list of bit tensors "
                             "(B, t, h, w, d) per forced step, or None")
        out = []
        for k, codes in enumerate(prefix_codes):
            if codes is None:
                out.append(None)
                continue
            if not isinstance(codes, (list, tuple)) or not all(isinstance(c, torch.Tensor) for c in codes):
                raise TypeError(f"`prefix_codes[{k}]` must be a list of bit tensors (B, t, h, w, d) or None")
            try:
                out.append(tuple(self._forced_codes(codes, plan, stories)))
            except ValueError as err:
                raise ValueError(str(err).replace("`prefix_codes[", f"`prefix_codes[{k}][", 1)) from None
        return tuple(out)

    # -- the reference ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_reference(self, video: Any, height: int, width: int, generator: torch.Generator | None = None,
                         sample_posterior: bool = False) -> torch.Tensor:
        """The reference's 81 frames (official choice: its last 5 s) cover-resized and centre-cropped to
        ``height`` x ``width`` (official ``transform``) and encoded: latents ``(1, 64, 21, h, w)`` on the VAE's
        device. ``sample_posterior``: a posterior sample drawn with ``generator`` (the official script draws one
        with the unseeded global RNG); else the posterior mean."""
        frames = reference_frames(video, REFERENCE_PIXEL_FRAMES, REFERENCE_SECONDS, self.fps)
        pixels = torch.stack([center_crop_resize(f, height, width) for f in frames], dim=1)[None]
        device = self.component_device("vae")
        dtype = self._vae_compute_dtype()
        latents = self.vae.encode(pixels.to(device=device, dtype=dtype), generator=generator,
                                  sample_posterior=sample_posterior)
        return latents.float()

    def _vae_compute_dtype(self) -> torch.dtype:
        param = next(self.vae.parameters())
        return param.dtype if param.device.type != "meta" else torch.float32

    @torch.no_grad()
    def decode_clip(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """A clip's video ``(B, 3, 80, H, W)`` in [-1, 1]: the official decode of ``[context frames 1..20, the
        clip's 20 latent frames]`` (40 latent frames, 157 pixel frames) with its last 80 frames kept."""
        device = self.component_device("vae")
        z = decode_input(context, latents).to(device=device, dtype=self._vae_compute_dtype())
        return self.vae.decode(z)[:, :, -WINDOW_PIXEL_FRAMES:].float().clamp(-1, 1)

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        video: Any = None,
        context_latents: torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_videos_per_prompt: int = 1,
        guidance_scale: float | None = None,
        guidance: str | None = None,
        apg_norm_threshold: float | None = None,
        tau: float | None = None,
        sample_posterior: bool = False,
        reseed_each_clip: bool = True,
        prefix_codes: Sequence[Sequence[torch.Tensor] | None] | None = None,
        vpg_scale: float = DEFAULT_VPG_SCALE,
        vpg_corruption: float = DEFAULT_VPG_CORRUPTION,
        vpg_mode: str = "full",
        vpg_refresh: str = "persistent",
        vpg_scales: str | Sequence[int] = "semantic",
        igg_scale: float | None = None,
        ssg_scale: float = 0.0,
        entropy_temperature: bool = False,
        entropy_temperature_t0: float = ENTROPY_TEMPERATURE_DEFAULTS.t0,
        entropy_temperature_alpha: float = ENTROPY_TEMPERATURE_DEFAULTS.alpha,
        entropy_temperature_theta: float = ENTROPY_TEMPERATURE_DEFAULTS.theta,
        guiders: list[GuidanceTerm] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        callback_on_clip_end: Callable | None = None,
        trace: list[SamplerTrace] | None = None,
    ) -> InfinityStarInteractPipelineOutput | tuple:
        r"""
        Continue a reference video clip by clip, one prompt per clip (5 s, 80 frames each).

        Defaults are the official ``tools/infer_interact_480p.py``'s: plain CFG 3, temperature 0.5, the 0.40M budget
        at the reference's aspect ratio (480x848 for 16:9), a fresh generator with the same seed for every clip.
        ``None`` below means "from those settings".

        Args:
            prompt (`str` or `list[str]`, *optional*):
                One text per clip, in order (a `str`: one clip). The official template is applied
                (``<<<t=5s>>>`` before each). The reference video's own description (the official story's first
                line) is not a prompt: it is never encoded.
            video (`str`, `list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`, *optional*):
                The reference video the story continues: a file (read with imageio; its last 5 s as 81 frames,
                the official choice), or frames in memory (a list of PIL images / ``(H, W, 3)`` arrays, an
                ``(F, H, W, 3)`` array, an ``(F, 3, H, W)`` tensor in [0, 1]): exactly 81 frames are used as
                given, more are taken as 16 fps video and chosen like a file's. At least 5 s. Pass exactly one of
                ``video`` and ``context_latents``.
            context_latents (`torch.Tensor`, *optional*):
                A previous call's ``context_latents`` ``(B or 1, 64, 22, h, w)``: continue those stories.
            negative_prompt (`str` or `list[str]`, *optional*):
                One for every clip or one per clip; empty or ``None`` (official) uses the learned null text.
            height (`int`, *optional*):
                Output height: a size of the interact schedules; ``None`` (with ``width``): from the reference's
                aspect ratio (:meth:`size_for`) or from ``context_latents``.
            width (`int`, *optional*):
                The width, the same way.
            num_videos_per_prompt (`int`, *optional*, defaults to 1):
                Stories made from the same prompts and reference (each its own draws).
            guidance_scale (`float`, *optional*):
                The official ``cfg`` (3); 1 turns guidance off.
            guidance (`str`, *optional*):
                ``"cfg"`` (the interact script's) or ``"apg"``.
            apg_norm_threshold (`float`, *optional*):
                APG's bound (with ``guidance="apg"``).
            tau (`float`, *optional*):
                The logit temperature of every step (0.5).
            sample_posterior (`bool`, *optional*, defaults to `False`):
                Encode the reference as a posterior sample drawn with ``generator`` (the official script draws one
                with the global RNG, unseeded); ``False``: the posterior mean (reproducible).
            reseed_each_clip (`bool`, *optional*, defaults to `True`):
                Every clip draws from a fresh generator seeded with ``generator``'s initial seed (each
                generator's, for a list), as the official script re-seeds with its seed for every clip; ``False``:
                one stream through the whole call (diffusers' usual meaning). The generators passed are not
                advanced when reseeding. Without ``generator`` clips draw from the global RNG.
            prefix_codes (`list`, *optional*):
                Per clip, the bits forced for its first steps (a list of ``(B or 1, t, h, w, d)`` tensors, one
                per (scale, repetition) step) or ``None``; forcing every step replays a recorded generation.
            vpg_scale (`float`, *optional*, defaults to 1.5):
                VPG's weight ``w`` (>= 0; 1 = off) on every clip.
            vpg_corruption (`float`, *optional*, defaults to 0.1):
                The fraction ``p`` of each guided scale's sites replaced by a donor's. The clip's conditions (the
                context and the reference frame) are conditioning, not generated prefix: both branches see them
                clean (docs/vpg.md).
            vpg_mode (`str`, *optional*, defaults to `"full"`):
                ``"full"``, ``"token"``, ``"position"`` or ``"codebook"`` (docs/vpg.md).
            vpg_refresh (`str`, *optional*, defaults to `"persistent"`):
                ``"persistent"`` or ``"resample"`` (docs/vpg.md).
            vpg_scales (`str` or `list[int]`, *optional*, defaults to `"semantic"`):
                The guided scales of each clip: ``"semantic"``, ``"all"`` or a list of scale indices.
            igg_scale (`float`, *optional*):
                Information-Grounding Guidance's ``w`` (docs/guidance.md); ``None``: off.
            ssg_scale (`float`, *optional*, defaults to 0.0):
                Scaled Spatial Guidance's ``beta``; 0: off.
            entropy_temperature (`bool`, *optional*, defaults to `False`):
                The entropy-aware temperature after all guidance.
            entropy_temperature_t0 (`float`, *optional*, defaults to 2.5):
                Its ``T0``.
            entropy_temperature_alpha (`float`, *optional*, defaults to 3.0):
                Its ``alpha``.
            entropy_temperature_theta (`float`, *optional*, defaults to 0.6):
                Its ``theta``.
            guiders (`list[GuidanceTerm]`, *optional*):
                More guidance terms (``vpg_pipelines.guidance``).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                One generator, or one per story; see ``reseed_each_clip``.
            prompt_embeds (`torch.Tensor`, *optional*):
                T5 features ``(clips, L, C)``, one row per clip, used as given (no template).
            prompt_attention_mask (`torch.Tensor`, *optional*):
                ``(clips, L)``, the real tokens of ``prompt_embeds``; ``None``: all.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                ``(1 or clips, L, C)``.
            negative_prompt_attention_mask (`torch.Tensor`, *optional*):
                Its mask.
            output_type (`str`, *optional*, defaults to `"pil"`):
                ``"pil"``, ``"np"``, ``"pt"`` (on the CPU: a clip's frames leave the device once decoded) or
                ``"latent"`` (no decoding); see :class:`InfinityStarInteractPipelineOutput`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`InfinityStarInteractPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                ``callback(pipe, step_index, scale_index, callback_kwargs)`` after every step; ``step_index`` counts
                through all clips (``pipe.current_clip`` says which clip); ``"latents"`` are the current clip's
                summed codes ``(B, 64, 20, h, w)`` (editable), ``"logits"`` the step's guided logits. Set
                ``pipe._interrupt = True`` to stop: the clip under way is decoded as it is and ends the output.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*):
                The tensors passed to the callback; ``None``: ``["latents"]``.
            callback_on_clip_end (`Callable`, *optional*):
                ``callback(pipe, clip_index, {"frames": ..., "latents": ...})`` after each clip is decoded: the
                clip's frames in ``output_type`` and its latents ``(B, 64, 20, h, w)`` (write each clip to a
                file here, as the official script does).
            trace (`list`, *optional*):
                A list; one [`SamplerTrace`] per clip is appended.

        Examples:

        Returns:
            [`InfinityStarInteractPipelineOutput`] or `tuple`: ``(frames, clips, context_latents)`` when
            ``return_dict`` is ``False``.
        """
        call = self.resolve_call(**{name: value for name, value in locals().items() if name != "self"})
        a, plan, chain = call.arguments, call.plan, call.guidance
        self._begin_call(call)
        self._num_clips = call.num_clips
        self._guidance_scale = float(a["guidance_scale"])
        self._interrupt = False
        self._start_guidance(chain, igg_scale, ssg_scale, entropy_temperature)
        device = self.component_device("transformer")
        stories = call.batch

        texts, negatives = self._clip_texts(call)
        if context_latents is not None:
            start = context_latents.float().expand(stories, -1, -1, -1, -1)
            first, context = start[:, :, :1], start[:, :, 1:]
        else:
            release_offloaded(self, self.text_encoder)  # model offload: the VAE encodes alone
            posterior_generator = generator[0] if isinstance(generator, list) else generator
            encoded = self.encode_reference(video, a["height"], a["width"], posterior_generator, sample_posterior)
            encoded = encoded.expand(stories, -1, -1, -1, -1)
            first, context = encoded[:, :, :1], encoded
        first, context = first.to(device), context.to(device)

        adapter = InfinityStarInteractAdapter(self.transformer, self.vae)
        clips_out: list[Any] = []
        latents_out: list[torch.Tensor] = []
        steps_per_clip = len(call.steps)
        with self.progress_bar(total=call.total_steps) as progress:
            for k in range(call.num_clips):
                self._clip_index = k
                forced = call.forced_codes[k]
                state = adapter.prepare_window(
                    plan, [texts[k]] * stories, [negatives[k]] * stories, context, first, with_null=call.with_null,
                    forced_bits=list(forced) if forced is not None else None, device=device, dtype=torch.float32,
                )
                clip_trace = SamplerTrace() if trace is not None else None

                def on_step(step, st, logits, k=k) -> bool:
                    if callback_on_step_end is not None:
                        kwargs = {name: st.summed[0] if name == "latents" else logits
                                  for name in call.callback_tensor_inputs}
                        outputs = callback_on_step_end(self, k * steps_per_clip + step.index, step.scale, kwargs) or {}
                        if "latents" in outputs:
                            _replace_clip_latents(st, outputs.pop("latents"))
                    chain.sync(self)
                    progress.update()
                    return self.interrupt

                clip_generator = _clip_generator(generator, reseed_each_clip)
                run_next_scale(adapter, state, guiders=chain.chain, generator=clip_generator, on_step=on_step,
                               trace=clip_trace, kv_cache_device=self.kv_cache_device)
                if clip_trace is not None:
                    trace.append(clip_trace)
                latents = adapter.latents(state)
                del state
                frames = None
                if output_type != "latent":
                    release_offloaded(self, self.transformer)  # model offload: the VAE decodes alone
                    video_k = self.decode_clip(context, latents).cpu()
                    frames = self.video_processor.postprocess_video(video_k, output_type=output_type)
                latents_out.append(latents.cpu())
                clips_out.append(frames if frames is not None else latents_out[-1])
                if callback_on_clip_end is not None:
                    callback_on_clip_end(self, k, {"frames": clips_out[-1], "latents": latents_out[-1]})
                context = next_context(context, latents)
                if self.interrupt:
                    break
        self.maybe_free_model_hooks()
        frames_all, clips_view = _join_clips(clips_out, output_type)
        context_out = torch.cat([first, context], dim=2).cpu()
        if not return_dict:
            return (frames_all, clips_view, context_out)
        return InfinityStarInteractPipelineOutput(frames=frames_all, clips=clips_view, context_latents=context_out)

    def _clip_texts(self, call: InteractCall) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Per clip, the prompt's features and the negative's (``None``: the learned null text), on the
        transformer's device."""
        a, clips = call.arguments, call.num_clips
        device = self.component_device("transformer")
        text_device = self.component_device("text_encoder")
        if a["prompt"] is not None:
            prompts = [a["prompt"]] if isinstance(a["prompt"], str) else list(a["prompt"])
            # one prompt at a time (officially one per clip): the encoder's memory does not grow with the story
            texts = [self.encode_prompt([self.caption(p, CAPTION_FRAMES)], text_device)[0] for p in prompts]
        else:
            texts = self._rows(a["prompt_embeds"], a["prompt_attention_mask"])
        negatives: list[torch.Tensor | None] = [None] * clips
        if call.with_null and a["negative_prompt_embeds"] is not None:
            negatives = self._rows(a["negative_prompt_embeds"], a["negative_prompt_attention_mask"])
        elif call.with_null and a["negative_prompt"] is not None:
            listed = [a["negative_prompt"]] if isinstance(a["negative_prompt"], str) else list(a["negative_prompt"])
            if any(listed):
                encoded = [self.encode_prompt([n or " "], text_device)[0] for n in listed]
                negatives = [e if n else None for e, n in zip(encoded, listed)]
            else:
                negatives = [None] * len(listed)
        if len(negatives) == 1:
            negatives = negatives * clips
        texts = [t.to(device) for t in texts]
        negatives = [n.to(device) if n is not None else None for n in negatives]
        return texts, negatives

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_official(
        cls,
        transformer_checkpoint: str | Path,
        vae_checkpoint: str | Path,
        text_encoder: Any = None,
        tokenizer: Any = None,
        config: dict | None = None,
        torch_dtype: torch.dtype | None = None,
        quantization: str | None = None,
        variant: str | None = VARIANT,
    ) -> VPGInfinityStarInteractPipeline:
        """Build the pipeline from the released files (``InfinityStarInteract_24K_iters``, a shard folder, with
        ``infinitystar_videovae.pth``): [`VPGInfinityStarPipeline.from_official`] with the Interact script's
        settings (``variant="interact"``) under ``config["args"]``."""
        if variant not in (None, VARIANT):
            raise ValueError(f"`variant` of {cls.__name__} must be {VARIANT!r} (the Interact script), got {variant!r}")
        config = dict(config or {})
        config["args"] = interact_args(config.get("args"))
        return super().from_official(transformer_checkpoint, vae_checkpoint, text_encoder=text_encoder,
                                     tokenizer=tokenizer, config=config, torch_dtype=torch_dtype,
                                     quantization=quantization, variant=VARIANT)


def _clip_generator(generator: Any, reseed: bool) -> Any:
    """The generator(s) a clip draws from: with ``reseed``, fresh ones seeded with each generator's initial seed
    (the official script re-seeds for every clip; the generators passed are not advanced)."""
    if generator is None or not reseed:
        return generator

    def fresh(g: torch.Generator) -> torch.Generator:
        return torch.Generator(device=g.device).manual_seed(g.initial_seed())

    return [fresh(g) for g in generator] if isinstance(generator, list) else fresh(generator)


def _replace_clip_latents(state: Any, latents: torch.Tensor) -> None:
    """Write a callback's edited clip latents back."""
    current = tuple(state.summed[0].shape)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != current:
        raise ValueError(f"`latents` returned by the callback must keep the shape {current}")
    state.summed[0] = latents.to(state.summed[0])


def _join_clips(clips: list[Any], output_type: str) -> tuple[Any, list[Any]]:
    """The stories' frames (clips one after another) and per clip views of them."""
    if output_type == "pil":
        stories = [list(itertools.chain.from_iterable(clip[b] for clip in clips)) for b in range(len(clips[0]))]
        return stories, clips
    axis = 2 if output_type == "latent" else 1
    if isinstance(clips[0], np.ndarray):
        joined = np.concatenate(clips, axis=axis)
        sizes = np.cumsum([c.shape[axis] for c in clips])[:-1]
        return joined, np.split(joined, sizes, axis=axis)
    joined = torch.cat(clips, dim=axis)
    return joined, list(joined.split([c.shape[axis] for c in clips], dim=axis))
