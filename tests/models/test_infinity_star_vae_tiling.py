"""Tiled and sliced decoding of the InfinityStar video VAE (``enable_tiling`` / ``enable_slicing``).

A tile is decoded on its own latents, so it equals the untiled decode up to rounding wherever its pixels are
farther from its borders than the decoder's receptive field reaches, and differs near its borders (zero
padding instead of the neighbour's latents): the seam error, which the blend keeps small.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.numerics import layout_atol
from tests.helpers.shared import shared_path
from vpg_pipelines.loading.infinity_star import load_infinity_star_vae
from vpg_pipelines.models.infinity_star.vae_tiling import (
    TileSettings,
    blend_ramp,
    decode_tiled,
    representative_extent,
    representative_frames,
    tile_starts,
)
from vpg_pipelines.models.infinity_star.video_vae import InfinityStarVideoVAE


@pytest.fixture(scope="module")
def parity_vae_and_codes():
    root = shared_path("parity", "infinity_star")
    vae = load_infinity_star_vae(root / "videovae.safetensors", detail_scale_min_tokens=100)
    codes = load_file(str(root / "cases.safetensors"))["summed_codes"]
    return vae, codes


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return InfinityStarVideoVAE(block_out_channels=(8, 8, 8, 8, 8)).eval()


def _ones_chunks(z: torch.Tensor):
    """A stand-in decoder: ones of the tile's video size, one frame and then four per further latent frame."""
    h, w = z.shape[3] * 8, z.shape[4] * 8
    yield torch.ones(z.shape[0], 3, 1, h, w)
    for _ in range(z.shape[2] - 1):
        yield torch.ones(z.shape[0], 3, 4, h, w)


@pytest.mark.parametrize("size, tiles", [((90, 160), (512, 384)), ((60, 106), (256, 128)), ((30, 50), (128, 128)),
                                         ((24, 42), (256, 128)), ((47, 33), (64, 48))])
def test_blend_weights_add_up_to_one_everywhere(size, tiles):
    """Every pixel is covered, and the tiles' weights over it add up to 1 (constant tiles blend to the constant)."""
    h, w = size
    settings = TileSettings(tiles[0], tiles[0], tiles[1], tiles[1])
    z = torch.zeros(1, 16, 2, h, w)
    out = decode_tiled(z, _ones_chunks, settings, torch.zeros(1, 3, 5, 8 * h, 8 * w))
    torch.testing.assert_close(out, torch.ones_like(out), atol=1e-6, rtol=0)


def test_diffusers_ramp_and_ours():
    """``edge_fraction`` 0 is diffusers' ``blend_v``/``blend_h`` weight ``y / extent``; the default leaves the
    outer quarters of the overlap to the tile that is not at its edge there."""
    torch.testing.assert_close(blend_ramp(64, 0.0, torch.float32, torch.device("cpu")), torch.arange(64) / 64)
    ramp = blend_ramp(128, 0.25, torch.float32, torch.device("cpu"))
    assert (ramp[:32] == 0).all() and (ramp[96:] == 1).all()
    torch.testing.assert_close(ramp[32:96], torch.arange(64) / 64)


def test_tile_layout_and_the_planners_representative_part():
    assert tile_starts(90, 64, 48) == [0, 48] and tile_starts(160, 64, 48) == [0, 48, 96]
    assert tile_starts(64, 64, 48) == [0]
    # the planner's smaller axis has the same tile lengths: a full tile and the same last one
    for size, tile, stride in ((160, 64, 48), (500, 32, 24), (90, 64, 48)):
        small = representative_extent(size, tile, stride)
        lengths = {min(s + tile, size) - s for s in tile_starts(size, tile, stride)}
        assert {min(s + tile, small) - s for s in tile_starts(small, tile, stride)} == lengths
    assert representative_frames(21, 2) == 7 and representative_frames(5, 2) == 5 and representative_frames(8, 2) == 8
    assert representative_frames(40, 2) == 8  # even counts: a first chunk of 4 frames, then two of 2


def test_tiling_arguments_are_checked(tiny_vae):
    with pytest.raises(ValueError, match="`tile_sample_min_height` must be a positive multiple of 16"):
        tiny_vae.enable_tiling(tile_sample_min_height=100)
    with pytest.raises(ValueError, match="`tile_sample_stride_width` must be between half"):
        tiny_vae.enable_tiling(tile_sample_min_width=256, tile_sample_stride_width=96)
    with pytest.raises(ValueError, match="`tile_sample_stride_height` must be between half"):
        tiny_vae.enable_tiling(tile_sample_min_height=256, tile_sample_stride_height=272)
    assert not tiny_vae.use_tiling  # a refused call changes nothing


