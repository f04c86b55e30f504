"""From a pipeline and the arguments of one ``pipe(...)`` call to the planner's inputs.

The call is resolved the way ``__call__`` resolves it (the same defaults, the same ``check_inputs`` and
guidance constructors, the adapters' own step lists), so a bad argument fails here with the same
message it would fail with in the call.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..guidance.apg import AdaptiveProjectedGuidance
from ..guidance.cfg import ClassifierFreeGuidance
from .decode import decode_bytes, text_encoder_bytes
from .kv_timeline import guided_steps, kv_timeline
from .planner import PlanInputs
from .replay import InfinityStarStepReplay, InfinityStepReplay, VARStepReplay
from .weights import QUANTIZATIONS, weight_layout

KINDS = {"VPGVARPipeline": "var", "VPGInfinityPipeline": "infinity", "VPGInfinityStarPipeline": "infinity_star"}


def pipeline_kind(pipe: Any) -> str:
    for cls in type(pipe).__mro__:
        if cls.__name__ in KINDS:
            return KINDS[cls.__name__]
    raise TypeError(f"cannot plan the memory of a {type(pipe).__name__}; known: {sorted(KINDS)}")


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a component computes in (diffusers' ``dtype``: the compute dtype under layerwise casting)."""
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _bind(pipe: Any, call_kwargs: dict[str, Any]) -> dict[str, Any]:
    signature = inspect.signature(type(pipe).__call__)
    try:
        bound = signature.bind(pipe, **call_kwargs)
    except TypeError as err:
        raise TypeError(f"estimate_memory takes the arguments of {type(pipe).__name__}.__call__: {err}") from None
    bound.apply_defaults()
    args = dict(bound.arguments)
    args.pop("self", None)
    return args


