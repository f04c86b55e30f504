"""Pipeline folders made with ``vpg convert`` from the parity fixtures (module-scoped pytest fixtures)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.shared import shared_path
from vpg_pipelines.cli import main
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

