"""Infinity modules built on the meta device have exactly the keys and shapes of the released files."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.shared import shared_path
from vpg_pipelines.loading.checkpoint import CheckpointError
from vpg_pipelines.loading.infinity import (
    DROPPED_BUFFERS,
    build_transformer,
    build_vae,
    canonical_transformer_state_dict,
    infer_transformer_config,
    infer_vae_config,
)
from vpg_pipelines.models.infinity.bsq_vae import DERIVED_KEYS as VAE_DERIVED
from vpg_pipelines.models.infinity.bsq_vae import InfinityBSQVAE
from vpg_pipelines.models.infinity.transformer import DERIVED_KEYS, InfinityTransformer


def _manifest(name: str) -> dict:
    return json.loads(shared_path("spec", "manifests", f"{name}.json").read_text())


def _meta_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return {k: torch.empty(v) for k, v in shapes.items()}


TRANSFORMERS = ["infinity_2b", "infinity_8b", "infinity_layer12"]
VAES = ["d16", "d24", "d32", "d56", "d64"]


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformer_keys_and_shapes(name):
    manifest = _manifest(name)
    official = manifest["config"]
    d_vae = _manifest(official["vae_manifest"])["config"]["codebook_dim"]
    with torch.device("meta"):
        model = InfinityTransformer(
            codebook_dim=d_vae, apply_spatial_patchify=official["apply_spatial_patchify"],
            text_channels=official["text_channels"], text_maxlen=official["text_maxlen"],
            embed_dim=official["embed_dim"], depth=official["depth"], num_heads=official["num_heads"],
            mlp_ratio=official["mlp_ratio"], norm_eps=official["norm_eps"], shared_aln=official["shared_aln"],
            num_block_chunks=official["block_chunks"],
            add_lvl_embeding_only_first_block=official["add_lvl_embeding_only_first_block"],
            rope2d_normalized_by_hw=official["rope2d_normalized_by_hw"],
        )
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest["state_dict"]
    derived = {k for k in expected if DERIVED_KEYS.search(k)}
    # exactly the zero K biases (one per self-/cross-attention, plus the text pool) are not stored
    assert len(derived) == 2 * official["depth"] + 1
    assert ours == {k: v for k, v in expected.items() if k not in derived}
    derived_info = official["derived"]
    assert model.bits_per_site == derived_info["d_vae"]
    assert ours["head.weight"][0] == derived_info["V"]
    assert ours["block_chunks.0.module.0.ffn.fc1.weight"][0] == derived_info["ffn_hidden"]
    assert ours["text_proj_for_sos.ca.mat_q"][1:] == [derived_info["text_pool_heads"],
                                                      derived_info["text_pool_head_dim"]]


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformer_config_inferred_and_loaded_strictly_from_manifest_shapes(name):
    manifest = _manifest(name)
    official = manifest["config"]
    state = _meta_state(manifest["state_dict"])
    config = infer_transformer_config(state)
    for key in ("embed_dim", "depth", "num_heads", "text_channels", "text_maxlen", "shared_aln"):
        assert config[key] == official[key], key
    assert config["num_block_chunks"] == official["block_chunks"] and config["mlp_ratio"] == 4.0
    assert config["codebook_dim"] == official["derived"]["d_vae"]
    # the official loader's tolerated extras: dropped buffers; also a file without zero_k_bias loads
    with torch.device("meta"):
        extra = {"lvl_1L": torch.empty(1, 10521), "attn_bias_for_masking": torch.empty(1, 1, 8, 8)}
    build_transformer(config, {**state, **extra})
    build_transformer(config, {k: v for k, v in state.items() if not DERIVED_KEYS.search(k)})


def test_transformer_strict_errors_name_every_key():
    manifest = _manifest("infinity_layer12")
    state = _meta_state(manifest["state_dict"])
    config = infer_transformer_config(state)
    broken = dict(state)
    broken.pop("head.bias")
    broken["head_nm.extra"] = broken["pos_start"]
    with torch.device("meta"):
        broken["word_embed.weight"] = torch.empty(768, 31)
    with pytest.raises(CheckpointError) as err:
        build_transformer(config, broken)
    text = str(err.value)
    assert "head.bias" in text and "head_nm.extra" in text and "word_embed.weight" in text


def test_cfg_uncond_length_adaptation():
    rows = torch.randn(16, 8)
    state = {"cfg_uncond": rows, "lvl_1L": torch.zeros(3), "a.zero_k_bias": torch.zeros(8)}
    longer, dropped = canonical_transformer_state_dict(state, 20)
    assert set(dropped) == {"lvl_1L", "a.zero_k_bias"} and set(longer) == {"cfg_uncond"}
    assert torch.equal(longer["cfg_uncond"][:16], rows)
    from vpg_pipelines.models.infinity.transformer import default_cfg_uncond

    assert torch.equal(longer["cfg_uncond"][16:], default_cfg_uncond(20, 8)[16:])
    shorter, _ = canonical_transformer_state_dict(state, 10)
    assert torch.equal(shorter["cfg_uncond"], rows[:10])
    assert set(DROPPED_BUFFERS) >= {"lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen",
                                    "Infinity_invisible_qlen"}


def _strip_wrappers(state: dict) -> dict:
    return {k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
            .replace(".norm.weight", ".weight").replace(".norm.bias", ".bias"): v for k, v in state.items()}


@pytest.mark.parametrize("name", VAES)
def test_vae_keys_shapes_and_both_spellings(name):
    manifest = _manifest(f"infinity_vae_{name}")
    official = manifest["config"]
    with torch.device("meta"):
        model = InfinityBSQVAE(
            codebook_dim=official["codebook_dim"], patch_size=official["patch_size"], base_ch=official["base_ch"],
            encoder_ch_mult=tuple(official["encoder_ch_mult"]), decoder_ch_mult=tuple(official["decoder_ch_mult"]),
            num_res_blocks=official["num_res_blocks"],
        )
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest["state_dict"]
    derived = {k for k in expected if VAE_DERIVED.match(k)}
    assert derived == {"quantizer.lfq.mask", "quantize.lfq.mask"}
    assert ours == {k: v for k, v in expected.items() if k not in derived}
    state = _meta_state(expected)
    for spelling in (state, _strip_wrappers(state)):
        config = infer_vae_config(spelling)
        assert config == {k: (tuple(v) if isinstance(v, list) else v) for k, v in official.items()
                          if k in config}
        loaded = build_vae(config, spelling)
        assert {k: list(v.shape) for k, v in loaded.state_dict().items()} == ours


def test_vae_strict_errors():
    manifest = _manifest("infinity_vae_d16")
    state = _meta_state(manifest["state_dict"])
    config = infer_vae_config(state)
    broken = dict(state)
    broken.pop("decoder.conv_out.conv.bias")
    broken["decoder.mystery.weight"] = broken["decoder.conv_out.conv.weight"]
    with pytest.raises(CheckpointError) as err:
        build_vae(config, broken)
    assert "decoder.conv_out.conv.bias" in str(err.value) and "decoder.mystery.weight" in str(err.value)
    both = {**state, "encoder.conv_in.weight": state["encoder.conv_in.conv.weight"]}
    with pytest.raises(CheckpointError, match="twice"):
        build_vae(config, both)
