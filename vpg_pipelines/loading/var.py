"""Loading the released VAR files (``var_d*.pth``, ``vae_ch160v4096z32.pth``)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate import init_empty_weights

from ..models.var.transformer import DERIVED_BUFFERS, VARTransformer
from ..models.var.vqvae import VARVQVAE
from .checkpoint import CheckpointError, cast_weights, load_strict, read_state_dict
from .hub import resolve_file

VAR_HUB_REPO = "FoundationVision/var"
PATCH_NUMS_BY_LENGTH = {
    680: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),  # 256 px
    2240: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),  # 512 px
}
TRANSFORMER_ARGS = ("num_classes", "depth", "embed_dim", "num_heads", "mlp_ratio", "norm_eps", "shared_aln",
                    "attn_l2_norm", "patch_nums")
VQVAE_ARGS = ("vocab_size", "z_channels", "ch", "ch_mult", "num_res_blocks", "dropout", "beta", "using_znorm",
              "quant_conv_ks", "quant_resi", "share_quant_resi", "default_qresi_counts", "v_patch_nums", "test_mode")


def infer_transformer_config(state: dict[str, torch.Tensor], patch_nums=None) -> dict:
    """VAR constructor arguments read off the weights' shapes (``patch_nums`` when not standard)."""
    try:
        dim, cvae = state["word_embed.weight"].shape
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        length = state["pos_1LC"].shape[1]
        scale_mul = state.get("blocks.0.attn.scale_mul_1H11")
        config = {
            "vocab_size": state["head.weight"].shape[0],
            "vae_channels": cvae,
            "num_classes": state["class_emb.weight"].shape[0] - 1,
            "depth": depth,
            "embed_dim": dim,
            "num_heads": scale_mul.shape[1] if scale_mul is not None else dim // 64,
            "mlp_ratio": state["blocks.0.ffn.fc1.weight"].shape[0] / dim,
            "shared_aln": "shared_ada_lin.1.weight" in state,
            "attn_l2_norm": scale_mul is not None,
        }
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"not a VAR transformer checkpoint (cannot read {err})") from err
    if patch_nums is not None:
        if sum(p * p for p in patch_nums) != length:
            raise CheckpointError(f"`patch_nums` {list(patch_nums)} do not give the checkpoint's {length} positions")
        config["patch_nums"] = tuple(patch_nums)
        return config
    if length not in PATCH_NUMS_BY_LENGTH:
        raise CheckpointError(
            f"cannot infer `patch_nums` for {length} positions (known: {sorted(PATCH_NUMS_BY_LENGTH)}); "
            "pass config={'var': {'patch_nums': [...]}, ...}"
        )
    config["patch_nums"] = PATCH_NUMS_BY_LENGTH[length]
    return config


def infer_vqvae_config(state: dict[str, torch.Tensor], patch_nums) -> dict:
    try:
        vocab, z = state["quantize.embedding.weight"].shape
        ch = state["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        mult = [state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels)]
        shared = [k for k in state if re.match(r"quantize\.quant_resi\.qresi_ls\.\d+\.weight$", k)]
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"not a VAR VQVAE checkpoint (cannot read {err})") from err
    return {"vocab_size": vocab, "z_channels": z, "ch": ch, "ch_mult": tuple(mult), "num_res_blocks": blocks,
            "share_quant_resi": len(shared) or 4, "v_patch_nums": tuple(patch_nums), "test_mode": True}


def build_transformer(config: dict, state: dict[str, torch.Tensor] | None = None) -> VARTransformer:
    with init_empty_weights():
        model = VARTransformer(**config)
    if state is not None:
        derived = [k for k in state if DERIVED_BUFFERS.match(k)]
        load_strict(model, state, what="VAR transformer checkpoint", ignore_unexpected=derived, assign=True)
    return model.eval()


def build_vqvae(config: dict, state: dict[str, torch.Tensor] | None = None) -> VARVQVAE:
    with init_empty_weights():
        model = VARVQVAE(**config)
    if state is not None:
        load_strict(model, state, what="VAR VQVAE checkpoint", assign=True)
    return model.eval()


def load_official_var(
    var_checkpoint: str | Path,
    vae_checkpoint: str | Path,
    config: dict | None = None,
    torch_dtype: torch.dtype | None = None,
) -> tuple[VARTransformer, VARVQVAE]:
    """Transformer and VQVAE from official files (strict; derived buffers dropped knowingly)."""
    var_state = read_state_dict(resolve_file(var_checkpoint, VAR_HUB_REPO))
    vae_state = read_state_dict(resolve_file(vae_checkpoint, VAR_HUB_REPO))
    config = config or {}
    official = dict(config.get("var", {}))
    tcfg = infer_transformer_config(var_state, official.get("patch_nums"))
    tcfg.update({k: official[k] for k in TRANSFORMER_ARGS if k in official})
    tcfg["patch_nums"] = tuple(tcfg["patch_nums"])
    vcfg = infer_vqvae_config(vae_state, tcfg["patch_nums"])
    vcfg.update({k: v for k, v in config.get("vqvae", {}).items() if k in VQVAE_ARGS})
    vcfg["v_patch_nums"] = tuple(vcfg.get("v_patch_nums", tcfg["patch_nums"]))
    if "ch_mult" in vcfg:
        vcfg["ch_mult"] = tuple(vcfg["ch_mult"])
    tcfg["vocab_size"], tcfg["vae_channels"] = vcfg["vocab_size"], vcfg["z_channels"]
    if tuple(vcfg["v_patch_nums"])[-1] != tcfg["patch_nums"][-1]:
        raise CheckpointError(
            f"VQVAE v_patch_nums {list(vcfg['v_patch_nums'])} and VAR patch_nums {list(tcfg['patch_nums'])} "
            "end at different latent sizes"
        )
    transformer = build_transformer(tcfg, var_state)
    vae = build_vqvae(vcfg, vae_state)
    if torch_dtype is not None:
        transformer, vae = cast_weights(transformer, torch_dtype), cast_weights(vae, torch_dtype)
    return transformer, vae
