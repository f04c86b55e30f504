"""Infinity BSQ VAE: parity with the official encoder, multi-scale quantizer and decoder."""

from __future__ import annotations

import pytest
import torch

from tests.infinity_fixtures import FOLDERS, load_fixture, report
from vpg_pipelines.models.infinity.bsq_vae import patchify_bits, unpatchify_bits

ATOL = 1e-4


def _vae_schedule(config: dict) -> list:
    return config.get("vae_scale_schedule", config["scale_schedule"])


@pytest.mark.parametrize("folder", FOLDERS)
def test_encode_quantize_decode_match_official(folder):
    _, vae, cases, config, _ = load_fixture(folder)
    schedule = _vae_schedule(config)
    with torch.no_grad():
        enc = vae.encode(cases["vae.input_image"], schedule)
        recon = vae.decode(cases["vae.quantized_latent"])
    assert report(f"{folder} encoder features", enc.features, cases["vae.encoder_features"]) <= ATOL
    assert len(enc.bits) == len(schedule)
    for k, bits in enumerate(enc.bits):
        expected = cases[f"vae.bit_indices.scale{k}"]
        assert bits.dtype == expected.dtype and torch.equal(bits, expected), f"bits of scale {k}"
    assert report(f"{folder} quantized latent", enc.latent, cases["vae.quantized_latent"]) <= ATOL
    assert report(f"{folder} reconstruction", recon, cases["vae.reconstruction"]) <= ATOL
    assert recon.min() >= -1 and recon.max() <= 1


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
