"""InfinityStar forced-code replay against the official sampler, through the shared loop.

The official video sampler draws every bit with ``torch.multinomial``, so the fixture forces the codes
of all 61 (scale, repetition) steps (the official image-to-video mechanism extended to every step)
and records the APG-guided logits of each step and the final summed codes.

Tolerance on the guided logits: APG multiplies the float32 noise of ``cond - uncond`` by
``cfg - 1 = 33`` and the video scales' ``1 / tau = 2.5`` multiplies it again. The raw logits of this
random tiny model carry ~7e-6 of float32 noise (their float32 and float64 evaluations differ by that
much), so two float32 implementations of the same math land up to ~3e-4 apart on the guided video
logits; our float64 evaluation is 2.7e-4 from the fixture too. We check the README's 1e-4 on the
image-clip steps (tau 1) and on the summed codes, 5e-4 on the video-clip steps, and a mean error two
orders of magnitude below any real defect.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.numerics import apg_gain, layout_atol
from tests.helpers.shared import shared_path
from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.loading.infinity_star import load_infinity_star_transformer, load_infinity_star_vae
from vpg_pipelines.models.adapter import RowBatch
from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter
from vpg_pipelines.models.infinity_star.schedules import plan_steps
from vpg_pipelines.models.kv_cache import KVCache
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

# Settings of the fixture (README): the 720p script's values with the schedule shrunk to 11 scales per clip.
FIXTURE_ARGS = {
    "image_repetition": [3] * 11,
    "video_repetition": [3] * 8 + [2, 1, 1],
    "semantic_scales": 8,
    "detail_scale_min_tokens": 100,
    "tau_image": 1.0,
    "tau_video": 0.4,
    "cfg": 34.0,
    "apg_norm_threshold": 0.05,
}
GUIDED_ATOL = 1e-4  # README, image clip (tau = 1)
GUIDED_VIDEO_ATOL = 5e-4  # video clip (tau = 0.4): see the module docstring
GUIDED_MEAN_ATOL = 1e-4
SUMMED_ATOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    root = shared_path("parity", "infinity_star")
    config = json.loads((root / "config.json").read_text())
    args = {**FIXTURE_ARGS, **{k: v for k, v in config.get("args", {}).items() if k in FIXTURE_ARGS}}
    transformer = load_infinity_star_transformer(root / "infinity_star.safetensors", text_maxlen=config["text_maxlen"])
    vae = load_infinity_star_vae(root / "videovae.safetensors", detail_scale_min_tokens=args["detail_scale_min_tokens"])
    assert transformer.config.depth == config["model"]["depth"]
    assert transformer.config.num_key_value_heads == config["model"]["num_key_value_heads"]
    plan = plan_steps(
        config["scale_schedule"], args["image_repetition"], args["video_repetition"],
        semantic_scales=args["semantic_scales"], detail_scale_min_tokens=args["detail_scale_min_tokens"],
        tau_image=args["tau_image"], tau_video=args["tau_video"],
    )
    cases = load_file(str(root / "cases.safetensors"))
    meta = json.loads((root / "cases.json").read_text())
    return InfinityStarAdapter(transformer, vae), plan, cases, meta, args, config


def _prepare(fx, forced=True, with_null=True):
    adapter, plan, cases, meta, _, _ = fx
    bits = [cases[f"forced_bits.step{i}"] for i in range(meta["steps"])] if forced else None
    negative = [cases["negative_text.features"]] if with_null else None
    return adapter.prepare(plan, [cases["text.features"]], negative, with_null=with_null, forced_bits=bits)


def _apg(args):
    return AdaptiveProjectedGuidance(args["cfg"], norm_threshold=args["apg_norm_threshold"], eta=0.0)


def test_plan_matches_fixture(fixture):
    _, plan, cases, meta, _, config = fixture
    assert len(plan.steps) == meta["steps"] == 61
    assert [list(s) for s in plan.schedule] == config["scale_schedule"]
    assert [s.tau for s in plan.steps if s.repeat == 0] == config["tau_list"]
    for s in plan.steps:
        assert tuple(cases[f"forced_bits.step{s.index}"].shape) == (1, *s.grid, plan.bits_of(s))
        width = 2 * (plan.semantic_bits if s.semantic_head else plan.detail_bits)
        assert tuple(cases[f"guided_logits.step{s.index}"].shape) == (1, s.num_sites, width)


@torch.no_grad()
def test_forced_code_replay_matches_official(fixture):
    adapter, plan, cases, meta, args, _ = fixture
    state = _prepare(fixture)
    trace = SamplerTrace()
    run_next_scale(adapter, state, cfg=_apg(args), trace=trace, generator=torch.Generator().manual_seed(0))
    worst = {1.0: 0.0, args["tau_video"]: 0.0}
    for step in plan.steps:
        i = step.index
        expected = cases[f"guided_logits.step{i}"]
        got = trace.guided[i]
        assert got.dtype == torch.float32 and got.shape == expected.shape
        err = (got - expected).abs()
        worst[step.tau] = max(worst[step.tau], err.max().item())
        atol = GUIDED_ATOL if step.tau == 1.0 else GUIDED_VIDEO_ATOL
        assert err.max().item() <= atol, f"step {i}: guided logits max abs error {err.max().item():.2e}"
        assert err.mean().item() <= GUIDED_MEAN_ATOL, f"step {i}: mean abs error {err.mean().item():.2e}"
        assert torch.equal(trace.codes[i], cases[f"forced_bits.step{i}"])
    summed = adapter.latents(state)
    summed_err = (summed - cases["summed_codes"]).abs().max().item()
    print(f"guided logits max abs error: image clip {worst[1.0]:.2e}, video clip {worst[args['tau_video']]:.2e}; "
          f"summed codes max abs error {summed_err:.2e}")
    assert summed.shape == cases["summed_codes"].shape
    assert summed_err <= SUMMED_ATOL


@torch.no_grad()
def test_unit_vpg_scale_changes_nothing(fixture):
    """w = 1 with the corrupted branch computed anyway (both refresh modes) gives the plain result."""
    adapter, _, _, meta, args, _ = fixture
    plain = SamplerTrace()
    run_next_scale(adapter, _prepare(fixture), cfg=_apg(args), trace=plain)
    for refresh in ("persistent", "resample"):
        trace = SamplerTrace()
        vpg = PrefixGuidance(scale=1.0, corruption=0.5, refresh=refresh, scales="semantic", always_compute=True)
        run_next_scale(adapter, _prepare(fixture), cfg=_apg(args), vpg=vpg, trace=trace,
                       generator=torch.Generator().manual_seed(1))
        # semantic preset: relative scale < 8 in both clips, without the single-site first scale
        assert len(trace.corrupted) == 45
        for i in range(meta["steps"]):
            # twice the rows (persistent) or a second call (resample): equal up to rounding, which
            # APG's strength 34 amplifies (codes are forced, so no draw can differ)
            atol = layout_atol(plain.guided[i], apg_gain(args["cfg"]))
            torch.testing.assert_close(trace.guided[i], plain.guided[i], atol=atol, rtol=0)
        corrupted = max(trace.corrupted)
        assert not torch.allclose(trace.corrupted[corrupted], plain.guided[corrupted], atol=1e-3)


@torch.no_grad()
def test_several_steps_in_one_call_equal_sequential_calls(fixture):
    """A block-causal call over steps of both clips gives each step's sequential logits.

    Step 32 is the last repetition of the image clip's full-size scale (cached: video scales refer to
    it), step 35 the last repetition of the first video scale (not cached: nobody refers to it) and
    step 40 a video step, which must see the text, step 32 and itself only.
    """
    adapter, plan, _, _, _, _ = fixture
    state = _prepare(fixture, with_null=False)
    trace = SamplerTrace()
    run_next_scale(adapter, state, cfg=None, trace=trace)
    steps = adapter.steps(state)
    chunk = [steps[32], steps[35], steps[40]]
    assert steps[32].store_kv and not steps[35].store_kv and steps[40].extra["ref_sids"] == (10,)
    content = torch.cat([trace.inputs[s.index].content for s in chunk], dim=1)
    positions = torch.cat([trace.inputs[s.index].position_ids for s in chunk])[None]
    batch = RowBatch(torch.tensor([0]), content, positions, chunk)
    calls = []

    def hook(block, hidden):
        calls.append(hidden.shape[1])
        return hidden

    for hidden_hook in (None, hook):  # consecutive calls / one call with a dense block mask
        cache = KVCache(adapter.num_layers, 1, adapter.num_prefix_tokens(state) + sum(s.num_sites for s in chunk))
        adapter.prefill(state, cache)
        logits = adapter.forward(state, batch, cache, hidden_hook, last_tokens=chunk[-1].num_sites + 4)
        # one call over three steps vs three calls: equal up to rounding (no guidance here)
        torch.testing.assert_close(logits[:, 4:], trace.guided[40], atol=layout_atol(trace.guided[40]), rtol=0)
        torch.testing.assert_close(logits[:, :4], trace.guided[35], atol=layout_atol(trace.guided[35]), rtol=0)
        # consecutive calls keep the cache layout of separate calls (text, then the stored scale 10); one
        # mixed call (a step that must not be stored) stores nothing, as VAR's block-causal call
        stored = chunk[0].num_sites if hidden_hook is None else 0
        assert cache.length == adapter.num_prefix_tokens(state) + stored
    assert calls == [content.shape[1]] * adapter.num_layers
    with pytest.raises(ValueError, match="span semantic and detail"):
        adapter.forward(state, batch, cache, last_tokens=None)

@torch.no_grad()
def test_sampling_draws_bits_and_forcing_keeps_the_generator_stream(fixture):
    adapter, plan, cases, _, args, _ = fixture
    free = _prepare(fixture, forced=False)
    first = SamplerTrace()
    run_next_scale(adapter, free, cfg=_apg(args), trace=first, generator=torch.Generator().manual_seed(3))
    for s in plan.steps:
        bits = first.codes[s.index]
        assert bits.shape == (1, *s.grid, plan.bits_of(s)) and set(bits.unique().tolist()) <= {0, 1}
    # forcing the first scale (3 steps, as the official gt_leak = 1 would) and drawing the rest with the
    # same generator gives the free run's draws from step 3 on only if the stream is consumed as officially
    n = adapter.steps_before_scale(plan, 1)
    partly = adapter.prepare(plan, [cases["text.features"]], [cases["negative_text.features"]],
                             forced_bits=[first.codes[i] for i in range(n)])
    second = SamplerTrace()
    run_next_scale(adapter, partly, cfg=_apg(args), trace=second, generator=torch.Generator().manual_seed(3))
    assert n == 3
    for s in plan.steps:  # forced codes equal the free draws: the same computation, bit for bit
        assert torch.equal(second.codes[s.index], first.codes[s.index])
    torch.testing.assert_close(adapter.latents(partly), adapter.latents(free))


def test_forced_bits_are_validated(fixture):
    adapter, plan, cases, _, _, _ = fixture
    with pytest.raises(ValueError, match="forced bits of step 3"):
        adapter.prepare(plan, [cases["text.features"]], forced_bits=[cases["forced_bits.step0"]] * 4)


@torch.no_grad()
def test_empty_negative_prompt_uses_the_learned_null_text(fixture):
    """No negative features: the null rows take ``cfg_uncond[:L]`` with the prompt's length L."""
    adapter, plan, cases, _, args, _ = fixture
    text = cases["text.features"]
    implicit = SamplerTrace()
    forced = [cases[f"forced_bits.step{i}"] for i in range(6)]
    state = adapter.prepare(plan, [text], None, forced_bits=forced)
    assert state.null_text.tolist() == [False, True] and state.text_lengths.tolist() == [7, 7]
    run_next_scale(adapter, state, cfg=_apg(args), trace=implicit, on_step=lambda s, *_: s.index >= 5)
    explicit = SamplerTrace()
    null = adapter.transformer.cfg_uncond[: text.shape[0]].detach()
    state = adapter.prepare(plan, [text], [null], forced_bits=forced)
    run_next_scale(adapter, state, cfg=_apg(args), trace=explicit, on_step=lambda s, *_: s.index >= 5)
    for i in range(6):  # the same rows and shapes, the same numbers: the same computation, bit for bit
        torch.testing.assert_close(implicit.guided[i], explicit.guided[i], atol=0, rtol=0)


