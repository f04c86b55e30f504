"""Teacher-forced logits of the parity fixtures' tiny official-format models, for comparing weight formats
and dtypes (``tests/memory/test_memory_savers.py`` on the CPU, ``benchmarks/gpu_check.py`` on CUDA).

Each builder returns ``(pipeline, logits)``: ``logits(transformer)`` runs ``transformer`` (any dtype,
device or weight format) on the fixture's recorded inputs and returns float32 logits whose last
dimension holds one site's (VAR) or one bit's (Infinity, InfinityStar) alternatives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from vpg_pipelines import VPGInfinityPipeline, VPGInfinityStarPipeline, VPGVARPipeline
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.testing import STAR_PARITY_ARGS

SHARED = Path(os.environ.get("VPG_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _device(transformer: torch.nn.Module) -> torch.device:
    return next(transformer.parameters()).device


def var_logits() -> tuple[object, Callable]:

    root = SHARED / "parity" / "var"
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    pipe = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=config)
    cases = load_file(str(root / "cases.safetensors"))

    def logits(transformer):
        device = _device(transformer)
        with torch.no_grad():
            return transformer.teacher_forced_logits(cases["var.class_labels"].to(device),
                                                     cases["var.teacher_forcing_input"].to(device)).float()

    return pipe, logits


def infinity_logits(folder: str = "plain") -> tuple[object, Callable]:

    root = SHARED / "parity" / "infinity" if folder == "plain" else SHARED / "parity" / "infinity" / folder
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    pipe = VPGInfinityPipeline.from_official(root / "infinity.safetensors", root / "vae.safetensors", config=config)
    cases = load_file(str(root / "cases.safetensors"))
    schedule = schedule_from_template(config["h_div_w_template"], config["pn"],
                                      bool(pipe.transformer.config.apply_spatial_patchify))

    def logits(transformer):
        device = _device(transformer)
        with torch.no_grad():
            out = transformer.teacher_forced_logits(cases["text.features"].to(device), cases["text.lens"],
                                                    cases["transformer.teacher_forcing_input"].to(device), schedule)
        return out.float().view(*out.shape[:2], -1, 2)

    return pipe, logits


def infinity_star_logits() -> tuple[object, Callable]:

    root = SHARED / "parity" / "infinity_star"
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    config["args"] = {**config.get("args", {}), **STAR_PARITY_ARGS}
    pipe = VPGInfinityStarPipeline.from_official(root / "infinity_star.safetensors", root / "videovae.safetensors",
                                                 config=config)
    pipe.set_progress_bar_config(disable=True)
    cases = load_file(str(root / "cases.safetensors"))
    steps = json.loads((root / "cases.json").read_text(encoding="utf-8"))["steps"]

    def logits(transformer):
        """Per-step conditional logits with every step's codes forced to the fixture's (teacher forcing)."""
        device = _device(transformer)
        run = VPGInfinityStarPipeline(transformer, pipe.vae.to(device), official_args=pipe.config.official_args)
        run.set_progress_bar_config(disable=True)
        recorded = []

        def record(_pipe, i, scale, kwargs):
            recorded.append(kwargs["logits"].float().reshape(-1, 2).cpu())
            return {}

        run(prompt_embeds=cases["text.features"][None].to(device), num_frames=17, height=192, width=336,
            guidance_scale=1.0, vpg_scale=1.0, prefix_codes=[cases[f"forced_bits.step{i}"] for i in range(steps)],
            output_type="latent", callback_on_step_end=record, callback_on_step_end_tensor_inputs=["logits"])
        pipe.vae.to("cpu")
        return torch.cat(recorded)

    return pipe, logits


MODELS: dict[str, Callable[[], tuple[object, Callable]]] = {
    "var": var_logits,
    "infinity": infinity_logits,
    "infinity-patchify": lambda: infinity_logits("patchify"),
    "infinity_star": infinity_star_logits,
}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``||ours - reference|| / ||reference||`` over all logits (float32)."""
    ours, reference = ours.float().cpu(), reference.float().cpu()
    return ((ours - reference).norm() / reference.norm()).item()


def agreement(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of sites (VAR: tokens; Infinity / InfinityStar: bits) with the same greedy code."""
    return (ours.float().cpu().argmax(-1) == reference.float().cpu().argmax(-1)).float().mean().item()
