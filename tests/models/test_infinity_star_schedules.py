"""InfinityStar schedules: resolution tables, clip packing, repetition plan (facts of the official code)."""

from __future__ import annotations

import numpy as np
import pytest

from vpg_pipelines.models.infinity_star.schedules import (
    get_dynamic_resolution_meta,
    get_first_full_spatial_size_scale_index,
    nearest_template,
    plan_steps,
    scale_pack_info,
    tau_list,
    video_scale_schedule,
)

RELEASED = {  # tools/infer_video_720p.py
    "image_repetition": "[3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]",
    "video_repetition": "[3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 1, 1]",
    "semantic_scales": 12,
    "detail_scale_min_tokens": 750,
    "tau_image": 1.0,
    "tau_video": 0.4,
}
LADDER_0562 = [(1, 1), (2, 3), (2, 4), (3, 5), (4, 7), (4, 8), (5, 9), (6, 11), (8, 13), (9, 16), (12, 21), (18, 32),
               (24, 43), (30, 53), (45, 80)]


def test_video_tables():
    meta, templates = get_dynamic_resolution_meta("infinity_elegant_clip20frames_v2", 81)
    assert len(templates) == 15 and 1.0 in templates and 0.562 in templates and 1.777 in templates
    assert nearest_template(0.571, templates) == 0.562
    entry = meta[0.562]["0.90M"]
    assert entry["pixel"] == (720, 1280)
    assert sorted(entry["pt2scale_schedule"]) == [1, 5, 9, 13, 17, 21]
    assert entry["scales_in_one_clip"] == 15 and entry["max_video_scales"] == 30
    full = entry["pt2scale_schedule"][21]
    assert full == [(1, h, w) for h, w in LADDER_0562] + [(20, h, w) for h, w in LADDER_0562]
    assert entry["pt2scale_schedule"][5][15:] == [(4, h, w) for h, w in LADDER_0562]
    # the landscape and portrait templates are transposes of each other
    assert meta[1.777]["0.90M"]["pt2scale_schedule"][1] == [(1, w, h) for h, w in LADDER_0562]
    # budgets cut the spatial ladder
    assert [meta[0.562][b]["scales_in_one_clip"] for b in ("0.06M", "0.25M", "0.40M", "0.90M")] == [11, 13, 14, 15]
    assert meta[0.562]["0.06M"]["pixel"] == (192, 336)
    ten_seconds, _ = get_dynamic_resolution_meta("infinity_elegant_clip20frames_v2", 161)
    sched = ten_seconds[0.562]["0.90M"]["pt2scale_schedule"]
    assert sorted(sched) == list(range(1, 42, 4))
    assert len(sched[41]) == 45 and len(sched[25]) == 45 and sched[25][-1] == (4, 45, 80) and sched[21][-1][0] == 20


def test_other_schedules():
    meta, templates = get_dynamic_resolution_meta("13_hand_craft", 81)
    assert len(templates) == 15
    square = meta[1.0]["1M"]
    assert square["image_scales"][-1] == (1, 64, 64) and len(square["image_scales"]) == 13
    assert [t for t, _, _ in square["video_scales"]] == [1, 4, 8, 11, 14, 18, 21]
    assert meta[0.5]["1M"]["image_scales"][-1] == (1, 45, 90) and meta[2.0]["0.06M"]["image_scales"][-1] == (1, 22, 11)
    feats, _ = get_dynamic_resolution_meta("infinity_star_extract_features", 81)
    assert feats[1.0]["0.25M"]["pt2scale_schedule"][7][-1] == (7, 32, 32)
    interact, _ = get_dynamic_resolution_meta("infinity_star_interact", 81)
    assert interact[1.0]["0.40M"]["pt2scale_schedule"][21][-1] == (20, 40, 40)
    with pytest.raises(ValueError, match="`schedule`"):
        get_dynamic_resolution_meta("infinity_bogus")
    with pytest.raises(ValueError, match="`video_frames`"):
        get_dynamic_resolution_meta("infinity_elegant_clip20frames_v2", 17)
    with pytest.raises(ValueError, match="`budget`"):
        video_scale_schedule(0.56, budget="2M")


def test_ladders_follow_the_area_rule():
    """Scale k of a ladder has about side_k**2 sites at the template's aspect ratio."""
    meta, _ = get_dynamic_resolution_meta("infinity_elegant_clip20frames_v2", 81)
    sides = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 40, 60]
    for template, budgets in meta.items():
        ladder = budgets["0.90M"]["pt2scale_schedule"][1]
        assert all(t == 1 for t, _, _ in ladder)
        for side, (_, h, w) in zip(sides, ladder):
            assert abs(h - np.sqrt(side * side * template)) <= 0.5 + 0.02 * side
            assert abs(w - np.sqrt(side * side / template)) <= 0.5 + 0.02 * side
        _, h, w = ladder[-1]
        assert int(h / w * 1000) / 1000 == template


def test_clip_packing_of_the_released_settings():
    sched = video_scale_schedule(0.571, "0.90M", video_frames=81)
    assert get_first_full_spatial_size_scale_index(sched) == 14
    packs = scale_pack_info(sched)
    assert all(p.ref_sids == () and (p.frame_start, p.frame_end) == (0, 1) for p in packs[:15])
    assert all(p.ref_sids == (14,) and (p.frame_start, p.frame_end) == (1, 21) for p in packs[15:])
    long = video_scale_schedule(0.571, "0.90M", video_frames=161)
    packs = scale_pack_info(long)
    assert packs[44].ref_sids == (29,) and (packs[44].frame_start, packs[44].frame_end) == (21, 41)
    # without the "largest scale" context every scale sees all earlier ones
    assert scale_pack_info(sched, context_from_largest_no=0)[20].ref_sids == tuple(range(20))
    assert scale_pack_info(long, context_frames=20)[44].ref_sids == (29,)


def test_released_step_plan():
    sched = video_scale_schedule(0.571, "0.90M", video_frames=81)
    plan = plan_steps(sched, **RELEASED)
    assert len(plan.steps) == 45 + 40
    assert [s.real_sid for s in plan.steps] == list(range(85))
    stored = [s for s in plan.steps if s.store_kv]
    assert [(s.scale, s.repeat) for s in stored] == [(14, 2)]
    assert plan_steps(sched, keep_unreferenced_kv=True, **RELEASED).steps[2].store_kv
    last = plan.steps[-1]
    assert (last.scale, last.repeat_times, last.grid, last.target, last.tau) == (29, 1, (20, 45, 80), (20, 45, 80), 0.4)
    for s in plan.steps:
        assert s.semantic_head == (s.rel_scale < 12) and s.detail_codebook == (s.rel_scale >= 12)
        assert plan.bits_of(s) == (64 if s.detail_codebook else 16)
    assert tau_list(sched, 1.0, 0.4) == [1.0] * 15 + [0.4] * 15
    # max_repeat_times caps the repetitions but not the RoPE scale counter
    capped = plan_steps(sched, max_repeat_times=1, **RELEASED)
    assert len(capped.steps) == 30 and capped.steps[1].real_sid == 3
    with pytest.raises(ValueError, match="one entry per scale"):
        plan_steps(sched, "[3, 3]", RELEASED["video_repetition"])
    with pytest.raises(ValueError, match="semantic_scales"):
        plan_steps(sched, **{**RELEASED, "semantic_scales": 14})
