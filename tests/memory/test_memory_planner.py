"""The memory planner against what the pipelines allocate on the CPU (tiny models, every VPG layout).

K/V figures are exact: the planner's cache after every step equals ``SamplerTrace.cache_bytes``, and its
per-step cache peak (storage, VPG's rows joining / leaving, ``resample``'s clone, the gathered rows)
equals what the sampler's cache code allocates, measured with a tagging ``KVCache`` under
``TensorMeter``. Activations come from replaying a call on a one-block meta copy of the transformer;
the replay allocates what the real CPU forward allocates (the same tensors; a GPU run also copies a few
host-built index tensors to the device).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

from tests.helpers.infinity import load_fixture
from tests.helpers.memory_probe import probe_call
from tests.helpers.shared import shared_path
from tests.helpers.star import fast_480p_pipe
from vpg_pipelines import VPGInfinityPipeline, VPGInfinityStarPipeline, load_demo_pipeline
from vpg_pipelines.memory import OFFLOAD_MODES, estimate_memory, weight_layout
from vpg_pipelines.memory.kv_timeline import Forward
from vpg_pipelines.memory.meter import TensorMeter
from vpg_pipelines.memory.replay import InfinityStarStepReplay, InfinityStepReplay, VARStepReplay
from vpg_pipelines.models.adapter import RowBatch
from vpg_pipelines.models.infinity_star.video_vae import InfinityStarVideoVAE
from vpg_pipelines.models.kv_cache import KVCache
from vpg_pipelines.sampling.next_scale import SamplerTrace
from vpg_pipelines.testing import STAR_FAST_ARGS, tiny_t5

VPG_LAYOUTS = {
    "cfg only": {"vpg_scale": 1.0},
    "vpg all": {"vpg_scale": 1.5, "vpg_scales": "all"},
    "vpg semantic": {"vpg_scale": 1.5, "vpg_scales": "semantic"},
    "vpg resample": {"vpg_scale": 1.5, "vpg_scales": "all", "vpg_refresh": "resample"},
    "vpg scale list": {"vpg_scale": 1.5, "vpg_scales": [2, 3]},
}


@pytest.fixture(scope="module")
def demo():
    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def infinity():
    transformer, vae, cases, _, _ = load_fixture("plain")
    pipe = VPGInfinityPipeline(transformer, vae, default_height=256, default_width=256)
    pipe.set_progress_bar_config(disable=True)
    lens = cases["text.lens"].tolist()
    embeds = torch.zeros(len(lens), max(lens), transformer.config.text_channels)
    mask = torch.zeros(len(lens), max(lens), dtype=torch.long)
    for i, chunk in enumerate(cases["text.features"].split(lens)):
        embeds[i, : len(chunk)], mask[i, : len(chunk)] = chunk, 1
    return pipe, {"prompt_embeds": embeds, "prompt_attention_mask": mask}


@pytest.fixture(scope="module")
def star():
    root = shared_path("parity", "infinity_star")
    config = json.loads((root / "config.json").read_text())
    config["args"] = {**config.get("args", {}), **STAR_FAST_ARGS}
    parity = VPGInfinityStarPipeline.from_official(root / "infinity_star.safetensors", root / "videovae.safetensors",
                                                   config=config)
    torch.manual_seed(0)
    vae = InfinityStarVideoVAE(block_out_channels=(8, 8, 8, 8, 8), detail_scale_min_tokens=100).eval()
    encoder, tokenizer = tiny_t5(parity.transformer.config.text_channels)
    pipe = VPGInfinityStarPipeline(parity.transformer, vae, encoder, tokenizer,
                                   official_args=parity.config.official_args)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(kind, demo, infinity, star):
    """(pipeline, arguments of a small call with CFG) of one model kind."""
    if kind == "var":
        return demo, {"prompt": ["plant", "flag"], "guidance_scale": 3.0, "output_type": "pt"}
    if kind == "infinity":
        pipe, embeds = infinity
        return pipe, {**embeds, "guidance_scale": 3.0, "output_type": "pt"}
    return star, {"prompt": "a red fox in the snow", "num_frames": 17, "height": 192, "width": 336,
                  "output_type": "latent"}


def _with_generators(pipe, kwargs):
    """``kwargs`` plus one seeded generator per sample (the batch size as the planner resolves it)."""
    batch = pipe.estimate_memory(**kwargs).settings["batch"]
    return {**kwargs, "generator": [torch.Generator().manual_seed(i) for i in range(batch)]}


@pytest.mark.parametrize("layout", list(VPG_LAYOUTS))
@pytest.mark.parametrize("kind", ["var", "infinity", "infinity_star"])
def test_kv_cache_plan_equals_what_the_sampler_allocates(kind, layout, demo, infinity, star, monkeypatch):
    pipe, kwargs = _call(kind, demo, infinity, star)
    kwargs = _with_generators(pipe, {**kwargs, **VPG_LAYOUTS[layout]})
    estimate = pipe.estimate_memory(**kwargs)
    trace = SamplerTrace()
    _, probe = probe_call(pipe, monkeypatch, trace=trace, **kwargs)
    assert [s.index for s in estimate.kv] == sorted(trace.cache_bytes)
    for step in estimate.kv:
        assert step.after == trace.cache_bytes[step.index], step.index  # integers from the same shapes: exact
        assert step.peak == probe.kv_peak(step.index), (step.index, step.events)
    rows = {s.rows for s in estimate.kv}
    events = {what.split(":")[0] for s in estimate.kv for what, _, _ in s.events}
    if layout in ("cfg only", "vpg resample"):  # the corrupted branch never joins the batch
        assert len(rows) == 1 and "join" not in events
    else:  # the corrupted rows joined (twice the rows) and left again
        assert max(rows) == 2 * min(rows) and {"join", "leave"} <= events
    assert ("resample" in events) == (layout == "vpg resample")


@pytest.fixture(scope="module")
def star480():
    """The 480p fixture's transformer, 10 s (three clips), one repetition per scale, a narrow random VAE."""
    return fast_480p_pipe()


