"""Class-conditional VAR with Visual Prefix Guidance, as a diffusers pipeline."""

from __future__ import annotations

import difflib
import json
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import replace_example_docstring

from ..acceleration.base import Acceleration, AccelerationTarget
from ..guidance.base import MAX_STRENGTH, GuidanceTerm
from ..guidance.cfg import ClassifierFreeGuidance
from ..guidance.prefix import PrefixGuidance
from ..guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS
from ..loading.var import load_official_var
from ..memory.mixin import MemoryPlanningMixin
from ..memory.offload import release_offloaded
from ..memory.quantization import check_quantization, quantize_transformer
from ..models.adapter import ScaleStep
from ..models.var.adapter import VARAdapter, scale_steps
from ..models.var.transformer import VARTransformer
from ..models.var.vqvae import VARVQVAE
from ..sampling.next_scale import SamplerTrace, run_next_scale
from .call import CallStateMixin, ResolvedCall, bind_arguments, call_acceleration, callback_tensor_inputs, frozen
from .checks import check_count, check_generator, check_number, check_output, check_top_k
from .checks import prefix_guidance as build_prefix_guidance
from .guiders import CallGuidance, GuidanceStrengthsMixin, check_guidance_args

PAPER_VPG_SCALES = {16: 3.0, 20: 2.4, 24: 1.8, 30: 1.3}
"""The paper's VPG operating points for the released VAR depths (all at corruption 0.5)."""
DEFAULT_VPG_SCALE = 1.5

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from vpg_pipelines import VPGVARPipeline, load_demo_pipeline

        >>> # the bundled demo model (a 1.3 M-parameter VAR trained on rendered emoji; runs offline on a CPU)
        >>> pipe = load_demo_pipeline()
        >>> pipe.set_progress_bar_config(disable=True)
        >>> generator = torch.Generator().manual_seed(0)
        >>> image = pipe("plant", guidance_scale=3.0, top_k=0, top_p=0.95, vpg_scale=1.5, generator=generator).images[0]
        >>> image.size
        (32, 32)

        >>> # the released VAR-d16: its files come from the hub repo FoundationVision/var (not available
        >>> # offline, hence SKIP)
        >>> pipe = VPGVARPipeline.from_official(
        ...     "var_d16.pth", "vae_ch160v4096z32.pth", torch_dtype=torch.float16
        ... ).to("cuda")  # doctest: +SKIP
        >>> pipe.get_label_ids(["golden retriever", "tabby cat"])  # doctest: +SKIP
        [207, 281]
        >>> images = pipe(
        ...     ["golden retriever", "tabby cat"], vpg_scale=3.0, generator=torch.Generator().manual_seed(0)
        ... ).images  # doctest: +SKIP

        ```
"""


def imagenet_id2label() -> dict[str, str]:
    """The 1000 ImageNet-1k class names (DiT's ``id2label`` convention: synonyms comma-separated)."""
    text = resources.files("vpg_pipelines").joinpath("data/imagenet_id2label.json").read_text(encoding="utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class VARCall(ResolvedCall):
    """:meth:`VPGVARPipeline.resolve_call`'s result; ``class_ids``: one per prompt, before ``num_images_per_prompt``."""

    class_ids: tuple[int, ...]


class VPGVARPipeline(GuidanceStrengthsMixin, MemoryPlanningMixin, CallStateMixin, DiffusionPipeline):
    r"""Class-conditional image generation with VAR and Visual Prefix Guidance.

    Components:
        transformer ([`VARTransformer`]): the next-scale transformer.
        vae ([`VARVQVAE`]): the multi-scale VQVAE (decoder and codebook).
        id2label (`dict`, *optional*): class id -> name(s), comma-separated synonyms. Defaults to the
            ImageNet-1k names for 1000-class models and ``"class <i>"`` otherwise.
    """

    model_cpu_offload_seq = "transformer->vae"
    _exclude_from_cpu_offload = ["vae"]  # used inside the loop (codebook); small: stays on the device
    _callback_tensor_inputs = ["latents"]
    cfg_schedule = "linear"
    """How CFG's strength grows over the scales (the official VAR ramp, see ``guidance_scale``)."""
    vae_dtype: torch.dtype | None = None
    """The VAE computes in the pipeline's dtype."""

    def __init__(self, transformer: VARTransformer, vae: VARVQVAE, id2label: dict | None = None) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae)
        if id2label is None:
            n = transformer.config.num_classes
            id2label = imagenet_id2label() if n == 1000 else {str(i): f"class {i}" for i in range(n)}
        id2label = {str(k): str(v) for k, v in id2label.items()}
        self.register_to_config(id2label=id2label)
        self.labels: dict[str, int] = {}
        for key, value in id2label.items():
            for name in value.split(","):
                self.labels.setdefault(name.strip().lower(), int(key))
        self.labels = dict(sorted(self.labels.items()))
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)
        self._interrupt = False

    # -- diffusers-style properties -------------------------------------------------------------
    def _default_call_shape(self) -> tuple[tuple[ScaleStep, ...], int]:
        patch_nums = list(self.transformer.config.patch_nums)
        return tuple(scale_steps(patch_nums)), len(patch_nums)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    # -- labels ---------------------------------------------------------------------------------
    def get_label_ids(self, label: str | Sequence[str]) -> list[int]:
        """Map class names (case-insensitive, any synonym) to class ids."""
        names = [label] if isinstance(label, str) else list(label)
        ids = []
        for name in names:
            key = name.strip().lower()
            if key not in self.labels:
                close = difflib.get_close_matches(key, self.labels.keys(), n=5, cutoff=0.6)
                hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(f"`prompt` class name {name!r} is not one of this model's classes.{hint}")
            ids.append(self.labels[key])
        return ids

    def _class_ids(self, prompt: Any, class_labels: Any) -> list[int]:
        items = prompt if prompt is not None else class_labels
        if isinstance(items, torch.Tensor):
            items = items.flatten().tolist()
        if isinstance(items, (str, numbers.Integral)):
            items = [items]
        ids = []
        for item in items:
            if isinstance(item, str):
                ids.extend(self.get_label_ids(item))
            else:
                ids.append(int(item))
        return ids

    # -- validation -----------------------------------------------------------------------------
    def check_inputs(
        self,
        prompt: Any,
        class_labels: Any,
        num_images_per_prompt: Any,
        guidance_scale: Any,
        top_k: Any,
        top_p: Any,
        more_smooth: Any,
        generator: Any,
        output_type: Any,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: Any,
    ) -> list[int]:
        """Validate every argument; return the class ids (before ``num_images_per_prompt``)."""
        if (prompt is None) == (class_labels is None):
            raise ValueError("Pass exactly one of `prompt` (class names or ids) and `class_labels` (class ids).")
        arg = "prompt" if prompt is not None else "class_labels"
        value = prompt if prompt is not None else class_labels
        allowed = (str, numbers.Integral, list, tuple, torch.Tensor)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise TypeError(f"`{arg}` has to be a class name, a class id or a list of them, but is {type(value)}")
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"`{arg}` is an empty list; pass at least one class.")
            for item in value:
                if isinstance(item, bool) or not isinstance(item, (str, numbers.Integral)):
                    raise TypeError(f"`{arg}` entries must be class names or integer ids, got {item!r}")
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.numel() == 0):
            raise ValueError(f"`{arg}` tensor must hold integer class ids, got {value.dtype} ({value.numel()} values)")
        listed = value if isinstance(value, (list, tuple)) else [value]
        if class_labels is not None and any(isinstance(v, str) for v in listed):
            raise TypeError("`class_labels` takes integer ids; pass class names as `prompt`.")
        ids = self._class_ids(prompt, class_labels)
        n = self.transformer.config.num_classes
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"`{arg}` class ids must be in [0, {n - 1}], got {bad}")
        check_count("num_images_per_prompt", num_images_per_prompt)
        check_number("guidance_scale", guidance_scale, low=0.0, high=MAX_STRENGTH)
        check_top_k(top_k)
        check_number("top_p", top_p, low=0.0, high=1.0)
        if not isinstance(more_smooth, bool):
            raise TypeError(f"`more_smooth` must be a bool, got {more_smooth!r}")
        batch = len(ids) * num_images_per_prompt
        check_generator(generator, batch)
        check_output(output_type, callback_on_step_end, callback_on_step_end_tensor_inputs,
                     self._callback_tensor_inputs)
        return ids

    def prefix_guidance(
        self,
        vpg_scale: float | None,
        vpg_corruption: float,
        vpg_mode: str,
        vpg_refresh: str,
        vpg_scales: str | Sequence[int],
    ) -> PrefixGuidance:
        """Validated VPG settings; ``vpg_scale=None`` takes the paper's value for this depth."""
        if vpg_scale is None:
            vpg_scale = PAPER_VPG_SCALES.get(self.transformer.config.depth, DEFAULT_VPG_SCALE)
        num_scales = len(self.transformer.config.patch_nums)
        return build_prefix_guidance(vpg_scale, vpg_corruption, vpg_mode, vpg_refresh, vpg_scales, num_scales)

    def resolve_call(self, **call_kwargs: Any) -> VARCall:
        """The call ``self(**call_kwargs)`` would make, checked and resolved, without running it.

        Takes the arguments of :meth:`__call__` (``TypeError`` for any other) and raises the errors the call
        would raise. See :class:`~vpg_pipelines.pipelines.call.ResolvedCall`.
        """
        a = bind_arguments(self, call_kwargs)
        tensor_inputs = callback_tensor_inputs(a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"])
        ids = self.check_inputs(
            a["prompt"], a["class_labels"], a["num_images_per_prompt"], a["guidance_scale"], a["top_k"], a["top_p"],
            a["more_smooth"], a["generator"], a["output_type"], a["callback_on_step_end"], tensor_inputs,
        )
        vpg = self.prefix_guidance(a["vpg_scale"], a["vpg_corruption"], a["vpg_mode"], a["vpg_refresh"],
                                   a["vpg_scales"])
        extra = (a["igg_scale"], a["ssg_scale"], a["entropy_temperature"], a["entropy_temperature_t0"],
                 a["entropy_temperature_alpha"], a["entropy_temperature_theta"], a["guiders"])
        check_guidance_args(*extra)
        cfg = ClassifierFreeGuidance(guidance_scale=float(a["guidance_scale"]), schedule=self.cfg_schedule)
        all_steps = tuple(scale_steps(list(self.transformer.config.patch_nums)))
        num_scales = len(all_steps)
        target = AccelerationTarget("var", int(self.transformer.config.depth), all_steps, num_scales)
        acceleration, steps = call_acceleration(a["acceleration"], target)
        scales = [step.scale for step in steps]
        guidance = CallGuidance(cfg, vpg, *extra, step_scales=scales)
        return VARCall(
            arguments=frozen(a), batch=len(ids) * a["num_images_per_prompt"], steps=steps, num_scales=num_scales,
            guidance=guidance, with_null=guidance.chain.uses_conditions(scales, num_scales),
            callback_tensor_inputs=tuple(tensor_inputs), class_ids=tuple(ids), acceleration=acceleration,
            schedule_steps=all_steps,
        )

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | int | Sequence[str | int] | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 1.5,
        top_k: int = 900,
        top_p: float = 0.96,
        more_smooth: bool = False,
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
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        trace: SamplerTrace | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate class-conditional images.

        Defaults are the official VAR evaluation settings (cfg 1.5, top-k 900, top-p 0.96, no Gumbel
        smoothing); the official demo notebook uses ``guidance_scale=4, top_p=0.95``.

        Args:
            prompt (`str`, `int` or `list[str | int]`, *optional*):
                Class name(s) (any synonym, case-insensitive, e.g. ``"golden retriever"``; see
                :meth:`get_label_ids`) or class id(s). Pass exactly one of ``prompt`` and ``class_labels``.
            class_labels (`int`, `list[int]` or `torch.Tensor`, *optional*):
                Class id(s), as in diffusers' ``DiTPipeline``.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Images per class (adjacent in the output).
            guidance_scale (`float`, *optional*, defaults to 1.5):
                The official VAR ``cfg``: scale ``k`` of ``K`` uses ``(1 + t)·cond − t·uncond`` with
                ``t = cfg·k/(K − 1)``. ``0`` turns CFG off (no null-class rows are run).
            top_k (`int`, *optional*, defaults to 900):
                The official top-k filter (``0`` disables it; ``1`` is greedy).
            top_p (`float`, *optional*, defaults to 0.96):
                The official top-p filter (``0`` disables it).
            more_smooth (`bool`, *optional*, defaults to `False`):
                The official Gumbel-softmax smoothing (visuals only, not for FID).
            vpg_scale (`float`, *optional*):
                VPG's weight ``w`` (>= 0; 1 = off). ``None``: the paper's value for this depth (d16 3.0,
                d20 2.4, d24 1.8, d30 1.3), else 1.5.
            vpg_corruption (`float`, *optional*, defaults to 0.5):
                The fraction ``p`` in [0, 1] of each prefix scale's sites replaced by a donor's.
            vpg_mode (`str`, *optional*, defaults to `"full"`):
                ``"full"``, ``"token"``, ``"position"`` or ``"codebook"`` (docs/vpg.md).
            vpg_refresh (`str`, *optional*, defaults to `"persistent"`):
                ``"persistent"`` or ``"resample"`` (docs/vpg.md).
            vpg_scales (`str` or `list[int]`, *optional*, defaults to `"all"`):
                The guided scales (resolution levels): ``"all"``, ``"semantic"`` (scales up to half the
                final side) or a list of scale indices in ``[0, num_scales − 1]``.
            igg_scale (`float`, *optional*):
                Information-Grounding Guidance's ``w`` (>= 0), added to CFG with the weight
                ``1 + w·k/(K − 1)``; ``None`` turns it off (``0`` does not); with CFG off
                (``guidance_scale=0``) it replaces CFG. See docs/guidance.md.
            ssg_scale (`float`, *optional*, defaults to 0.0):
                Scaled Spatial Guidance's ``beta`` (>= 0); ``0`` turns it off.
            entropy_temperature (`bool`, *optional*, defaults to `False`):
                A per-site temperature ``T0·exp(−H/alpha) + theta`` from the entropy ``H`` of the guided
                distribution, applied after all guidance.
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
                the released ones applies to VAR yet, so any is refused with the reason
                (docs/acceleration.md).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                One generator, or one per image (then image ``i`` depends only on ``generator[i]``, so a
                batch equals the images generated one by one).
            output_type (`str`, *optional*, defaults to `"pil"`):
                ``"pil"``, ``"np"`` ``(B, H, W, 3)``, ``"pt"`` ``(B, 3, H, W)`` in [0, 1], or ``"latent"``
                (the cumulative VQVAE feature map ``f_hat``).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`~pipelines.ImagePipelineOutput`] instead of a plain tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                ``callback(pipe, step_index, scale_index, callback_kwargs)`` after every scale; may return
                ``{"latents": ...}`` to edit ``f_hat``; set ``pipe._interrupt = True`` to stop early (the
                image decodes from what was sampled). Setting ``pipe._guidance_scale``, ``_vpg_scale``,
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
        guidance = call.guidance
        self._begin_call(call)
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False
        self._start_guidance(guidance, igg_scale, ssg_scale, entropy_temperature)

        device = self._execution_device
        labels = torch.tensor(call.class_ids, dtype=torch.long).repeat_interleave(num_images_per_prompt)
        adapter = VARAdapter(self.transformer, self.vae)
        state = adapter.prepare(labels, with_null=call.with_null, device=device, dtype=self.vae.dtype,
                                top_k=int(top_k), top_p=float(top_p), more_smooth=more_smooth)

        with self.progress_bar(total=len(call.steps)) as progress:

            def on_step(step, st, logits) -> bool:
                if callback_on_step_end is not None:
                    kwargs = {name: getattr(st, name) for name in call.callback_tensor_inputs}
                    outputs = callback_on_step_end(self, step.index, step.scale, kwargs) or {}
                    st.latents = outputs.pop("latents", st.latents)
                guidance.sync(self)
                progress.update()
                return self.interrupt

            run_next_scale(adapter, state, guiders=guidance.chain, generator=generator, on_step=on_step, trace=trace,
                           acceleration=call.acceleration, kv_cache_device=self.kv_cache_device)

        if output_type == "latent":
            images = state.latents
        else:
            release_offloaded(self, self.transformer)  # model offload: the VAE decodes alone
            decoded = adapter.decode(state)
            images = self.image_processor.postprocess(decoded.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @torch.no_grad()
    def preview_image(self, latents: torch.Tensor) -> torch.Tensor:
        """A quick picture of a partial latent (``callback_on_step_end``'s ``latents``, the cumulative
        ``f_hat`` so far): decoded, ``(B, 3, H, W)`` in [0, 1]."""
        decoded = self.vae.decode_latent(latents.to(device=self.vae.device, dtype=self.vae.dtype))
        return ((decoded.float() + 1) / 2).clamp(0, 1)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_official(
        cls,
        var_checkpoint: str,
        vae_checkpoint: str,
        config: dict | None = None,
        torch_dtype: torch.dtype | None = None,
        id2label: dict | None = None,
        quantization: str | None = None,
    ) -> VPGVARPipeline:
        """Build the pipeline from the released ``var_d*.pth`` and ``vae_ch160v4096z32.pth`` files.

        Args:
            var_checkpoint (`str`):
                The transformer: a local path, or an official file name fetched from the hub repo
                ``FoundationVision/var`` through ``huggingface_hub`` (``"var_d16.pth"``).
            vae_checkpoint (`str`):
                The VQVAE, the same way (``"vae_ch160v4096z32.pth"``).
            config (`dict`, *optional*):
                ``{"vqvae": {...}, "var": {...}}`` with the official constructor arguments (needed for
                non-standard sizes); inferred from the weights otherwise.
            torch_dtype (`torch.dtype`, *optional*):
                Cast the models (e.g. ``torch.float16``); ``None`` keeps float32.
            id2label (`dict`, *optional*):
                Class id -> name(s), comma-separated synonyms; ``None``: the ImageNet-1k names for
                1000-class models, ``"class <i>"`` otherwise.
            quantization (`str`, *optional*):
                The transformer's weights in ``"int8"`` (TorchAO), ``"nf4"`` (bitsandbytes, CUDA) or
                ``"fp8"`` (layerwise casting); see ``docs/memory.md``.

        Returns:
            [`VPGVARPipeline`]: the loaded pipeline; move it with ``.to(device)``.

        Examples:

        ```py
        >>> import torch
        >>> from vpg_pipelines import VPGVARPipeline

        >>> pipe = VPGVARPipeline.from_official(
        ...     "var_d16.pth", "vae_ch160v4096z32.pth", torch_dtype=torch.float16
        ... )  # doctest: +SKIP
        >>> pipe.save_pretrained("var-d16-vpg")  # doctest: +SKIP

        ```
        """
        check_quantization(quantization)
        transformer, vae = load_official_var(var_checkpoint, vae_checkpoint, config=config, torch_dtype=torch_dtype)
        transformer = quantize_transformer(transformer, quantization, torch_dtype)
        return cls(transformer=transformer, vae=vae, id2label=id2label)
