"""Greedy Infinity samples driven through the shared loop equal the official sampler's.

Both fixture folders, both cases each: per-scale guided logits, bits, summed codes and images, with
CFG on the logits (``cfg_insertion_layer`` [0]) and after the last block ([-1]).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.infinity import load_fixture, make_adapter_state, report
from tests.helpers.numerics import assert_greedy_margin
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.models.adapter import NextScaleAdapter
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

ATOL = 1e-4
CASES = [("plain", "cfg3_logits_tau0p5"), ("plain", "cfg2_layer-1_tau1"),
         ("patchify", "cfg3_logits_tau1"), ("patchify", "cfg1p5_logits_tau0p5")]


@pytest.mark.parametrize("folder,tag", CASES)
def test_greedy_sample_matches_official(folder, tag):
    _, _, _, _, meta = load_fixture(folder)
    case = next(c for c in meta["sampling_cases"] if c["tag"] == tag)
    adapter, state, cases, _ = make_adapter_state(folder, case["tau_list"])
    assert isinstance(adapter, NextScaleAdapter)
    cfg = ClassifierFreeGuidance(scale=case["cfg_list"], layer=case["cfg_insertion_layer"][0])
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=cfg, generator=torch.Generator().manual_seed(0), trace=trace)
        image = adapter.decode(state)
    worst = 0.0
    for k in range(state.schedule.num_scales):
        guided = trace.guided[k]
        expected = cases[f"sample.{tag}.guided_logits.scale{k}"]
        assert_greedy_margin(expected, ATOL, classes=2)  # so greedy bits within ATOL of these logits agree
        worst = max(worst, report(f"{folder} {tag} scale {k} guided logits", guided.reshape(expected.shape),
                                  expected))
        assert torch.equal(state.bits[k], cases[f"sample.{tag}.bit_indices.scale{k}"]), f"bits of scale {k}"
    assert worst <= ATOL
    assert report(f"{folder} {tag} summed codes", state.latents.squeeze(2),
                  cases[f"sample.{tag}.summed_codes"]) <= ATOL
    # stored images are less exact than the stored codes (see the next test): 2e-4 instead of 1e-4
    assert report(f"{folder} {tag} image", image, cases[f"sample.{tag}.image"]) <= 2 * ATOL
    uint8_bgr = ((image + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(dims=(3,))
    diff = (uint8_bgr.int() - cases[f"sample.{tag}.image_uint8_bgr"].int()).abs().max().item()
    assert diff <= 1


def test_stored_sample_image_tolerance_is_the_fixtures_own():
    """Why the sampled images get 2e-4: decoding the official summed codes in float64 differs from the
    stored official image by more than 1e-4 (1.14e-4 for plain cfg2, sample 0), while our float32
    decoder stays within 2e-5 of that float64 decode (1.0e-5 to 1.2e-5 depending on the thread count)."""
    _, vae, cases, _, _ = load_fixture("plain")
    tag = "cfg2_layer-1_tau1"
    codes, stored = cases[f"sample.{tag}.summed_codes"][:1], cases[f"sample.{tag}.image"][:1]
    with torch.no_grad():
        ours = vae.decode(codes)
        exact = vae.double().decode(codes.double()).float()
        vae.float()
    fixture_gap = report("official stored image vs float64 decode of its codes", stored, exact)
    assert report("our float32 decode vs float64 decode", ours, exact) <= 2e-5 < ATOL < fixture_gap