@pytest.mark.parametrize("corrupt", [False, True])
@pytest.mark.parametrize("layout", ["vpg all", "vpg resample", "vpg late list"])
def test_kv_cache_plan_with_image_conditioning(layout, corrupt, star480, monkeypatch):
    """``image=``: the image clip is conditioning. Kept clean (the default) the corrupted rows share its keys and
    values; a scale list that starts in the last clip makes them replay the generated clip 1 only."""
    image = PIL.Image.fromarray((np.random.default_rng(0).random((60, 100, 3)) * 255).astype(np.uint8))
    vpg = VPG_LAYOUTS.get(layout) or {"vpg_scale": 1.5, "vpg_scales": [24, 25]}
    kwargs = {"prompt": "a red fox in the snow", "num_frames": 161, "image": image, "output_type": "latent",
              "vpg_corrupt_conditioning": corrupt, **vpg}
    kwargs = _with_generators(star480, kwargs)
    estimate = star480.estimate_memory(**kwargs)
    trace = SamplerTrace()
    _, probe = probe_call(star480, monkeypatch, trace=trace, **kwargs)
    assert [s.index for s in estimate.kv] == sorted(trace.cache_bytes)
    for step in estimate.kv:
        assert step.after == trace.cache_bytes[step.index], step.index
        assert step.peak == probe.kv_peak(step.index), (step.index, step.events)
    assert (min(trace.corrupted) < 11) == (corrupt and layout != "vpg late list")
    replays = [f for s in estimate.kv for what, _, f in s.events if what == "join: replay"]
    if layout == "vpg late list":  # rows join at step 24: clip 1's cached scale (step 21) replayed corrupted
        assert [f.steps for f in replays] == [(10, 21) if corrupt else (21,)]


