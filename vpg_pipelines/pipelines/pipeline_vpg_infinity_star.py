"""Text-to-video (and image-to-video) with InfinityStar and Visual Prefix Guidance, as a diffusers pipeline."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.video_processor import VideoProcessor
from huggingface_hub import snapshot_download
from transformers import AutoTokenizer, T5EncoderModel

from ..acceleration.base import Acceleration, AccelerationTarget
from ..guidance.apg import AdaptiveProjectedGuidance
from ..guidance.base import MAX_STRENGTH, GuidanceTerm
from ..guidance.cfg import ClassifierFreeGuidance
from ..guidance.prefix import PrefixGuidance
from ..guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS
from ..loading.hub import resolve_file
from ..loading.infinity_star import TEXT_MAXLEN, load_infinity_star_transformer, load_infinity_star_vae
from ..memory.mixin import MemoryPlanningMixin
from ..memory.offload import release_offloaded
from ..memory.quantization import check_quantization, quantize_transformer
from ..models.adapter import ScaleStep
from ..models.infinity_star.adapter import InfinityStarAdapter, InfinityStarState, plan_scale_steps
from ..models.infinity_star.conditioning import (
    CONDITION_SECONDS,
    CONTINUATION_SECONDS,
    center_crop_resize,
    condition_clips,
    prefix_clip_bits,
    to_pixels,
)
from ..models.infinity_star.schedules import StepPlan, plan_steps
from ..models.infinity_star.settings import (
    PROMPT_SUFFIX,
    allowed_frame_counts,
    default_num_frames,
    default_size,
    resolve_args,
    select_schedule,
    variant_args,
    variant_of_checkpoint,
)
from ..models.infinity_star.transformer import InfinityStarTransformer
from ..models.infinity_star.video_vae import InfinityStarVideoVAE
from ..sampling.next_scale import SamplerTrace, run_next_scale
from .call import CallStateMixin, ResolvedCall, bind_arguments, call_acceleration, callback_tensor_inputs, frozen
from .checks import check_count, check_generator, check_number, check_output
from .checks import prefix_guidance as build_prefix_guidance
from .guiders import CallGuidance, GuidanceStrengthsMixin, check_guidance_args
from .media_input import check_video_fps, condition_frames, is_image, to_pil, videos_of

GUIDANCE = ("apg", "cfg")
DEFAULT_VPG_SCALE = 1.5  # the paper's InfinityStar value is not available to us (docs/vpg.md)
DEFAULT_VPG_CORRUPTION = 0.1  # the paper asks for a smaller corruption on video
INFINITY_STAR_HUB_REPO = "FoundationVision/InfinityStar"

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from vpg_pipelines import VPGInfinityStarPipeline, export_to_video

        >>> # the released 8B 720p model: its files come from the hub repos FoundationVision/InfinityStar and
        >>> # google/flan-t5-xl (not available offline, hence SKIP)
        >>> pipe = VPGInfinityStarPipeline.from_official(
        ...     "infinitystar_8b_720p_weights", "infinitystar_videovae.pth", text_encoder="google/flan-t5-xl",
        ...     torch_dtype=torch.bfloat16,
        ... )  # doctest: +SKIP
        >>> pipe.enable_model_cpu_offload()  # doctest: +SKIP
        >>> video = pipe(
        ...     "A handsome smiling gardener inspecting plants, realistic cinematic lighting",
        ...     vpg_scale=1.5, vpg_corruption=0.1, vpg_scales="semantic", generator=torch.Generator().manual_seed(41),
        ... ).frames[0]  # doctest: +SKIP
        >>> export_to_video(video, "gardener.mp4", fps=pipe.fps)  # doctest: +SKIP
        'gardener.mp4'

        ```
"""


