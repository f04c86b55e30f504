"""From a pipeline and the arguments of one ``pipe(...)`` call to the planner's inputs.

The call is the pipeline's own: ``pipe.resolve_call(**call_kwargs)`` applies the defaults, runs every check
and builds the steps and the guidance chain, so a bad argument fails here with the message it would fail
with in the call. What is planned per model (the one-block replay, decoding, the prompt length) follows the
pipeline's transformer.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..models.chunking import DEFAULT_CHUNK_TOKENS, check_chunking
from ..models.infinity.transformer import InfinityTransformer
from ..models.infinity_star.transformer import InfinityStarTransformer
from ..models.infinity_star.vae_tiling import TileSettings
from ..models.infinity_star.video_vae import InfinityStarVideoVAE
from ..models.var.transformer import VARTransformer
from ..sampling.cache_lengths import cache_lengths
from .decode import decode_bytes, text_encoder_bytes
from .interact import plan_interact_clip
from .kv_timeline import guided_steps, kv_timeline
from .planner import PlanInputs
from .replay import InfinityStarStepReplay, InfinityStepReplay, VARStepReplay
from .weights import QUANTIZATIONS, weight_layout


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a component computes in (diffusers' ``dtype``: the compute dtype under layerwise casting)."""
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


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
    forward_chunking: bool | int | None = None,
    vae_tiling: bool | dict | None = None,
    kv_cache_offload: bool | None = None,
) -> PlanInputs:
    """Resolve one call of ``pipe`` for the planner (see :func:`vpg_pipelines.memory.estimate_memory`)."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}")
    model, plan_model = _model_planner(pipe)
    chunk_size = planned_chunking(pipe.transformer, forward_chunking)
    tiling = planned_tiling(pipe.vae, vae_tiling)
    try:
        inspect.signature(type(pipe).__call__).bind(pipe, **call_kwargs)
    except TypeError as err:
        raise TypeError(f"estimate_memory takes the arguments of {type(pipe).__name__}.__call__: {err}") from None
    call = pipe.resolve_call(**_checkable(pipe, call_kwargs))
    planned_dtype = dtype or compute_dtype(pipe.transformer)
    if quantization == "fp8":
        planned_dtype = dtype or torch.bfloat16  # fp8 storage computes in bf16
    if dtype is None and quantization is None:
        vae_dtype = _vae_dtype(pipe, planned_dtype)
    else:
        vae_dtype = getattr(type(pipe), "vae_dtype", None) or planned_dtype
    notes: list[str] = []
    kv_offload = planned_kv_offload(pipe, kv_cache_offload)
    savers = {"chunk_size": chunk_size, "tiling": tiling, "kv_offload": kv_offload}
    parts = plan_model(pipe, call, call_kwargs, planned_dtype, vae_dtype, text_tokens, notes, savers)
    layouts = _layouts(pipe, dtype, quantization, vae_dtype)
    steps, vpg, cfg = list(call.steps), call.prefix, call.with_null
    guided = guided_steps(steps, vpg, call.schedule_steps)
    replay = parts.pop("replay")
    refresh = vpg.refresh if vpg is not None else "persistent"
    rows = call.batch * (2 if cfg else 1)
    accel = call.acceleration
    shared = vpg.shared_steps(steps) if guided else 1
    timeline = kv_timeline(steps, replay.geometry(), rows, guided, refresh, replay.prefix_tokens, accel,
                           int(pipe.transformer.config.embed_dim) if accel is not None else 0, shared)
    scoring = {}
    if accel is not None and accel.grows_cache:
        scoring = _budget_scoring(accel, steps, timeline, replay.geometry())
        notes.append(f"{accel.name}: the scoring of each cache compression (a few (rows, heads, entries) float "
                     "tensors beside the step's forward) is estimated, not replayed")
    settings = {
        "model": model,
        "dtype": str(planned_dtype).replace("torch.", ""),
        "quantization": quantization or current_quantization(pipe.transformer),
        "batch": call.batch,
        "cfg": cfg,
        "vpg_scales": vpg.scales if guided else "off",
        "vpg_refresh": refresh,
        "forward_chunking": chunk_size or "off",
        "vae_tiling": "off" if tiling is None else f"{tiling.min_height}x{tiling.min_width} every "
                                                   f"{tiling.stride_height}x{tiling.stride_width}",
        "acceleration": accel.name if accel is not None else "none",
        "kv_cache": "host (offloaded)" if kv_offload else "accelerator",
        **parts.pop("describe"),
    }
    return PlanInputs(
        settings=settings, steps=steps, batch=call.batch, timeline=timeline, weights=layouts,
        activation=replay.activation, state=replay.run_state_bytes, vocab=replay.vocab, cfg=cfg,
        guided=guided, refresh=refresh, scoring=scoring,
        sampling_bytes=parts["sampling_bytes"], decode=parts["decode"], encode=parts["encode"], stream=stream,
        notes=notes, reference_encode=parts.get("reference_encode"), kv_on_host=kv_offload,
    )


SCORING_BYTES = 72
"""Bytes per (row, head, cache entry) of a K/V budget's scoring: the float32 scores of ScaleKV's 16 window queries
(64) beside their sum and its max pooling (8), the largest moment of the selection."""


def _budget_scoring(accel: Any, steps: list, timeline: list, geometry: Any) -> dict[int, int]:
    """Per budgeted step, the scoring bytes of its largest compressed layer (an estimate, :data:`SCORING_BYTES`)."""
    lengths = cache_lengths(steps, geometry.layers, 0, accel)
    out = {}
    for i, (step, record) in enumerate(zip(steps, timeline)):
        cut = [d for d, a in zip(lengths.during[i], lengths.after[i]) if a < d]
        if cut:
            out[step.index] = record.rows * geometry.heads * max(cut) * SCORING_BYTES
    return out


def _model_planner(pipe: Any) -> tuple[str, Any]:
    """The model's name in the plan and its part of the planning, from the pipeline's transformer."""
    transformer = getattr(pipe, "transformer", None)
    for cls, name, plan_model in ((VARTransformer, "var", _var), (InfinityTransformer, "infinity", _infinity),
                                  (InfinityStarTransformer, "infinity_star", _infinity_star)):
        if isinstance(transformer, cls):
            return name, plan_model
    raise TypeError(f"cannot plan the memory of a {type(pipe).__name__}: its transformer is a "
                    f"{type(transformer).__name__}, not a VAR, Infinity or InfinityStar transformer")


def planned_chunking(transformer: nn.Module, forward_chunking: bool | int | None) -> int | None:
    """Tokens per chunk to plan with: ``None`` the transformer's setting (``enable_forward_chunking``), ``False``
    none, ``True`` the default chunk, an integer that chunk."""
    if forward_chunking is None:
        return getattr(transformer, "forward_chunk_size", None)
    if forward_chunking is False:
        return None
    try:
        return DEFAULT_CHUNK_TOKENS if forward_chunking is True else check_chunking(forward_chunking, 1)
    except ValueError:
        raise ValueError(f"`forward_chunking` must be True, False, None or a positive number of tokens, "
                         f"got {forward_chunking!r}") from None


def planned_kv_offload(pipe: Any, kv_cache_offload: bool | None) -> bool:
    """Whether to plan with the K/V cache in host memory: ``None`` as the pipeline is set
    (``enable_kv_cache_offload``), else this."""
    if kv_cache_offload is None:
        device = getattr(pipe, "kv_cache_device", None)
        return device is not None and device.type == "cpu"
    if not isinstance(kv_cache_offload, bool):
        raise ValueError(f"`kv_cache_offload` must be True, False or None, got {kv_cache_offload!r}")
    return kv_cache_offload


def planned_tiling(vae: nn.Module, vae_tiling: bool | dict | None) -> TileSettings | None:
    """Decoder tiles to plan with: ``None`` the VAE's setting (``enable_tiling``), ``False`` untiled, ``True`` the
    VAE's tile sizes (the defaults unless ``enable_tiling`` set others), a dict ``enable_tiling``'s arguments."""
    tiles = isinstance(vae, InfinityStarVideoVAE)
    if vae_tiling is None:
        return vae.tile_settings if tiles and vae.use_tiling else None
    if vae_tiling is False:
        return None
    if not tiles:
        raise ValueError(f"`vae_tiling` is available for InfinityStar's video VAE only, not {type(vae).__name__}")
    if vae_tiling is True:
        return vae.tile_settings  # what enable_tiling() last set, or the defaults
    if not isinstance(vae_tiling, dict):
        raise ValueError(f"`vae_tiling` must be True, False, None or a dict of enable_tiling's arguments, "
                         f"got {vae_tiling!r}")
    names = {"tile_sample_min_height": "min_height", "tile_sample_min_width": "min_width",
             "tile_sample_stride_height": "stride_height", "tile_sample_stride_width": "stride_width"}
    unknown = sorted(set(vae_tiling) - set(names))
    if unknown:
        raise ValueError(f"`vae_tiling` takes enable_tiling's arguments {sorted(names)}, got {unknown}")
    return TileSettings(**{names[k]: v for k, v in vae_tiling.items()})


def _checkable(pipe: Any, call_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call as the pipeline can check it. Without a text encoder and a tokenizer (a released architecture,
    a folder saved without them) prompts cannot be read: they are checked as one-token ``prompt_embeds``, the
    negative prompts are not checked, and the prompt length is planned with ``text_tokens``."""
    if "tokenizer" not in pipe.components or (pipe.text_encoder is not None and pipe.tokenizer is not None):
        return dict(call_kwargs)
    kwargs = {**call_kwargs, "negative_prompt": None}
    prompt = call_kwargs.get("prompt")
    if prompt is not None:
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        channels = int(pipe.transformer.config.text_channels)
        kwargs.update(prompt=None, prompt_embeds=torch.zeros(len(texts), 1, channels))
        if call_kwargs.get("prompt_embeds") is None:
            kwargs.pop("prompt_attention_mask", None)
    return kwargs