@pytest.mark.parametrize("case", ["igg replaces cfg", "vpg from guiders, first half"])
def test_kv_cache_plan_follows_the_calls_guidance_chain(case, demo, monkeypatch):
    """The planner builds the call's whole chain: IGG with CFG off still needs the null rows, and a
    ``guiders=[PrefixGuidance(..., stop=0.5)]`` term guides the first half of the steps only."""
    from vpg_pipelines.guidance.prefix import PrefixGuidance

    kwargs = {"prompt": ["plant", "flag"], "output_type": "pt"}
    if case == "igg replaces cfg":
        kwargs |= {"guidance_scale": 0.0, "igg_scale": 1.0, "vpg_scale": 1.0}
    else:
        kwargs |= {"guidance_scale": 3.0, "guiders": [PrefixGuidance(1.5, stop=0.5)]}
    kwargs = _with_generators(demo, kwargs)
    estimate = demo.estimate_memory(**kwargs)
    trace = SamplerTrace()
    probe_call(demo, monkeypatch, trace=trace, **kwargs)
    assert [s.after for s in estimate.kv] == [trace.cache_bytes[k] for k in sorted(trace.cache_bytes)]
    rows = [s.rows for s in estimate.kv]
    if case == "igg replaces cfg":
        assert set(rows) == {4}  # 2 samples x (real, null)
    else:
        assert max(rows) == 8 and rows[-1] == 4 and sorted(trace.corrupted) == [1, 2]


def _assert_replay_is_real(replay, forward: Forward, state) -> None:
    """The replay allocates what the real forward allocates, plus the host-built index tensors (scale ids,
    temperatures, condition rows: at most 16 bytes per token and row) that a GPU run copies to the device
    and a CPU run does not."""
    planned, real = replay.activation(forward), _real_forward_peak(replay, forward, state)
    tokens = sum(replay.steps[i].num_sites for i in forward.steps)
    assert 0 <= planned - real <= 16 * (tokens + forward.rows), (forward, planned, real)


def _real_forward_peak(replay, forward: Forward, state, offload: bool = False) -> int:
    """What the real CPU model allocates for ``forward`` with a filled cache of every layer (``offload``: an
    offloaded cache prefetching the next layer, as on CUDA)."""
    g = replay.geometry()
    cache = KVCache(g.layers, forward.rows, replay.capacity, storage_device="cpu" if offload else None,
                    prefetch=offload)
    for layer in range(g.layers):
        shape = (forward.rows, g.heads, replay.capacity, g.head_dim)
        cache.keys[layer] = torch.randn(shape).to(replay.kv_dtype)
        cache.values[layer] = torch.randn(shape).to(replay.kv_dtype)
        cache.lengths[layer] = forward.cached
    with torch.no_grad():  # the run's memo (modulations of the condition rows) is filled at its first call
        first = replay._first_call()
        warm = KVCache(g.layers, first.rows, replay.capacity)
        if first.steps:
            replay.real_adapter.forward(state, _real_batch(replay, first), warm, None, first.last_tokens)
        else:  # InfinityStar: the text prefill
            replay.real_adapter.prefill(state, warm)
    cache.memo, cache._memo_owner = warm.memo, warm._memo_owner
    batch = _real_batch(replay, forward)  # the call's inputs exist before it
    with torch.no_grad(), TensorMeter() as meter:
        replay.real_adapter.forward(state, batch, cache, None, forward.last_tokens)
    return meter.peak


def _real_batch(replay, forward: Forward) -> RowBatch:
    """The replay's (meta) batch of ``forward`` with CPU tensors."""
    batch = replay._batch(forward)
    real = SimpleNamespace(**vars(batch))
    real.content = None if batch.content is None else torch.randn(batch.content.shape)
    real.position_ids = torch.zeros(batch.position_ids.shape, dtype=torch.long)
    return RowBatch(**vars(real))


