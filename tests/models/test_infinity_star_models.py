"""InfinityStar transformer and video VAE: released key layouts, config inference, strict loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers.shared import shared_path
from vpg_pipelines.loading.checkpoint import CheckpointError
from vpg_pipelines.loading.infinity_star import (
    infer_transformer_config,
    infer_vae_config,
    load_infinity_star_transformer,
    load_infinity_star_vae,
)
from vpg_pipelines.models.infinity_star.transformer import InfinityStarTransformer, apply_rope, rope_angles
from vpg_pipelines.models.infinity_star.video_vae import DERIVED_KEYS, InfinityStarVideoVAE


def _manifest(name: str) -> dict:
    return json.loads(shared_path("spec", "manifests", f"{name}.json").read_text())


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_transformer_matches_the_released_8b_720p_keys_and_shapes():
    manifest = _manifest("infinity_star_8b_720p")
    config = manifest["config"]
    with torch.device("meta"):
        model = InfinityStarTransformer(
            text_channels=config["text_channels"],
            semantic_bits=config["semantic_scale_dim"],
            detail_bits=config["detail_scale_dim"],
        )
    assert _shapes(model) == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(8.77e9, rel=1e-3)


def test_vae_matches_the_released_keys_and_shapes():
    manifest = _manifest("infinity_star_videovae")
    with torch.device("meta"):
        model = InfinityStarVideoVAE()
    expected = manifest["state_dict"]
    derived = {k for k in expected if DERIVED_KEYS.match(k)}
    # exactly the four codebook bit-weight buffers (stored twice by the official alias) are not kept
    assert derived == {f"{m}.lfq_{b}.mask" for m in ("quantize", "quantizer") for b in ("semantic", "detail")}
    assert _shapes(model) == {k: v for k, v in expected.items() if k not in derived}
    assert model.codebook_dim == manifest["config"]["codebook_dim"]


def test_configs_are_read_off_the_released_shapes():
    with torch.device("meta"):
        tstate = {k: torch.empty(v) for k, v in _manifest("infinity_star_8b_720p")["state_dict"].items()}
        vstate = {k: torch.empty(v) for k, v in _manifest("infinity_star_videovae")["state_dict"].items()}
    t = infer_transformer_config(tstate)
    assert (t["embed_dim"], t["depth"], t["num_block_chunks"], t["num_heads"], t["num_key_value_heads"]) == (
        4096, 36, 6, 32, 8)
    assert (t["mlp_ratio"], t["semantic_bits"], t["detail_bits"], t["text_channels"]) == (4.0, 16, 64, 2048)
    with torch.device("meta"):
        rebuilt = InfinityStarTransformer(**t)
    assert _shapes(rebuilt) == {k: list(v.shape) for k, v in tstate.items()}
    v = infer_vae_config(vstate)
    assert v["block_out_channels"] == (96, 192, 384, 384, 384) and v["layers_per_block"] == 2
    assert v["temporal_compression"] == (2, 2) and v["spatial_compression"] == (2, 2, 2)
    assert (v["semantic_bits"], v["detail_bits"], v["use_feat_proj"]) == (16, 64, 2)
    with torch.device("meta"):
        rebuilt_vae = InfinityStarVideoVAE(**v)
    assert _shapes(rebuilt_vae) == {k: list(x.shape) for k, x in vstate.items() if not DERIVED_KEYS.match(k)}


def test_sharded_folder_and_vae_pth_load_strictly(tmp_path):
    root = shared_path("parity", "infinity_star")
    state = load_file(str(root / "infinity_star.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    folder = tmp_path / "infinitystar_weights"
    folder.mkdir()
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    model = load_infinity_star_transformer(folder, text_maxlen=64)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k

    vae_state = load_file(str(root / "videovae.safetensors"))
    torch.save({"vae": vae_state, "step": torch.tensor(3)}, tmp_path / "infinitystar_videovae.pth")
    vae = load_infinity_star_vae(tmp_path / "infinitystar_videovae.pth", detail_scale_min_tokens=100)
    assert vae.config.block_out_channels == (32, 32, 32, 32, 32)
    assert torch.equal(vae.state_dict()["decoder.conv_in.conv.weight"], vae_state["decoder.conv_in.conv.weight"])


def test_mismatched_checkpoints_raise_one_readable_error(tmp_path):
    root = shared_path("parity", "infinity_star")
    state = load_file(str(root / "infinity_star.safetensors"))
    state.pop("block_chunks.1.module.0.mlp.up_proj.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_infinity_star_transformer(tmp_path / "broken.safetensors", text_maxlen=64)
    text = str(err.value)
    assert "missing keys (1): block_chunks.1.module.0.mlp.up_proj.weight" in text
    assert "unexpected keys (1): extra.weight" in text
    with pytest.raises(CheckpointError, match="not an InfinityStar video VAE"):
        load_infinity_star_vae(tmp_path / "broken.safetensors")


def test_rope_rotates_pairs_by_coordinate_times_frequency():
    head_dim = 16  # 2 frequencies per axis
    coords = torch.tensor([[[3, 1, 2, 5]]])
    cos, sin = rope_angles(coords, head_dim)
    inv = 1.0 / (10000.0 ** (torch.arange(2).float() / 2))
    expected = torch.cat([c * inv for c in (3.0, 1.0, 2.0, 5.0)])
    torch.testing.assert_close(cos[0, 0, 0], expected.cos())
    x = torch.randn(1, 1, 1, head_dim)
    y = apply_rope(x, cos, sin)
    a = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(expected), expected)
    torch.testing.assert_close(y[..., 0::2], a.real)
    torch.testing.assert_close(y[..., 1::2], a.imag)
    # rotations preserve the norm and relative positions: <R(p) q, R(p') k> depends on p - p' only
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)
    def dot(p, r):
        cq, sq = rope_angles(torch.tensor([[p]]), head_dim)
        ck, sk = rope_angles(torch.tensor([[r]]), head_dim)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()
    torch.testing.assert_close(dot([5, 2, 3, 4], [2, 1, 1, 1]), dot([7, 4, 5, 6], [4, 3, 3, 3]))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_block_chunks"):
        InfinityStarTransformer(embed_dim=64, depth=3, num_block_chunks=2, num_heads=2, num_key_value_heads=1)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        InfinityStarTransformer(embed_dim=64, depth=2, num_block_chunks=2, num_heads=2, num_key_value_heads=3)
    model = InfinityStarTransformer(embed_dim=64, depth=2, num_block_chunks=2, num_heads=2, num_key_value_heads=1,
                                    text_channels=8, null_text_len=4)
    with pytest.raises(ValueError, match="`head`"):
        model(torch.zeros(1, 1, 64), torch.zeros(1, 1, 4, dtype=torch.long), head="both")
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.zeros(1, 2, 64), torch.zeros(1, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="use_feat_proj"):
        InfinityStarVideoVAE(use_feat_proj=1)


def test_save_and_reload_in_diffusers_format(tmp_path):
    root = shared_path("parity", "infinity_star")
    transformer = load_infinity_star_transformer(root / "infinity_star.safetensors", text_maxlen=64)
    vae = load_infinity_star_vae(root / "videovae.safetensors", detail_scale_min_tokens=100)
    transformer.save_pretrained(tmp_path / "transformer")
    vae.save_pretrained(tmp_path / "vae")
    t2 = InfinityStarTransformer.from_pretrained(tmp_path / "transformer")
    v2 = InfinityStarVideoVAE.from_pretrained(tmp_path / "vae")
    assert t2.config.text_maxlen == 64 and v2.config.detail_scale_min_tokens == 100
    for a, b in ((transformer, t2), (vae, v2)):
        theirs = b.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in a.state_dict().items())
    # reduced precision keeps the heads in float32 (their logits are float32 in the official code)
    half = InfinityStarTransformer.from_pretrained(tmp_path / "transformer", torch_dtype=torch.bfloat16)
    assert half.word_embed.weight.dtype == torch.bfloat16 and half.head.weight.dtype == torch.float32
    out = half(torch.zeros(1, 2, 64), torch.zeros(1, 2, 4, dtype=torch.long), head="semantic")
    assert out.dtype == torch.float32 and out.shape == (1, 2, 32)