def _layouts(pipe: Any, dtype: torch.dtype | None, quantization: str | None, vae_dtype: torch.dtype) -> dict:
    planned = dtype is not None or quantization is not None
    layouts = {}
    for name in ("text_encoder", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if not isinstance(module, nn.Module):
            continue
        if not planned:
            layouts[name] = weight_layout(module)
        elif name == "transformer":
            layouts[name] = weight_layout(module, dtype or compute_dtype(module), quantization or "none")
        elif name == "vae":
            layouts[name] = weight_layout(module, vae_dtype)
        else:
            layouts[name] = weight_layout(module, dtype or compute_dtype(module))
    return layouts


def _tokens(pipe: Any, texts: list[str], padding_to: int | None, fallback: int, notes: list[str]) -> int:
    """Real tokens of the longest text (what the condition rows hold), from the pipeline's tokenizer."""
    limit = int(pipe.transformer.config.text_maxlen)
    if padding_to is not None:
        return padding_to
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None or not texts:
        notes.append(f"prompt length not tokenized (no tokenizer): planned with {fallback} text tokens")
        return fallback
    ids = tokenizer(texts, max_length=limit, truncation=True).input_ids
    return max(len(i) for i in ids)


def _embed_tokens(embeds: torch.Tensor | None, mask: torch.Tensor | None) -> int | None:
    if embeds is None:
        return None
    if mask is None:
        return int(embeds.shape[1])
    return int(mask.sum(dim=1).max())


def plan_inputs(
    pipe: Any,
    call_kwargs: dict[str, Any],
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
    text_tokens: int | None = None,
    stream: bool = True,
) -> PlanInputs:
    """Resolve one call of ``pipe`` for the planner (see :func:`vpg_pipelines.memory.estimate_memory`)."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}")
    kind = pipeline_kind(pipe)
    args = _bind(pipe, call_kwargs)
    planned_dtype = dtype or compute_dtype(pipe.transformer)
    if quantization == "fp8":
        planned_dtype = dtype or torch.bfloat16  # fp8 storage computes in bf16
    if dtype is None and quantization is None:
        vae_dtype = _vae_dtype(pipe, planned_dtype)
    else:
        vae_dtype = torch.float32 if kind == "infinity_star" else planned_dtype  # the official video VAE: float32
    resolve = {"var": _var, "infinity": _infinity, "infinity_star": _infinity_star}[kind]
    notes: list[str] = []
    parts = resolve(pipe, args, planned_dtype, vae_dtype, text_tokens, notes)
    layouts = _layouts(pipe, dtype, quantization, vae_dtype)
    steps, vpg = parts["steps"], parts.pop("vpg")
    guided = guided_steps(steps, vpg)
    replay = parts.pop("replay")
    refresh = vpg.refresh if vpg is not None else "persistent"
    timeline = kv_timeline(steps, replay.geometry(), parts["condition_rows"], guided, refresh,
                           replay.prefix_tokens)
    settings = {
        "model": kind,
        "dtype": str(planned_dtype).replace("torch.", ""),
        "quantization": quantization or _current_quantization(pipe.transformer),
        "batch": parts["batch"],
        "cfg": parts["cfg"],
        "vpg_scales": vpg.scales if guided else "off",
        "vpg_refresh": refresh,
        **parts.pop("describe"),
    }
    return PlanInputs(
        settings=settings, steps=steps, batch=parts["batch"], timeline=timeline, weights=layouts,
        activation=replay.activation, state=replay.run_state_bytes, vocab=replay.vocab, cfg=parts["cfg"],
        guided=guided, refresh=refresh,
        sampling_bytes=parts["sampling_bytes"], decode=parts["decode"], encode=parts["encode"], stream=stream,
        notes=notes,
    )


def _current_quantization(module: nn.Module) -> str:
    quantizer = getattr(module, "hf_quantizer", None)
    if quantizer is not None:
        return str(quantizer.quantization_config.quant_method.value)
    hooks = getattr(module, "_diffusers_hook", None)
    if hooks is not None and hooks.get_hook("layerwise_casting") is not None:
        return "fp8"
    return "none"


def _vae_dtype(pipe: Any, default: torch.dtype) -> torch.dtype:
    param = next(pipe.vae.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else default


def _guidance(a: dict, condition, vpg, step_scales: list[int], num_scales: int) -> tuple[bool, Any]:
    """Whether the call builds null-condition rows, and its prefix term, from the call's whole chain.

    The pipelines build the chain with :class:`~vpg_pipelines.pipelines.guiders.CallGuidance`, so IGG
    replacing an unset CFG (null rows without CFG) and a ``guiders=[...]`` list are planned as run.
    """
    from ..pipelines.guiders import CallGuidance, check_guidance_args

    extra = (a["igg_scale"], a["ssg_scale"], a["entropy_temperature"], a["entropy_temperature_t0"],
             a["entropy_temperature_alpha"], a["entropy_temperature_theta"], a["guiders"])
    check_guidance_args(*extra)
    chain = CallGuidance(condition, vpg, *extra, step_scales=step_scales).chain
    return chain.uses_conditions(step_scales, num_scales), chain.prefix_term


def _var(pipe, a, dtype, vae_dtype, text_tokens, notes) -> dict:
    from ..models.var.adapter import VARAdapter

    ids = pipe.check_inputs(a["prompt"], a["class_labels"], a["num_images_per_prompt"], a["guidance_scale"],
                            a["top_k"], a["top_p"], a["more_smooth"], a["generator"], a["output_type"],
                            a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"] or ["latents"])
    vpg = pipe.prefix_guidance(a["vpg_scale"], a["vpg_corruption"], a["vpg_mode"], a["vpg_refresh"], a["vpg_scales"])
    batch = len(ids) * a["num_images_per_prompt"]
    num_scales = pipe.num_timesteps
    steps = VARAdapter(pipe.transformer, pipe.vae).steps(None)
    cfg, vpg = _guidance(a, ClassifierFreeGuidance(guidance_scale=float(a["guidance_scale"]), schedule="linear"), vpg,
                         list(range(num_scales)), num_scales)
    rows = batch * (2 if cfg else 1)
    replay = VARStepReplay(pipe.transformer, steps, rows, dtype, latent_dtype=vae_dtype)
    side = steps[-1].grid[0]
    latents = (batch, int(pipe.vae.Cvae), side, side)
    pixels = side * 2 ** (len(pipe.vae.config.ch_mult) - 1)
    return {
        "steps": steps, "vpg": vpg, "batch": batch, "cfg": cfg, "condition_rows": rows, "replay": replay,
        "sampling_bytes": 24 if a["top_p"] > 0 else 8,
        "decode": decode_bytes("var", pipe.vae, latents, vae_dtype) if a["output_type"] != "latent" else 0,
        "encode": None, "describe": {"size": f"{pixels}x{pixels}"},
    }


def _infinity(pipe, a, dtype, vae_dtype, text_tokens, notes) -> dict:
    from ..models.infinity.adapter import InfinityAdapter

    height = pipe.config.default_height if a["height"] is None else a["height"]
    width = pipe.config.default_width if a["width"] is None else a["width"]
    prompt, embeds, mask = a["prompt"], a["prompt_embeds"], a["prompt_attention_mask"]
    texts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    channels = int(pipe.transformer.config.text_channels)
    check_prompt, check_embeds = prompt, embeds
    if prompt is not None and (pipe.text_encoder is None or pipe.tokenizer is None):
        check_prompt, check_embeds = None, torch.zeros(len(texts), 1, channels)  # planning without a tokenizer
    schedule, prompts = pipe.check_inputs(
        check_prompt, a["negative_prompt"] if check_prompt is not None else None, check_embeds,
        mask if check_prompt is None and embeds is not None else None, a["negative_prompt_embeds"],
        a["negative_prompt_attention_mask"], height, width, a["num_images_per_prompt"], a["guidance_scale"],
        a["tau"], a["cfg_insertion_layer"], a["top_k"], a["top_p"], a["generator"], a["output_type"],
        a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"] or ["latents"])
    vpg = pipe.prefix_guidance(a["vpg_scale"], a["vpg_corruption"], a["vpg_mode"], a["vpg_refresh"],
                               a["vpg_scales"], schedule.num_scales)
    batch = prompts * a["num_images_per_prompt"]
    gs = a["guidance_scale"]
    strength = [float(g) for g in gs] if isinstance(gs, (list, tuple)) else float(gs)
    condition = ClassifierFreeGuidance(guidance_scale=strength, schedule="constant",
                                       layer=int(a["cfg_insertion_layer"]))
    scales = list(range(schedule.num_scales))
    cfg, vpg = _guidance(a, condition, vpg, scales, schedule.num_scales)
    tokens = _embed_tokens(embeds, mask)
    if tokens is None:
        negatives = a["negative_prompt"]
        negatives = [negatives] if isinstance(negatives, str) else list(negatives or [])
        fallback = text_tokens or int(pipe.transformer.config.text_maxlen)
        tokens = _tokens(pipe, texts + [n for n in negatives if n], None, fallback, notes)
    steps = InfinityAdapter(pipe.transformer, pipe.vae).steps(SimpleNamespace(schedule=schedule))
    rows = batch * (2 if cfg else 1)
    replay = InfinityStepReplay(pipe.transformer, steps, rows, dtype, text_tokens=tokens)
    h, w = schedule.vae_grids[-1]
    latents = (batch, int(pipe.vae.config.codebook_dim), 1, h, w)
    encoder = pipe.text_encoder
    encode = None
    if prompt is not None and encoder is not None:
        encode = text_encoder_bytes(encoder, len(texts), tokens, compute_dtype(encoder))
    return {
        "steps": steps, "vpg": vpg, "batch": batch, "cfg": cfg, "condition_rows": rows, "replay": replay,
        "sampling_bytes": 24,
        "decode": decode_bytes("infinity", pipe.vae, latents, vae_dtype) if a["output_type"] != "latent" else 0,
        "encode": encode, "describe": {"size": "x".join(map(str, schedule.image_size)), "text_tokens": tokens},
    }


def _infinity_star(pipe, a, dtype, vae_dtype, text_tokens, notes) -> dict:
    from ..models.infinity_star.adapter import InfinityStarAdapter

    args = pipe._args
    prompt, embeds = a["prompt"], a["prompt_embeds"]
    texts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    channels = int(pipe.transformer.config.text_channels)
    check_prompt, check_embeds = prompt, embeds
    if prompt is not None and (pipe.text_encoder is None or pipe.tokenizer is None):
        check_prompt, check_embeds = None, torch.zeros(len(texts), 1, channels)
    guidance_scale = args["cfg"] if a["guidance_scale"] is None else a["guidance_scale"]
    guidance = ("apg" if args["use_apg"] else "cfg") if a["guidance"] is None else a["guidance"]
    threshold = args["apg_norm_threshold"] if a["apg_norm_threshold"] is None else a["apg_norm_threshold"]
    tau_image = args["tau_image"] if a["tau_image"] is None else a["tau_image"]
    tau_video = args["tau_video"] if a["tau_video"] is None else a["tau_video"]
    prompts = pipe.check_inputs(
        check_prompt, a["negative_prompt"] if check_prompt is not None else None, check_embeds,
        a["negative_prompt_embeds"], a["prompt_attention_mask"] if check_prompt is None and embeds is not None
        else None, a["negative_prompt_attention_mask"], a["num_videos_per_prompt"], guidance_scale, guidance,
        threshold, tau_image, tau_video, a["image"], a["prefix_codes"], a["generator"], a["output_type"],
        a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"] or ["latents"])
    num_frames = args["video_frames"] if a["num_frames"] is None else a["num_frames"]
    height, width = (a["height"], a["width"])
    if height is None and width is None:
        height, width = pipe.default_size
    pipe._check_size(height, width)
    plan = pipe.plan(num_frames, height, width, float(tau_image), float(tau_video))
    vpg = pipe.prefix_guidance(a["vpg_scale"], a["vpg_corruption"], a["vpg_mode"], a["vpg_refresh"],
                               a["vpg_scales"], len(plan.schedule))
    if guidance == "apg":
        term = AdaptiveProjectedGuidance(float(guidance_scale), norm_threshold=float(threshold), eta=0.0)
    else:
        term = ClassifierFreeGuidance(float(guidance_scale), schedule="constant")
    cfg, vpg = _guidance(a, term, vpg, [s.scale for s in plan.steps], len(plan.schedule))
    batch = prompts * a["num_videos_per_prompt"]
    tokens = _embed_tokens(embeds, a["prompt_attention_mask"])
    if tokens is None:
        negatives = a["negative_prompt"]
        negatives = [negatives] if isinstance(negatives, str) else list(negatives or [])
        captions = [pipe.caption(p, num_frames) for p in texts]
        tokens = _tokens(pipe, captions + [n for n in negatives if n], None, text_tokens or 512, notes)
    steps = InfinityStarAdapter(pipe.transformer, pipe.vae).steps(SimpleNamespace(plan=plan))
    rows = batch * (2 if cfg else 1)
    replay = InfinityStarStepReplay(pipe.transformer, steps, rows, dtype, plan=plan, text_tokens=tokens,
                                    batch=batch)
    frames = sum(plan.clip_grid(c)[0] for c in range(plan.num_clips))
    _, h, w = plan.schedule[-1]
    latents = (batch, int(pipe.vae.codebook_dim), frames, h, w)
    encoder, encode = pipe.text_encoder, None
    if prompt is not None and encoder is not None:  # the official encoder pads to text_maxlen
        encode = text_encoder_bytes(encoder, len(texts), int(pipe.transformer.config.text_maxlen),
                                    compute_dtype(encoder))
    return {
        "steps": steps, "vpg": vpg, "batch": batch, "cfg": cfg, "condition_rows": rows, "replay": replay,
        "sampling_bytes": 8,
        "decode": decode_bytes("infinity_star", pipe.vae, latents, vae_dtype) if a["output_type"] != "latent" else 0,
        "encode": encode,
        "describe": {"size": f"{height}x{width}", "num_frames": num_frames, "text_tokens": tokens,
                     "guidance": guidance},
    }
