"""Infinity adapter in the shared loop: rows without CFG, VPG branches and variants, sampling rules,
random codebook contents, and accelerate's offload hooks."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.infinity import load_fixture, make_adapter_state, report
from tests.helpers.numerics import assert_same_greedy_steps, record_draws
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.corruption import apply_corruption
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.models.infinity.adapter import InfinityAdapter
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

ATOL = 1e-4


def test_no_cfg_runs_single_rows_and_vpg_identity():
    """CFG off: B condition rows; VPG with w = 1 leaves the greedy sample unchanged.

    The VPG run computes its corrupted rows anyway (4 rows instead of 2), so it is equal up to rounding:
    it follows the first run's bits, and its own greedy picks must agree with them off near-ties.
    """
    adapter, state, _, _ = make_adapter_state("plain", 1.0, with_null=False)
    assert adapter.num_condition_rows(state) == 2
    plain, guided = SamplerTrace(), SamplerTrace()
    with torch.no_grad(), record_draws() as reference:
        run_next_scale(adapter, state, generator=torch.Generator().manual_seed(0), trace=plain)
    adapter2, state2, _, _ = make_adapter_state("plain", 1.0, with_null=False)
    vpg = PrefixGuidance(guidance_scale=1.0, corruption=0.5, always_compute=True)
    with torch.no_grad(), record_draws(replay=reference):
        run_next_scale(adapter2, state2, vpg=vpg, generator=torch.Generator().manual_seed(0), trace=guided)
    assert guided.corrupted, "the corrupted rows must actually run in this test"
    assert_same_greedy_steps(plain, guided, gain=1.0, classes=2)
    for a, b in zip(state.bits, state2.bits):
        assert torch.equal(a, b)


@pytest.mark.parametrize("folder", ["plain", "patchify"])
def test_persistent_corrupted_branch_equals_replay(folder):
    """With CFG and VPG (persistent), the corrupted branch's logits at every scale equal a from-scratch
    block-causal pass over the corrupted prefix built from the recorded patterns."""
    adapter, state, _, _ = make_adapter_state(folder, 1.0, top_k=900, top_p=0.97)
    cfg = ClassifierFreeGuidance(guidance_scale=3.0)
    vpg = PrefixGuidance(guidance_scale=1.5, corruption=0.5)
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=cfg, vpg=vpg, generator=torch.Generator().manual_seed(1), trace=trace)
        steps = adapter.steps(state)
        assert set(trace.corrupted) == set(range(1, len(steps)))
        k = len(steps) - 2
        transformer, cond = adapter.transformer, state.condition
        contents, positions, scales = [], [], []
        for s in steps[1 : k + 1]:
            c, p = apply_corruption(trace.inputs[s.index].content, trace.inputs[s.index].position_ids,
                                    trace.patterns[s.index], "full")
            contents.append(c.repeat(2, 1, 1))
            positions.append(p.repeat(2, 1))
            scales.append(torch.full((s.num_sites,), s.scale))
        start_pos = torch.zeros(4, 1, dtype=torch.long)
        scale_ids = torch.cat([torch.zeros(1, dtype=torch.long), *scales])
        logits = transformer(cond, torch.cat(contents, 1), torch.cat([start_pos, *positions], 1), scale_ids,
                             cond_index=torch.arange(4), include_start=True, token_steps=scale_ids,
                             last_tokens=steps[k].num_sites)
        logits = logits.view(4, steps[k].num_sites, -1, 2)
        guided = ClassifierFreeGuidance.combine(logits[:2], logits[2:], 3.0)
    err = report(f"{folder} persistent corrupted branch vs replay", guided, trace.corrupted[k])
    assert err <= ATOL


def test_random_content_is_a_code_of_random_bits():
    adapter, _, _, _ = make_adapter_state("patchify", 1.0)
    content = adapter.random_content(5, torch.Generator().manual_seed(0), torch.device("cpu"))
    d = adapter.vae.config.codebook_dim
    assert content.shape == (5, 4 * d)
    per_site = content.view(5, d, 4)  # channel c*4 + j
    torch.testing.assert_close(per_site.norm(dim=1), torch.ones(5, 4))
    assert torch.allclose(per_site.abs(), torch.full_like(per_site, d**-0.5))


def test_sampling_uses_official_top_p_on_bit_pairs():
    adapter, state, _, _ = make_adapter_state("plain", 1.0, top_k=900, top_p=0.97, with_null=False)
    step = adapter.steps(state)[1]
    logits = torch.zeros(2, step.num_sites, 16, 2)
    logits[..., 1] = 4.0  # p(bit=0) = 0.018 <= 0.03: removed by top-p 0.97
    bits = adapter.sample(state, logits, step, torch.Generator().manual_seed(0))
    assert bits.shape == (2, step.num_sites, 16) and bool((bits == 1).all())
    logits[..., 1] = 1.0  # p(bit=0) = 0.27: both kept, draws of both values
    bits = adapter.sample(state, logits, step, torch.Generator().manual_seed(0))
    assert 0 < bits.float().mean().item() < 1


@pytest.mark.parametrize("mode,refresh,layer,scales", [
    ("full", "resample", 0, "all"), ("token", "persistent", -1, "semantic"),
    ("position", "persistent", 0, [3, 4]), ("codebook", "persistent", -1, "all"),
])
def test_vpg_variants_run_through_the_adapter(mode, refresh, layer, scales):
    adapter, state, _, _ = make_adapter_state("patchify", 1.0, top_k=900, top_p=0.97)
    vpg = PrefixGuidance(guidance_scale=1.5, corruption=0.5, mode=mode, refresh=refresh, scales=scales)
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=ClassifierFreeGuidance(2.0, layer=layer), vpg=vpg,
                       generator=torch.Generator().manual_seed(3), trace=trace)
    guided = sorted(trace.corrupted)
    assert guided and 0 not in guided
    if scales == [3, 4]:
        assert guided == [3, 4]
    for k in guided:
        torch.testing.assert_close(trace.guided[k], trace.corrupted[k] + 1.5 * (trace.clean[k] - trace.corrupted[k]))
    assert any(not torch.allclose(trace.clean[k], trace.corrupted[k]) for k in guided)
    assert len(state.bits) == state.schedule.num_scales and state.next_input is None


@pytest.mark.parametrize("hooks", ["sequential", "model"])
def test_offload_hooks_on_cpu_give_the_same_sample(hooks):
    """accelerate's hooks with the CPU as execution device: sequential offload keeps weights on meta until
    their module's forward runs (text encoding, sampling and decoding never read a weight outside a
    forward); model offload re-sends every call's arguments (the KV cache and the condition survive)."""
    import copy

    from accelerate import cpu_offload, cpu_offload_with_hook

    def run(adapter, state):
        cfg, vpg = ClassifierFreeGuidance(3.0), PrefixGuidance(guidance_scale=1.5, mode="codebook")
        with torch.no_grad():
            run_next_scale(adapter, state, cfg=cfg, vpg=vpg, generator=torch.Generator().manual_seed(5))
            return state.latents, adapter.vae.decode(state.latents[:1, :, :, :8, :8])

    transformer, vae, cases, config, _ = load_fixture("patchify")
    schedule = schedule_from_template(config["h_div_w_template"], config["pn"], True)
    reference = run(*make_adapter_state("patchify", 1.0, top_k=900, top_p=0.97)[:2])
    transformer, vae = copy.deepcopy(transformer), copy.deepcopy(vae)
    for module in (transformer, vae):
        if hooks == "sequential":
            cpu_offload(module, execution_device=torch.device("cpu"))
        else:
            cpu_offload_with_hook(module, execution_device=torch.device("cpu"))
    if hooks == "sequential":
        assert transformer.cfg_uncond.device.type == "meta" and transformer.head.weight.device.type == "meta"
        assert vae.decoder.conv_out.conv.weight.device.type == "meta"
    adapter = InfinityAdapter(transformer, vae)
    state = adapter.prepare(cases["text.features"], cases["text.lens"], schedule, with_null=True)
    latents, image = run(adapter, state)
    assert torch.equal(latents, reference[0]) and torch.equal(image, reference[1])


