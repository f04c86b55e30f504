"""Accelerators composed with the guidance rows (docs/acceleration.md, "With VPG and the other terms").

Every row chooses from its own features: VPG's corrupted rows and the null rows are pruned (FastVAR) and
their caches budgeted (ScaleKV) by the same rule as the clean rows, so adding rows changes nothing for the
clean rows beyond rounding; a row's state (FastVAR's cached sub-layer outputs) leaves with the row.
Runs on the shared tiny Infinity (2 blocks, width 128) at 1024 x 1024 (13 scales); FastVAR prunes both of its
blocks here (``blocks=(0, 2)``), ScaleKV uses the released 2B table's first two blocks (as the fixture does).

A selection boundary on this random model can sit within rounding of a flip (relative gaps down to ~1e-6,
as the fixture README explains), so where two runs of different row layouts are compared, the rows they share
replay the first run's recorded choices (``with_selection``): the comparison then tests the rows, caches,
fills and replays, not the rounding of a sort.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.acceleration import RecordingFastVAR, RecordingScaleKV, replayed
from tests.helpers.infinity import load_fixture
from tests.helpers.numerics import assert_greedy_margin, cfg_gain, layout_atol, vpg_gain
from vpg_pipelines.acceleration import INFINITY_2B_10, AccelerationError, AccelerationTarget, FastVAR, ScaleKV
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.models.infinity.adapter import InfinityAdapter, scale_steps
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

CFG = 3.0


def _accelerator(kind: str, record: bool = False):
    transformer = load_fixture("plain")[0]
    if kind == "fastvar":
        return (RecordingFastVAR if record else FastVAR)(blocks=(0, 2))
    steps = tuple(scale_steps(schedule_from_template(1.0, "1M")))
    target = AccelerationTarget("infinity", transformer.config.depth, steps, 13, template=(1.0, "1M"))
    resolved = ScaleKV(budget=INFINITY_2B_10.first_blocks(2)).resolve(target)
    if not record:
        return resolved
    return RecordingScaleKV(budget=resolved.budget, first_scale=resolved.first_scale)


def _run(accel, vpg=None, keep=False, batch=1, cfg=CFG, stop_after=None):
    transformer, vae, cases, _, _ = load_fixture("plain")
    adapter = InfinityAdapter(transformer, vae)
    lens = cases["text.lens"][:batch]
    state = adapter.prepare(cases["text.features"][: int(lens.sum())], lens, schedule_from_template(1.0, "1M"),
                            with_null=True, tau=0.5, top_k=1, top_p=0.0)
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=ClassifierFreeGuidance(guidance_scale=cfg), vpg=vpg, trace=trace,
                       generator=torch.Generator().manual_seed(0), keep_corrupted_rows=keep, acceleration=accel,
                       on_step=None if stop_after is None else (lambda step, *_: step.index >= stop_after))
    return state, trace


def _assert_same_samples(a: SamplerTrace, b: SamplerTrace, gain: float) -> None:
    """Same codes, guided logits equal up to the rounding of another batch layout (``gain``: guidance on the way)."""
    assert sorted(a.guided) == sorted(b.guided)
    for k in a.guided:
        atol = layout_atol(a.guided[k], gain)
        assert_greedy_margin(a.guided[k], atol, classes=2)
        torch.testing.assert_close(b.guided[k], a.guided[k], atol=atol, rtol=0)
        assert torch.equal(a.codes[k], b.codes[k]), k



def _choices(accel) -> dict:
    return accel.log if isinstance(accel, RecordingFastVAR) else accel.chosen


@pytest.mark.parametrize("kind", ["fastvar", "scalekv"])
def test_vpg_scale_1_equals_the_accelerated_unguided_run(kind):
    """``w = 1`` with the corrupted rows computed anyway (``always_compute``): the clean rows (replaying the
    unguided run's choices; the corrupted rows choose their own) give the samples of the unguided run."""
    plain_accel = _accelerator(kind, record=True)
    _, plain = _run(plain_accel)
    choices = _choices(plain_accel)
    assert choices, "the accelerator must act in this test"
    guided_accel = _accelerator(kind).with_selection(replayed(choices))
    _, guided = _run(guided_accel, PrefixGuidance(guidance_scale=1.0, corruption=0.5, always_compute=True))
    assert guided.corrupted and max(guided.rows.values()) == 4, "the corrupted rows must run in this test"
    _assert_same_samples(plain, guided, cfg_gain(CFG) * vpg_gain(1.0))


@pytest.mark.parametrize("kind", ["fastvar", "scalekv"])
def test_corrupted_rows_choose_their_own(kind):
    """VPG's corrupted rows are pruned / budgeted by their own features, to the same counts as the clean rows."""
    accel = _accelerator(kind, record=True)
    _run(accel, PrefixGuidance(guidance_scale=3.0, corruption=0.5))
    differs = False
    for kept in _choices(accel).values():
        assert kept.shape[0] == 4  # clean real, clean null, corrupted real, corrupted null
        differs |= not torch.equal(kept[:2], kept[2:])
    assert differs, "the corrupted rows never chose differently: the test sees no per-row choice"


@pytest.mark.parametrize("kind", ["fastvar", "scalekv"])
def test_semantic_vpg_rows_leave_the_batch_with_their_state(kind):
    """Semantic VPG guides up to the 32 x 32 scale (pruned by FastVAR, budgeted by ScaleKV); the corrupted rows
    then leave the cache and its row state, and the remaining steps equal a run that kept them."""
    vpg = PrefixGuidance(guidance_scale=3.0, corruption=0.5, scales="semantic")
    dropped_accel = _accelerator(kind, record=True)
    _, dropped = _run(dropped_accel, vpg)
    _, kept = _run(_accelerator(kind).with_selection(replayed(_choices(dropped_accel))), vpg, keep=True)
    last = max(dropped.corrupted)
    assert last == 9 and dropped.rows[last] == 4 and dropped.rows[last + 1] == 2 and kept.rows[last + 1] == 4
    assert dropped.cache_bytes[last + 1] < kept.cache_bytes[last + 1]
    _assert_same_samples(kept, dropped, cfg_gain(CFG) * vpg_gain(3.0))


@pytest.mark.parametrize("kind", ["fastvar", "scalekv"])
@pytest.mark.parametrize("refresh", ["persistent", "resample"])
def test_replayed_corrupted_prefix_is_pruned_like_the_main_pass(kind, refresh):
    """A corrupted branch that starts late (persistent: replayed into a clone, then joined) or is recomputed
    (resample) runs step by step through the accelerator; with ``p = 0`` (every row replaying the unguided
    run's choices) it must reproduce the clean branch."""
    plain_accel = _accelerator(kind, record=True)
    _run(plain_accel)
    accel = _accelerator(kind).with_selection(replayed(_choices(plain_accel), all_rows=True))
    vpg = PrefixGuidance(guidance_scale=3.0, corruption=0.0, scales=[9, 10], refresh=refresh, always_compute=True)
    _, trace = _run(accel, vpg)
    assert sorted(trace.corrupted) == [9, 10]
    for k in trace.corrupted:
        atol = layout_atol(trace.clean[k], cfg_gain(CFG))
        torch.testing.assert_close(trace.corrupted[k], trace.clean[k], atol=atol, rtol=0)


def test_guidance_start_and_stop_refer_to_the_schedule():
    """FastVAR runs 11 of the 13 steps; a term that stops at half of the steps stops where it does without it."""
    vpg = PrefixGuidance(guidance_scale=3.0, corruption=0.5, stop=0.5)
    _, plain = _run(None, vpg, stop_after=7)
    _, accelerated = _run(FastVAR(blocks=(0, 2)), vpg, stop_after=7)
    assert sorted(plain.corrupted) == sorted(accelerated.corrupted) == [1, 2, 3, 4, 5]


def test_refusals_name_the_argument_and_what_applies(var_pipe):
    from tests.helpers.infinity import make_pipe

    with pytest.raises(AccelerationError, match=r"`acceleration` 'fastvar' applies to infinity models, not var"):
        var_pipe.resolve_call(class_labels=[1], acceleration="fastvar")
    pipe = make_pipe("plain")
    with pytest.raises(ValueError, match=r"`acceleration` must be one of \['none', 'fastvar', 'scalekv'"):
        pipe.resolve_call(prompt_embeds=torch.zeros(1, 1, 128), acceleration="fastvr")
    with pytest.raises(AccelerationError, match="does nothing on this schedule .* use 512x512"):
        pipe.resolve_call(prompt_embeds=torch.zeros(1, 1, 128), height=256, width=256, acceleration="fastvar")
    with pytest.raises(AccelerationError, match="budget tables for Infinity-2B .* has 2 blocks"):
        pipe.resolve_call(prompt_embeds=torch.zeros(1, 1, 128), height=1024, width=1024, acceleration="scalekv")
    table = INFINITY_2B_10.first_blocks(2)
    with pytest.raises(AccelerationError, match="made for Infinity's 1:1 1M schedule .* use height=width=1024"):
        pipe.resolve_call(prompt_embeds=torch.zeros(1, 1, 128), height=512, width=512,
                          acceleration=ScaleKV(budget=table))
    call = pipe.resolve_call(prompt_embeds=torch.zeros(1, 1, 128), height=1024, width=1024,
                             acceleration=ScaleKV(budget=table))
    assert call.acceleration.first_scale == 7 and len(call.steps) == 13
    call = pipe.resolve_call(prompt_embeds=torch.zeros(1, 1, 128), height=1024, width=1024,
                             acceleration=FastVAR(blocks=(0, 2)))
    assert [s.scale for s in call.steps] == list(range(11)) and not call.steps[-1].store_kv
    assert len(call.schedule_steps) == 13 and call.num_scales == 13