@pytest.mark.parametrize("hooks", ["sequential", "model"])
@torch.no_grad()
def test_offload_hooks_on_cpu_give_the_same_steps(fixture, hooks):
    """accelerate's hooks (CPU as execution device): sequential offload keeps weights on meta until their
    module's forward runs, so nothing in the sampling path (text prefix, null text, steps, code lifting,
    decoding) may read a weight outside a forward; model offload re-sends every call's arguments."""
    import copy

    from accelerate import cpu_offload, cpu_offload_with_hook

    adapter, plan, cases, meta, args, _ = fixture
    vpg = PrefixGuidance(scale=2.0, corruption=0.5, refresh="resample", scales=[12])

    def run(ad):
        trace = SamplerTrace()
        state = ad.prepare(plan, [cases["text.features"]], None,
                           forced_bits=[cases[f"forced_bits.step{i}"] for i in range(meta["steps"])])
        run_next_scale(ad, state, cfg=_apg(args), vpg=vpg, trace=trace, generator=torch.Generator().manual_seed(5),
                       on_step=lambda s, *_: s.index >= 40)
        return trace, ad.latents(state)

    reference, latents = run(adapter)
    transformer, vae = copy.deepcopy(adapter.transformer), copy.deepcopy(adapter.vae)
    for module in (transformer, vae):
        if hooks == "sequential":
            cpu_offload(module, execution_device=torch.device("cpu"))
        else:
            cpu_offload_with_hook(module, execution_device=torch.device("cpu"))
    if hooks == "sequential":
        assert transformer.cfg_uncond.device.type == "meta" and vae.proj_up.weight.device.type == "meta"
    trace, offloaded_latents = run(InfinityStarAdapter(transformer, vae))
    for i in reference.guided:  # the hooks only move weights (CPU to CPU): the same computation
        assert torch.equal(trace.guided[i], reference.guided[i]), i
    assert torch.equal(offloaded_latents, latents)
    small = latents[:, :, :1, :2, :3]
    assert torch.equal(vae.decode(small), adapter.vae.decode(small))


