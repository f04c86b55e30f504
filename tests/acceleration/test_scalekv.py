"""ScaleKV equals its authors' code on the fixtures (``tests/fixtures/scalekv``, README there).

Free runs compare the kept cache positions of every compression (per layer, scale, row and head; exact),
the guided logits (<= 1e-4), the bits and the summed codes. The selection's ties at the cut are structural
(max pooling copies a local maximum to its neighbours) and decided by CUDA's ``topk`` rule, the lowest index,
which ``top_indices`` implements on every device; the distinct scores around the cut are >= 4.9x the rounding
apart (README, Tolerances).
"""

from __future__ import annotations

import json
from functools import cache

import pytest
import torch

from tests.helpers.acceleration import (
    PositionTracker,
    RecordingScaleKV,
    forced_kv_selection,
    scalekv_case,
    scalekv_fixture,
    stored_positions,
)
from tests.helpers.infinity import load_fixture, report
from tests.helpers.numerics import assert_greedy_margin
from tests.helpers.shared import shared_path
from vpg_pipelines.acceleration import (
    INFINITY_2B_10,
    INFINITY_8B_10,
    AccelerationError,
    AccelerationTarget,
    ScaleKV,
    top_indices,
)
from vpg_pipelines.acceleration.scalekv import pooled_scores, window_positions
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.loading.infinity import load_official_infinity
from vpg_pipelines.models.infinity.adapter import InfinityAdapter, scale_steps
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

ATOL = 1e-4


@cache
def _models(folder: str):
    if folder == "plain":
        return load_fixture("plain")[:2]
    root = shared_path("parity", "infinity", "patchify")
    return load_official_infinity(root / "infinity.safetensors", root / "vae.safetensors",
                                  config=json.loads((root / "config.json").read_text()))


def _setup(tag: str):
    case = scalekv_case(tag)
    transformer, vae = _models(case["model"])
    adapter = InfinityAdapter(transformer, vae)
    schedule = schedule_from_template(1.0, "1M", bool(transformer.config.apply_spatial_patchify))
    text = load_fixture("plain")[2]
    lens = text["text.lens"][: case["B"]]
    state = adapter.prepare(text["text.features"][: int(lens.sum())], lens, schedule, with_null=True,
                            tau=case["tau_list"], top_k=1, top_p=0.0)
    table = {"2b_10%": INFINITY_2B_10, "8b_10%": INFINITY_8B_10}[case["budget_preset"]]
    target = AccelerationTarget("infinity", transformer.config.depth, tuple(scale_steps(schedule)), 13,
                                template=(1.0, "1M"))
    # their code looks the capacities up by block index: the tiny model's blocks get the released blocks' ones
    accel = ScaleKV(budget=table.first_blocks(transformer.config.depth)).resolve(target)
    return case, adapter, state, accel


def _run(adapter, state, case, accel):
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=ClassifierFreeGuidance(guidance_scale=case["cfg_list"]), trace=trace,
                       generator=torch.Generator().manual_seed(0), acceleration=accel)
    return trace


def _assert_outputs(tag, state, trace):
    cases = scalekv_fixture()[0]
    for k in range(13):
        expected = cases[f"sample.{tag}.guided_logits.scale{k}"]
        assert_greedy_margin(expected, ATOL, classes=2)
        assert report(f"{tag} scale {k}", trace.guided[k].reshape(expected.shape), expected) <= ATOL
        assert torch.equal(state.bits[k], cases[f"sample.{tag}.bit_indices.scale{k}"].to(state.bits[k].dtype)), k
    assert report(f"{tag} summed codes", state.latents.squeeze(2), cases[f"sample.{tag}.summed_codes"]) <= ATOL


@pytest.mark.parametrize("preset,table", [("2b_10%", INFINITY_2B_10), ("8b_10%", INFINITY_8B_10)])
def test_budget_tables_are_their_files(preset, table):
    """Our tables (written as data, the source cited) against ``budgets.json``, read off their files."""
    theirs = scalekv_fixture()[2]["presets"][preset]
    assert table.depth == theirs["depth"]
    for scale, capacities in theirs["capacity_by_scale_index"].items():
        assert [table.capacity(int(scale), layer) for layer in range(table.depth)] == capacities, scale
    for entry in theirs["scales"].values():
        ours = table.entry(entry["applies_to_scale_index"][0])
        assert list(ours.drafters) == entry["drafter_blocks"] and ours.scales == tuple(entry["applies_to_scale_index"])
        assert entry["lines"] in ours.source
    args = theirs["enable_scale_kv_args"]
    default = ScaleKV()
    assert (default.window, default.base_capacity, default.kernel_size) == (
        args["window_size"], args["max_capacity"], args["kernel_size"])


