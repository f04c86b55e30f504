"""FastVAR equals its authors' code on the fixtures (``tests/fixtures/fastvar``, README there).

Selections sit in the dense middle of ~1000 distances, so a selection can flip under rounding; the fixture's
cases were searched for boundary gaps >= 1e-5 relative (rounding between implementations: ~1e-6). Free runs
compare every kept set first and, on a mismatch, name the first differing selection with its stored gap;
forced runs replay the stored kept sets through the selection hook and compare the logits (immune to flips:
they pin the RoPE gather, the cache contents, the fill and the skipped scales).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.acceleration import (
    FIXTURES,
    RecordingFastVAR,
    fastvar_case,
    fastvar_fixture,
    first_selection_mismatch,
    forced_selection,
    stored_kept,
)
from tests.helpers.infinity import report
from tests.helpers.numerics import assert_greedy_margin
from vpg_pipelines import VPGInfinityPipeline
from vpg_pipelines.acceleration import FastVAR
from vpg_pipelines.acceleration.fastvar import area_resize, farthest_from_mean
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.models.infinity.adapter import InfinityAdapter
from vpg_pipelines.models.infinity.schedules import TEMPLATE_GRIDS, schedule_from_template
from vpg_pipelines.models.infinity.transformer import pad_text
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

ATOL = 1e-4  # the fixture's tolerance for guided logits and summed codes (README, Tolerances)


def _run(model: str, features, lens, case: dict, acceleration, rows_check=True):
    models, vae, _, _ = fastvar_fixture()
    adapter = InfinityAdapter(models[model], vae)
    schedule = schedule_from_template(1.0, case["pn"])
    cfg = case["cfg"]
    state = adapter.prepare(features, lens, schedule, with_null=cfg != 1, tau=case["tau"], top_k=1, top_p=0.0)
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=ClassifierFreeGuidance(guidance_scale=cfg), trace=trace,
                       generator=torch.Generator().manual_seed(0), acceleration=acceleration)
    return state, trace


def _assert_outputs(tag: str, state, trace, rows: list[int] | None = None) -> None:
    """Guided logits <= 1e-4 at every processed scale, bits equal, none for the skipped scales, summed codes."""
    cases, case = fastvar_fixture()[2], fastvar_case(tag)
    assert sorted(trace.guided) == case["processed_scales"]
    for k in case["processed_scales"]:
        expected = cases[f"sample.{tag}.guided_logits.scale{k}"]
        ours = trace.guided[k][rows if rows is not None else slice(None)].reshape(expected.shape)
        assert_greedy_margin(expected, ATOL, classes=2)
        assert report(f"{tag} scale {k} guided logits", ours, expected) <= ATOL
        bits = state.bits[k][rows if rows is not None else slice(None)]
        assert torch.equal(bits, cases[f"sample.{tag}.bit_indices.scale{k}"].to(bits.dtype)), f"bits of scale {k}"
    key = f"sample.{tag}.summed_codes"
    if key in cases:
        latents = state.latents.squeeze(2)[rows if rows is not None else slice(None)]
        assert report(f"{tag} summed codes", latents, cases[key]) <= ATOL


def test_the_default_is_their_released_setting():
    """``presets.json`` (their hard-coded setting, by grid width) read on the 1:1 1M template (by scale index)."""
    import json

    preset = json.loads((FIXTURES / "fastvar" / "presets.json").read_text())["fastvar_infinity_2b"]
    widths = [w for _, w in TEMPLATE_GRIDS[1.0]]
    ours = FastVAR()
    assert {str(widths[k]): r for k, r in ours.prune_ratios} == preset["prune_ratio_by_grid_width"]["value"]
    assert [widths[k] for k in ours.skip_scales] == preset["skipped_scales_by_grid_width"]["value"]
    assert TEMPLATE_GRIDS[1.0][ours.fill_scale] == (24, 24) == tuple(preset["fill_source_scale"]["value"][s]
                                                                       for s in ("h", "w"))
    assert dict(zip(("start", "stop"), ours.blocks)) == preset["pruned_blocks"]["value"]
    assert [ours.kept_tokens(s) for s in _steps_of(1.0, "1M") if ours.ratio(s.scale)] == [615, 800]


def _steps_of(template, pn):
    from vpg_pipelines.models.infinity.adapter import scale_steps

    return scale_steps(schedule_from_template(template, pn))


def test_selection_rule_on_their_unit_input():
    cases = fastvar_fixture()[2]
    hidden = cases["unit.selection.scale9.layer3.sa.input"]
    ours = farthest_from_mean(hidden, 615)
    theirs = stored_kept(cases, fastvar_case("p0p25M_cfg3_tau0p5"), 9, 3, "self_attention")
    for r in range(2):
        assert torch.equal(ours[r], theirs[r].sort().values), r


def test_fill_on_their_unit_tensors():
    cases = fastvar_fixture()[2]
    prefix = "unit.fill.scale9.layer3.sa"
    cache, computed, filled = (cases[f"{prefix}.{n}"] for n in ("cache24", "computed", "filled"))
    kept = stored_kept(cases, fastvar_case("p0p25M_cfg3_tau0p5"), 9, 3, "self_attention")[:1]
    full = area_resize(cache.view(1, 24, 24, -1), 32, 32).reshape(1, 1024, -1)
    ours = full.scatter(1, kept[..., None].expand(-1, -1, full.shape[-1]), computed)
    assert report("fill", ours, filled) <= 1e-6  # window averages by matrix products vs their area pooling


def test_their_depth_8_case_free_run():
    """Their rule at another depth, literally: blocks [3, 28) of 8 = 3..7 prune."""
    tag = "d8_p1M_cfg4_tau0p5"
    cases, case = fastvar_fixture()[2], fastvar_case(tag)
    accel = RecordingFastVAR()
    state, trace = _run("d8", cases[f"text.{tag}.features"], cases[f"text.{tag}.lens"], case, accel)
    assert first_selection_mismatch(accel.log, cases, case) is None, first_selection_mismatch(accel.log, cases, case)
    assert {block for _, block, _ in accel.log} == {3, 4, 5, 6, 7}
    _assert_outputs(tag, state, trace)


def test_two_prompts_with_cfg_row_by_row():
    """Beyond their code (it runs one prompt with CFG): cases ``a`` and ``b`` as one batch (4 rows: two real, two
    null) choose their tokens per row, each row equal to its case."""
    cases, a, b = fastvar_fixture()[2], fastvar_case("p1M_cfg4_tau0p5_a"), fastvar_case("p1M_cfg4_tau0p5_b")
    features = torch.cat([cases[f"text.{a['tag']}.features"], cases[f"text.{b['tag']}.features"]])
    lens = torch.cat([cases[f"text.{a['tag']}.lens"], cases[f"text.{b['tag']}.lens"]])
    accel = RecordingFastVAR()
    state, trace = _run("d32", features, lens, a, accel)
    for case, (real, null), sample in ((a, (0, 2), 0), (b, (1, 3), 1)):
        log = {key: kept[[real, null]] for key, kept in accel.log.items()}
        mismatch = first_selection_mismatch(log, cases, case)
        assert mismatch is None, mismatch
        _assert_outputs(case["tag"], state, trace, rows=[sample])


@pytest.mark.parametrize("tag", ["p1M_cfg4_tau0p5_a", "p1M_nocfg_b2"])
def test_forced_selection_reproduces_their_logits(tag):
    """Their kept sets injected through the selection hook: the released case, and two prompts without CFG."""
    cases, case = fastvar_fixture()[2], fastvar_case(tag)
    accel = FastVAR().with_selection(forced_selection(cases, case))
    state, trace = _run("d32", cases[f"text.{tag}.features"], cases[f"text.{tag}.lens"], case, accel)
    _assert_outputs(tag, state, trace)


def test_pipeline_free_run_with_the_last_scale_pruned():
    """``acceleration=`` through the pipeline at 512 x 512 (0.25M: the 32 x 32 scale is the last, pruned, nothing
    skipped); a config object, so that its selections are recorded."""
    tag = "p0p25M_cfg3_tau0p5"
    models, vae, cases, _ = fastvar_fixture()
    case = fastvar_case(tag)
    pipe = VPGInfinityPipeline(models["d32"], vae, default_height=512, default_width=512)
    pipe.set_progress_bar_config(disable=True)
    embeds, mask = pad_text(cases[f"text.{tag}.features"], cases[f"text.{tag}.lens"])
    accel, trace = RecordingFastVAR(), SamplerTrace()
    out = pipe(prompt_embeds=embeds, prompt_attention_mask=mask.long(), guidance_scale=case["cfg"], tau=case["tau"],
               top_k=1, top_p=0.0, vpg_scale=1.0, acceleration=accel, output_type="latent", trace=trace,
               generator=torch.Generator().manual_seed(0))
    assert pipe.num_timesteps == 10
    assert first_selection_mismatch(accel.log, cases, case) is None, first_selection_mismatch(accel.log, cases, case)
    assert report("summed codes", out.images, cases[f"sample.{tag}.summed_codes"]) <= ATOL
    for k in case["processed_scales"]:
        expected = cases[f"sample.{tag}.guided_logits.scale{k}"]
        assert report(f"scale {k}", trace.guided[k].reshape(expected.shape), expected) <= ATOL
