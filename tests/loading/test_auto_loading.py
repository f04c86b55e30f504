"""The one loader (``loading/auto.py``) and the table of model kinds it dispatches on (``registry.py``)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.helpers.cli import save_text_encoder
from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityPipeline, VPGInfinityStarPipeline, VPGVARPipeline
from vpg_pipelines.loading import auto
from vpg_pipelines.loading.auto import SourceError
from vpg_pipelines.registry import KINDS, kind_for_official_file, kind_of, released_model, released_names
from vpg_pipelines.testing import tiny_t5


# -- the registry -----------------------------------------------------------------------------------------------
def test_every_kind_is_found_by_pipeline_class_name_and_file_name(var_pipe):
    assert kind_of(var_pipe) is kind_of(VPGVARPipeline) is kind_of("VPGVARPipeline") is kind_of("var") is KINDS["var"]
    assert kind_of(VPGInfinityStarPipeline).media == "video" and kind_of("infinity").conditioning == "text"
    with pytest.raises(ValueError, match="StableDiffusionPipeline.*known: var"):
        kind_of("StableDiffusionPipeline")
    names = {"var_d16.pth": "var", "var_d36.safetensors": "var", "infinity_2b_reg.pth": "infinity",
             "infinity_8b_weights": "infinity", "infinitystar_8b_720p_weights": "infinity_star",
             "infinitystar_videovae.pth": "infinity_star", "vae_ch160v4096z32.pth": None, "model.pth": None}
    assert {n: getattr(kind_for_official_file(n), "name", None) for n in names} == names
    assert KINDS["infinity"].is_companion_file("infinity_vae_d32reg.pth")
    assert not KINDS["infinity"].is_companion_file("infinitystar_videovae.pth")


def test_released_names_are_grouped_by_kind():
    names = released_names()
    assert names[0] == "var-d16" and "infinity-2b" in names
    assert names[-3:] == ["infinity-star-8b-720p", "infinity-star-8b-480p", "infinity-star-8b-interact"]
    kind, spec = released_model("infinity-star-8b-480p")
    assert kind.name == "infinity_star" and spec.official_args["pn"] == "0.40M" and "480p 10 s" in spec.sizes
    with pytest.raises(ValueError, match="unknown released model 'var-d99'; known: var-d16"):
        released_model("var-d99")


# -- sources ------------------------------------------------------------------------------------------------------
def test_source_kind_of_each_source(infinity_folder, tmp_path):
    assert auto.source_kind("demo").name == "var"
    assert auto.source_kind("infinity-8b").name == "infinity"
    assert auto.source_kind(infinity_folder).name == "infinity"
    assert auto.source_kind(tmp_path / "infinitystar_8b_720p_weights").name == "infinity_star"
    assert auto.source_kind(tmp_path / "weights.pth").name == "var"  # `vpg generate --model x.pth --vae y.pth`


def _var_pair(tmp_path, name="var_d2.safetensors", companion="vae_tiny.safetensors"):
    root = shared_path("parity", "var")
    shutil.copy(root / "var.safetensors", tmp_path / name)
    shutil.copy(root / "vqvae.safetensors", tmp_path / companion)
    return tmp_path / name, tmp_path / companion, root


def test_official_pair_by_file_name_with_its_sidecar(tmp_path, var_pipe):
    checkpoint, companion, root = _var_pair(tmp_path)
    with pytest.raises(ValueError, match="patch_nums"):  # the tiny sizes are not inferable without the sidecar
        auto.load_official(checkpoint, companion)
    shutil.copy(root / "config.json", tmp_path / "var_d2.json")
    assert auto.sidecar_config(checkpoint) == json.loads((root / "config.json").read_text())
    pipe = auto.load_official(checkpoint, companion)
    assert type(pipe) is VPGVARPipeline
    ours, theirs = pipe.transformer.state_dict(), var_pipe.transformer.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    (tmp_path / "var_d2.json").write_text("{not json")
    with pytest.raises(SourceError, match="sidecar config") as err:
        auto.load_official(checkpoint, companion)
    assert err.value.argument == "config"


@pytest.mark.parametrize(("checkpoint", "companion", "argument", "match"), [
    ("weights.pth", "vae.pth", "source", "not named like an official checkpoint"),
    ("infinity_vae_d32reg.pth", "infinity_vae_d32reg.pth", "source", "is the infinity VAE: pick the transformer"),
    ("infinity_2b_reg.pth", "infinitystar_videovae.pth", "companion", "is not the infinity VAE"),
    ("infinitystar_8b_720p_weights", "infinity_vae_d32reg.pth", "companion", "is not the infinity_star VAE"),
    ("var_d16.pth", "infinity_vae_d32reg.pth", "companion", "is not the var VAE"),
])
def test_official_names_that_do_not_fit_are_refused_naming_the_input(tmp_path, checkpoint, companion, argument,
                                                                      match):
    with pytest.raises(SourceError, match=match) as err:
        auto.load_official(tmp_path / checkpoint, tmp_path / companion)
    assert err.value.argument == argument and str(err.value).startswith(f"`{argument}` ")


def test_official_text_pair_with_a_t5_folder(tmp_path):
    root = shared_path("parity", "infinity")
    shutil.copy(root / "infinity.safetensors", tmp_path / "infinity_2b_reg.safetensors")
    shutil.copy(root / "vae.safetensors", tmp_path / "infinity_vae_d32reg.safetensors")
    shutil.copy(root / "config.json", tmp_path / "infinity_2b_reg.json")
    t5 = save_text_encoder(*tiny_t5(128), tmp_path / "t5")
    pipe = auto.load_official(tmp_path / "infinity_2b_reg.safetensors", tmp_path / "infinity_vae_d32reg.safetensors",
                              text_encoder=t5)
    assert type(pipe) is VPGInfinityPipeline and pipe.tokenizer is not None
    assert pipe.text_encoder.config.d_model == pipe.transformer.config.text_channels
    assert pipe.config.default_height == 256  # the sidecar's template
    narrow = save_text_encoder(*tiny_t5(64), tmp_path / "t5-64")
    with pytest.raises(ValueError, match="64-channel"):
        auto.attach_text_encoder(auto.load_official(tmp_path / "infinity_2b_reg.safetensors",
                                                    tmp_path / "infinity_vae_d32reg.safetensors"), narrow)
    with pytest.raises(SourceError, match="no config.json") as err:
        auto.load_text_encoder(tmp_path)
    assert err.value.argument == "text_encoder"


def test_a_text_encoder_is_attached_only_where_it_fits(tmp_path, var_pipe):
    pipe = auto.load_official(shared_path("parity", "infinity", "infinity.safetensors"),
                              shared_path("parity", "infinity", "vae.safetensors"), kind="infinity",
                              config=json.loads(shared_path("parity", "infinity", "config.json").read_text()))
    t5 = save_text_encoder(*tiny_t5(128), tmp_path / "t5")
    assert pipe.text_encoder is None
    auto.attach_text_encoder(pipe, t5)
    assert pipe.text_encoder is not None and pipe.tokenizer is not None
    with pytest.raises(SourceError, match="brings its own text encoder"):
        auto.attach_text_encoder(pipe, t5)
    with pytest.raises(SourceError, match="class-conditional"):
        auto.attach_text_encoder(var_pipe, t5)
    with pytest.raises(SourceError, match="class-conditional"):
        auto.load_official(*_var_pair(tmp_path)[:2], kind="var", text_encoder=t5)


def test_saved_folders_and_the_folder_flags(infinity_folder, tmp_path):
    assert type(auto.load_pipeline(infinity_folder)) is VPGInfinityPipeline
    with pytest.raises(SourceError, match="goes with an official checkpoint") as err:
        auto.load_pipeline(infinity_folder, companion="vae.pth")
    assert err.value.argument == "companion"
    with pytest.raises(SourceError, match="is needed") as err:
        auto.load_pipeline(tmp_path / "var_d16.pth")
    assert err.value.argument == "companion"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model_index.json").write_text("[]")
    with pytest.raises(SourceError, match="not a readable diffusers model_index.json"):
        auto.load_saved(tmp_path / "bad")


def test_empty_pipelines_hold_no_weights(infinity_folder):
    empty = auto.empty_pipeline_from_folder(infinity_folder)
    assert type(empty) is VPGInfinityPipeline and auto.saved_quantization(infinity_folder) is None
    assert all(p.device.type == "meta" for p in empty.transformer.parameters())
    released = auto.released_pipeline("infinity-star-8b-480p")
    assert released.config.official_args["pn"] == "0.40M" and released.tokenizer is None
    assert released.text_encoder.config.d_model == 2048 and next(released.vae.parameters()).device.type == "meta"
