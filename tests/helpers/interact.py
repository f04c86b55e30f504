"""The InfinityStar-Interact parity fixture (``tests/fixtures/infinity_star_interact``) as pipelines: the parity
pipeline (the shared InfinityStar fixture's weights in the interact configuration) and a fast variant (narrow
random VAE, one repetition per scale, tiny T5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityStarInteractPipeline
from vpg_pipelines.models.infinity_star.video_vae import InfinityStarVideoVAE
from vpg_pipelines.testing import tiny_t5

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "infinity_star_interact"
SIZE = dict(height=192, width=336)
STEPS = 30  # per clip: repetitions [3] * 9 + [2, 1]
FAST_REPETITION = [1] * 11


def fixture_weights(config: dict) -> tuple[Path, Path]:
    """The transformer and VAE files the fixture names (``shared/...`` paths)."""
    paths = []
    for part in ("transformer", "vae"):
        relative = Path(config["weights"][part]["path"])
        paths.append(shared_path(*relative.parts[1:]))
    return paths[0], paths[1]


def load_config() -> dict:
    config = json.loads((FIXTURE / "config.json").read_text(encoding="utf-8"))
    return {"args": config["args_overrides"], "text_maxlen": config["text_maxlen"],
            "vae_block_out_channels": config["vae_block_out_channels"], "_raw": config}


@pytest.fixture(scope="module")
def interact_fixture():
    """``(config, cases, cases.json)`` of the fixture."""
    cases = load_file(str(FIXTURE / "cases.safetensors"))
    return load_config(), cases, json.loads((FIXTURE / "cases.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def interact_pipe(interact_fixture):
    config = dict(interact_fixture[0])
    raw = config.pop("_raw")
    transformer, vae = fixture_weights(raw)
    pipe = VPGInfinityStarInteractPipeline.from_official(transformer, vae, config=config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def fast_interact_pipe(interact_pipe):
    """The fixture transformer, a random narrow VAE (cheap coding), one repetition per scale, a tiny T5."""
    torch.manual_seed(0)
    vae = InfinityStarVideoVAE(block_out_channels=(8, 8, 8, 8, 8), detail_scale_min_tokens=350).eval()
    encoder, tokenizer = tiny_t5(64)
    args = {**interact_pipe.config.official_args, "image_scale_repetition": FAST_REPETITION,
            "video_scale_repetition": FAST_REPETITION}
    pipe = VPGInfinityStarInteractPipeline(interact_pipe.transformer, vae, encoder, tokenizer, official_args=args)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_frames(cases) -> torch.Tensor:
    """The fixture's 81 reference frames as an ``(F, H, W, 3)`` uint8 array-like tensor."""
    return cases["reference.video_rgb"]


def context_latents(cases) -> torch.Tensor:
    """``context_latents`` of a story that starts at the fixture's reference encoding."""
    features = cases["reference.features"]
    return torch.cat([features[:, :, :1], features], dim=2)
