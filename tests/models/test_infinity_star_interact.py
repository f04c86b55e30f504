"""InfinityStar-Interact's window against the facts recorded from the official code at the script's settings
(``tests/fixtures/infinity_star_interact``: schedules of every template, the 39 steps, the conditions, the
attention calls, the reference's frame choice)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.interact import FIXTURE
from vpg_pipelines.models.adapter import RowBatch
from vpg_pipelines.models.infinity_star.interact import (
    DETAIL_CONDITION_ID,
    SEMANTIC_CONDITION_ID,
    InfinityStarInteractAdapter,
    decode_input,
    interact_args,
    next_context,
    plan_window,
    window_conditions,
    window_schedule,
)
from vpg_pipelines.models.infinity_star.settings import resolve_args, variant_args
from vpg_pipelines.models.infinity_star.transformer import InfinityStarTransformer
from vpg_pipelines.models.kv_cache import KVCache
from vpg_pipelines.pipelines.reference_video import last_seconds

SCHEDULE = json.loads((FIXTURE / "schedule_interact.json").read_text())
SETTINGS = json.loads((FIXTURE / "settings_interact.json").read_text())
TEXT_MAXLEN = 512


def script_args() -> dict:
    return resolve_args(variant_args("interact"))


def test_a_given_image_repetition_list_is_the_video_one():
    """The script sets the video list to the image one (line 132); fixtures override the image list only."""
    assert interact_args({"image_scale_repetition": [1] * 11})["video_scale_repetition"] == [1] * 11
    both = interact_args({"image_scale_repetition": [1], "video_scale_repetition": [2]})
    assert both["video_scale_repetition"] == [2]
    assert script_args()["video_scale_repetition"] == script_args()["image_scale_repetition"]


@pytest.mark.parametrize("template", sorted(SCHEDULE["templates_0.40M"]))
def test_window_schedule_and_condition_grids_of_every_template(template):
    entry = SCHEDULE["templates_0.40M"][template]
    height, width = entry["target_hw_px"]
    schedule = window_schedule(script_args(), height, width)
    assert schedule == [tuple(s) for s in entry["clip_schedule"]]
    plan = plan_window(schedule, [3] * 12 + [2, 1], 11, 0.5)
    latent = torch.zeros(1, 64, 21, *schedule[-1][1:])
    semantic, detail = window_conditions(plan, latent, latent[:, :, :1], TEXT_MAXLEN)
    assert semantic.num_tokens == torch.Size(entry["semantic_condition_grid"]).numel()
    assert detail.num_tokens == torch.Size(entry["detail_condition_grid"]).numel()


def test_the_39_steps_of_a_window():
    expected = SCHEDULE["window"]["steps"]
    args = script_args()
    plan = plan_window(window_schedule(args, 480, 848), args["image_scale_repetition"], args["semantic_scales"],
                       args["tau_image"])
    assert len(plan.steps) == len(expected) == 39
    for step, official in zip(plan.steps, expected):
        assert (step.scale, step.repeat) == (official["scale_index"], official["repetition"])
        assert list(step.grid) == official["grid_thw"] and step.num_sites == official["tokens"]
        assert step.real_sid == official["rope_scale_index"]  # RoPE ids count the window's steps from 0
        assert step.semantic_head == (official["head"] == "semantic_head2")
        assert step.detail_codebook == (official["codebook"] == "lfq_detail")
        assert step.tau == official["tau"]
        assert [step.frame_start, step.frame_start + step.grid[0]] == official["rope_frames_half_open"]
        # the official last repetition writes a cache entry that nothing reads (freed at the next scale)
        assert step.ref_sids == () and not step.store_kv


def test_codebook_follows_the_scale_index_not_the_token_count():
    """A ladder where the 720p token rule would disagree with the scale index: the interact rule wins."""
    schedule = [(20, 1, 1), (20, 2, 3), (20, 30, 53)]
    plan = plan_window(schedule, [1, 1, 1], semantic_scales=2, tau=0.5)
    assert [s.detail_codebook for s in plan.steps] == [False, False, True]
    assert [s.semantic_head for s in plan.steps] == [True, True, False]


def test_conditions_positions_and_content():
    conditions = SCHEDULE["conditions"]
    args = script_args()
    plan = plan_window(window_schedule(args, 480, 848), args["image_scale_repetition"], 11, 0.5)
    context = torch.randn(2, 64, 21, 30, 53)
    first = torch.randn(2, 64, 1, 30, 53)
    semantic, detail = window_conditions(plan, context, first, TEXT_MAXLEN)
    for condition, official, scale_id in ((semantic, conditions["semantic_condition"], SEMANTIC_CONDITION_ID),
                                          (detail, conditions["detail_condition"], DETAIL_CONDITION_ID)):
        t, h, w = official["grid_thw"]
        coords = condition.coords.view(t, h, w, 4)
        assert official["rope_scale_index"] == scale_id
        assert bool((coords[..., 0] == TEXT_MAXLEN + scale_id).all())  # after the text, like the steps' ids
        assert coords[:, 0, 0, 1].tolist() == official["rope_frames"]
        assert coords[0, :, 0, 2].tolist() == (torch.arange(h) * (30 / h)).round().long().tolist()
        assert coords[0, 0, :, 3].tolist() == (torch.arange(w) * (53 / w)).round().long().tolist()
    # semantic: context frames 1..20 area-resized; detail: [reference frame 0, context frames 19, 20]
    expected = F.interpolate(context[:, :, 1:], size=(20, 6, 11), mode="area").flatten(2).transpose(1, 2)
    assert torch.equal(semantic.content, expected)
    expected = torch.cat([first, context[:, :, 19:21]], dim=2).flatten(2).transpose(1, 2)
    assert torch.equal(detail.content, expected)


def test_context_chaining():
    context, window = torch.randn(1, 64, 21, 2, 3), torch.randn(1, 64, 20, 2, 3)
    joined = decode_input(context, window)
    assert torch.equal(joined, torch.cat([context[:, :, 1:], window], dim=2)) and joined.shape[2] == 40
    assert torch.equal(next_context(context, window), joined[:, :, -21:])


def test_context_interval_changes_nothing():
    schedule = window_schedule(script_args(), 480, 848)
    reps = [3] * 12 + [2, 1]
    plans = [plan_window(schedule, reps, 11, 0.5) for _ in range(2)]
    args = {**script_args(), "context_interval": 13}
    assert window_schedule(args, 480, 848) == schedule
    assert SCHEDULE["context_interval_has_no_effect"]["context_info_identical"]
    assert plans[0].steps == plans[1].steps


@torch.no_grad()
def test_attention_sees_text_conditions_and_itself(monkeypatch):
    """The official attention calls at the script's settings (first block, key lengths): the text sees itself,
    each condition itself, a step the text, both conditions and itself. A narrow random transformer with the
    official widths' layout runs the text, both conditions and the first step."""
    calls = SCHEDULE["attention_calls_recorded"]["calls"]
    text = calls[0]["q_len"]
    args = script_args()
    plan = plan_window(window_schedule(args, 480, 848), args["image_scale_repetition"], 11, 0.5)
    torch.manual_seed(0)
    transformer = InfinityStarTransformer(text_channels=8, embed_dim=64, depth=1, num_block_chunks=1, num_heads=2,
                                          num_key_value_heads=1, null_text_len=16).eval()
    adapter = InfinityStarInteractAdapter(transformer, vae=type("V", (), {"codebook_dim": 64})())
    state = adapter.prepare_window(plan, [torch.randn(text, 8)], None, torch.randn(1, 64, 21, 30, 53),
                                   torch.randn(1, 64, 1, 30, 53))
    seen = []
    original = F.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, **kwargs):
        seen.append((q.shape[2], k.shape[2]))
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", record)
    cache = KVCache(1, 2, adapter.num_prefix_tokens(state))
    adapter.prefill(state, cache)
    step = adapter.steps(state)[0]
    inp = adapter.step_input(state, step)
    batch = RowBatch(torch.arange(2), inp.content.repeat(2, 1, 1), inp.position_ids.expand(2, -1), [step])
    adapter.forward(state, batch, cache)
    assert seen == [(c["q_len"], c["k_len"]) for c in calls[:4]]
    assert cache.length == text + 1320 + 4770  # the step's entries are not kept


@pytest.mark.parametrize("example", SETTINGS["reference_read"]["examples_run_through_the_official_class"],
                         ids=lambda e: f"{e['frame_count']}@{e['fps']}")
def test_reference_frames_are_the_official_choice(example):
    assert last_seconds(example["frame_count"], example["fps"], 5, 81) == example["frames_read"]