def test_replayed_activations_equal_the_real_var_forward(demo):
    from vpg_pipelines.models.var.adapter import VARAdapter, VARState

    adapter = VARAdapter(demo.transformer, demo.vae)
    steps = adapter.steps(None)
    replay = VARStepReplay(demo.transformer, steps, 4, torch.float32)
    replay.real_adapter = adapter
    state = VARState(torch.arange(4), torch.zeros(1))
    for forward in (Forward(4, (0,), 0), Forward(4, (3,), 30), Forward(8, (5,), 55), Forward(4, (1, 2, 3), 1, 1)):
        _assert_replay_is_real(replay, forward, state)


def test_replayed_activations_equal_the_real_infinity_forward(infinity):
    from vpg_pipelines.models.infinity.adapter import InfinityAdapter

    pipe, embeds = infinity
    schedule = pipe.schedule_for(256, 256)
    adapter = InfinityAdapter(pipe.transformer, pipe.vae)
    steps = adapter.steps(SimpleNamespace(schedule=schedule))
    mask = embeds["prompt_attention_mask"].bool()
    features, lens = embeds["prompt_embeds"][mask], mask.sum(1)
    state = adapter.prepare(features, lens, schedule, with_null=True)
    rows = state.condition.rows
    replay = InfinityStepReplay(pipe.transformer, steps, rows, torch.float32, text_tokens=int(lens.max()))
    replay.real_adapter = adapter
    ends = [sum(s.num_sites for s in steps[: i + 1]) for i in range(len(steps))]
    for forward in (Forward(rows, (0,), 0), Forward(rows, (4,), ends[3]), Forward(2 * rows, (6,), ends[5]),
                    Forward(rows, (1, 2, 3), 1, steps[3].num_sites)):
        _assert_replay_is_real(replay, forward, state)


def test_replayed_activations_equal_the_real_infinity_star_forward(star):
    from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter

    plan = star.plan(17, 192, 336)
    adapter = InfinityStarAdapter(star.transformer, star.vae)
    steps = adapter.steps(SimpleNamespace(plan=plan, conditioning_steps=0))
    text = 12
    features = [torch.randn(text, star.transformer.config.text_channels)]
    state = adapter.prepare(plan, features, None, with_null=True)
    replay = InfinityStarStepReplay(star.transformer, steps, 2, torch.float32, plan=plan, text_tokens=text, batch=1)
    replay.real_adapter = adapter
    stored = [s for s in steps if s.store_kv]
    cached_after = {s.index: text + sum(t.num_sites for t in stored if t.index <= s.index) for s in steps}
    last_stored = stored[-1].index
    video = next(s for s in steps if s.index > last_stored)
    for forward in (Forward(2, (1,), cached_after[0]), Forward(4, (last_stored,), cached_after[last_stored - 1]),
                    Forward(2, (video.index,), cached_after[last_stored])):
        _assert_replay_is_real(replay, forward, state)


@pytest.mark.parametrize("kind", ["var", "infinity", "infinity_star"])
def test_planned_step_peaks_bound_the_measured_ones(kind, demo, infinity, star, monkeypatch):
    """Cache + activations per step, planned vs allocated: within -2 % / +20 %.

    The cache part is exact (above) and the forward's part is the replay (exact up to device copies);
    the rest is estimated from tensor sizes: the sampler's state (kept step inputs, latent, codes) and
    the guidance / sampling temporaries, and each phase adds its cache peak to its activation peak
    although a rebuild transient never coincides with a forward's widest point. On these tiny models
    that state is a visible share of a step (up to ~17 % high on InfinityStar's early video steps); small
    tensors the estimate leaves out (index tensors, the step's position ids) stay under 2 %.
    """
    pipe, kwargs = _call(kind, demo, infinity, star)
    kwargs = _with_generators(pipe, {**kwargs, **VPG_LAYOUTS["vpg all"]})
    estimate = pipe.estimate_memory(**kwargs)
    _, probe = probe_call(pipe, monkeypatch, **kwargs)
    phases = estimate.plans["none"].phases
    for step in estimate.kv:
        planned = max(p.kv + p.activations for p in phases if p.step == step.index)
        measured = probe.peak(step.index)
        assert 0.98 * measured <= planned <= 1.2 * measured, (step.index, planned, measured)


