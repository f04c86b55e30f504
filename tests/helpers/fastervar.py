"""The FasterVAR parity fixtures (``tests/fixtures/fastervar``, made with the authors' code: see its README) and
runs of our sampler on them."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.helpers.shared import shared_path
from vpg_pipelines.acceleration.base import AccelerationTarget
from vpg_pipelines.acceleration.fastervar import FasterVAR
from vpg_pipelines.loading.infinity import load_official_infinity
from vpg_pipelines.loading.infinity_star import load_infinity_star_transformer, load_infinity_star_vae
from vpg_pipelines.models.infinity.adapter import InfinityAdapter
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter
from vpg_pipelines.models.infinity_star.schedules import plan_steps
from vpg_pipelines.testing import STAR_PARITY_ARGS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fastervar"
STAR_TAU = {"tau_image": 1.0, "tau_video": 0.4}  # the 720p script's values, which the shared fixture kept


@cache
def presets_json() -> dict:
    return json.loads((FIXTURES / "presets.json").read_text())


@cache
def infinity_cases() -> tuple[dict, dict]:
    """(tensors, cases.json) of the Infinity fixture."""
    root = FIXTURES / "infinity"
    return load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())


@cache
def star_cases() -> tuple[dict, dict]:
    """(tensors, cases.json) of the InfinityStar fixture."""
    root = FIXTURES / "infinity_star"
    return load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())


@cache
def infinity_models():
    """The depth-8 Infinity of the fixture (8 chunks of one block) and the shared tiny VAE."""
    root = FIXTURES / "infinity"
    config = json.loads((root / "config.json").read_text())
    vae_config = {k: v for k, v in config["vae"].items() if k != "weights"}
    vae_path = shared_path("parity", "infinity", "vae.safetensors")
    return load_official_infinity(root / "infinity.safetensors", vae_path, config={**config, "vae": vae_config})


def infinity_state(case: dict, h_div_w: float = 1.0, pn: str = "1M", texts: list[torch.Tensor] | None = None,
                   with_null: bool = True):
    """An adapter, its prepared greedy state for ``case`` (tau list, the fixture's prompt or ``texts``) and the
    acceleration target of the schedule."""
    transformer, vae = infinity_models()
    adapter = InfinityAdapter(transformer, vae)
    schedule = schedule_from_template(h_div_w, pn, False)
    texts = texts or [infinity_cases()[0]["text.features"]]
    features, lens = torch.cat(texts), [t.shape[0] for t in texts]
    tau = case["tau_list"][0]
    state = adapter.prepare(features, lens, schedule, with_null=with_null, tau=tau, top_k=1, top_p=0.0)
    return adapter, state, target(adapter, state, "infinity")


def target(adapter, state, model: str) -> AccelerationTarget:
    transformer = adapter.transformer
    steps = tuple(adapter.steps(state))
    return AccelerationTarget(model, transformer.config.depth, steps, steps[-1].scale + 1,
                              details={"block_chunks": transformer.config.num_block_chunks})


@cache
def star_fixture():
    """The shared tiny InfinityStar (weights, VAE, plan, cases) the FasterVAR fixture was made on."""
    root = shared_path("parity", "infinity_star")
    config = json.loads((root / "config.json").read_text())
    transformer = load_infinity_star_transformer(root / "infinity_star.safetensors", text_maxlen=config["text_maxlen"])
    vae = load_infinity_star_vae(root / "videovae.safetensors",
                                 detail_scale_min_tokens=STAR_PARITY_ARGS["detail_scale_min_tokens"])
    plan = plan_steps(config["scale_schedule"], STAR_PARITY_ARGS["image_scale_repetition"],
                      STAR_PARITY_ARGS["video_scale_repetition"], semantic_scales=STAR_PARITY_ARGS["semantic_scales"],
                      detail_scale_min_tokens=STAR_PARITY_ARGS["detail_scale_min_tokens"], **STAR_TAU)
    return InfinityStarAdapter(transformer, vae), plan, load_file(str(root / "cases.safetensors"))


def star_state(negative: bool, forced: bool = True):
    adapter, plan, shared = star_fixture()
    bits = [shared[f"forced_bits.step{i}"] for i in range(len(plan.steps))] if forced else None
    negatives = [shared["negative_text.features"]] if negative else None
    state = adapter.prepare(plan, [shared["text.features"]], negatives, with_null=True, forced_bits=bits)
    return adapter, state, target(adapter, state, "infinity_star")


def injected(prefix: str, tensors: dict):
    """A selection override that replays the fixture's recorded positions ``<prefix>.chunk{g}.indices``."""

    def select(step, group, part, rows):
        assert part == "positions"
        return tensors[f"{prefix}.chunk{group}.indices"]

    return select


def first_difference(draws: dict, tensors: dict, prefix: str) -> str | None:
    """Where our own draws first differ from the fixture's (``None``: nowhere), for the report of a free run."""
    for (step, group), draw in sorted(draws.items()):
        theirs = tensors[f"{prefix}.chunk{group}.indices"]
        if not torch.equal(draw.positions, theirs):
            row, j = (draw.positions != theirs).nonzero()[0].tolist()
            return (f"step {step} group {group} row {row} draw {j}: ours {int(draw.positions[row, j])}, theirs "
                    f"{int(theirs[row, j])}")
    return None


__all__ = ["FasterVAR", "first_difference", "infinity_cases", "infinity_models", "infinity_state", "injected",
           "presets_json", "star_cases", "star_fixture", "star_state"]
