"""Loading the released Infinity files.

Transformer: ``infinity_2b_reg.pth`` (a plain state dict) or the 8B folders ``infinity_8b_weights/``
(transformers-style shards with a ``*.index.json``). VAE: ``infinity_vae_d32reg.pth`` & co. (a dict
whose weights sit under ``"vae"``; keys with or without the ``.conv.`` / ``.norm.`` wrapper level).

Loading is strict; the only differences tolerated are the official loader's: the zero buffers
``*.zero_k_bias`` and ``lfq.mask`` (derived), the buffers ``lvl_1L``, ``attn_bias_for_masking``,
``Infinity_visible_kvlen``, ``Infinity_invisible_qlen`` (dropped), and a ``cfg_uncond`` of another
length (truncated, or padded with the official initial rows).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import init_empty_weights

from ..models.infinity.bsq_vae import DERIVED_KEYS as VAE_DERIVED_KEYS
from ..models.infinity.bsq_vae import InfinityBSQVAE, canonical_vae_state_dict
from ..models.infinity.transformer import DERIVED_KEYS, InfinityTransformer, default_cfg_uncond, ffn_hidden_width
from .checkpoint import CheckpointError, cast_weights, load_strict, read_state_dict
from .hub import resolve_file

INFINITY_HUB_REPO = "FoundationVision/Infinity"
DROPPED_BUFFERS = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")
TRANSFORMER_ARGS = ("codebook_dim", "apply_spatial_patchify", "text_channels", "text_maxlen", "embed_dim", "depth",
                    "num_heads", "mlp_ratio", "norm_eps", "shared_aln", "cos_attn", "num_block_chunks",
                    "add_lvl_embeding_only_first_block", "rope2d_normalized_by_hw")
VAE_ARGS = ("codebook_dim", "patch_size", "base_ch", "encoder_ch_mult", "decoder_ch_mult", "num_res_blocks")
OFFICIAL_ALIASES = {"block_chunks": "num_block_chunks"}


def _max_index(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """``1 + max`` of the integer captured by ``pattern`` over the keys (0 when none matches)."""
    found = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def infer_transformer_config(state: Mapping[str, torch.Tensor]) -> dict:
    """Constructor arguments read off the weights (``codebook_dim`` = bits per transformer site,
    i.e. without patchify; :func:`load_official_infinity` fixes it with the VAE)."""
    try:
        dim = state["pos_start"].shape[-1]
        chunks = _max_index(state, r"block_chunks\.(\d+)\.module\.")
        if chunks:
            per = _max_index(state, r"block_chunks\.\d+\.module\.(\d+)\.")
            depth, first = chunks * per, "block_chunks.0.module.0."
        else:
            depth, chunks, first = _max_index(state, r"blocks\.(\d+)\."), 1, "blocks.0."
        if depth == 0:
            raise KeyError("no transformer blocks")
        scale_mul = state.get(first + "sa.scale_mul_1H11")
        hidden = state[first + "ffn.fc1.weight"].shape[0]
        config = {
            "codebook_dim": state["word_embed.weight"].shape[1],
            "apply_spatial_patchify": 0,
            "text_channels": state["text_norm.weight"].shape[0],
            "text_maxlen": state["cfg_uncond"].shape[0],
            "embed_dim": dim,
            "depth": depth,
            "num_heads": scale_mul.shape[1] if scale_mul is not None else dim // 128,
            "mlp_ratio": hidden / dim,
            "shared_aln": "shared_ada_lin.1.weight" in state,
            "cos_attn": scale_mul is not None,
            "num_block_chunks": chunks,
        }
    except (KeyError, AttributeError, IndexError) as err:
        raise CheckpointError(f"not an Infinity transformer checkpoint (cannot read {err})") from err
    if ffn_hidden_width(dim, config["mlp_ratio"]) != hidden:
        raise CheckpointError(f"FFN width {hidden} is not round(C * mlp_ratio / 256) * 256 for C = {dim}")
    return config


def _find(state: Mapping[str, torch.Tensor], stem: str) -> torch.Tensor:
    for key in (f"{stem}.weight", f"{stem}.conv.weight", f"{stem}.norm.weight"):
        if key in state:
            return state[key]
    raise KeyError(f"{stem}.weight")


def infer_vae_config(state: Mapping[str, torch.Tensor]) -> dict:
    """VAE constructor arguments read off the weights (either key spelling)."""
    try:
        ch = _find(state, "encoder.conv_in").shape[0]
        enc_levels = _max_index(state, r"encoder\.down\.(\d+)\.")
        dec_levels = _max_index(state, r"decoder\.up\.(\d+)\.")
        downs = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.downsample\.", k))}
        config = {
            "codebook_dim": _find(state, "encoder.conv_out").shape[0],
            "patch_size": 2 ** len(downs),
            "base_ch": ch,
            "encoder_ch_mult": tuple(_find(state, f"encoder.down.{i}.block.0.conv2").shape[0] // ch
                                     for i in range(enc_levels)),
            "decoder_ch_mult": tuple(_find(state, f"decoder.up.{i}.block.0.conv2").shape[0] // ch
                                     for i in range(dec_levels)),
            "num_res_blocks": _max_index(state, r"encoder\.down\.0\.block\.(\d+)\."),
        }
    except (KeyError, AttributeError, IndexError) as err:
        raise CheckpointError(f"not an Infinity BSQ-VAE checkpoint (cannot read {err})") from err
    if not enc_levels or not dec_levels:
        raise CheckpointError("not an Infinity BSQ-VAE checkpoint (no encoder/decoder levels)")
    return config


def canonical_transformer_state_dict(
    state: Mapping[str, torch.Tensor], text_maxlen: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official transformer weights -> our keys; returns the state and the keys dropped knowingly.

    ``cfg_uncond`` is truncated to ``text_maxlen`` rows, or padded with the official initial rows.
    """
    out = dict(state)
    dropped = [k for k in out if DERIVED_KEYS.search(k) or k in DROPPED_BUFFERS]
    for key in dropped:
        out.pop(key)
    rows = out.get("cfg_uncond")
    if rows is not None and rows.shape[0] != text_maxlen and rows.device.type != "meta":
        if rows.shape[0] > text_maxlen:
            out["cfg_uncond"] = rows[:text_maxlen]
        else:
            fresh = default_cfg_uncond(text_maxlen, rows.shape[1]).to(rows.dtype)
            out["cfg_uncond"] = torch.cat([rows, fresh[rows.shape[0] :].to(rows.device)])
    return out, dropped


