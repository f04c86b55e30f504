"""The InfinityStar parity fixture as pipelines: the official settings it was made with, the parity
pipeline and a fast variant (narrow random VAE, one repetition per scale, tiny T5)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityStarPipeline
from vpg_pipelines.models.infinity_star.video_vae import InfinityStarVideoVAE
from vpg_pipelines.testing import STAR_PARITY_ARGS, tiny_t5

SIZE = dict(height=192, width=336)


@pytest.fixture(scope="module")
def fixture_files():
    root = shared_path("parity", "infinity_star")
    config = json.loads((root / "config.json").read_text())
    config["args"] = {**config.get("args", {}), **STAR_PARITY_ARGS}
    cases = load_file(str(root / "cases.safetensors"))
    return root, config, cases, json.loads((root / "cases.json").read_text())


@pytest.fixture(scope="module")
def parity_pipe(fixture_files):
    root, config, _, _ = fixture_files
    pipe = VPGInfinityStarPipeline.from_official(root / "infinity_star.safetensors", root / "videovae.safetensors",
                                                 config=config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def fast_pipe(parity_pipe):
    """The fixture transformer, a random narrow VAE (cheap decoding), one repetition per scale, a tiny T5."""
    torch.manual_seed(0)
    vae = InfinityStarVideoVAE(block_out_channels=(8, 8, 8, 8, 8), detail_scale_min_tokens=100).eval()
    encoder, tokenizer = tiny_t5(64)
    args = {**parity_pipe.config.official_args, "image_scale_repetition": [1] * 11, "video_scale_repetition": [1] * 11}
    pipe = VPGInfinityStarPipeline(parity_pipe.transformer, vae, encoder, tokenizer, official_args=args)
    pipe.set_progress_bar_config(disable=True)
    return pipe