def current_quantization(module: nn.Module) -> str:
    """The weight format ``module`` holds now (:data:`~.weights.QUANTIZATIONS`)."""
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


def _var(pipe, call, given, dtype, vae_dtype, text_tokens, notes, savers) -> dict:
    rows = call.batch * (2 if call.with_null else 1)
    steps = list(call.steps)
    replay = VARStepReplay(pipe.transformer, steps, rows, dtype, latent_dtype=vae_dtype,
                           chunk_size=savers["chunk_size"], kv_offload=savers["kv_offload"])
    side = steps[-1].grid[0]
    latents = (call.batch, int(pipe.vae.Cvae), side, side)
    pixels = side * 2 ** (len(pipe.vae.config.ch_mult) - 1)
    a = call.arguments
    return {
        "replay": replay, "sampling_bytes": 24 if a["top_p"] > 0 else 8,
        "decode": decode_bytes("var", pipe.vae, latents, vae_dtype) if a["output_type"] != "latent" else 0,
        "encode": None, "describe": {"size": f"{pixels}x{pixels}"},
    }


def _infinity(pipe, call, given, dtype, vae_dtype, text_tokens, notes, savers) -> dict:
    prompt, embeds, mask = given.get("prompt"), given.get("prompt_embeds"), given.get("prompt_attention_mask")
    texts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    tokens = _embed_tokens(embeds, mask)
    if tokens is None:
        negatives = given.get("negative_prompt")
        negatives = [negatives] if isinstance(negatives, str) else list(negatives or [])
        fallback = text_tokens or int(pipe.transformer.config.text_maxlen)
        tokens = _tokens(pipe, texts + [n for n in negatives if n], None, fallback, notes)
    rows = call.batch * (2 if call.with_null else 1)
    replay = InfinityStepReplay(pipe.transformer, list(call.steps), rows, dtype, text_tokens=tokens,
                                chunk_size=savers["chunk_size"], kv_offload=savers["kv_offload"],
                                final_grid=call.schedule.grids[-1])
    schedule = call.schedule
    h, w = schedule.vae_grids[-1]
    latents = (call.batch, int(pipe.vae.config.codebook_dim), 1, h, w)
    encoder = pipe.text_encoder
    encode = None
    if prompt is not None and encoder is not None:
        encode = text_encoder_bytes(encoder, len(texts), tokens, compute_dtype(encoder))
    output_type = call.arguments["output_type"]
    return {
        "replay": replay, "sampling_bytes": 24,
        "decode": decode_bytes("infinity", pipe.vae, latents, vae_dtype) if output_type != "latent" else 0,
        "encode": encode, "describe": {"size": "x".join(map(str, schedule.image_size)), "text_tokens": tokens},
    }


