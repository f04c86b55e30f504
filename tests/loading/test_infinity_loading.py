"""Loading official-format Infinity files: .pth with weights under "vae", stripped key spelling,
a plain transformer .pth and a transformers-style sharded folder (the 8B layout)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers.infinity import fixture_root
from vpg_pipelines.loading.checkpoint import CheckpointError
from vpg_pipelines.loading.infinity import load_infinity_transformer, load_infinity_vae, load_official_infinity


def _same_weights(module, state: dict) -> None:
    ours = module.state_dict()
    for key, value in ours.items():
        assert torch.equal(value, state[key]), key


def _strip(state: dict) -> dict:
    return {k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
            .replace(".norm.weight", ".weight").replace(".norm.bias", ".bias"): v for k, v in state.items()}


@pytest.mark.parametrize("folder", ["plain", "patchify"])
def test_official_vae_pth_with_stripped_keys(tmp_path, folder):
    state = load_file(str(fixture_root(folder) / "vae.safetensors"))
    path = tmp_path / "infinity_vae.pth"
    torch.save({"vae": _strip(state), "ema": {"junk": torch.zeros(1)}}, path)
    vae = load_infinity_vae(path)
    _same_weights(vae, state)
    config = json.loads((fixture_root(folder) / "config.json").read_text())["vae"]
    assert vae.config.patch_size == config["patch_size"] and vae.config.codebook_dim == config["codebook_dim"]


def test_transformer_pth_and_sharded_folder(tmp_path):
    root = fixture_root("patchify")
    state = load_file(str(root / "infinity.safetensors"))
    torch.save(state, tmp_path / "infinity.pth")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    folder = tmp_path / "infinity_8b_weights"
    folder.mkdir()
    for name, part in shards.items():
        save_file({k: state[k].contiguous() for k in part}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for source in (tmp_path / "infinity.pth", folder):
        model = load_infinity_transformer(source, vae_codebook_dim=4)
        assert model.config.apply_spatial_patchify == 1 and model.bits_per_site == 16
        _same_weights(model, state)
    transformer, vae = load_official_infinity(folder, root / "vae.safetensors")
    assert transformer.config.codebook_dim == vae.config.codebook_dim == 4
    with pytest.raises(CheckpointError, match="bits per site"):
        load_infinity_transformer(folder, vae_codebook_dim=3)


def test_transformer_text_maxlen_adapted_like_the_official_loader():
    root = fixture_root("plain")
    state = load_file(str(root / "infinity.safetensors"))
    longer = load_infinity_transformer(root / "infinity.safetensors", config={"text_maxlen": 20})
    assert torch.equal(longer.cfg_uncond[:16], state["cfg_uncond"])
    shorter = load_infinity_transformer(root / "infinity.safetensors", config={"text_maxlen": 8})
    assert torch.equal(shorter.cfg_uncond, state["cfg_uncond"][:8])


def test_a_vae_file_is_not_a_transformer(tmp_path):
    with pytest.raises(CheckpointError, match="not an Infinity transformer"):
        load_infinity_transformer(fixture_root("plain") / "vae.safetensors")
    with pytest.raises(CheckpointError, match="not an Infinity BSQ-VAE"):
        load_infinity_vae(fixture_root("plain") / "infinity.safetensors")


def test_save_pretrained_round_trip(tmp_path):
    from vpg_pipelines.models.infinity import InfinityBSQVAE, InfinityTransformer

    root = fixture_root("patchify")
    transformer, vae = load_official_infinity(root / "infinity.safetensors", root / "vae.safetensors")
    transformer.save_pretrained(tmp_path / "transformer")
    vae.save_pretrained(tmp_path / "vae")
    transformer2 = InfinityTransformer.from_pretrained(tmp_path / "transformer")
    vae2 = InfinityBSQVAE.from_pretrained(tmp_path / "vae")
    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(transformer2.config) == public(transformer.config)
    assert transformer2.config.apply_spatial_patchify == 1 and vae2.config.patch_size == 8
    _same_weights(transformer2, transformer.state_dict())
    _same_weights(vae2, vae.state_dict())