def build_transformer(config: dict, state: Mapping[str, torch.Tensor] | None = None) -> InfinityTransformer:
    """An :class:`InfinityTransformer` (weights from ``state``, loaded strictly, when given)."""
    config = {OFFICIAL_ALIASES.get(k, k): v for k, v in config.items()}
    if "mlp_ratio" in config:
        config["mlp_ratio"] = float(config["mlp_ratio"])
    with init_empty_weights():
        model = InfinityTransformer(**config)
    if state is not None:
        ours, _ = canonical_transformer_state_dict(state, model.config.text_maxlen)
        load_strict(model, ours, what="Infinity transformer checkpoint", assign=True)
    return model.eval()


def build_vae(config: dict, state: Mapping[str, torch.Tensor] | None = None) -> InfinityBSQVAE:
    """An :class:`InfinityBSQVAE` (weights from ``state``, either key spelling, loaded strictly)."""
    config = dict(config)
    for key in ("encoder_ch_mult", "decoder_ch_mult"):
        if key in config:
            config[key] = tuple(config[key])
    with init_empty_weights():
        model = InfinityBSQVAE(**config)
    if state is not None:
        try:
            ours = canonical_vae_state_dict(state, set(model.state_dict()))
        except ValueError as err:
            raise CheckpointError(str(err)) from err
        load_strict(model, ours, what="Infinity VAE checkpoint", assign=True)
    return model.eval()