def _infinity_star(pipe, call, given, dtype, vae_dtype, text_tokens, notes, savers) -> dict:
    if hasattr(call, "num_clips"):  # InfinityStar-Interact: the plan of one clip (memory/interact.py)
        return plan_interact_clip(pipe, call, given, dtype, vae_dtype, text_tokens, notes,
                                  lambda texts, fallback: _tokens(pipe, texts, None, fallback, notes), savers)
    a, plan = call.arguments, call.plan
    prompt = given.get("prompt")
    texts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    tokens = _embed_tokens(given.get("prompt_embeds"), given.get("prompt_attention_mask"))
    if tokens is None:
        negatives = given.get("negative_prompt")
        negatives = [negatives] if isinstance(negatives, str) else list(negatives or [])
        captions = [pipe.caption(p, a["num_frames"]) for p in texts]
        tokens = _tokens(pipe, captions + [n for n in negatives if n], None, text_tokens or 512, notes)
    rows = call.batch * (2 if call.with_null else 1)
    replay = InfinityStarStepReplay(pipe.transformer, list(call.steps), rows, dtype, plan=plan, text_tokens=tokens,
                                    batch=call.batch, chunk_size=savers["chunk_size"],
                                    kv_offload=savers["kv_offload"])
    frames = sum(plan.clip_grid(c)[0] for c in range(plan.num_clips))
    _, h, w = plan.schedule[-1]
    latents = (call.batch, int(pipe.vae.codebook_dim), frames, h, w)
    encoder, encode = pipe.text_encoder, None
    if prompt is not None and encoder is not None:  # the official encoder pads to text_maxlen
        encode = text_encoder_bytes(encoder, len(texts), int(pipe.transformer.config.text_maxlen),
                                    compute_dtype(encoder))
    return {
        "replay": replay, "sampling_bytes": 8,
        "decode": (decode_bytes("infinity_star", pipe.vae, latents, vae_dtype, savers["tiling"])
                   if a["output_type"] != "latent" else 0),
        "encode": encode,
        "describe": {"size": f"{a['height']}x{a['width']}", "num_frames": a["num_frames"], "text_tokens": tokens,
                     "guidance": a["guidance"]},
    }
