"""bfloat16 against float32 on the parity models, on the CPU, for all three pipelines.

Each model runs unguided in float32, then in bf16 following the float32 run's codes (tests/helpers/numerics.py
``record_draws``): the logits of every step agree within ``BF16_ULPS`` bf16 eps of their magnitude, and
the bf16 run's own picks equal the float32 ones except where float32 had a near-tie within twice that
tolerance. A guided bf16 run (the models' usual CFG/APG and VPG) then checks that no module anywhere
(attention, MLP, norms, heads, VAE) produces NaN or inf.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.infinity import fixture_root
from tests.helpers.numerics import (
    BF16_EPS,
    all_outputs_finite,
    assert_same_greedy_steps,
    assert_same_steps,
    bf16_atol,
    record_draws,
)
from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityPipeline, VPGInfinityStarPipeline, VPGVARPipeline
from vpg_pipelines.models.infinity.transformer import pad_text
from vpg_pipelines.sampling.next_scale import SamplerTrace


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_var_bf16_tracks_fp32():
    root = shared_path("parity", "var")
    config = json.loads((root / "config.json").read_text())

    def load(dtype):
        return _quiet(VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors",
                                                  config=config, torch_dtype=dtype))

    fp32, bf16 = load(torch.float32), load(torch.bfloat16)
    assert bf16.transformer.dtype == bf16.vae.dtype == torch.bfloat16
    kw = dict(class_labels=[0, 4], guidance_scale=0.0, top_k=1, top_p=0.0, vpg_scale=1.0, output_type="pt")
    reference, trace = SamplerTrace(), SamplerTrace()
    with record_draws() as draws:
        expected = fp32(**kw, generator=gens(0, 1), trace=reference).images
    with record_draws(replay=draws), all_outputs_finite(bf16.transformer, bf16.vae):
        images = bf16(**kw, generator=gens(0, 1), trace=trace).images
    assert_same_greedy_steps(reference, trace, atol=bf16_atol(reference))
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    # the same codes decoded by a bf16 VQVAE: pixels move by a few bf16 eps on average
    assert (images - expected).abs().mean().item() <= 2 * BF16_EPS
    with all_outputs_finite(bf16.transformer, bf16.vae):
        guided = bf16(class_labels=[0, 4], guidance_scale=4.0, vpg_scale=3.0, generator=gens(0, 1),
                      output_type="pt").images
    assert torch.isfinite(guided).all()


def test_infinity_bf16_tracks_fp32():
    root = fixture_root("plain")
    config = json.loads((root / "config.json").read_text())
    cases = load_file(str(root / "cases.safetensors"))
    embeds, mask = pad_text(cases["text.features"], cases["text.lens"])

    def load(dtype):
        return _quiet(VPGInfinityPipeline.from_official(root / "infinity.safetensors", root / "vae.safetensors",
                                                       config=config, torch_dtype=dtype))

    fp32, bf16 = load(torch.float32), load(torch.bfloat16)
    assert bf16.transformer.dtype == bf16.vae.dtype == torch.bfloat16
    kw = dict(prompt_embeds=embeds, prompt_attention_mask=mask.long(), guidance_scale=1.0, tau=1.0, top_k=1,
              top_p=0.0, vpg_scale=1.0, output_type="latent")
    reference, trace = SamplerTrace(), SamplerTrace()
    with record_draws() as draws:
        fp32(**kw, generator=gens(0, 1), trace=reference)
    with record_draws(replay=draws), all_outputs_finite(bf16.transformer):
        latents = bf16(**kw, generator=gens(0, 1), trace=trace).images
    assert_same_greedy_steps(reference, trace, classes=2, atol=bf16_atol(reference))
    assert latents.dtype == torch.float32
    with all_outputs_finite(bf16.transformer):
        guided = bf16(**{**kw, "guidance_scale": 3.0, "tau": 0.5, "vpg_scale": 2.0}, generator=gens(0, 1)).images
    assert torch.isfinite(guided).all()
    with torch.no_grad(), all_outputs_finite(bf16.vae):  # a bf16 decode of 256 px takes minutes here: a corner
        corner = bf16.vae.decode(guided[:, :, :4, :4])
    assert corner.dtype == torch.float32 and torch.isfinite(corner).all()


@pytest.mark.parametrize("num_frames", [17])
def test_infinity_star_bf16_tracks_fp32(num_frames):
    root = shared_path("parity", "infinity_star")
    config = json.loads((root / "config.json").read_text())
    config["args"] = {**config.get("args", {}), "pn": "0.06M", "image_scale_repetition": [1] * 11,
                      "video_scale_repetition": [1] * 11, "semantic_scales": 8, "detail_scale_min_tokens": 100}
    cases = load_file(str(root / "cases.safetensors"))

    def load(dtype):
        return _quiet(VPGInfinityStarPipeline.from_official(root / "infinity_star.safetensors",
                                                           root / "videovae.safetensors", config=config,
                                                           torch_dtype=dtype))

    fp32, bf16 = load(torch.float32), load(torch.bfloat16)
    assert bf16.transformer.dtype == torch.bfloat16 and bf16.vae.dtype == torch.float32  # the VAE stays fp32
    size = dict(height=192, width=336)
    kw = dict(prompt_embeds=cases["text.features"][None], num_frames=num_frames, **size, guidance_scale=1.0,
              vpg_scale=1.0, output_type="latent")
    reference, trace = SamplerTrace(), SamplerTrace()
    with record_draws() as draws:
        fp32(**kw, generator=gens(0), trace=reference)
    with record_draws(replay=draws) as replayed, all_outputs_finite(bf16.transformer):
        latents = bf16(**kw, generator=gens(0), trace=trace).frames
    assert_same_steps(reference, trace, replayed, atol=bf16_atol(reference))
    assert latents.dtype == torch.float32
    with all_outputs_finite(bf16.transformer, bf16.vae):
        frames = bf16(**{**kw, "guidance_scale": 34.0, "vpg_scale": 2.0, "output_type": "pt"},
                      generator=gens(0)).frames
    assert torch.isfinite(frames).all()


def test_loading_in_bf16_is_quiet(capfd):
    """diffusers' ``ModelMixin.to(dtype)`` warns about float32 modules on every cast; the loaders cast quietly."""
    root = shared_path("parity", "var")
    config = json.loads((root / "config.json").read_text())
    VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=config,
                                 torch_dtype=torch.bfloat16)
    star = shared_path("parity", "infinity_star")
    pipe = VPGInfinityStarPipeline.from_official(star / "infinity_star.safetensors", star / "videovae.safetensors",
                                                 config=json.loads((star / "config.json").read_text()),
                                                 torch_dtype=torch.bfloat16)
    assert pipe.transformer.head.weight.dtype == torch.float32  # kept in float32 as officially
    assert "should be kept in float32" not in capfd.readouterr().err
