"""Pipeline folders made with ``vpg convert`` from the parity fixtures (module-scoped pytest fixtures)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.shared import REPO, shared_path
from vpg_pipelines.cli import main
from vpg_pipelines.models.infinity_star.video_vae import InfinityStarVideoVAE
from vpg_pipelines.testing import STAR_FAST_ARGS, tiny_t5


def save_text_encoder(encoder, tokenizer, folder):
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def infinity_folder(tmp_path_factory):
    """``vpg convert --infinity`` of the plain Infinity fixture with a tiny T5 (128 channels)."""
    root = shared_path("parity", "infinity")
    tmp = tmp_path_factory.mktemp("infinity")
    t5 = save_text_encoder(*tiny_t5(), tmp / "t5")
    folder = tmp / "converted"
    assert main(["convert", "--infinity", str(root / "infinity.safetensors"), "--vae", str(root / "vae.safetensors"),
                 "--text-encoder", t5, "--config", str(root / "config.json"), "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def star_folder(tmp_path_factory):
    """``vpg convert --infinity-star`` of the InfinityStar fixture with a tiny T5 (64 channels)."""
    root = shared_path("parity", "infinity_star")
    tmp = tmp_path_factory.mktemp("infinity_star")
    config = json.loads((root / "config.json").read_text())
    config["args"] = {**config["args"], **STAR_FAST_ARGS}
    (tmp / "config.json").write_text(json.dumps(config))
    t5 = save_text_encoder(*tiny_t5(64), tmp / "t5")
    folder = tmp / "converted"
    assert main(["convert", "--infinity-star", str(root / "infinity_star.safetensors"),
                 "--vae", str(root / "videovae.safetensors"), "--text-encoder", t5,
                 "--config", str(tmp / "config.json"), "--out", str(folder)]) == 0
    return folder



@pytest.fixture(scope="module")
def star480_folder(tmp_path_factory):
    """``vpg convert --infinity-star`` of the 480p fixture's transformer (its name says 480p) with a narrow random
    video VAE (cheap 10 s encodes and decodes), one repetition per scale and a tiny T5 (64 channels)."""
    root = REPO / "tests" / "fixtures" / "infinity_star_480p"
    tmp = tmp_path_factory.mktemp("infinity_star_480p")
    config = json.loads((root / "config.json").read_text())
    args = {**config["args"], "image_scale_repetition": [1] * 11, "video_scale_repetition": [1] * 11}
    (tmp / "config.json").write_text(json.dumps({"args": args, "model": config["model"],
                                                  "text_maxlen": config["text_maxlen"]}))
    torch.manual_seed(0)
    vae = InfinityStarVideoVAE(block_out_channels=(8, 8, 8, 8, 8), detail_scale_min_tokens=100)
    save_file(vae.state_dict(), str(tmp / "videovae_narrow.safetensors"))
    t5 = save_text_encoder(*tiny_t5(64), tmp / "t5")
    folder = tmp / "converted"
    assert main(["convert", "--infinity-star", str(root / "infinity_star_480p.safetensors"),
                 "--vae", str(tmp / "videovae_narrow.safetensors"), "--text-encoder", t5,
                 "--config", str(tmp / "config.json"), "--out", str(folder)]) == 0
    return folder
