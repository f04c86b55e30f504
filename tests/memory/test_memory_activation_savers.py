"""The planner with the activation savers: forward chunking (the one-block replay of the chunked model) and
tiled / sliced decoding (the decode replayed on its representative tiles and chunks), against what the real
CPU forward and decode allocate, and ``auto`` adding them when a candidate does not fit otherwise."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from tests.memory.test_memory_planner import _assert_replay_is_real, _real_forward_peak
from vpg_pipelines.loading.auto import released_pipeline
from vpg_pipelines.memory.choose import SAVER_STEPS, apply_activation_savers, choose_savers, fit_to_memory, usable
from vpg_pipelines.memory.decode import decode_bytes
from vpg_pipelines.memory.kv_timeline import Forward
from vpg_pipelines.memory.meter import TensorMeter
from vpg_pipelines.memory.planner import combine_savers
from vpg_pipelines.memory.replay import InfinityStarStepReplay, VARStepReplay
from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter
from vpg_pipelines.models.infinity_star.vae_tiling import TileSettings
from vpg_pipelines.models.infinity_star.video_vae import InfinityStarVideoVAE
from vpg_pipelines.models.var.adapter import VARAdapter, VARState

STAR_CALL = {"prompt": "a red fox in the snow", "num_frames": 17, "height": 192, "width": 336, "output_type": "pt",
             "vpg_scale": 1.5}


def test_chunked_replay_equals_the_real_chunked_infinity_star_forward(fast_pipe):
    plan = fast_pipe.plan(17, 192, 336)
    chunked = copy.deepcopy(fast_pipe.transformer)
    chunked.enable_forward_chunking(40)
    adapter = InfinityStarAdapter(chunked, fast_pipe.vae)
    steps = adapter.steps(SimpleNamespace(plan=plan, conditioning_steps=0))
    text = 12
    state = adapter.prepare(plan, [torch.randn(text, chunked.config.text_channels)], None, with_null=True)
    replay = InfinityStarStepReplay(fast_pipe.transformer, steps, 2, torch.float32, plan=plan, text_tokens=text,
                                    batch=1, chunk_size=40)
    plain = InfinityStarStepReplay(fast_pipe.transformer, steps, 2, torch.float32, plan=plan, text_tokens=text,
                                   batch=1)
    replay.real_adapter = adapter
    assert replay.model.forward_chunk_size == 40
    stored = [s for s in steps if s.store_kv]
    cached = text + sum(s.num_sites for s in stored)
    largest = max(steps, key=lambda s: s.num_sites)
    assert largest.num_sites > 3 * 40  # several chunks
    forward = Forward(4, (largest.index,), cached)
    _assert_replay_is_real(replay, forward, state)
    assert replay.activation(forward) < plain.activation(forward)


def test_chunked_replay_equals_the_real_chunked_var_forward(var_pipe):
    chunked = copy.deepcopy(var_pipe.transformer)
    chunked.enable_forward_chunking(5)
    adapter = VARAdapter(chunked, var_pipe.vae)
    steps = adapter.steps(None)
    replay = VARStepReplay(var_pipe.transformer, steps, 4, torch.float32, chunk_size=5)
    replay.real_adapter = adapter
    state = VARState(torch.arange(4), torch.zeros(1))
    last = steps[-1]
    _assert_replay_is_real(replay, Forward(4, (last.index,), sum(s.num_sites for s in steps[:-1])), state)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return InfinityStarVideoVAE(block_out_channels=(8, 8, 8, 8, 8)).eval()


@pytest.mark.parametrize("tiled, sliced, shape", [(True, True, (1, 64, 9, 3, 8)), (True, False, (2, 64, 5, 3, 8)),
                                                   (False, True, (2, 64, 5, 3, 8))])
def test_planned_decode_is_what_the_decode_allocates(tiny_vae, tiled, sliced, shape):
    """The pipeline's decode and post-processing on the CPU under the tensor meter: the planner's figure is
    its peak, byte for byte. Tiled: four tiles across (and nine latent frames), of which the replay decodes
    two tiles (and seven frames): the representative part."""
    tiling = TileSettings(48, 48, 32, 32) if tiled else None
    tiny_vae.use_slicing = sliced
    try:
        planned = decode_bytes("infinity_star", tiny_vae, shape, torch.float32, tiling)
        tiny_vae.use_tiling, tiny_vae.tile_settings = tiled, tiling or tiny_vae.tile_settings
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.1
        with torch.no_grad(), TensorMeter() as meter:  # VPGInfinityStarPipeline.decode_latents, then to "pt"
            video = tiny_vae.decode(latents).float().clamp(-1, 1)
            video[:, :, 0] = video[:, :, 1]
            (video * 0.5 + 0.5).clamp(0, 1)
    finally:
        tiny_vae.use_slicing, tiny_vae.use_tiling = True, False
    assert planned == meter.peak


def test_tiling_lowers_the_planned_decode(tiny_vae):
    shape = (1, 64, 5, 3, 8)
    untiled = decode_bytes("infinity_star", tiny_vae, shape, torch.float32)
    tiled = decode_bytes("infinity_star", tiny_vae, shape, torch.float32, TileSettings(48, 48, 32, 32))
    assert tiled < untiled


def test_combined_estimates_are_the_directly_planned_ones(fast_pipe):
    fast_pipe.vae.tile_settings = TileSettings(96, 96, 64, 64)
    try:
        plain = fast_pipe.estimate_memory(**STAR_CALL)
        lean = fast_pipe.estimate_memory(forward_chunking=64, vae_tiling=True, **STAR_CALL)
        for chunked, tiled in SAVER_STEPS:
            direct = fast_pipe.estimate_memory(forward_chunking=64 if chunked else False, vae_tiling=tiled,
                                               **STAR_CALL)
            combined = combine_savers(plain, lean, chunked, tiled)
            assert combined.to_dict() == direct.to_dict()
    finally:
        fast_pipe.vae.tile_settings = TileSettings()
    assert lean.decode < plain.decode and lean.activations[lean.largest_step] < plain.activations[plain.largest_step]


def test_auto_adds_the_savers_a_candidate_needs(fast_pipe):
    """With just enough memory for the call with forward chunking and tiled decoding (and nothing else to
    try), ``auto`` takes the first of chunking, tiling, both that fits, and ``fit_to_memory`` turns it on."""
    pipe = fast_pipe
    pipe.vae.enable_tiling(96, 96, 64, 64)
    pipe.vae.disable_tiling()  # the tile sizes stay configured; auto plans with them
    try:
        plain = pipe.estimate_memory(**STAR_CALL)
        lean = pipe.estimate_memory(forward_chunking=True, vae_tiling=True, **STAR_CALL)
        free = lean.peak("none") + 256 * 1024**2  # usable(free) is then exactly the lean plan
        assert usable(free) == lean.peak("none") < plain.peak("none")
        expected = next((c, t) for c, t in SAVER_STEPS
                        if combine_savers(plain, lean, c, t).peak("none") <= usable(free))
        choice = choose_savers(pipe, free, quantizations=("none",), offloads=("none",), **STAR_CALL)
        assert choice.fits and (choice.forward_chunking is not None, choice.vae_tiling is not None) == expected
        none_fits = choose_savers(pipe, free, quantizations=("none",), offloads=("none",), activation_savers=False,
                                  **STAR_CALL)
        assert not none_fits.fits
        applied = fit_to_memory(pipe, free_bytes=free, device="cpu", quantizations=("none",), **STAR_CALL)
        assert (applied.forward_chunking, applied.vae_tiling) == (choice.forward_chunking, choice.vae_tiling)
        assert pipe.transformer.forward_chunk_size == choice.forward_chunking
        assert pipe.vae.use_tiling == (choice.vae_tiling is not None)
        assert pipe.estimate_memory(**STAR_CALL).peak("none") == choice.peak  # the pipeline now plans as chosen
    finally:
        pipe.disable_forward_chunking()
        pipe.disable_vae_tiling()
        pipe.vae.tile_settings = TileSettings()


def test_planned_saver_arguments_are_checked(fast_pipe, var_pipe):
    with pytest.raises(ValueError, match="`forward_chunking` must be"):
        fast_pipe.estimate_memory(forward_chunking=0, **STAR_CALL)
    with pytest.raises(ValueError, match="`vae_tiling` takes enable_tiling's arguments"):
        fast_pipe.estimate_memory(vae_tiling={"tile_height": 64}, **STAR_CALL)
    with pytest.raises(ValueError, match="must be a positive multiple of 16"):
        fast_pipe.estimate_memory(vae_tiling={"tile_sample_min_height": 40}, **STAR_CALL)
    with pytest.raises(ValueError, match="`vae_tiling` is available for InfinityStar"):
        var_pipe.estimate_memory(class_labels=[0], vae_tiling=True)


def test_offloaded_cache_replay_bounds_the_real_offloaded_forward(fast_pipe):
    """An offloaded cache: the replay counts each layer's copy of its visible entries and the next layer's
    prefetched copy. Real multi-layer forward with prefetching (done at once on the CPU; a side stream on CUDA):
    the plan is at least what it allocates and at most one copy more (the prefetched copy is added to the
    forward's peak, wherever in the forward that peak falls)."""
    plan = fast_pipe.plan(17, 192, 336)
    adapter = InfinityStarAdapter(fast_pipe.transformer, fast_pipe.vae)
    steps = adapter.steps(SimpleNamespace(plan=plan, conditioning_steps=0))
    text = 12
    state = adapter.prepare(plan, [torch.randn(text, fast_pipe.transformer.config.text_channels)], None,
                            with_null=True)
    replay = InfinityStarStepReplay(fast_pipe.transformer, steps, 2, torch.float32, plan=plan, text_tokens=text,
                                    batch=1, kv_offload=True)
    plain = InfinityStarStepReplay(fast_pipe.transformer, steps, 2, torch.float32, plan=plan, text_tokens=text,
                                   batch=1)
    replay.real_adapter = adapter
    stored = [s for s in steps if s.store_kv]
    last = stored[-1].index
    cached = text + sum(s.num_sites for s in stored if s.index < last)
    forward = Forward(4, (last,), cached)
    planned, real = replay.activation(forward), _real_forward_peak(replay, forward, state, offload=True)
    g = replay.geometry()
    one_copy = 2 * g.unit(4, cached + steps[last].num_sites)  # keys + values of a layer, all entries visible at most
    assert real <= planned <= real + one_copy + 16 * (steps[last].num_sites + 4), (planned, real)
    assert planned > plain.activation(forward)  # the copies cost activations ...


def test_offloaded_cache_plan_moves_the_cache_off_the_accelerator(fast_pipe):
    """... and the cache leaves the accelerator: every phase holds no cache, the timeline is host memory."""
    on_device = fast_pipe.estimate_memory(**STAR_CALL)
    offloaded = fast_pipe.estimate_memory(kv_cache_offload=True, **STAR_CALL)
    assert offloaded.settings["kv_cache"] == "host (offloaded)" and on_device.settings["kv_cache"] == "accelerator"
    assert all(p.kv == 0 for p in offloaded.plans["none"].phases)
    assert [s.peak for s in offloaded.kv] == [s.peak for s in on_device.kv]
    pairs = list(zip(on_device.plans["none"].phases, offloaded.plans["none"].phases))
    assert all(off.activations >= dev.activations for dev, off in pairs)  # the copies (a 2-block model: not
    # smaller than its whole cache; the saving at the released depths is in docs/memory.md)
    assert any(dev.kv > 0 for dev, _ in pairs)
    assert "in host memory" in str(offloaded)
    fast_pipe.enable_kv_cache_offload()
    try:
        assert fast_pipe.estimate_memory(**STAR_CALL).settings["kv_cache"] == "host (offloaded)"
    finally:
        fast_pipe.disable_kv_cache_offload()
    with pytest.raises(ValueError, match="`kv_cache_offload` must be"):
        fast_pipe.estimate_memory(kv_cache_offload="yes", **STAR_CALL)


def test_auto_keeps_the_cache_in_host_memory_only_when_nothing_else_fits():
    """Infinity-2B at 1024 px with all-scale VPG (the released architecture on meta weights): its cache is the
    largest part of the plan; with memory for the plan only once the cache is in host memory, ``auto`` takes
    that (after chunking / tiling alone did not fit) and turns it on as ``fit_to_memory`` does; with memory for the
    plain plan it does not."""
    pipe = released_pipeline("infinity-2b")
    call = dict(prompt="a fox", height=1024, width=1024, vpg_scale=1.5, vpg_scales="all", text_tokens=16)
    plain = pipe.estimate_memory(**call)
    kv = pipe.estimate_memory(forward_chunking=True, kv_cache_offload=True, **call)
    assert kv.peak("none") < plain.peak("none")
    free = int(kv.peak("none") / 0.95) + 2  # usable(free) keeps 5 % free
    assert kv.peak("none") <= usable(free) < plain.peak("none")
    choice = choose_savers(pipe, free, quantizations=("none",), offloads=("none",), **call)
    assert choice.fits and choice.kv_cache_offload and choice.peak == kv.peak("none")
    assert "K/V cache in host memory" in choice.savers()
    roomy = choose_savers(pipe, plain.peak("none") * 2, quantizations=("none",), offloads=("none",), **call)
    assert roomy.fits and not roomy.kv_cache_offload
    try:
        apply_activation_savers(pipe, choice.forward_chunking, choice.vae_tiling, choice.kv_cache_offload)
        assert pipe.kv_cache_device == torch.device("cpu")  # what fit_to_memory applies (meta weights stay put here)
        assert pipe.estimate_memory(**call).peak("none") == choice.peak
    finally:
        pipe.disable_kv_cache_offload()
        pipe.disable_forward_chunking()