@dataclass
class InfinityStarPipelineOutput(BaseOutput):
    r"""Output of [`VPGInfinityStarPipeline`].

    Args:
        frames: per video a list of PIL frames (``"pil"``), an array ``(B, F, H, W, 3)`` (``"np"``),
            a tensor ``(B, F, 3, H, W)`` in [0, 1] (``"pt"``), or the summed codes ``(B, 64, T, h, w)``
            (``"latent"``).
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class InfinityStarCall(ResolvedCall):
    """:meth:`VPGInfinityStarPipeline.resolve_call`'s result: also the step ``plan``, the number of prompts
    (before ``num_videos_per_prompt``), the bits forced by ``prefix_codes`` (checked, one per step), the
    condition frames of a continuation (``video``: ``(V, 81, H, W, 3)`` uint8, one per distinct video) and
    the number of leading steps whose codes are conditioning (``image`` / ``video``; VPG keeps them clean
    unless ``vpg_corrupt_conditioning``)."""

    plan: StepPlan
    num_prompts: int
    forced_codes: tuple[torch.Tensor, ...] | None
    condition_video: torch.Tensor | None = None
    conditioning_steps: int = 0


class VPGInfinityStarPipeline(GuidanceStrengthsMixin, MemoryPlanningMixin, CallStateMixin, DiffusionPipeline):
    r"""Text-to-video and image-to-video generation with InfinityStar and Visual Prefix Guidance.

    Components:
        transformer ([`InfinityStarTransformer`]): the decoder-only next-scale transformer.
        vae ([`InfinityStarVideoVAE`]): the video VAE with its two BSQ codebooks.
        text_encoder ([`~transformers.T5EncoderModel`], *optional*): flan-T5-XL for the released model.
            Without it, pass ``prompt_embeds``.
        tokenizer ([`~transformers.PreTrainedTokenizer`], *optional*): its tokenizer.
        official_args (`dict`, *optional*): official ``Args`` settings over the ``variant``'s script's values
            (``pn``, repetitions, ``semantic_scales``, ``cfg``, taus, ...; see ``models/infinity_star/settings.py``).
        prompt_suffix (`str`): appended to every prompt (the official scripts' suffix by default).
        variant (`str`, *optional*): the official script the model is run like: ``"720p"``, ``"480p"`` or
            ``"interact"`` (its settings under ``official_args``); ``None``: the 720p script's settings, no name.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _exclude_from_cpu_offload = ["vae"]  # used inside the loop (codes); stays on the device
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "logits"]
    cfg_schedule = "constant"
    """CFG's (and APG's) strength is the same at every step."""
    vae_dtype: torch.dtype | None = torch.float32
    """The video VAE runs in float32 whatever the pipeline's dtype, as officially."""

    def __init__(
        self,
        transformer: InfinityStarTransformer,
        vae: InfinityStarVideoVAE,
        text_encoder: Any = None,
        tokenizer: Any = None,
        official_args: dict | None = None,
        prompt_suffix: str = PROMPT_SUFFIX,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        args = resolve_args({**variant_args(variant), **dict(official_args or {})})
        args["text_channels"] = int(transformer.config.text_channels)
        if vae.config.detail_scale_min_tokens != args["detail_scale_min_tokens"]:
            raise ValueError(
                f"`vae` uses the detail codebook from {vae.config.detail_scale_min_tokens} tokens, the settings from "
                f"{args['detail_scale_min_tokens']} (`official_args.detail_scale_min_tokens`); they must agree"
            )
        self.register_to_config(official_args=args, prompt_suffix=prompt_suffix, variant=variant)
        self._args = args
        self.video_processor = VideoProcessor(do_resize=False, do_normalize=True)
        self._interrupt = False
        self._guidance_scale = args["cfg"]

    # -- diffusers-style properties -------------------------------------------------------------
    def _default_call_shape(self) -> tuple[tuple[ScaleStep, ...], int]:
        defaults = self.call_defaults
        plan = self.plan(defaults["num_frames"], *self.default_size)
        return tuple(plan_scale_steps(plan)), len(plan.schedule)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def fps(self) -> int:
        """Frames per second of the model's videos (16 for the released models)."""
        return int(self._args["fps"])

    @property
    def default_size(self) -> tuple[int, int]:
        """``(height, width)`` the official scripts generate (configured budget, ratio 0.571)."""
        return default_size(self._args)

    @property
    def variant(self) -> str | None:
        """The official script the model is run like (``"720p"``, ``"480p"``, ``"interact"``; ``None``: not named)."""
        return self.config.variant

    @property
    def call_defaults(self) -> dict[str, Any]:
        """What a call uses for the arguments left ``None`` (the model's settings: ``official_args``);
        ``height`` / ``width`` both ``None`` take :attr:`default_size`."""
        a = self._args
        return {"guidance_scale": a["cfg"], "guidance": "apg" if a["use_apg"] else "cfg",
                "apg_norm_threshold": a["apg_norm_threshold"], "tau_image": a["tau_image"],
                "tau_video": a["tau_video"], "num_frames": default_num_frames(a)}

    def plan(self, num_frames: int, height: int, width: int, tau_image: float | None = None,
             tau_video: float | None = None) -> StepPlan:
        """The (scale, repetition) steps of a call; raises ``ValueError`` naming a bad argument."""
        a = self._args
        schedule = select_schedule(a, num_frames, height, width)
        return plan_steps(
            schedule, a["image_scale_repetition"], a["video_scale_repetition"], semantic_scales=a["semantic_scales"],
            detail_scale_min_tokens=a["detail_scale_min_tokens"],
            tau_image=a["tau_image"] if tau_image is None else tau_image,
            tau_video=a["tau_video"] if tau_video is None else tau_video,
            semantic_bits=self.transformer.config.semantic_bits, detail_bits=self.transformer.config.detail_bits,
            max_repeat_times=a["max_repeat_times"], frames_inner_clip=a["frames_inner_clip"],
            context_frames=a["context_frames"], context_from_largest_no=a["context_from_largest_no"],
            context_interval=a["context_interval"],
        )

    # -- text -----------------------------------------------------------------------------------
    def caption(self, prompt: str, num_frames: int) -> str:
        """The official caption: prompt + suffix, prefixed with ``<<<t=Ns>>>`` (``append_duration2caption``)."""
        text = f"{prompt}{self.config.prompt_suffix}"
        if self._args["append_duration2caption"]:
            text = f"<<<t={round((num_frames - 1) / self.fps)}s>>>" + text
        return text

    @torch.no_grad()
    def encode_prompt(self, prompt: str | Sequence[str], device: torch.device | None = None) -> list[torch.Tensor]:
        """T5 features ``(L_i, C)`` of each text's real tokens (official: padded to the text length, trimmed).

        The texts are used as given (see :meth:`caption` for the official prompt template).
        """
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("`prompt` needs a `text_encoder` and a `tokenizer`; pass `prompt_embeds` otherwise")
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = device or self._execution_device
        tokens = self.tokenizer(text=texts, max_length=self.transformer.config.text_maxlen, padding="max_length",
                                truncation=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        features = self.text_encoder(input_ids=ids, attention_mask=mask)[0].float()
        return [f[: int(m.sum())] for f, m in zip(features, mask)]

    @staticmethod
    def _rows(embeds: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        if mask is None:
            return [e.float() for e in embeds]
        return [e[m.bool().to(e.device)].float() for e, m in zip(embeds, mask)]

    # -- validation -----------------------------------------------------------------------------
    def check_inputs(
        self,
        prompt: Any,
        negative_prompt: Any,
        prompt_embeds: Any,
        negative_prompt_embeds: Any,
        prompt_attention_mask: Any,
        negative_prompt_attention_mask: Any,
        num_videos_per_prompt: Any,
        guidance_scale: Any,
        guidance: Any,
        apg_norm_threshold: Any,
        tau_image: Any,
        tau_video: Any,
        image: Any,
        prefix_codes: Any,
        generator: Any,
        output_type: Any,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: Any,
        video: Any = None,
        video_fps: Any = None,
        sample_posterior: Any = False,
    ) -> int:
        """Validate every argument that does not need the schedule; return the number of prompts."""
        channels = self.transformer.config.text_channels
        batch = count_prompts(prompt, prompt_embeds, prompt_attention_mask, channels, self.text_encoder, self.tokenizer)
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Cannot forward both `negative_prompt` and `negative_prompt_embeds`; pass one of the two.")
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, (list, tuple)) or not all(isinstance(p, str) for p in negatives):
                raise TypeError(f"`negative_prompt` has to be a `str` or a list of `str` but is {negative_prompt!r}")
            if len(negatives) not in (1, batch):
                raise ValueError(f"`negative_prompt` has {len(negatives)} entries for {batch} prompts")
            if any(negatives) and (self.text_encoder is None or self.tokenizer is None):
                raise ValueError("`negative_prompt` needs a `text_encoder`; pass `negative_prompt_embeds` instead")
        if negative_prompt_embeds is not None:
            n = _check_embeds("negative_prompt_embeds", negative_prompt_embeds, negative_prompt_attention_mask,
                              channels)
            if n not in (1, batch):
                raise ValueError(f"`negative_prompt_embeds` has {n} rows for {batch} prompts")
        elif negative_prompt_attention_mask is not None:
            raise ValueError("`negative_prompt_attention_mask` was given without `negative_prompt_embeds`")
        if prompt_embeds is None and prompt_attention_mask is not None:
            raise ValueError("`prompt_attention_mask` was given without `prompt_embeds`")
        check_count("num_videos_per_prompt", num_videos_per_prompt)
        check_number("guidance_scale", guidance_scale, low=0.0, high=MAX_STRENGTH)
        if guidance not in GUIDANCE:
            raise ValueError(f"`guidance` must be one of {GUIDANCE}, got {guidance!r}")
        check_number("apg_norm_threshold", apg_norm_threshold, low=0.0)
        check_number("tau_image", tau_image, low=0.0, exclusive=True)
        check_number("tau_video", tau_video, low=0.0, exclusive=True)
        given = [name for name, value in (("image", image), ("video", video), ("prefix_codes", prefix_codes))
                 if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass at most one of `image` (image-to-video), `video` (continuation) and "
                             f"`prefix_codes` (forced codes); got {' and '.join(f'`{n}`' for n in given)}.")
        if video is not None:
            videos_of(video, batch)
        elif video_fps is not None:
            raise ValueError("`video_fps` was given without `video`")
        check_video_fps(video_fps)
        if not isinstance(sample_posterior, bool):
            raise ValueError(f"`sample_posterior` must be a bool, got {sample_posterior!r}")
        if image is not None:
            images = image if isinstance(image, list) else [image]
            if len(images) not in (1, batch) or not all(is_image(i) for i in images):
                raise TypeError(
                    f"`image` must be one image (PIL, (H, W, 3) array, (3, H, W) tensor in [0, 1]) or one per prompt "
                    f"({batch}), got {type(image)}"
                )
        if prefix_codes is not None and (
            not isinstance(prefix_codes, (list, tuple)) or not all(isinstance(c, torch.Tensor) for c in prefix_codes)
        ):
            raise TypeError("`prefix_codes` must be a list of bit tensors (B, t, h, w, d), one per forced step")
        total = batch * num_videos_per_prompt
        check_generator(generator, total)
        check_output(output_type, callback_on_step_end, callback_on_step_end_tensor_inputs,
                     self._callback_tensor_inputs)
        return batch

    def _check_size(self, height: Any, width: Any) -> None:
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 16 or value % 16:
                raise ValueError(f"`{name}` must be a positive multiple of 16, got {value!r}")

    def _forced_codes(self, prefix_codes: Sequence[torch.Tensor], plan: StepPlan, total: int) -> list[torch.Tensor]:
        if len(prefix_codes) > len(plan.steps):
            raise ValueError(f"`prefix_codes` has {len(prefix_codes)} entries for {len(plan.steps)} steps")
        out = []
        for step, bits in zip(plan.steps, prefix_codes):
            expected = (*step.grid, plan.bits_of(step))
            if bits.dim() != 5 or tuple(bits.shape[1:]) != expected or bits.shape[0] not in (1, total):
                raise ValueError(
                    f"`prefix_codes[{step.index}]` must be ({total} or 1, {', '.join(map(str, expected))}) bits, got "
                    f"{tuple(bits.shape)}"
                )
            if bits.is_floating_point() or bits.numel() and not bool(((bits == 0) | (bits == 1)).all()):
                raise ValueError(f"`prefix_codes[{step.index}]` must hold integer bits in {{0, 1}}")
            out.append(bits.long().expand(total, *expected))
        return out

    def prepare_image_codes(
        self, image: Any, plan: StepPlan, num_prompts: int, num_videos_per_prompt: int, device: torch.device,
        sample_posterior: bool = False, generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> list[torch.Tensor]:
        """The image clip's forced bits of every sample (official i2v: the reference image as frame 0).

        The image is resized to cover the video and centre-cropped (the official ``transform``), encoded
        with the VAE and residual-quantized over the image clip's steps. The latent is the posterior mean, or
        with ``sample_posterior`` a posterior sample drawn from ``generator`` (the official script draws one
        from its unseeded global RNG).
        """
        _, height, width = plan.clip_grid(0)
        images = image if isinstance(image, list) else [image]
        pixels = torch.stack([center_crop_resize(to_pil(i), height * 16, width * 16) for i in images])
        repeat = num_prompts // len(images) * num_videos_per_prompt
        latent = self._encode_condition(pixels[:, :, None], repeat, device, sample_posterior, generator)
        return prefix_clip_bits(self.vae, latent, plan, 1)

    def prepare_video_codes(
        self, frames: torch.Tensor, plan: StepPlan, num_prompts: int, num_videos_per_prompt: int,
        device: torch.device, sample_posterior: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> list[torch.Tensor]:
        """The forced bits of every sample for a continuation (official ``tools/infer_video_480p.py``): the
        condition frames (``resolve_call(...).condition_video``, ``(V, 81, H, W, 3)`` uint8) encoded with the
        VAE into 21 latent frames and residual-quantized over the image clip's and the first video clip's
        steps (``gt_leak``: their scales). Posterior mean or sample: as :meth:`prepare_image_codes`."""
        pixels = to_pixels(frames).movedim(1, 2)  # (V, 3, 81, H, W)
        repeat = num_prompts // frames.shape[0] * num_videos_per_prompt
        latent = self._encode_condition(pixels, repeat, device, sample_posterior, generator)
        return prefix_clip_bits(self.vae, latent, plan, condition_clips(frames.shape[1]))

    def _encode_condition(self, pixels: torch.Tensor, repeat: int, device: torch.device, sample_posterior: bool,
                          generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        """VAE latents of ``pixels`` ``(V, 3, F, H, W)``, each repeated ``repeat`` times (one per sample)."""
        vae_param = next(self.vae.parameters())
        dtype = vae_param.dtype if vae_param.device.type != "meta" else torch.float32
        sources = pixels.to(device=device, dtype=dtype)
        if not sample_posterior:  # one encode per distinct source
            latent = torch.cat([self.vae.encode(x[None], sample_posterior=False) for x in sources])
            latent = latent.repeat_interleave(repeat, dim=0)
        else:  # one posterior sample per output, from its generator (or the one generator, in order)
            latent = torch.cat([
                self.vae.encode(sources[b // repeat][None], sample_posterior=True,
                                generator=generator[b] if isinstance(generator, list) else generator)
                for b in range(sources.shape[0] * repeat)
            ])
        # model offload moves a module out only when the next hooked one runs: the VAE used this early would
        # otherwise share the device with the transformer until decoding
        release_offloaded(self, self.vae)
        return latent.float()

    def resolve_call(self, **call_kwargs: Any) -> InfinityStarCall:
        """The call ``self(**call_kwargs)`` would make, checked and resolved, without running it.

        Takes the arguments of :meth:`__call__` (``TypeError`` for any other) and raises the errors the call
        would raise; arguments left ``None`` take :attr:`call_defaults` (and :attr:`default_size`). See
        :class:`~vpg_pipelines.pipelines.call.ResolvedCall`.
        """
        a = bind_arguments(self, call_kwargs)
        tensor_inputs = callback_tensor_inputs(a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"])
        if a["video"] is not None and a["num_frames"] is None:
            a["num_frames"] = self.continuation_frames
        for name, value in self.call_defaults.items():
            if a[name] is None:
                a[name] = value
        num_prompts = self.check_inputs(
            a["prompt"], a["negative_prompt"], a["prompt_embeds"], a["negative_prompt_embeds"],
            a["prompt_attention_mask"], a["negative_prompt_attention_mask"], a["num_videos_per_prompt"],
            a["guidance_scale"], a["guidance"], a["apg_norm_threshold"], a["tau_image"], a["tau_video"], a["image"],
            a["prefix_codes"], a["generator"], a["output_type"], a["callback_on_step_end"], tensor_inputs,
            a["video"], a["video_fps"], a["sample_posterior"],
        )
        if a["height"] is None and a["width"] is None:
            a["height"], a["width"] = self.default_size
        self._check_size(a["height"], a["width"])
        if a["video"] is not None:
            self._check_continuation(a["num_frames"])
        plan = self.plan(a["num_frames"], a["height"], a["width"], float(a["tau_image"]), float(a["tau_video"]))
        batch = num_prompts * a["num_videos_per_prompt"]
        num_scales = len(plan.schedule)
        vpg = self.prefix_guidance(a["vpg_scale"], a["vpg_corruption"], a["vpg_mode"], a["vpg_refresh"],
                                   a["vpg_scales"], num_scales, a["vpg_corrupt_conditioning"])
        extra = (a["igg_scale"], a["ssg_scale"], a["entropy_temperature"], a["entropy_temperature_t0"],
                 a["entropy_temperature_alpha"], a["entropy_temperature_theta"], a["guiders"])
        check_guidance_args(*extra)
        if a["guidance"] == "apg":
            term = AdaptiveProjectedGuidance(float(a["guidance_scale"]), norm_threshold=float(a["apg_norm_threshold"]),
                                             eta=0.0)
        else:
            term = ClassifierFreeGuidance(float(a["guidance_scale"]), schedule=self.cfg_schedule)
        forced = video = None
        conditioning = 0
        if a["prefix_codes"] is not None:
            forced = tuple(self._forced_codes(a["prefix_codes"], plan, batch))
        elif a["image"] is not None:
            conditioning = sum(1 for s in plan.steps if s.clip == 0)
        elif a["video"] is not None:
            count = 1 + self.fps * CONDITION_SECONDS
            video = torch.stack([
                condition_frames(v, a["video_fps"], self.fps, CONDITION_SECONDS, count, a["height"], a["width"])
                for v in videos_of(a["video"], num_prompts)
            ])
            conditioning = sum(1 for s in plan.steps if s.clip < condition_clips(count))
        all_steps = tuple(plan_scale_steps(plan, conditioning))
        target = AccelerationTarget("infinity_star", int(self.transformer.config.depth), all_steps, num_scales,
                                    details={"plan": plan,
                                             "block_chunks": int(self.transformer.config.num_block_chunks)})
        acceleration, steps = call_acceleration(a["acceleration"], target)
        scales = [step.scale for step in steps]
        guidance = CallGuidance(term, vpg, *extra, step_scales=scales)
        return InfinityStarCall(
            arguments=frozen(a), batch=batch, steps=steps, num_scales=num_scales, guidance=guidance,
            with_null=guidance.chain.uses_conditions(scales, num_scales), callback_tensor_inputs=tuple(tensor_inputs),
            plan=plan, num_prompts=num_prompts, forced_codes=forced, acceleration=acceleration,
            schedule_steps=all_steps, condition_video=video, conditioning_steps=conditioning,
        )

    @property
    def continuation_frames(self) -> int:
        """Length of a continued video (``video=``): 10 s, 161 frames at 16 fps (the official script's only one)."""
        return 1 + self.fps * CONTINUATION_SECONDS

    def _check_continuation(self, num_frames: Any) -> None:
        """Continuation makes :attr:`continuation_frames` frames only, and only a model that makes them."""
        frames = self.continuation_frames
        if frames not in allowed_frame_counts(self._args):
            raise ValueError(f"`video` (continuation) makes {CONTINUATION_SECONDS} s videos ({frames} frames), which "
                             f"this model does not make (its lengths: {allowed_frame_counts(self._args)}); load the "
                             f"480p checkpoint (variant '480p')")
        if num_frames != frames:
            raise ValueError(f"`num_frames` must be {frames} ({CONTINUATION_SECONDS} s) with `video`: continuation "
                             f"only makes {CONTINUATION_SECONDS} s videos, got {num_frames!r}")

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_videos_per_prompt: int = 1,
        guidance_scale: float | None = None,
        guidance: str | None = None,
        apg_norm_threshold: float | None = None,
        tau_image: float | None = None,
        tau_video: float | None = None,
        image: Any = None,
        video: Any = None,
        video_fps: float | None = None,
        sample_posterior: bool = False,
        prefix_codes: Sequence[torch.Tensor] | None = None,
        vpg_scale: float = DEFAULT_VPG_SCALE,
        vpg_corruption: float = DEFAULT_VPG_CORRUPTION,
        vpg_mode: str = "full",
        vpg_refresh: str = "persistent",
        vpg_scales: str | Sequence[int] = "semantic",
        vpg_corrupt_conditioning: bool = False,
        igg_scale: float | None = None,
        ssg_scale: float = 0.0,
        entropy_temperature: bool = False,
        entropy_temperature_t0: float = ENTROPY_TEMPERATURE_DEFAULTS.t0,
        entropy_temperature_alpha: float = ENTROPY_TEMPERATURE_DEFAULTS.alpha,
        entropy_temperature_theta: float = ENTROPY_TEMPERATURE_DEFAULTS.theta,
        guiders: list[GuidanceTerm] | None = None,
        acceleration: str | Acceleration | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        trace: SamplerTrace | None = None,
    ) -> InfinityStarPipelineOutput | tuple:
        r"""
        Generate videos (or images with ``num_frames=1``), from text, an image (``image``) or the start of a
        video (``video``, continuation).

        Defaults are the model's official script's settings (``variant``; 720p and 480p: APG, cfg 34, norm
        threshold 0.05, tau 1 / 0.4, 81 frames at 16 fps, the configured pixel budget at ratio 0.571: 720x1280
        for the 720p model, 480x848 for the 480p one); ``None`` below means "from those settings".

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The text(s). The official template is applied: the suffix ``prompt_suffix`` and, with
                ``append_duration2caption``, a ``<<<t=5s>>>`` prefix. Pass exactly one of ``prompt`` and
                ``prompt_embeds``.
            negative_prompt (`str` or `list[str]`, *optional*):
                Text(s) used as given; empty or ``None`` (the official default) uses the model's learned
                null text.
            num_frames (`int`, *optional*):
                The lengths the model's official script makes: the 480p model 81 or 161 (5 or 10 s at 16 fps);
                otherwise 1 (an image) or 1 + 16 k up to the model's ``video_frames`` (81 for 720p).
                ``None``: 81 (5 s, the scripts' default), with ``video`` 161.
            height (`int`, *optional*):
                A height of the official schedules (any aspect template and pixel budget; the error lists
                them); ``None`` (with ``width``): :attr:`default_size`.
            width (`int`, *optional*):
                The width, the same way.
            num_videos_per_prompt (`int`, *optional*, defaults to 1):
                Videos per prompt (adjacent in the output).
            guidance_scale (`float`, *optional*):
                The official ``cfg`` (34); 1 turns guidance off (no negative rows run).
            guidance (`str`, *optional*):
                ``"apg"`` (adaptive projected guidance, the released setting) or ``"cfg"``
                (``s * cond + (1 - s) * uncond``).
            apg_norm_threshold (`float`, *optional*):
                APG's bound on the RMS of ``cond - uncond`` (0.05; 0 disables it).
            tau_image (`float`, *optional*):
                The logit temperature of the image clip (1.0).
            tau_video (`float`, *optional*):
                The logit temperature of the video clips (0.4).
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*):
                Image-to-video: the first frame (a PIL image, an ``(H, W, 3)`` array or a ``(3, H, W)``
                tensor in [0, 1]), one for all prompts or one per prompt. It is cropped to the video's
                size, encoded (posterior mean, see ``sample_posterior``) and its codes are forced for every
                step of the image clip, as the official i2v does.
            video (`str`, `list[PIL.Image.Image]`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*):
                Video continuation (the 480p model; ``tools/infer_video_480p.py``): a file path (read with
                imageio-ffmpeg), a list of frames, an ``(F, H, W, 3)`` array or an ``(F, 3, H, W)`` tensor in
                [0, 1]; one for all prompts or one per prompt. At least 5 s long: its first 5 s resampled to
                81 frames (the official ``get_clip(0, 5, 81)``) are cropped to the video's size, encoded (21
                latent frames) and their codes forced for every step of the image clip and the first video
                clip (the official ``gt_leak``); the model generates the rest of a 10 s video (``num_frames``
                161). The output is the whole 161 frames, as the official script saves it: frames 0-80 are
                the VAE's reconstruction of the forced codes, frames 81-160 the continuation.
            video_fps (`float`, *optional*):
                Frames per second of ``video``; ``None``: a file's own rate, 16 for frames given in memory.
            sample_posterior (`bool`, *optional*, defaults to `False`):
                Encode ``image`` / ``video`` with a posterior sample of the VAE drawn from ``generator`` (one
                per video, before any sampling draw; the official scripts draw it from their unseeded global
                RNG) instead of the posterior mean (the default: the forced codes do not depend on the seed).
            prefix_codes (`list[torch.Tensor]`, *optional*):
                Bits forced for the first ``len(prefix_codes)`` steps, one ``(B or 1, t, h, w, d)`` tensor
                per (scale, repetition) step; the sampler still draws (the generator stream is the
                official one). Forcing every step replays a recorded generation.
            vpg_scale (`float`, *optional*, defaults to 1.5):
                VPG's weight ``w`` (>= 0; 1 = off); the paper's video value is not available to us.
            vpg_corruption (`float`, *optional*, defaults to 0.1):
                The fraction ``p`` in [0, 1] of each prefix scale's sites replaced by a donor's (smaller for
                video, as the paper asks).
            vpg_mode (`str`, *optional*, defaults to `"full"`):
                ``"full"``, ``"token"``, ``"position"`` or ``"codebook"`` (docs/vpg.md).
            vpg_refresh (`str`, *optional*, defaults to `"persistent"`):
                ``"persistent"`` or ``"resample"`` (docs/vpg.md).
            vpg_scales (`str` or `list[int]`, *optional*, defaults to `"semantic"`):
                The guided scales (resolution levels): ``"semantic"`` (relative scale index <
                ``semantic_scales``, the paper's scheduled VPG), ``"all"``, or a list of scale indices.
            vpg_corrupt_conditioning (`bool`, *optional*, defaults to `False`):
                With ``image`` or ``video``: also corrupt the forced image / video codes in VPG's corrupted
                branch (which then also contrasts the conditioning). ``False``: they are conditioning, like
                the text, the same in both branches; VPG contrasts only the generated prefix (docs/vpg.md).
            igg_scale (`float`, *optional*):
                Information-Grounding Guidance's ``w`` (>= 0), added to APG / CFG with the weight
                ``1 + w·k/(K - 1)`` (``k`` counts the scales of all clips); ``None`` turns it off (``0``
                does not); with guidance off (``guidance_scale=1``) it replaces CFG. Cost ``O(n²)`` per step
                in the sites of a clip: see docs/guidance.md.
            ssg_scale (`float`, *optional*, defaults to 0.0):
                Scaled Spatial Guidance's ``beta`` (>= 0) over (t, h, w) inside each clip; ``0`` turns it
                off.
            entropy_temperature (`bool`, *optional*, defaults to `False`):
                A per-site temperature ``T0·exp(-H/alpha) + theta`` (on top of the taus) from the entropy
                ``H`` of a site's bits, applied after all guidance.
            entropy_temperature_t0 (`float`, *optional*, defaults to 2.5):
                ``T0`` (>= 0; the paper's value).
            entropy_temperature_alpha (`float`, *optional*, defaults to 3.0):
                ``alpha`` (> 0; the paper's value).
            entropy_temperature_theta (`float`, *optional*, defaults to 0.6):
                ``theta`` (>= 0; the paper's value).
            guiders (`list[GuidanceTerm]`, *optional*):
                More guidance terms (``vpg_pipelines.guidance``); one replaces the term the arguments above
                would build for the same job.
            acceleration (`str` or `Acceleration`, *optional*):
                A training-free accelerator by name or config object (``vpg_pipelines.acceleration``); none of
                the released ones applies to InfinityStar yet, so any is refused with the reason
                (docs/acceleration.md).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                One generator, or one per video (then video ``i`` depends only on ``generator[i]``).
            prompt_embeds (`torch.Tensor`, *optional*):
                T5 features ``(B, L, C)``, used as given (no template).
            prompt_attention_mask (`torch.Tensor`, *optional*):
                ``(B, L)``, marking the real tokens of ``prompt_embeds``; ``None``: all.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                The same as ``prompt_embeds`` for the negative prompt.
            negative_prompt_attention_mask (`torch.Tensor`, *optional*):
                The same as ``prompt_attention_mask`` for ``negative_prompt_embeds``.
            output_type (`str`, *optional*, defaults to `"pil"`):
                ``"pil"`` (per video a list of frames), ``"np"`` ``(B, F, H, W, 3)``, ``"pt"``
                ``(B, F, 3, H, W)`` in [0, 1], or ``"latent"`` (the summed codes ``(B, 64, T, h, w)``).
                Decoded videos take frame 1 over frame 0, as the official sampler does.
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`InfinityStarPipelineOutput`] instead of a plain tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                ``callback(pipe, step_index, scale_index, callback_kwargs)`` after every (scale, repetition)
                step; ``"latents"`` (the summed codes so far, editable by returning ``{"latents": ...}``)
                and ``"logits"`` (the step's guided logits ``(B, sites, 2 d)``, read only); set
                ``pipe._interrupt = True`` to stop early. Setting ``pipe._guidance_scale``, ``_vpg_scale``,
                ``_igg_scale``, ``_ssg_scale`` or ``_entropy_temperature`` takes effect from the next step.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*):
                The tensors passed to the callback; ``None``: ``["latents"]``.
            trace (`SamplerTrace`, *optional*):
                Filled with the per-step branch logits and corruption patterns.

        Examples:

        Returns:
            [`InfinityStarPipelineOutput`] or `tuple`:
                [`InfinityStarPipelineOutput`] with ``frames``, or ``(frames,)`` when ``return_dict`` is
                ``False``.
        """
        # every argument of this call by name (nothing else is bound yet)
        call = self.resolve_call(**{name: value for name, value in locals().items() if name != "self"})
        a, plan, guidance, with_null = call.arguments, call.plan, call.guidance, call.with_null
        num_prompts, num_frames = call.num_prompts, a["num_frames"]
        self._begin_call(call)
        self._guidance_scale = float(a["guidance_scale"])
        self._interrupt = False
        self._start_guidance(guidance, igg_scale, ssg_scale, entropy_temperature)
        device = self._execution_device

        forced = None
        if call.forced_codes is not None:
            forced = list(call.forced_codes)
        elif image is not None:
            forced = self.prepare_image_codes(image, plan, num_prompts, num_videos_per_prompt, device,
                                              sample_posterior, generator)
        elif call.condition_video is not None:
            forced = self.prepare_video_codes(call.condition_video, plan, num_prompts, num_videos_per_prompt, device,
                                              sample_posterior, generator)

        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            texts = self.encode_prompt([self.caption(p, num_frames) for p in prompts], device)
        else:
            texts = self._rows(prompt_embeds, prompt_attention_mask)
        negatives: list[torch.Tensor | None] = [None] * num_prompts
        if with_null and negative_prompt_embeds is not None:
            negatives = self._rows(negative_prompt_embeds, negative_prompt_attention_mask)
        elif with_null and negative_prompt is not None:
            listed = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if any(listed):
                encoded = self.encode_prompt([n or " " for n in listed], device)
                negatives = [e if n else None for e, n in zip(encoded, listed)]
            else:
                negatives = [None] * len(listed)
        if len(negatives) == 1:
            negatives = negatives * num_prompts
        texts = [t for t in texts for _ in range(num_videos_per_prompt)]
        negatives = [n for n in negatives for _ in range(num_videos_per_prompt)]

        adapter = InfinityStarAdapter(self.transformer, self.vae)
        state = adapter.prepare(plan, texts, negatives, with_null=with_null, forced_bits=forced, device=device,
                                dtype=torch.float32, conditioning_steps=call.conditioning_steps)

        with self.progress_bar(total=len(plan.steps)) as progress:

            def on_step(step, st, logits) -> bool:
                if callback_on_step_end is not None:
                    kwargs = {}
                    for name in call.callback_tensor_inputs:
                        kwargs[name] = adapter.latents(st) if name == "latents" else logits
                    outputs = callback_on_step_end(self, step.index, step.scale, kwargs) or {}
                    if "latents" in outputs:
                        _replace_latents(st, outputs.pop("latents"))
                guidance.sync(self)
                progress.update()
                return self.interrupt

            run_next_scale(adapter, state, guiders=guidance.chain, generator=generator, on_step=on_step, trace=trace,
                           acceleration=call.acceleration, kv_cache_device=self.kv_cache_device)

        latents = adapter.latents(state)
        if output_type == "latent":
            frames = latents
        else:
            release_offloaded(self, self.transformer)  # model offload: the VAE decodes alone
            video = self.decode_latents(latents)
            frames = self.video_processor.postprocess_video(video, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return InfinityStarPipelineOutput(frames=frames)

    @torch.no_grad()
    def preview_image(self, latents: torch.Tensor) -> torch.Tensor:
        """A quick picture of partial summed codes (``callback_on_step_end``'s ``latents``): the newest latent
        frame decoded on its own, ``(B, 3, H, W)`` in [0, 1]. One frame, not the whole video; outside the
        first clip only an approximation of the final frames."""
        video = self.decode_latents(latents[:, :, -1:])
        return ((video[:, :, -1] + 1) / 2).clamp(0, 1)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Summed codes -> video ``(B, 3, F, H, W)`` in [-1, 1], frame 1 copied over frame 0 (official)."""
        vae_param = next(self.vae.parameters())
        dtype = vae_param.dtype if vae_param.device.type != "meta" else torch.float32
        video = self.vae.decode(latents.to(dtype)).float().clamp(-1, 1)
        if video.shape[2] > 1:
            video[:, :, 0] = video[:, :, 1]
        return video

    def prefix_guidance(
        self,
        vpg_scale: float,
        vpg_corruption: float,
        vpg_mode: str,
        vpg_refresh: str,
        vpg_scales: str | Sequence[int],
        num_scales: int | None = None,
        vpg_corrupt_conditioning: bool = False,
    ) -> PrefixGuidance:
        """Validated VPG settings; explicit scale lists are checked against ``num_scales``, the call's number
        of scales (default :attr:`num_scales`)."""
        return build_prefix_guidance(vpg_scale, vpg_corruption, vpg_mode, vpg_refresh, vpg_scales,
                                     num_scales or self.num_scales, vpg_corrupt_conditioning)

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
        variant: str | None = None,
    ) -> VPGInfinityStarPipeline:
        """Build the pipeline from the released files.

        Args:
            transformer_checkpoint (`str` or `Path`):
                ``infinitystar_8b_720p_weights`` or ``infinitystar_8b_480p_weights`` (a shard folder with its
                ``*.index.json``), or one ``.safetensors`` / ``.pth`` state dict; a local path or a file name
                in the hub repo ``FoundationVision/InfinityStar``.
            vae_checkpoint (`str` or `Path`):
                ``infinitystar_videovae.pth`` (local or on the hub).
            text_encoder (`T5EncoderModel`, `str` or `Path`, *optional*):
                A ``T5EncoderModel``, or a path / hub id (``"google/flan-t5-xl"``) to load one (with its
                tokenizer unless ``tokenizer`` is given). ``None``: pass ``prompt_embeds``.
            tokenizer (`PreTrainedTokenizer` or `str`, *optional*):
                A tokenizer, or a path / hub id.
            config (`dict`, *optional*):
                ``{"args": {...official Args overrides...}, "model": {...size...},
                "vae_block_out_channels": [...], "text_maxlen": 512}`` (the parity fixtures' ``config.json``
                format); sizes are read off the weights and checked against it.
            torch_dtype (`torch.dtype`, *optional*):
                Cast the transformer and text encoder (the VAE stays float32, as officially).
            quantization (`str`, *optional*):
                The transformer's weights in ``"int8"`` (TorchAO), ``"nf4"`` (bitsandbytes, CUDA) or
                ``"fp8"`` (layerwise casting); the two heads stay float32. See ``docs/memory.md``.
            variant (`str`, *optional*):
                The official script to run the checkpoint like: ``"720p"`` (``tools/infer_video_720p.py``),
                ``"480p"`` (``tools/infer_video_480p.py``: 0.40M budget, 5 or 10 s) or ``"interact"``; its
                settings come under ``config["args"]``. ``None``: the one the checkpoint's name says
                (``..._480p_...``), else the 720p script's settings.

        Returns:
            [`VPGInfinityStarPipeline`]: the loaded pipeline; move it with ``.to(device)`` or use
            ``enable_model_cpu_offload()``.

        Examples:

        ```py
        >>> import torch
        >>> from vpg_pipelines import VPGInfinityStarPipeline

        >>> pipe = VPGInfinityStarPipeline.from_official(
        ...     "infinitystar_8b_720p_weights", "infinitystar_videovae.pth", text_encoder="google/flan-t5-xl",
        ...     torch_dtype=torch.bfloat16,
        ... )  # doctest: +SKIP
        >>> pipe.save_pretrained("infinitystar-720p-vpg")  # doctest: +SKIP
        >>> # the 480p checkpoint: its script's settings from the name (or variant="480p"), 5 or 10 s videos
        >>> pipe = VPGInfinityStarPipeline.from_official(
        ...     "infinitystar_8b_480p_weights", "infinitystar_videovae.pth", text_encoder="google/flan-t5-xl",
        ...     torch_dtype=torch.bfloat16,
        ... )  # doctest: +SKIP
        >>> pipe.variant, pipe.default_size  # doctest: +SKIP
        ('480p', (480, 848))

        ```
        """
        check_quantization(quantization)
        if variant is None:
            variant = variant_of_checkpoint(Path(str(transformer_checkpoint)).name)
        config = dict(config or {})
        unknown = set(config) - {"args", "model", "vae_block_out_channels", "text_maxlen", "scale_schedule",
                                 "first_full_spatial_size_scale_index", "tau_list", "h_div_w_template"}
        if unknown:
            raise ValueError(f"`config` has unknown entries {sorted(unknown)}")
        overrides = dict(config.get("args") or {})
        args = resolve_args({**variant_args(variant), **overrides})
        transformer = load_infinity_star_transformer(
            _resolve_checkpoint(transformer_checkpoint),
            text_maxlen=int(config.get("text_maxlen", TEXT_MAXLEN)), torch_dtype=torch_dtype,
        )
        _check_transformer_size(transformer, config.get("model"), overrides.get("text_channels"))
        transformer = quantize_transformer(transformer, quantization, torch_dtype)
        vae = load_infinity_star_vae(_resolve_checkpoint(vae_checkpoint),
                                     detail_scale_min_tokens=args["detail_scale_min_tokens"])
        channels = config.get("vae_block_out_channels")
        if channels is not None and list(channels) != list(vae.config.block_out_channels):
            raise ValueError(f"`config` vae_block_out_channels {list(channels)} do not match the VAE checkpoint "
                             f"({list(vae.config.block_out_channels)})")
        if isinstance(text_encoder, (str, Path)):
            source = str(text_encoder)
            text_encoder = T5EncoderModel.from_pretrained(source, torch_dtype=torch_dtype)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(source)
        if isinstance(tokenizer, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        if text_encoder is not None:
            width = getattr(text_encoder.config, "d_model", None)
            if width != transformer.config.text_channels:
                raise ValueError(f"`text_encoder` gives {width} channels, the transformer takes "
                                 f"{transformer.config.text_channels}")
            text_encoder = text_encoder.eval()
        return cls(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                   official_args=args, variant=variant)


# -- helpers ---------------------------------------------------------------------------------------


def count_prompts(prompt: Any, embeds: Any, mask: Any, channels: int, text_encoder: Any, tokenizer: Any,
                  each: str = "") -> int:
    """How many prompts ``prompt`` / ``prompt_embeds`` give (exactly one of them; texts need the text encoder);
    ``each`` says what one prompt is for in the messages (Interact: " (one per clip)")."""
    if prompt is not None and embeds is not None:
        raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
    if prompt is None and embeds is None:
        raise ValueError(f"Provide `prompt`{each} or `prompt_embeds`.")
    if embeds is not None:
        return _check_embeds("prompt_embeds", embeds, mask, channels)
    if isinstance(prompt, str):
        count = 1
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        count = len(prompt)
    else:
        raise TypeError(f"`prompt` must be a `str` or a non-empty list of `str`{each}, got {prompt!r}")
    if text_encoder is None or tokenizer is None:
        raise ValueError("`prompt` needs a `text_encoder` and a `tokenizer`; pass `prompt_embeds` instead")
    return count


def _check_embeds(name: str, embeds: Any, mask: Any, channels: int) -> int:
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[2] != channels or (
        embeds.shape[0] == 0 or embeds.shape[1] == 0
    ):
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds)
        raise ValueError(f"`{name}` must be a (batch, tokens, {channels}) tensor, got {shape}")
    if mask is not None:
        mask_name = name.replace("embeds", "attention_mask")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ValueError(f"`{mask_name}` must be a {tuple(embeds.shape[:2])} tensor of 0/1")
        if not bool(((mask == 0) | (mask == 1)).all()) or not bool((mask.sum(dim=1) > 0).all()):
            raise ValueError(f"`{mask_name}` must hold 0/1 with at least one token per row")
    return int(embeds.shape[0])


def _replace_latents(state: InfinityStarState, latents: torch.Tensor) -> None:
    """Write a callback's edited summed codes back into the per-clip tensors."""
    sizes = [s.shape[2] for s in state.summed]
    current = (state.summed[0].shape[0], state.summed[0].shape[1], sum(sizes), *state.summed[0].shape[3:])
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != current:
        raise ValueError(f"`latents` returned by the callback must keep the shape {current}")
    parts = latents.split(sizes, dim=2)
    state.summed = [p.to(s) for p, s in zip(parts, state.summed)]


def _check_transformer_size(transformer: InfinityStarTransformer, model: dict | None, text_channels: Any) -> None:
    cfg = transformer.config
    if text_channels is not None and text_channels != cfg.text_channels:
        raise ValueError(f"`config` args.text_channels = {text_channels}, the checkpoint takes {cfg.text_channels}")
    if not model:
        return
    checks = {"depth": cfg.depth, "block_chunks": cfg.num_block_chunks, "embed_dim": cfg.embed_dim,
              "num_heads": cfg.num_heads, "num_key_value_heads": cfg.num_key_value_heads}
    bad = {k: (model[k], v) for k, v in checks.items() if k in model and model[k] != v}
    if "mlp_ratio" in model:
        hidden = round(cfg.embed_dim * cfg.mlp_ratio)
        if round(cfg.embed_dim * model["mlp_ratio"] / 256) * 256 != hidden:
            bad["mlp_ratio"] = (model["mlp_ratio"], cfg.mlp_ratio)
    if bad:
        listed = ", ".join(f"{k} {want} (checkpoint {got})" for k, (want, got) in bad.items())
        raise ValueError(f"`config` model size does not match the transformer checkpoint: {listed}")


def _resolve_checkpoint(name: str | Path) -> Path:
    """A local file or folder, a file of the InfinityStar hub repo, or a shard folder of it."""
    path = Path(name).expanduser()
    if path.exists() or Path(str(name)).suffix:
        return resolve_file(name, INFINITY_STAR_HUB_REPO)
    text = str(name)
    if text.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    root = snapshot_download(repo_id=INFINITY_STAR_HUB_REPO, allow_patterns=[f"{text}/*"])
    return Path(root) / text
