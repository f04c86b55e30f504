"""Infinity BSQ VAE: parity with the official encoder, multi-scale quantizer and decoder."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.infinity import FOLDERS, load_fixture, report
from tests.helpers.numerics import layout_atol
from vpg_pipelines.models.infinity.bsq_vae import patchify_bits, unpatchify_bits

ATOL = 1e-4


def _vae_schedule(config: dict) -> list:
    return config.get("vae_scale_schedule", config["scale_schedule"])


def _quantize_recording_u(vae, features, schedule) -> tuple[list[torch.Tensor], torch.Tensor, list]:
    """``vae.quantize_multiscale`` that also returns each scale's residual as ``(u, |z|)``: bit = u > 0."""
    seen = []
    quantize = vae.quantizer.quantize

    def recording(z):
        z = z.float()
        seen.append((torch.nn.functional.normalize(z, dim=-1), z.norm(dim=-1, keepdim=True)))
        return quantize(z)

    vae.quantizer.quantize = recording
    try:
        bits, latent = vae.quantize_multiscale(features, schedule)
    finally:
        del vae.quantizer.quantize
    return bits, latent, seen


@pytest.mark.parametrize("folder", FOLDERS)
def test_encode_quantize_decode_match_official(folder):
    _, vae, cases, config, _ = load_fixture(folder)
    schedule = _vae_schedule(config)
    with torch.no_grad():
        enc = vae.encode(cases["vae.input_image"], schedule)
        recon = vae.decode(cases["vae.quantized_latent"])
        # the official features quantized: the same input as the official run, so its bits exactly
        bits, latent, u = _quantize_recording_u(vae, cases["vae.encoder_features"], schedule)
    feature_err = report(f"{folder} encoder features", enc.features, cases["vae.encoder_features"])
    assert feature_err <= ATOL
    assert len(enc.bits) == len(bits) == len(schedule)
    # a bit is the sign of a unit-vector component: downsampling, subtracting <= 7 codes and normalising
    # round it by a few ulps, so signs farther than 16 ulps from 0 are the official ones on any machine
    tie = layout_atol(1.0, ulps=16)
    for k, (b, expected) in enumerate(zip(bits, cases_bits(cases, len(schedule)))):
        assert u[k][0].abs().min().item() > 2 * tie, f"scale {k}: a bit within rounding of a tie"
        assert b.dtype == expected.dtype and torch.equal(b, expected), f"bits of scale {k}"
    assert report(f"{folder} quantized latent", latent, cases["vae.quantized_latent"]) <= ATOL
    # from our own features (within feature_err of the official ones) a component u_i moves by at most
    # 2 |dz| / |z| <= 2 sqrt(d) feature_err / |z|: only bits that close to 0 may differ (none do here)
    d = vae.config.codebook_dim
    for k, (b, expected) in enumerate(zip(enc.bits, cases_bits(cases, len(schedule)))):
        unit, norm = u[k]
        near = unit.abs() <= 2 * (2 * d**0.5 * max(feature_err, tie) / norm + tie)
        assert torch.equal(b[~near], expected[~near]), f"bits of scale {k} (off near-ties)"
    assert report(f"{folder} reconstruction", recon, cases["vae.reconstruction"]) <= ATOL
    assert recon.min() >= -1 and recon.max() <= 1


def cases_bits(cases: dict, num_scales: int) -> list[torch.Tensor]:
    return [cases[f"vae.bit_indices.scale{k}"] for k in range(num_scales)]


@pytest.mark.parametrize("folder", FOLDERS)
def test_codes_from_bits_rebuild_the_latent(folder):
    _, vae, cases, config, _ = load_fixture(folder)
    bits = [cases[f"vae.bit_indices.scale{k}"] for k in range(len(_vae_schedule(config)))]
    assert report(f"{folder} latent from bits", vae.codes_from_bits(bits), cases["vae.quantized_latent"]) <= ATOL


@pytest.mark.parametrize("folder", FOLDERS)
def test_teacher_forcing_inputs_match_official_builder(folder):
    _, vae, cases, config, _ = load_fixture(folder)
    patch = bool(config["infinity"]["apply_spatial_patchify"])
    inputs, targets = vae.teacher_forcing_inputs(cases["vae.encoder_features"], _vae_schedule(config), patch)
    assert report(f"{folder} next-scale inputs", inputs, cases["transformer.teacher_forcing_input"]) <= ATOL
    assert torch.equal(targets, cases["transformer.gt_bits"])


def test_bits_to_codes_are_unit_vectors_of_signs():
    _, vae, _, _, _ = load_fixture("plain")
    bits = torch.randint(0, 2, (2, 1, 3, 5, vae.codebook_dim))
    codes = vae.bits_to_codes(bits)
    assert codes.shape == (2, vae.codebook_dim, 1, 3, 5)
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(2, 1, 3, 5))
    assert torch.equal((codes > 0).permute(0, 2, 3, 4, 1).long(), bits)


def test_patchify_bits_round_trip_and_channel_order():
    bits = torch.randint(0, 2, (2, 6, 4, 3))
    packed = patchify_bits(bits)
    assert packed.shape == (2, 3, 2, 12)
    assert torch.equal(unpatchify_bits(packed), bits)
    # channel c*4 + 2*dy + dx of site (i, j) is VAE site (2i+dy, 2j+dx), bit c
    assert torch.equal(packed[1, 2, 1, 2 * 4 + 2 * 1 + 0], bits[1, 5, 2, 2])