@torch.no_grad()
def test_seams_on_the_parity_vae(parity_vae_and_codes):
    """Two tiles across the width (256 pixels every 128: 128 overlapping pixels at 128..256): outside the
    overlap every pixel is at least 128 pixels from a tile border and equals the untiled decode up to rounding;
    inside it the blend of the central half has a smaller error than diffusers' blend over the whole overlap."""
    vae, codes = parity_vae_and_codes
    z = codes[:, :, :1]  # the first frame (the decoder's first chunk)
    reference = vae.decode(z)
    errors = {}
    try:
        for fraction in (0.25, 0.0):
            vae.enable_tiling(256, 256, 128, 128)
            vae.tile_settings = TileSettings(256, 256, 128, 128, edge_fraction=fraction)
            errors[fraction] = (vae.decode(z) - reference).abs()
    finally:
        vae.disable_tiling()
    outside = torch.cat([errors[0.25][..., :128], errors[0.25][..., 256:]], dim=-1)
    assert outside.max() <= layout_atol(reference)
    rms = reference.pow(2).mean().sqrt()
    seam = {f: (e[..., 128:256].pow(2).mean().sqrt() / rms).item() for f, e in errors.items()}
    print(f"seam RMS error / video RMS: central-half blend {seam[0.25]:.2e}, diffusers' blend {seam[0.0]:.2e}")
    assert 0 < seam[0.25] < seam[0.0]


@torch.no_grad()
def test_tiles_decode_causally_through_the_temporal_chunks(tiny_vae):
    """Each tile runs the official causal chunks with its own cache: the first frames of a tiled decode do not
    depend on later latent frames, and the frame count is the untiled one."""
    z = torch.randn(1, 64, 5, 3, 5, generator=torch.Generator().manual_seed(0)) * 0.1
    untiled = tiny_vae.decode(z)
    tiny_vae.enable_tiling(48, 48, 32, 32)  # two tiles across the width
    try:
        video = tiny_vae.decode(z)
        head = tiny_vae.decode(z[:, :, :3])
    finally:
        tiny_vae.disable_tiling()
    assert video.shape == untiled.shape == (1, 3, 17, 48, 80)
    torch.testing.assert_close(head, video[:, :, :9], atol=layout_atol(video), rtol=0)


@torch.no_grad()
def test_slicing_decodes_the_same_batch(tiny_vae):
    """Sliced (one sample at a time, the default) and whole-batch decoding and encoding agree up to rounding;
    tiled, each sample of a sliced batch decodes as it does alone."""
    z = torch.randn(2, 64, 3, 2, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    sliced = tiny_vae.decode(z)
    tiny_vae.disable_slicing()
    try:
        batched = tiny_vae.decode(z)
        video = sliced.clamp(-1, 1)
        encoded_batched = tiny_vae.encode(video, sample_posterior=False)
    finally:
        tiny_vae.enable_slicing()
    torch.testing.assert_close(batched, sliced, atol=layout_atol(sliced), rtol=0)
    encoded = tiny_vae.encode(video, sample_posterior=False)
    torch.testing.assert_close(encoded_batched, encoded, atol=layout_atol(encoded), rtol=0)
    tiny_vae.enable_tiling(32, 32, 16, 16)
    try:
        tiled = tiny_vae.decode(z)
        alone = tiny_vae.decode(z[1:])
    finally:
        tiny_vae.disable_tiling()
    torch.testing.assert_close(tiled[1:], alone, atol=layout_atol(alone), rtol=0)


def test_pipeline_level_switches(fast_pipe):
    fast_pipe.enable_vae_tiling(tile_sample_min_height=64, tile_sample_stride_height=48)
    fast_pipe.disable_vae_slicing()
    try:
        assert fast_pipe.vae.use_tiling and not fast_pipe.vae.use_slicing
        assert fast_pipe.vae.tile_settings.min_height == 64 and fast_pipe.vae.tile_settings.min_width == 512
        settings = fast_pipe.estimate_memory(prompt="a fox", num_frames=17, height=192, width=336).settings
        assert settings["vae_tiling"] == "64x512 every 48x384"
    finally:
        fast_pipe.disable_vae_tiling()
        fast_pipe.enable_vae_slicing()
    assert not fast_pipe.vae.use_tiling and fast_pipe.vae.use_slicing
