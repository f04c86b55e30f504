"""Text-to-image Infinity with Visual Prefix Guidance, as a diffusers pipeline."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from transformers import AutoTokenizer, T5EncoderModel

from ..acceleration.base import Acceleration, AccelerationTarget
from ..guidance.base import MAX_STRENGTH, GuidanceTerm
from ..guidance.cfg import ClassifierFreeGuidance
from ..guidance.prefix import PrefixGuidance
from ..guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS
from ..loading.infinity import load_official_infinity
from ..memory.mixin import MemoryPlanningMixin
from ..memory.offload import release_offloaded
from ..memory.quantization import check_quantization, quantize_transformer
from ..models.adapter import ScaleStep
from ..models.infinity.adapter import InfinityAdapter, InfinityState, scale_steps
from ..models.infinity.bsq_vae import InfinityBSQVAE
from ..models.infinity.schedules import InfinitySchedule, schedule_for_size, schedule_from_template
from ..models.infinity.transformer import InfinityTransformer
from ..sampling.next_scale import SamplerTrace, run_next_scale
from .call import CallStateMixin, ResolvedCall, bind_arguments, call_acceleration, callback_tensor_inputs, frozen
from .checks import check_count, check_generator, check_number, check_output, check_top_k
from .checks import prefix_guidance as build_prefix_guidance
from .guiders import CallGuidance, GuidanceStrengthsMixin, check_guidance_args

logger = logging.getLogger(__name__)

DEFAULT_VPG_SCALE = 1.5
"""Our default VPG weight for Infinity (the paper's operating point is not available to us)."""
DEFAULT_SIZE = 1024
"""Released models sample the 1:1 "1M" schedule (1024 x 1024) by default."""

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from vpg_pipelines import VPGInfinityPipeline

        >>> # the released Infinity-2B: its files come from the hub repos FoundationVision/Infinity and
        >>> # google/flan-t5-xl (not available offline, hence SKIP)
        >>> pipe = VPGInfinityPipeline.from_official(
        ...     "infinity_2b_reg.pth", "infinity_vae_d32reg.pth", text_encoder="google/flan-t5-xl",
        ...     torch_dtype=torch.bfloat16,
        ... )  # doctest: +SKIP
        >>> pipe.enable_model_cpu_offload()  # doctest: +SKIP
        >>> image = pipe(
        ...     "a wax seal embossed with the letters VPG", height=1024, width=1024, guidance_scale=3.0,
        ...     vpg_scale=1.5, generator=torch.Generator().manual_seed(0),
        ... ).images[0]  # doctest: +SKIP
        >>> image.save("seal.png")  # doctest: +SKIP

        ```
"""


@dataclass(frozen=True)
class InfinityCall(ResolvedCall):
    """:meth:`VPGInfinityPipeline.resolve_call`'s result: also the scale ``schedule`` of the size and the number
    of prompts (before ``num_images_per_prompt``)."""

    schedule: InfinitySchedule
    num_prompts: int


class VPGInfinityPipeline(GuidanceStrengthsMixin, MemoryPlanningMixin, CallStateMixin, DiffusionPipeline):
    r"""Text-to-image generation with Infinity and Visual Prefix Guidance.

    Components:
        transformer ([`InfinityTransformer`]): the bitwise next-scale transformer.
        vae ([`InfinityBSQVAE`]): the multi-scale BSQ VAE (decoder and bit codes).
        text_encoder ([`~transformers.T5EncoderModel`], *optional*): flan-T5-XL's encoder for the
            official models. May be omitted when prompts are passed as ``prompt_embeds``.
        tokenizer ([`~transformers.T5TokenizerFast`], *optional*): its tokenizer.
        default_height, default_width: the size generated when ``height`` / ``width`` are not given.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _exclude_from_cpu_offload = ["vae"]  # used inside the loop (bit codes); small: stays on the device
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents"]
    cfg_schedule = "constant"
    """CFG's strength is the same at every scale (or given per scale, see ``guidance_scale``)."""
    vae_dtype: torch.dtype | None = None
    """The VAE computes in the pipeline's dtype."""

    def __init__(
        self,
        transformer: InfinityTransformer,
        vae: InfinityBSQVAE,
        text_encoder: Any = None,
        tokenizer: Any = None,
        default_height: int = DEFAULT_SIZE,
        default_width: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__()
        InfinityAdapter(transformer, vae)  # raises when the transformer's bits do not fit the VAE
        width = getattr(getattr(text_encoder, "config", None), "d_model", None)
        if text_encoder is not None and width != transformer.config.text_channels:
            raise ValueError(f"`text_encoder` gives {width}-channel features but the transformer takes "
                             f"{transformer.config.text_channels} (`text_channels`)")
        self.register_modules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(default_height=int(default_height), default_width=int(default_width))
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)
        self._interrupt = False
        self._guidance_scale: float | list[float] = 1.0
        self._default_schedule = self.schedule_for(int(default_height), int(default_width))

    # -- diffusers-style properties -------------------------------------------------------------
    def _default_call_shape(self) -> tuple[tuple[ScaleStep, ...], int]:
        return tuple(scale_steps(self._default_schedule)), self._default_schedule.num_scales

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def guidance_scale(self) -> float | list[float]:
        return self._guidance_scale

    # -- schedule ---------------------------------------------------------------------------------
    def schedule_for(self, height: int, width: int) -> InfinitySchedule:
        """The official schedule generating ``height x width``: template sizes map exactly (256 x 256 is
        the 1:1 "0.06M" schedule, 176 x 352 the 1:2 one); other sizes snap to the nearest aspect
        template and pixel budget, and the adjustment is logged."""
        return schedule_for_size(height, width, spatial_patchify=bool(self.transformer.config.apply_spatial_patchify),
                                 rope_mode=self.transformer.config.rope2d_normalized_by_hw)

    # -- text -------------------------------------------------------------------------------------
    def encode_prompt(
        self, prompt: str | Sequence[str], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 features of prompts as the official ``encode_prompt`` makes them.

        flan-T5 settings: truncation at the model's ``text_maxlen`` tokens (512 for the released
        models), the EOS token counted as a valid token, the encoder run with the attention mask,
        ``last_hidden_state`` in float32. Prompts are padded to the longest one rather than to 512
        (padded keys are masked, so the valid tokens' features do not change).

        Returns:
            ``prompt_embeds`` ``(B, L, C)`` float32 and ``prompt_attention_mask`` ``(B, L)`` long.
        """
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("`prompt` needs a text encoder and a tokenizer, and this pipeline has none; pass "
                             "`prompt_embeds` (+ `prompt_attention_mask`) or build it with `text_encoder`/`tokenizer`")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = device or self._execution_device
        tokens = self.tokenizer(prompts, max_length=self.transformer.config.text_maxlen, padding="longest",
                                truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        hidden = self.text_encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        return hidden.float(), mask.long()

    def _encode_negative(
        self, negative_prompt: str | Sequence[str], prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative features per prompt. An empty entry in a list keeps that prompt's learned null text (the
        first ``len_i`` rows of ``cfg_uncond``, as the official code does for an empty negative prompt)."""
        batch = prompt_embeds.shape[0]
        negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
        embeds, mask = self.encode_prompt([n for n in negatives if n], device)
        if all(negatives):
            return embeds, mask
        lens = prompt_mask.sum(1).tolist() if prompt_mask is not None else [prompt_embeds.shape[1]] * batch
        longest = max(embeds.shape[1], *lens)
        out = embeds.new_zeros(batch, longest, embeds.shape[-1])
        out_mask = mask.new_zeros(batch, longest)
        given = iter(range(embeds.shape[0]))
        for i, text in enumerate(negatives):
            if text:
                j = next(given)
                out[i, : embeds.shape[1]], out_mask[i, : embeds.shape[1]] = embeds[j], mask[j]
            else:
                out[i, : lens[i]] = self.transformer.cfg_uncond[: lens[i]].detach().to(out)
                out_mask[i, : lens[i]] = 1
        return out, out_mask

    @staticmethod
    def _compact(embeds: torch.Tensor, mask: torch.Tensor | None, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(B, L, C)`` + mask -> the official compact form: valid rows ``(sum(lens), C)`` and ``lens``,
        every prompt repeated ``repeats`` times (adjacent)."""
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        embeds = embeds.repeat_interleave(repeats, 0)
        mask = mask.to(embeds.device).bool().repeat_interleave(repeats, 0)
        return embeds[mask].float(), mask.sum(1).cpu()

    # -- validation -----------------------------------------------------------------------------
    def _check_embeds(self, name: str, embeds: Any, mask: Any, batch: int | None) -> None:
        channels, maxlen = self.transformer.config.text_channels, self.transformer.config.text_maxlen
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or not embeds.is_floating_point():
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds)
            raise ValueError(f"`{name}` must be a float tensor (batch, tokens, {channels}), got {shape}")
        if embeds.shape[-1] != channels or embeds.shape[0] < 1 or embeds.shape[1] < 1:
            raise ValueError(f"`{name}` must be (batch, tokens, {channels}) with batch, tokens >= 1, "
                             f"got {tuple(embeds.shape)}")
        if batch is not None and embeds.shape[0] != batch:
            raise ValueError(f"`{name}` has batch size {embeds.shape[0]}, but the prompts have {batch}")
        if mask is None:
            lens = [embeds.shape[1]] * embeds.shape[0]
        else:
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2]):
                shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)
                raise ValueError(f"`{name[:-7]}_attention_mask` must be a tensor {tuple(embeds.shape[:2])} "
                                 f"(batch, tokens) like `{name}`, got {shape}")
            if mask.is_floating_point() or mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError(f"`{name[:-7]}_attention_mask` must hold 0/1 (or bool) values")
            lens = mask.sum(1).tolist()
        if min(lens) < 1 or max(lens) > maxlen:
            raise ValueError(f"`{name}` must have between 1 and {maxlen} (`text_maxlen`) valid tokens per prompt, "
                             f"got {lens}")
        if not bool(torch.isfinite(embeds).all()):
            raise ValueError(f"`{name}` holds non-finite values")

    def _check_per_scale(self, name: str, value: Any, num_scales: int, positive: bool,
                         high: float = float("inf")) -> None:
        low = "> 0" if positive else ">= 0"
        if high < float("inf"):
            low += f" and <= {high:g}"
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(values) != num_scales:
            raise ValueError(f"`{name}` list must have one value per scale ({num_scales} for this size), "
                             f"got {len(values)}")
        for v in values:
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
            if not ok or (v <= 0 if positive else v < 0) or v > high:
                raise ValueError(f"`{name}` must be a finite number {low} or a list of {num_scales} of them, "
                                 f"got {value!r}")

    def check_inputs(
        self,
        prompt: Any,
        negative_prompt: Any,
        prompt_embeds: Any,
        prompt_attention_mask: Any,
        negative_prompt_embeds: Any,
        negative_prompt_attention_mask: Any,
        height: Any,
        width: Any,
        num_images_per_prompt: Any,
        guidance_scale: Any,
        tau: Any,
        cfg_insertion_layer: Any,
        top_k: Any,
        top_p: Any,
        generator: Any,
        output_type: Any,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: Any,
    ) -> tuple[InfinitySchedule, int]:
        """Validate every argument; return the schedule and the number of prompts."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("Pass exactly one of `prompt` (text) and `prompt_embeds` (T5 features).")
        if prompt is not None:
            if isinstance(prompt, (list, tuple)):
                if not prompt or not all(isinstance(p, str) for p in prompt):
                    raise TypeError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
            elif not isinstance(prompt, str):
                raise TypeError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
            if prompt_attention_mask is not None:
                raise ValueError("`prompt_attention_mask` goes with `prompt_embeds`, not with `prompt`")
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("`prompt` needs a text encoder and a tokenizer, and this pipeline has none; pass "
                                 "`prompt_embeds` (+ `prompt_attention_mask`) instead")
            batch = 1 if isinstance(prompt, str) else len(prompt)
        else:
            self._check_embeds("prompt_embeds", prompt_embeds, prompt_attention_mask, None)
            batch = prompt_embeds.shape[0]
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass at most one of `negative_prompt` and `negative_prompt_embeds`.")
        if negative_prompt is not None:
            if isinstance(negative_prompt, (list, tuple)):
                if len(negative_prompt) != batch or not all(isinstance(p, str) for p in negative_prompt):
                    raise TypeError(f"`negative_prompt` must be a string or a list of {batch} strings (one per "
                                    f"prompt), got {negative_prompt!r}")
            elif not isinstance(negative_prompt, str):
                raise TypeError(f"`negative_prompt` has to be of type `str` or `list` but is {type(negative_prompt)}")
            if any(negative_prompt) and (self.text_encoder is None or self.tokenizer is None):
                raise ValueError("`negative_prompt` needs a text encoder and a tokenizer, and this pipeline has "
                                 "none; pass `negative_prompt_embeds` instead")
        if negative_prompt_embeds is not None:
            self._check_embeds("negative_prompt_embeds", negative_prompt_embeds, negative_prompt_attention_mask,
                               batch)
        elif negative_prompt_attention_mask is not None:
            raise ValueError("`negative_prompt_attention_mask` goes with `negative_prompt_embeds`")
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer number of pixels, got {value!r}")
        schedule = self.schedule_for(int(height), int(width))
        check_count("num_images_per_prompt", num_images_per_prompt)
        self._check_per_scale("guidance_scale", guidance_scale, schedule.num_scales, positive=False,
                              high=MAX_STRENGTH)
        self._check_per_scale("tau", tau, schedule.num_scales, positive=True)
        depth = self.transformer.config.depth
        if isinstance(cfg_insertion_layer, bool) or not isinstance(cfg_insertion_layer, numbers.Integral) or not (
            -depth <= cfg_insertion_layer <= 0
        ):
            raise ValueError(f"`cfg_insertion_layer` must be an integer in [-{depth}, 0] (0: CFG on the logits, "
                             f"-n: after block depth - n), got {cfg_insertion_layer!r}")
        check_top_k(top_k)
        check_number("top_p", top_p, low=0.0, high=1.0)
        images = batch * num_images_per_prompt
        check_generator(generator, images)
        check_output(output_type, callback_on_step_end, callback_on_step_end_tensor_inputs,
                     self._callback_tensor_inputs)
        return schedule, batch

    def prefix_guidance(
        self,
        vpg_scale: float | None,
        vpg_corruption: float,
        vpg_mode: str,
        vpg_refresh: str,
        vpg_scales: str | Sequence[int],
        num_scales: int | None = None,
    ) -> PrefixGuidance:
        """Validated VPG settings; ``vpg_scale=None`` takes our default (1.5). ``num_scales``: of the call
        (default :attr:`num_scales`)."""
        if vpg_scale is None:
            vpg_scale = DEFAULT_VPG_SCALE
        return build_prefix_guidance(vpg_scale, vpg_corruption, vpg_mode, vpg_refresh, vpg_scales,
                                     num_scales or self.num_scales)

    def resolve_call(self, **call_kwargs: Any) -> InfinityCall:
        """The call ``self(**call_kwargs)`` would make, checked and resolved, without running it.

        Takes the arguments of :meth:`__call__` (``TypeError`` for any other) and raises the errors the call
        would raise; ``height`` / ``width`` left ``None`` are the pipeline's default size. See
        :class:`~vpg_pipelines.pipelines.call.ResolvedCall`.
        """
        a = bind_arguments(self, call_kwargs)
        tensor_inputs = callback_tensor_inputs(a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"])
        a["height"] = self.config.default_height if a["height"] is None else a["height"]
        a["width"] = self.config.default_width if a["width"] is None else a["width"]
        schedule, num_prompts = self.check_inputs(
            a["prompt"], a["negative_prompt"], a["prompt_embeds"], a["prompt_attention_mask"],
            a["negative_prompt_embeds"], a["negative_prompt_attention_mask"], a["height"], a["width"],
            a["num_images_per_prompt"], a["guidance_scale"], a["tau"], a["cfg_insertion_layer"], a["top_k"],
            a["top_p"], a["generator"], a["output_type"], a["callback_on_step_end"], tensor_inputs,
        )
        vpg = self.prefix_guidance(a["vpg_scale"], a["vpg_corruption"], a["vpg_mode"], a["vpg_refresh"],
                                   a["vpg_scales"], schedule.num_scales)
        extra = (a["igg_scale"], a["ssg_scale"], a["entropy_temperature"], a["entropy_temperature_t0"],
                 a["entropy_temperature_alpha"], a["entropy_temperature_theta"], a["guiders"])
        check_guidance_args(*extra)
        strength = a["guidance_scale"]
        strength = [float(g) for g in strength] if isinstance(strength, (list, tuple)) else float(strength)
        cfg = ClassifierFreeGuidance(guidance_scale=strength, schedule=self.cfg_schedule,
                                     layer=int(a["cfg_insertion_layer"]))
        all_steps = tuple(scale_steps(schedule))
        template = (schedule.h_div_w_template, schedule.pn) if schedule.pn is not None else None
        target = AccelerationTarget("infinity", int(self.transformer.config.depth), all_steps, schedule.num_scales,
                                    template=template,
                                    details={"block_chunks": int(self.transformer.config.num_block_chunks)})
        acceleration, steps = call_acceleration(a["acceleration"], target)
        scales = [step.scale for step in steps]
        guidance = CallGuidance(cfg, vpg, *extra, step_scales=scales)
        return InfinityCall(
            arguments=frozen(a), batch=num_prompts * a["num_images_per_prompt"], steps=steps,
            num_scales=schedule.num_scales, guidance=guidance,
            with_null=guidance.chain.uses_conditions(scales, schedule.num_scales),
            callback_tensor_inputs=tuple(tensor_inputs), schedule=schedule, num_prompts=num_prompts,
            acceleration=acceleration, schedule_steps=all_steps,
        )

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float | Sequence[float] = 3.0,
        tau: float | Sequence[float] = 0.5,
        cfg_insertion_layer: int = 0,
        top_k: int = 900,
        top_p: float = 0.97,
        vpg_scale: float | None = None,
        vpg_corruption: float = 0.5,
        vpg_mode: str = "full",
        vpg_refresh: str = "persistent",
        vpg_scales: str | Sequence[int] = "all",
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
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images from text.

        Defaults are the official 2B settings of ``predict.py`` and the interactive notebook (cfg 3,
        tau 0.5, CFG on the logits, top-k 900, top-p 0.97); the 8B notebooks use ``tau=1.0``.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The prompt(s). Pass exactly one of ``prompt`` and ``prompt_embeds``.
            negative_prompt (`str` or `list[str]`, *optional*):
                Replaces the learned null text of CFG (one string for all prompts or one per prompt);
                ``None`` or ``""`` keeps the learned null text, as the official code does.
            height (`int`, *optional*):
                Output height in pixels; ``None``: the pipeline's ``default_height``. Infinity generates its
                template sizes only: an exact template size maps to its schedule, anything else snaps to
                the nearest aspect ratio and pixel budget (logged).
            width (`int`, *optional*):
                Output width in pixels; ``None``: the pipeline's ``default_width``.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Images per prompt (adjacent in the output).
            guidance_scale (`float` or `list[float]`, *optional*, defaults to 3.0):
                The official ``cfg``, a number or one per scale; ``1`` everywhere turns CFG off (no null
                rows are run).
            tau (`float` or `list[float]`, *optional*, defaults to 0.5):
                The official temperature, a number or one per scale (> 0).
            cfg_insertion_layer (`int`, *optional*, defaults to 0):
                ``0`` combines CFG on the logits; ``-n`` on the hidden states after block ``depth - n``
                (``-1``: after the last block).
            top_k (`int`, *optional*, defaults to 900):
                The official per-bit top-k filter (``1`` is greedy; ``0`` disables it).
            top_p (`float`, *optional*, defaults to 0.97):
                The official per-bit top-p filter (``0`` disables it).
            vpg_scale (`float`, *optional*):
                VPG's weight ``w`` (>= 0; 1 = off). ``None``: 1.5.
            vpg_corruption (`float`, *optional*, defaults to 0.5):
                The fraction ``p`` in [0, 1] of each prefix scale's sites replaced by a donor's.
            vpg_mode (`str`, *optional*, defaults to `"full"`):
                ``"full"``, ``"token"``, ``"position"`` or ``"codebook"`` (docs/vpg.md).
            vpg_refresh (`str`, *optional*, defaults to `"persistent"`):
                ``"persistent"`` or ``"resample"`` (docs/vpg.md).
            vpg_scales (`str` or `list[int]`, *optional*, defaults to `"all"`):
                The guided scales (resolution levels): ``"all"``, ``"semantic"`` (scales up to half the
                final side) or a list of scale indices in ``[0, num_scales - 1]``.
            igg_scale (`float`, *optional*):
                Information-Grounding Guidance's ``w`` (>= 0), added to CFG with the weight
                ``1 + w·k/(K - 1)``; ``None`` turns it off (``0`` does not); with CFG off
                (``guidance_scale=1``) it replaces CFG. Needs ``cfg_insertion_layer=0``. See
                docs/guidance.md.
            ssg_scale (`float`, *optional*, defaults to 0.0):
                Scaled Spatial Guidance's ``beta`` (>= 0); ``0`` turns it off.
            entropy_temperature (`bool`, *optional*, defaults to `False`):
                A per-site temperature ``T0·exp(-H/alpha) + theta`` (on top of ``tau``) from the entropy
                ``H`` of a site's guided bits, applied after all guidance.
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
                A training-free accelerator: ``"fastvar"`` (token pruning of the largest scales, which are
                skipped), ``"scalekv"`` (the released K/V cache budget; 1024 x 1024, Infinity-2B / -8B), or a
                config object from ``vpg_pipelines.acceleration``; ``None``: none. It acts on every row,
                VPG's corrupted rows included. See docs/acceleration.md.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                One generator, or one per image (then image ``i`` depends only on ``generator[i]``).
            prompt_embeds (`torch.Tensor`, *optional*):
                T5 features ``(B, L, text_channels)``, padded, as :meth:`encode_prompt` returns them.
            prompt_attention_mask (`torch.Tensor`, *optional*):
                ``(B, L)``, marking the valid tokens of ``prompt_embeds``; ``None``: all.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                The same as ``prompt_embeds`` for the negative prompts.
            negative_prompt_attention_mask (`torch.Tensor`, *optional*):
                The same as ``prompt_attention_mask`` for ``negative_prompt_embeds``.
            output_type (`str`, *optional*, defaults to `"pil"`):
                ``"pil"``, ``"np"`` ``(B, H, W, 3)``, ``"pt"`` ``(B, 3, H, W)`` in [0, 1], or ``"latent"``
                (the accumulated codes ``(B, d, h, w)`` the VAE decodes).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`~pipelines.ImagePipelineOutput`] instead of a plain tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                ``callback(pipe, step_index, scale_index, callback_kwargs)`` after every scale; may return
                ``{"latents": ...}`` to edit the accumulated codes (later scales see the edit); set
                ``pipe._interrupt = True`` to stop early. Setting ``pipe._guidance_scale``, ``_vpg_scale``,
                ``_igg_scale``, ``_ssg_scale`` or ``_entropy_temperature`` takes effect from the next scale.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*):
                The tensors passed to the callback; ``None``: ``["latents"]``.
            trace (`SamplerTrace`, *optional*):
                Filled with the per-scale branch logits and corruption patterns.

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`:
                [`~pipelines.ImagePipelineOutput`] with ``images``, or ``(images,)`` when ``return_dict``
                is ``False``.
        """
        # every argument of this call by name (nothing else is bound yet)
        call = self.resolve_call(**{name: value for name, value in locals().items() if name != "self"})
        guidance, schedule, with_null = call.guidance, call.schedule, call.with_null
        self._begin_call(call)
        per_scale = isinstance(guidance_scale, (list, tuple))
        self._guidance_scale = [float(g) for g in guidance_scale] if per_scale else float(guidance_scale)
        self._interrupt = False
        self._start_guidance(guidance, igg_scale, ssg_scale, entropy_temperature)

        device = self._execution_device
        if prompt is not None:
            prompt_embeds, prompt_attention_mask = self.encode_prompt(prompt, device)
        features, lens = self._compact(prompt_embeds.to(device), prompt_attention_mask, num_images_per_prompt)
        negative_features = negative_lens = None
        if with_null and negative_prompt is not None and any(negative_prompt):
            negative_prompt_embeds, negative_prompt_attention_mask = self._encode_negative(
                negative_prompt, prompt_embeds, prompt_attention_mask, device)
        if with_null and negative_prompt_embeds is not None:
            negative_features, negative_lens = self._compact(
                negative_prompt_embeds.to(device), negative_prompt_attention_mask, num_images_per_prompt)

        adapter = InfinityAdapter(self.transformer, self.vae)
        tau_value = [float(t) for t in tau] if isinstance(tau, (list, tuple)) else float(tau)
        state = adapter.prepare(features, lens, schedule, with_null=with_null, tau=tau_value, top_k=int(top_k),
                                top_p=float(top_p), negative_features=negative_features, negative_lens=negative_lens)

        with self.progress_bar(total=len(call.steps)) as progress:

            def on_step(step, st: InfinityState, logits) -> bool:
                if callback_on_step_end is not None:
                    kwargs = {name: self._callback_tensor(st, name) for name in call.callback_tensor_inputs}
                    outputs = callback_on_step_end(self, step.index, step.scale, kwargs) or {}
                    if "latents" in outputs:
                        self._set_latents(st, outputs.pop("latents"), step.scale)
                guidance.sync(self)
                progress.update()
                return self.interrupt

            run_next_scale(adapter, state, guiders=guidance.chain, generator=generator, on_step=on_step, trace=trace,
                           acceleration=call.acceleration, kv_cache_device=self.kv_cache_device)

        if output_type == "latent":
            images = state.latents.squeeze(2)
        else:
            release_offloaded(self, self.transformer)  # model offload: the VAE decodes alone
            decoded = adapter.decode(state)
            images = self.image_processor.postprocess(decoded.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @staticmethod
    def _callback_tensor(state: InfinityState, name: str) -> torch.Tensor:
        if name == "latents":
            return state.latents.squeeze(2)  # (B, d, h, w): the official ``summed_codes``
        raise KeyError(name)

    def _set_latents(self, state: InfinityState, latents: torch.Tensor, scale: int) -> None:
        """Replace the accumulated codes after scale ``scale``; the next scale's input follows them."""
        if latents.dim() == 4:
            latents = latents.unsqueeze(2)
        if latents.shape != state.latents.shape:
            raise ValueError(f"`callback_on_step_end` returned `latents` of shape {tuple(latents.shape)}, expected "
                             f"{tuple(state.latents.squeeze(2).shape)}")
        state.latents = latents.to(state.latents)
        grids = state.schedule.vae_grids
        if scale < len(grids) - 1:
            patchify = state.schedule.spatial_patchify
            state.next_input = self.vae.next_scale_input(state.latents, grids[scale + 1], patchify)

    @torch.no_grad()
    def preview_image(self, latents: torch.Tensor) -> torch.Tensor:
        """A quick picture of partial codes (``callback_on_step_end``'s ``latents``, the codes accumulated so
        far): decoded, ``(B, 3, H, W)`` in [0, 1]."""
        param = next(self.vae.parameters())
        return ((self.vae.decode(latents.to(device=param.device)) + 1) / 2).clamp(0, 1)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_official(
        cls,
        transformer_checkpoint: str,
        vae_checkpoint: str,
        text_encoder: Any = None,
        tokenizer: Any = None,
        config: dict | None = None,
        torch_dtype: torch.dtype | None = None,
        quantization: str | None = None,
    ) -> VPGInfinityPipeline:
        """Build the pipeline from the released files (``infinity_2b_reg.pth`` + ``infinity_vae_d32reg.pth``,
        or the 8B shard folder + ``infinity_vae_d56_f8_14_patchify.pth``).

        Args:
            transformer_checkpoint (`str`):
                The transformer: a local path (a ``.pth`` file or the 8B shard folder), or an official file
                name fetched from the hub repo ``FoundationVision/Infinity`` through ``huggingface_hub``.
            vae_checkpoint (`str`):
                The BSQ VAE, the same way.
            text_encoder (`T5EncoderModel` or `str`, *optional*):
                A ``T5EncoderModel``, or a path / hub id loaded with ``T5EncoderModel.from_pretrained``
                (``"google/flan-t5-xl"``; the official code runs it in float16). ``None``: pass
                ``prompt_embeds`` yourself.
            tokenizer (`PreTrainedTokenizer` or `str`, *optional*):
                A tokenizer, or a path / hub id (``AutoTokenizer``, ``legacy=True``); ``None``: the
                ``text_encoder`` path when that is a string.
            config (`dict`, *optional*):
                ``{"vae": {...}, "infinity": {...}}`` with the official constructor arguments (e.g. the
                parity fixtures' ``config.json``); anything missing is read off the weights. With top-level
                ``h_div_w_template`` and ``pn`` it also sets the default output size.
            torch_dtype (`torch.dtype`, *optional*):
                Cast the transformer and the VAE (and a text encoder loaded from a path).
            quantization (`str`, *optional*):
                The transformer's weights in ``"int8"`` (TorchAO), ``"nf4"`` (bitsandbytes, CUDA) or
                ``"fp8"`` (layerwise casting); see ``docs/memory.md``.

        Returns:
            [`VPGInfinityPipeline`]: the loaded pipeline; move it with ``.to(device)`` or use
            ``enable_model_cpu_offload()``.

        Examples:

        ```py
        >>> import torch
        >>> from vpg_pipelines import VPGInfinityPipeline

        >>> pipe = VPGInfinityPipeline.from_official(
        ...     "infinity_2b_reg.pth", "infinity_vae_d32reg.pth", text_encoder="google/flan-t5-xl",
        ...     torch_dtype=torch.bfloat16,
        ... )  # doctest: +SKIP
        >>> pipe.save_pretrained("infinity-2b-vpg")  # doctest: +SKIP

        ```
        """
        check_quantization(quantization)
        transformer, vae = load_official_infinity(transformer_checkpoint, vae_checkpoint, config=config,
                                                  torch_dtype=torch_dtype)
        transformer = quantize_transformer(transformer, quantization, torch_dtype)
        if isinstance(tokenizer, str) or (tokenizer is None and isinstance(text_encoder, str)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer or text_encoder, legacy=True)
        if isinstance(text_encoder, str):
            text_encoder = T5EncoderModel.from_pretrained(text_encoder, dtype=torch_dtype).eval()
        height = width = DEFAULT_SIZE
        if config and "h_div_w_template" in config and "pn" in config:
            height, width = schedule_from_template(float(config["h_div_w_template"]), config["pn"]).image_size
        return cls(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                   default_height=height, default_width=width)