def _tensor_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("kind", ["var", "infinity", "infinity_star"])
def test_weights_are_the_components_tensor_bytes(kind, demo, infinity, star):
    pipe, kwargs = _call(kind, demo, infinity, star)
    estimate = pipe.estimate_memory(**kwargs)
    for name in ("transformer", "vae", "text_encoder"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            assert estimate.weights[name] == _tensor_bytes(module), name


@pytest.mark.parametrize("kind", ["var", "infinity_star"])
def test_planned_dtype_equals_loading_in_that_dtype(kind, demo, star, tmp_path):
    """Planning bf16 gives the bytes ``from_pretrained(..., dtype=torch.bfloat16)`` loads
    (``_keep_in_fp32_modules`` included: InfinityStar's heads stay float32)."""
    pipe = demo if kind == "var" else star
    planned = weight_layout(pipe.transformer, torch.bfloat16).total
    pipe.transformer.save_pretrained(tmp_path)
    loaded = type(pipe.transformer).from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert planned == _tensor_bytes(loaded)
    if kind == "infinity_star":
        assert loaded.head.weight.dtype == torch.float32


def test_offload_modes_order_and_phases(infinity):
    pipe, embeds = infinity
    estimate = pipe.estimate_memory(**embeds, guidance_scale=3.0)
    peaks = [estimate.peak(mode) for mode in OFFLOAD_MODES]
    assert peaks[0] >= peaks[1] >= peaks[2] >= peaks[3] > 0
    names = [p.name for p in estimate.plans["none"].phases]
    assert names[-1] == "decode" and any("join" in n for n in names) and any("leave" in n for n in names)
    assert estimate.text_encoder is None  # prompt_embeds: no text encoder runs


def test_estimate_checks_arguments_like_the_call(demo):
    with pytest.raises(TypeError, match="estimate_memory takes the arguments"):
        demo.estimate_memory(prompt="plant", no_such_argument=1)
    with pytest.raises(ValueError, match="vpg_scale"):
        demo.estimate_memory(prompt="plant", vpg_scale=-1.0)
    with pytest.raises(ValueError, match="quantization"):
        demo.estimate_memory(prompt="plant", quantization="int3")
    text = str(demo.estimate_memory(prompt="plant"))
    assert "K/V cache peak" in text and all(mode in text for mode in OFFLOAD_MODES)


def test_module_level_function_is_the_method(demo):
    a = estimate_memory(demo, prompt="plant", vpg_scale=2.0).to_dict()
    b = demo.estimate_memory(prompt="plant", vpg_scale=2.0).to_dict()
    assert a == b and a["kv_peak"] > 0


def test_planner_counts_the_runs_memo(demo):
    """The modulations the transformer keeps for the run (``KVCache.memo``) are planned exactly."""
    from vpg_pipelines.models.var.adapter import VARAdapter

    adapter = VARAdapter(demo.transformer, demo.vae)
    steps = adapter.steps(None)
    replay = VARStepReplay(demo.transformer, steps, 4, torch.float32)
    state = adapter.prepare(torch.tensor([0, 1]), with_null=True, device=torch.device("cpu"), dtype=torch.float32)
    cache = KVCache(demo.transformer.config.depth, 4, replay.capacity)
    with torch.no_grad():
        adapter.forward(state, RowBatch(torch.arange(4), None, torch.zeros(4, 1, dtype=torch.long), [steps[0]]), cache)
    kept = sum(t.numel() * t.element_size() for t in cache.memo.values())
    assert kept > 0 and replay.memo_bytes() == kept
    assert replay.run_state_bytes(3, 2) == replay.state_bytes(3, 2) + kept
