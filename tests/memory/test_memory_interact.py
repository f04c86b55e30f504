"""The memory planner on InfinityStar-Interact calls: one clip's plan against what every clip allocates on the CPU
(the fast interact pipeline), the prefill and step replays against the real forwards, the clip decode, and the
released 8B Interact model (per clip, not growing with the clips)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.interact import context_latents
from tests.helpers.memory_probe import probe_call
from vpg_pipelines.loading.auto import released_pipeline
from vpg_pipelines.memory.interact import InfinityStarInteractStepReplay, clip_decode_bytes
from vpg_pipelines.memory.kv_timeline import Forward
from vpg_pipelines.memory.meter import TensorMeter
from vpg_pipelines.models.adapter import RowBatch
from vpg_pipelines.models.infinity_star.interact import InfinityStarInteractAdapter
from vpg_pipelines.models.kv_cache import KVCache

LAYOUTS = {
    "cfg only": {"vpg_scale": 1.0},
    "vpg semantic": {"vpg_scale": 1.5},
    "vpg resample": {"vpg_scale": 1.5, "vpg_scales": "all", "vpg_refresh": "resample"},
}
CLIPS = 2


def _call(cases, layout, clips=CLIPS):
    """Prompts of one length (the planner plans the longest prompt's clip); the context in float64, so that the
    pipeline's float32 copy of it is allocated under the meter, as its copy onto an accelerator would be."""
    return {"prompt": ["a red fox", "a blue car"][:clips], "context_latents": context_latents(cases).double(),
            "output_type": "latent", "generator": torch.Generator().manual_seed(0), **LAYOUTS[layout]}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_clip_cache_plan_is_what_every_clip_allocates(fast_interact_pipe, interact_fixture, layout, monkeypatch):
    """The cache after and at the peak of every step, exactly, in every clip (two clips with VPG's rows joining and
    leaving, one for the other layouts)."""
    _, cases, _ = interact_fixture
    pipe = fast_interact_pipe
    clips = CLIPS if layout == "vpg semantic" else 1
    kwargs = _call(cases, layout, clips)
    estimate = pipe.estimate_memory(**kwargs)
    traces = []
    _, probe = probe_call(pipe, monkeypatch, trace=traces, **kwargs)
    steps = len(estimate.kv)
    assert len(traces) == clips and len(probe.windows) == clips * steps
    for clip, trace in enumerate(traces):
        assert [s.index for s in estimate.kv] == sorted(trace.cache_bytes)
        for step in estimate.kv:
            assert step.after == trace.cache_bytes[step.index], (clip, step.index)
            assert step.peak == probe.kv_peak(clip * steps + step.index), (clip, step.index, step.events)
    events = {what.split(":")[0] for s in estimate.kv for what, _, _ in s.events}
    assert ("join" in events) == (layout == "vpg semantic") and ("resample" in events) == (layout == "vpg resample")
    prefix = estimate.settings["text_tokens"] + estimate.settings["condition_tokens"]
    assert prefix == 9 + 20 * 6 * 11 + 3 * 12 * 21  # "<<<t=5s>>>a red fox": 9 tiny-T5 tokens; both conditions


def test_one_clip_step_peaks_bound_every_clips(fast_interact_pipe, interact_fixture, monkeypatch):
    """Cache + activations per step, planned vs allocated in each clip, within the planner's bounds
    (``test_memory_planner.py``: -2 % / +20 %; the sampler state is estimated from sizes, here up to ~17 % high on
    the early steps, whose lifted codes are already a whole 20-frame clip). The clips before keep nothing on an
    accelerator but their latents, which ``.cpu()`` moves to the host; on the CPU they stay in the measurement and
    are taken out of it."""
    _, cases, _ = interact_fixture
    pipe = fast_interact_pipe
    kwargs = _call(cases, "vpg semantic")
    estimate = pipe.estimate_memory(**kwargs)
    _, probe = probe_call(pipe, monkeypatch, **kwargs)
    phases = estimate.plans["none"].phases
    steps = len(estimate.kv)
    clip_latents = 64 * 20 * 12 * 21 * 4
    for clip in range(CLIPS):
        for step in estimate.kv:
            planned = max(p.kv + p.activations for p in phases if p.step == step.index)
            measured = probe.peak(clip * steps + step.index) - clip * clip_latents
            assert 0.98 * measured <= planned <= 1.2 * measured, (clip, step.index, planned, measured)


@torch.no_grad()
def test_replayed_prefill_and_steps_equal_the_real_forwards(fast_interact_pipe):
    pipe = fast_interact_pipe
    plan = pipe.plan(192, 336)
    adapter = InfinityStarInteractAdapter(pipe.transformer, pipe.vae)
    steps = adapter.steps(type("S", (), {"plan": plan, "conditioning_steps": 0})())
    text = 12
    features = [torch.randn(text, pipe.transformer.config.text_channels)]
    context = torch.randn(1, 64, 21, 12, 21)
    state = adapter.prepare_window(plan, features, None, context, context[:, :, :1])
    replay = InfinityStarInteractStepReplay(pipe.transformer, steps, 2, torch.float32, plan=plan, text_tokens=text,
                                            batch=1)
    prefix = adapter.num_prefix_tokens(state)
    assert replay.prefix_tokens == prefix == text + 20 * 6 * 11 + 3 * 12 * 21
    g = replay.geometry()

    def filled_cache(rows: int, length: int) -> KVCache:
        cache = KVCache(g.layers, rows, replay.capacity)
        for layer in range(g.layers):
            shape = (rows, g.heads, replay.capacity, g.head_dim)
            cache.keys[layer], cache.values[layer] = torch.randn(shape), torch.randn(shape)
            cache.lengths[layer] = length
        return cache

    # the prefill: text, then each condition on its own tokens, into preallocated storage
    cache = filled_cache(2, 0)
    with TensorMeter() as meter:
        adapter.prefill(state, cache)
    planned = replay.activation(Forward(2, (), 0, prefix))
    assert 0 <= planned - meter.peak <= 16 * (prefix + 2), (planned, meter.peak)
    # steps: the first, a semantic one with the corrupted rows in, the last (the largest)
    for index, rows in ((0, 2), (5, 4), (len(steps) - 1, 2)):
        step = steps[index]
        batch = RowBatch(torch.arange(2).repeat(rows // 2), torch.randn(rows, step.num_sites, 64),
                         torch.zeros(rows, step.num_sites, dtype=torch.long), [step])
        cache = filled_cache(rows, prefix)
        with TensorMeter() as meter:
            adapter.forward(state, batch, cache)
        planned = replay.activation(Forward(rows, (index,), prefix))
        assert 0 <= planned - meter.peak <= 16 * (step.num_sites + rows), (index, planned, meter.peak)


@torch.no_grad()
def test_clip_decode_plan_is_the_real_decode(fast_interact_pipe):
    """``decode_clip`` on a 1x1 latent grid (16x16 pixels; the same code as any size) measured on the CPU."""
    pipe = fast_interact_pipe
    context, latents = torch.randn(1, 64, 21, 1, 1), torch.randn(1, 64, 20, 1, 1)
    with TensorMeter() as meter:
        video = pipe.decode_clip(context, latents)
    assert video.shape == (1, 3, 80, 16, 16)
    assert clip_decode_bytes(pipe.vae, 1, 1, 1, torch.float32) == meter.peak


def test_released_interact_model_per_clip():
    """The released 8B Interact model at its script's settings (480p clips of a 16:9 story, bf16): the plan of
    a clip is the same for 1 and 100 prompts; a reference video adds its encode as a phase of its own."""
    pipe = released_pipeline("infinity-star-8b-interact")
    assert pipe.variant == "interact" and type(pipe).__name__ == "VPGInfinityStarInteractPipeline"
    start = torch.empty(1, 64, 22, 30, 53, device="meta")
    one = pipe.estimate_memory(dtype=torch.bfloat16, prompt="x", context_latents=start, text_tokens=32)
    many = pipe.estimate_memory(dtype=torch.bfloat16, prompt=["x"] * 100, context_latents=start, text_tokens=32)
    assert one.settings["size"] == "480x848" and many.settings["clips"] == 100
    assert one.peak("none") == many.peak("none") and one.kv_peak == many.kv_peak
    assert len(one.kv) == 39 and one.settings["condition_tokens"] == 1320 + 4770
    assert {s.after for s in one.kv if s.rows == 2} == {one.kv[0].after}  # the prefix only, every step
    names = [p.name for p in one.plans["none"].phases]
    assert "encode reference video" not in names and names[-1] == "decode"
