"""InfinityStar video VAE: decode parity with the official decoder, codebooks, causality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.helpers.numerics import layout_atol
from tests.helpers.shared import shared_path
from vpg_pipelines.loading.infinity_star import load_infinity_star_vae

VIDEO_ATOL = 2e-3  # README: the video is stored as float16


@pytest.fixture(scope="module")
def vae_and_cases():
    root = shared_path("parity", "infinity_star")
    vae = load_infinity_star_vae(root / "videovae.safetensors", detail_scale_min_tokens=100)
    cases = load_file(str(root / "cases.safetensors"), device="cpu")
    return vae, {k: cases[k] for k in ("summed_codes", "video_fp16")}


@torch.no_grad()
def test_decode_matches_official(vae_and_cases):
    vae, cases = vae_and_cases
    video = vae.decode(cases["summed_codes"])
    expected = cases["video_fp16"].float()
    assert video.shape == expected.shape == (1, 3, 17, 192, 336)
    # the fixture holds the decoder output clamped to [-1, 1] (as the official video_decode does)
    err = (video.clamp(-1, 1) - expected).abs().max().item()
    print(f"video max abs error {err:.2e}")
    assert err <= VIDEO_ATOL


@torch.no_grad()
def test_decoding_is_causal_in_chunks(vae_and_cases):
    """The first chunk (3 latent frames -> 9 frames) does not see later frames; even counts split first."""
    vae, _ = vae_and_cases
    z = torch.randn(1, 64, 5, 1, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    video = vae.decode(z)
    assert video.shape == (1, 3, 17, 16, 32)
    # the first frames decoded alone vs within the longer clip: other shapes, equal up to rounding
    torch.testing.assert_close(vae.decode(z[:, :, :3]), video[:, :, :9], atol=layout_atol(video), rtol=0)
    assert vae.decode(z[:, :, :4]).shape[2] == 13 and vae.decode(z[:, :, :2]).shape[2] == 5
    assert vae.decode(z[:, :, :1]).shape[2] == 1


def test_detail_codes_are_signs_over_sqrt_d(vae_and_cases):
    vae, _ = vae_and_cases
    bits = torch.randint(0, 2, (2, 4, 3, 5, 64))
    codes = vae.codes_from_bits(bits, (4, 3, 5), semantic=False)
    assert codes.shape == (2, 64, 4, 3, 5) and codes.dtype == torch.float32
    torch.testing.assert_close(codes, (bits.float() * 2 - 1).movedim(-1, 1) / 8)


def test_codes_are_lifted_to_the_clip_grid_over_channels_and_space(vae_and_cases):
    vae, _ = vae_and_cases
    bits = torch.randint(0, 2, (1, 2, 3, 4, 16))
    # semantic codes at full spatial size: linear interpolation over the 16 -> 64 channels only
    lifted = vae.codes_from_bits(bits, (2, 3, 4), semantic=True)
    small = ((bits.float() * 2 - 1) / 4).reshape(-1, 1, 16)
    expected = F.interpolate(small, size=64, mode="linear").reshape(1, 2, 3, 4, 64).movedim(-1, 1)
    torch.testing.assert_close(lifted, expected)
    # detail codes on a smaller grid: bilinear over (h, w) per frame, channels untouched
    bits = torch.randint(0, 2, (1, 2, 3, 4, 64))
    lifted = vae.codes_from_bits(bits, (2, 6, 7), semantic=False)
    frames = ((bits.float() * 2 - 1) / 8).movedim(-1, 1)[:, :, 0]  # (1, 64, 3, 4), frame 0
    expected = F.interpolate(frames, size=(6, 7), mode="bilinear")
    torch.testing.assert_close(lifted[:, :, 0], expected)
    with pytest.raises(ValueError, match="frames"):
        vae.codes_from_bits(bits, (4, 6, 7), semantic=False)
    with pytest.raises(ValueError, match="bits per site"):
        vae.codes_from_bits(bits, (2, 6, 7), semantic=True)


@torch.no_grad()
def test_encode_shapes_and_posterior(vae_and_cases):
    vae, _ = vae_and_cases
    video = torch.rand(1, 3, 9, 16, 32) * 2 - 1
    mean = vae.encode(video, sample_posterior=False)
    assert mean.shape == (1, 64, 3, 1, 2)
    a = vae.encode(video, generator=torch.Generator().manual_seed(0))
    b = vae.encode(video, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, mean)
    # an image is a one-frame video
    assert vae.encode(video[:, :, 0], sample_posterior=False).shape == (1, 64, 1, 1, 2)
    with pytest.raises(ValueError, match="latents"):
        vae.decode(mean[:, :16])
