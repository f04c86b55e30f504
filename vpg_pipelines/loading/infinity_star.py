"""Loading the released InfinityStar files into our modules (strict, ``weights_only`` reads).

* transformer: ``infinitystar_8b_720p_weights`` (a folder of safetensors shards with a
  ``*.index.json``), or one ``.safetensors`` / ``.pth`` state dict;
* video VAE: ``infinitystar_videovae.pth`` (the weights under its ``vae`` entry).

The architecture is read off the weights' shapes; what the weights do not tell (the RoPE text length,
the detail-codebook threshold) comes from the released 720p settings unless overridden.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate import init_empty_weights

from ..models.infinity_star.settings import RELEASED_720P_ARGS
from ..models.infinity_star.transformer import InfinityStarTransformer
from ..models.infinity_star.video_vae import DERIVED_KEYS, InfinityStarVideoVAE
from .checkpoint import CheckpointError, cast_weights, load_strict, read_state_dict

TEXT_MAXLEN = 512


def infer_transformer_config(state: dict[str, torch.Tensor], text_maxlen: int = 512) -> dict:
    """Constructor arguments of :class:`InfinityStarTransformer` from a state dict's shapes."""
    try:
        dim, vae_channels = state["word_embed.weight"].shape
        text_channels = state["text_proj.weight"].shape[1]
        chunked = [m for k in state if (m := re.match(r"block_chunks\.(\d+)\.module\.(\d+)\.", k))]
        if chunked:
            chunks = 1 + max(int(m.group(1)) for m in chunked)
            depth = chunks * (1 + max(int(m.group(2)) for m in chunked))
            first = "block_chunks.0.module.0."
        else:
            chunks = 1
            depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
            first = "blocks.0."
        head_dim = state[first + "attn.q_norm.weight"].shape[0]
        hidden = state[first + "mlp.gate_proj.weight"].shape[0]
        labels = 2
        config = {
            "vae_channels": vae_channels,
            "text_channels": text_channels,
            "text_maxlen": text_maxlen,
            "embed_dim": dim,
            "depth": depth,
            "num_block_chunks": chunks,
            "num_heads": state[first + "attn.q_proj.weight"].shape[0] // head_dim,
            "num_key_value_heads": state[first + "attn.k_proj.weight"].shape[0] // head_dim,
            "mlp_ratio": hidden / dim,
            "detail_bits": state["head.weight"].shape[0] // labels,
            "semantic_bits": state["semantic_head2.weight"].shape[0] // labels if "semantic_head2.weight" in state
            else 16,
            "num_of_label_value": labels,
            "two_stage": "semantic_head2.weight" in state,
            "null_text_len": state["cfg_uncond"].shape[0],
            "qkvo_bias": first + "attn.q_proj.bias" in state,
        }
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"not an InfinityStar transformer checkpoint (cannot read {err})") from err
    return config


def _bits(state: dict[str, torch.Tensor], book: str, default: int) -> int:
    mask = state.get(f"quantizer.lfq_{book}.mask")
    return int(mask.shape[0]) if mask is not None else default


def infer_vae_config(state: dict[str, torch.Tensor], detail_scale_min_tokens: int = 750) -> dict:
    """Constructor arguments of :class:`InfinityStarVideoVAE` from a state dict's shapes."""
    try:
        stages = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k)))
        layers = 1 + max(
            int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))
        )
        channels = [state["encoder.conv_in.conv.weight"].shape[0]]
        for i in range(stages):
            down = f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.conv.weight"
            channels.append(state[down].shape[0] * 4 if down in state else channels[-1])
        reversed_channels = channels[::-1]
        time_stages = 0
        for i in range(stages):
            up = f"decoder.up_blocks.{i}.upsamplers.0.conv.conv.conv.weight"
            if up in state and state[up].shape[0] == reversed_channels[i + 1] * 8:
                time_stages += 1
        space_stages = sum(f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.conv.weight" in state
                           for i in range(stages))
        config = {
            "in_channels": state["encoder.conv_in.conv.weight"].shape[1],
            "out_channels": state["decoder.conv_out.conv.weight"].shape[0],
            "latent_channels": state["decoder.conv_in.conv.weight"].shape[1],
            "block_out_channels": tuple(channels),
            "layers_per_block": layers,
            "temporal_compression": (2,) * time_stages,
            "spatial_compression": (2,) * space_stages,
            "semantic_bits": _bits(state, "semantic", 16),
            "detail_bits": _bits(state, "detail", 64),
            "detail_scale_min_tokens": detail_scale_min_tokens,
            "use_feat_proj": 2 if "proj_up.weight" in state else 0,
        }
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"not an InfinityStar video VAE checkpoint (cannot read {err})") from err
    return config


def build_transformer(config: dict, state: dict[str, torch.Tensor] | None = None) -> InfinityStarTransformer:
    with init_empty_weights():
        model = InfinityStarTransformer(**config)
    if state is not None:
        load_strict(model, state, what="InfinityStar transformer checkpoint", assign=True)
    return model.eval()


def build_vae(config: dict, state: dict[str, torch.Tensor] | None = None) -> InfinityStarVideoVAE:
    with init_empty_weights():
        model = InfinityStarVideoVAE(**config)
    if state is not None:
        derived = [k for k in state if DERIVED_KEYS.match(k)]
        load_strict(model, state, what="InfinityStar video VAE checkpoint", ignore_unexpected=derived, assign=True)
    return model.eval()


def _cast(model: torch.nn.Module, dtype: torch.dtype | None, keep_fp32: tuple[str, ...] = ()) -> None:
    cast_weights(model, dtype, [name for name in keep_fp32 if getattr(model, name, None) is not None])


def load_infinity_star_transformer(
    path: str | Path,
    text_maxlen: int = TEXT_MAXLEN,
    torch_dtype: torch.dtype | None = None,
    **overrides,
) -> InfinityStarTransformer:
    """The transformer from a shard folder (``*.index.json``), a ``.safetensors`` or a ``.pth`` file.

    ``torch_dtype`` casts everything but the two heads, which stay in float32 as in the official
    inference (their logits are computed in float32).
    """
    state = read_state_dict(path)
    config = infer_transformer_config(state, text_maxlen)
    config.update(overrides)
    model = build_transformer(config, state)
    _cast(model, torch_dtype, tuple(InfinityStarTransformer._keep_in_fp32_modules))
    return model


def load_infinity_star_vae(
    path: str | Path,
    detail_scale_min_tokens: int = RELEASED_720P_ARGS["detail_scale_min_tokens"],
    torch_dtype: torch.dtype | None = None,
    **overrides,
) -> InfinityStarVideoVAE:
    """The video VAE from ``infinitystar_videovae.pth`` (its ``vae`` entry) or a plain state dict.

    The official inference runs the VAE in float32.
    """
    state = read_state_dict(path, unwrap=("vae", "model", "state_dict"))
    config = infer_vae_config(state, detail_scale_min_tokens)
    config.update(overrides)
    model = build_vae(config, state)
    _cast(model, torch_dtype)
    return model