@torch.no_grad()
def test_a_batch_of_two_equals_two_single_runs(fixture):
    """The official sampler takes one sample; ours batches them (APG and the draws stay per sample)."""
    adapter, plan, cases, meta, args, _ = fixture
    text, negative = cases["text.features"], cases["negative_text.features"]
    forced = [cases[f"forced_bits.step{i}"] for i in range(12)]
    single = SamplerTrace()
    run_next_scale(adapter, adapter.prepare(plan, [text], [negative], forced_bits=forced), cfg=_apg(args),
                   trace=single, on_step=lambda s, *_: s.index >= 11)
    pair = SamplerTrace()
    doubled = [b.repeat(2, 1, 1, 1, 1) for b in forced]
    state = adapter.prepare(plan, [text, text], [negative, negative], forced_bits=doubled)
    assert adapter.num_condition_rows(state) == 4
    run_next_scale(adapter, state, cfg=_apg(args), trace=pair, on_step=lambda s, *_: s.index >= 11)
    for i in range(12):  # 4 rows vs 2 rows: equal up to rounding, amplified by APG
        atol = layout_atol(single.guided[i], apg_gain(args["cfg"]))
        torch.testing.assert_close(pair.guided[i], single.guided[i].repeat(2, 1, 1), atol=atol, rtol=0)