def read_vae_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The VAE weights of an official file (under ``"vae"``; ``"ema"`` is ignored)."""
    return read_state_dict(resolve_file(path, INFINITY_HUB_REPO), unwrap=("vae", "state_dict", "model"))


def load_infinity_vae(
    vae_checkpoint: str | Path, config: dict | None = None, torch_dtype: torch.dtype | None = None
) -> InfinityBSQVAE:
    """The BSQ VAE of an official file; ``config`` overrides the inferred arguments."""
    state = read_vae_state_dict(vae_checkpoint)
    vcfg = infer_vae_config(state)
    vcfg.update({k: v for k, v in (config or {}).items() if k in VAE_ARGS})
    vae = build_vae(vcfg, state)
    return cast_weights(vae, torch_dtype)


def load_infinity_transformer(
    checkpoint: str | Path,
    config: dict | None = None,
    vae_codebook_dim: int | None = None,
    torch_dtype: torch.dtype | None = None,
) -> InfinityTransformer:
    """The transformer of an official ``.pth`` / ``.safetensors`` file or sharded folder.

    ``vae_codebook_dim`` (bits per VAE site) decides spatial patchify: a transformer predicting four
    times as many bits per site as the VAE has works on 2x2 blocks of VAE sites (8B).
    """
    state = read_state_dict(resolve_file(checkpoint, INFINITY_HUB_REPO))
    tcfg = infer_transformer_config(state)
    bits = tcfg["codebook_dim"]
    if vae_codebook_dim is not None:
        if bits == 4 * vae_codebook_dim:
            tcfg["codebook_dim"], tcfg["apply_spatial_patchify"] = vae_codebook_dim, 1
        elif bits == vae_codebook_dim:
            tcfg["codebook_dim"], tcfg["apply_spatial_patchify"] = vae_codebook_dim, 0
        else:
            raise CheckpointError(
                f"the transformer predicts {bits} bits per site, which fits neither a {vae_codebook_dim}-bit VAE "
                f"nor its 2x2 patchified form ({4 * vae_codebook_dim} bits)"
            )
    official = {OFFICIAL_ALIASES.get(k, k): v for k, v in (config or {}).items()}
    tcfg.update({k: v for k, v in official.items() if k in TRANSFORMER_ARGS})
    if vae_codebook_dim is None and "codebook_dim" not in official:
        tcfg["codebook_dim"] = bits // (4 if tcfg["apply_spatial_patchify"] else 1)
    model = build_transformer(tcfg, state)
    return cast_weights(model, torch_dtype)


def load_official_infinity(
    transformer_checkpoint: str | Path,
    vae_checkpoint: str | Path,
    config: dict | None = None,
    torch_dtype: torch.dtype | None = None,
) -> tuple[InfinityTransformer, InfinityBSQVAE]:
    """Transformer and VAE from official files.

    ``config`` may hold ``{"infinity": {...}, "vae": {...}}`` with official argument names (e.g. a
    manifest's or fixture's ``config.json``); anything not given is read off the weights.
    """
    config = config or {}
    vae = load_infinity_vae(vae_checkpoint, config.get("vae"), torch_dtype)
    transformer = load_infinity_transformer(
        transformer_checkpoint, config.get("infinity"), vae.config.codebook_dim, torch_dtype
    )
    return transformer, vae


__all__ = [
    "INFINITY_HUB_REPO",
    "VAE_DERIVED_KEYS",
    "build_transformer",
    "build_vae",
    "canonical_transformer_state_dict",
    "infer_transformer_config",
    "infer_vae_config",
    "load_infinity_transformer",
    "load_infinity_vae",
    "load_official_infinity",
]