def test_bfloat16_weights_run_close_to_float32():
    """A bf16 copy keeps a float32 residual stream (as the official autocast run does): teacher-forced
    logits stay close, and the cached sampler runs with a bf16 KV cache and float32 logits."""
    import copy

    transformer, vae, cases, config, _ = load_fixture("plain")
    schedule = schedule_from_template(config["h_div_w_template"], config["pn"])
    half = copy.deepcopy(transformer).to(torch.bfloat16)
    args = (cases["text.features"], cases["text.lens"], cases["transformer.teacher_forcing_input"], schedule)
    with torch.no_grad():
        full_logits = transformer.teacher_forced_logits(*args)
        half_logits = half.teacher_forced_logits(*args)
    assert half_logits.dtype == torch.float32
    assert (half_logits - full_logits).abs().max() < 0.05 * full_logits.abs().max()
    adapter = InfinityAdapter(half, copy.deepcopy(vae).to(torch.bfloat16))
    state = adapter.prepare(cases["text.features"], cases["text.lens"], schedule, with_null=True)
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=ClassifierFreeGuidance(3.0), vpg=PrefixGuidance(1.5),
                       generator=torch.Generator().manual_seed(0), trace=trace)
        image = adapter.vae.decode(state.latents[:, :, :, :4, :4])
    assert all(t.dtype == torch.float32 for t in trace.guided.values())
    assert state.latents.dtype == torch.float32 and image.dtype == torch.float32


def test_negative_prompt_rows_replace_the_null_rows():
    """A negative prompt given as the learned null text reproduces the null rows exactly."""
    adapter, state, cases, _ = make_adapter_state("plain", 1.0)
    lens = cases["text.lens"].tolist()
    negative = torch.cat([adapter.transformer.cfg_uncond[:n] for n in lens]).detach()
    schedule = state.schedule
    with torch.no_grad():
        other = adapter.prepare(cases["text.features"], lens, schedule, with_null=True,
                                negative_features=negative, negative_lens=lens)
    torch.testing.assert_close(other.condition.pooled, state.condition.pooled)
    torch.testing.assert_close(other.condition.memory, state.condition.memory)
    with pytest.raises(ValueError, match="negative_lens"):
        adapter.prepare(cases["text.features"], lens, schedule, with_null=True, negative_features=negative,
                        negative_lens=lens[:1])
    with pytest.raises(ValueError, match="tau"):
        adapter.prepare(cases["text.features"], lens, schedule, with_null=True, tau=[1.0, 2.0])
