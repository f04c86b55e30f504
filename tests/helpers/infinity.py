"""Shared loaders for the Infinity parity fixtures (plain and 8B-style patchify)."""

from __future__ import annotations

import json
from functools import cache

from safetensors.torch import load_file

from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityPipeline
from vpg_pipelines.loading.infinity import load_official_infinity
from vpg_pipelines.models.infinity.adapter import InfinityAdapter
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.models.infinity.transformer import pad_text
from vpg_pipelines.testing import tiny_t5

FOLDERS = ["plain", "patchify"]


def fixture_root(folder: str):
    return shared_path("parity", "infinity") if folder == "plain" else shared_path("parity", "infinity", folder)


@cache
def load_fixture(folder: str):
    """(transformer, vae, cases, config, meta) of one fixture folder, loaded once per session."""
    root = fixture_root(folder)
    config = json.loads((root / "config.json").read_text())
    transformer, vae = load_official_infinity(root / "infinity.safetensors", root / "vae.safetensors", config=config)
    cases = load_file(str(root / "cases.safetensors"))
    meta = json.loads((root / "cases.json").read_text())
    return transformer, vae, cases, config, meta


def report(name: str, actual, expected) -> float:
    err = (actual.float() - expected.float()).abs().max().item()
    print(f"{name}: max abs error {err:.3e}")
    return err


def make_adapter_state(folder: str, tau, top_k=1, top_p=0.0, with_null=True):
    """An adapter on a fixture's models and a prepared state for its schedule and prompts."""
    transformer, vae, cases, config, meta = load_fixture(folder)
    adapter = InfinityAdapter(transformer, vae)
    schedule = schedule_from_template(config["h_div_w_template"], config["pn"],
                                      bool(transformer.config.apply_spatial_patchify))
    state = adapter.prepare(cases["text.features"], cases["text.lens"], schedule, with_null=with_null, tau=tau,
                            top_k=top_k, top_p=top_p)
    return adapter, state, cases, meta


def make_pipe(folder: str = "plain", text: bool = False) -> VPGInfinityPipeline:
    transformer, vae, _, config, _ = load_fixture(folder)
    encoder, tokenizer = tiny_t5(transformer.config.text_channels) if text else (None, None)
    height, width = schedule_from_template(config["h_div_w_template"], config["pn"]).image_size
    pipe = VPGInfinityPipeline(transformer, vae, encoder, tokenizer, default_height=height, default_width=width)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fixture_embeds(folder: str = "plain"):
    """The fixtures' compact text features as diffusers-style padded embeddings + mask."""
    cases = load_fixture(folder)[2]
    embeds, mask = pad_text(cases["text.features"], cases["text.lens"])
    return embeds, mask.long()