def test_window_centres_are_theirs():
    for side, centres in ((20, [2, 7, 12, 17]), (24, [2, 8, 14, 20]), (32, [3, 11, 19, 27]), (40, [4, 14, 24, 34]),
                          (48, [5, 17, 29, 41]), (64, [7, 23, 39, 55])):
        assert window_positions((side, side), 16) == [r * side + c for r in centres for c in centres]


def test_ties_go_to_the_lowest_index():
    scores = torch.tensor([[3.0, 5.0, 5.0, 1.0, 5.0, 5.0, 2.0]])
    assert top_indices(scores, 3).tolist() == [[1, 2, 4]]
    assert top_indices(scores, 5).tolist() == [[0, 1, 2, 4, 5]]
    torch.manual_seed(0)
    values = torch.randint(0, 6, (4, 3, 50)).float()
    for k in (1, 7, 25, 50):  # the rule equals a stable descending sort's first k
        expected = values.sort(dim=-1, descending=True, stable=True).indices[..., :k].sort(dim=-1).values
        assert torch.equal(top_indices(values, k), expected)


@pytest.mark.parametrize("layer", [0, 1])
def test_selection_on_their_unit_tensors(layer):
    """The first eviction (scale 7, cache = the 921 uncompressed tokens): pooled scores up to rounding, kept set."""
    cases = scalekv_fixture()[0]
    prefix = f"unit.b1_cfg4_tau1.layer{layer}.scale7"
    keys, queries = cases[f"{prefix}.key_states"], cases[f"{prefix}.query_states"]
    window = torch.tensor(window_positions((20, 20), 16))
    pooled = pooled_scores(keys, queries[:, :, window], 521 + window, 5)
    # softmax(q k^T) pooled: the same computation as theirs, equal up to the kernels' float32 rounding (the scalar
    # kernels of CI's second mode differ from the vectorised ones in the last bits); the kept set must still be theirs
    torch.testing.assert_close(pooled, cases[f"{prefix}.masked_pooled_scores"], atol=1e-6, rtol=1e-5)
    step = scale_steps(schedule_from_template(1.0, "1M"))[7]
    case, _, _, accel = _setup("b1_cfg4_tau1")
    budget = accel.kv_budget(step)
    capacity = budget.capacity(layer, 921)
    kept = budget.select(layer, keys, lambda positions: queries[:, :, positions], capacity)
    assert capacity == (920, 632)[layer]
    assert torch.equal(kept, cases[f"{prefix}.kept_cache_indices"].long())


@pytest.mark.parametrize("tag", ["b1_cfg4_tau1", "b2_cfg3_tau0p5", "patchify_8bbudget_b1_cfg6_tau1"])
def test_free_run_equals_theirs(tag):
    """Their released call (2B budget, B = 1, cfg 4), two prompts, and the 8B budget on the 8B-style model."""
    case, adapter, state, accel = _setup(tag)
    offsets = scalekv_fixture()[1]["scale_starts"]
    accel = RecordingScaleKV(**{f: getattr(accel, f) for f in ("budget", "base_capacity", "window", "kernel_size",
                                                               "first_scale")},
                             tracker=PositionTracker(offsets))
    trace = _run(adapter, state, case, accel)
    stored = stored_positions(tag)
    # compressions after the last scale's attention change nothing and are skipped (it stores nothing)
    assert sorted(accel.log) == sorted(key for key in stored if key[1] < 12)
    for key in sorted(accel.log):
        assert torch.equal(accel.log[key], stored[key]), f"kept positions of layer {key[0]}, scale {key[1]}"
    _assert_outputs(tag, state, trace)


def test_forced_selection_reproduces_their_logits():
    """Their kept positions injected through the selection hook (``with_selection``)."""
    tag = "b2_cfg3_tau0p5"
    case, adapter, state, accel = _setup(tag)
    tracker = PositionTracker(scalekv_fixture()[1]["scale_starts"])
    trace = _run(adapter, state, case, accel.with_selection(forced_kv_selection(stored_positions(tag), tracker)))
    _assert_outputs(tag, state, trace)


def test_an_unresolved_budget_is_refused_by_the_sampler():
    """Unresolved (no first compressed scale), the run would compress nothing and look like an ordinary one."""
    with pytest.raises(AccelerationError, match="resolved"):
        ScaleKV(budget=INFINITY_2B_10).start(1, None)
