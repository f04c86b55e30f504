"""Infinity dynamic-resolution table, aspect snapping and RoPE-2D positions."""

from __future__ import annotations

import pytest
import torch

from vpg_pipelines.models.infinity.schedules import (
    H_DIV_W_TEMPLATES,
    PIXEL_BUDGETS,
    ROPE_GRID,
    TEMPLATE_GRIDS,
    custom_schedule,
    nearest_template,
    rope_positions,
    schedule_for_size,
    schedule_from_template,
)


def test_templates_and_budgets():
    assert sorted(H_DIV_W_TEMPLATES) == [0.333, 0.4, 0.5, 0.571, 0.666, 0.75, 0.8, 1.0, 1.25, 1.333, 1.5, 1.75,
                                         2.0, 2.5, 3.0]
    assert PIXEL_BUDGETS == {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
    for ratio, grids in TEMPLATE_GRIDS.items():
        assert len(grids) == 13 and grids[0] == (1, 1)
        h, w = grids[-1]
        assert abs(h / w - ratio) < 0.01
    assert TEMPLATE_GRIDS[0.8] == tuple((w, h) for h, w in TEMPLATE_GRIDS[1.25])
    assert TEMPLATE_GRIDS[3.0][-1] == (111, 37) and TEMPLATE_GRIDS[0.333][-1] == (37, 111)


def test_square_1m_schedule():
    s = schedule_from_template(1.0, "1M")
    assert [h for h, _ in s.grids] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]
    assert s.offsets[-1] == 10521 and s.image_size == (1024, 1024)
    assert s.scale_schedule[0] == (1, 1, 1)
    patch = schedule_from_template(1.0, "0.25M", spatial_patchify=True)
    assert patch.vae_grids[-1] == (64, 64) and patch.grids[-1] == (32, 32) and patch.image_size == (512, 512)


def test_nearest_template():
    assert nearest_template(1.0) == 1.0
    assert nearest_template(1.3) == 1.333
    assert nearest_template(0.62) == 0.666
    assert nearest_template(10.0) == 3.0
    with pytest.raises(ValueError, match="h_div_w"):
        nearest_template(-1.0)


def test_schedule_for_size_exact_and_snapped(caplog):
    assert schedule_for_size(1024, 1024).message is None
    assert schedule_for_size(512, 512).pn == "0.25M"
    assert schedule_for_size(256, 256).pn == "0.06M"
    with caplog.at_level("WARNING"):
        snapped = schedule_for_size(1000, 760)
    assert snapped.h_div_w_template == 1.333 and snapped.image_size == (960, 720) and snapped.pn == "0.60M"
    assert "1000x760" in snapped.message and "960x720" in snapped.message
    assert snapped.message in caplog.text
    assert schedule_for_size(900, 900, pn="0.25M").image_size == (512, 512)
    with pytest.raises(ValueError, match="height"):
        schedule_for_size(0, 512)
    with pytest.raises(ValueError, match="pn"):
        schedule_for_size(512, 512, pn="2M")


def test_star_positions_spread_over_the_1m_grid():
    s = schedule_from_template(1.0, "0.06M")
    last = s.position_ids(6)  # 16x16 spread over 64x64: every 4th row/col
    rows, cols = last // ROPE_GRID, last % ROPE_GRID
    assert rows.view(16, 16)[:, 0].tolist() == list(range(0, 64, 4))
    assert cols.view(16, 16)[0].tolist() == list(range(0, 64, 4))
    assert s.position_ids(0).tolist() == [0]
    assert s.all_position_ids().shape == (s.offsets[-1],)
    # half-to-even rounding in float32: ratio 1.25 (final 70x56), h = 20 -> 3 * 3.5 = 10.5 -> 10
    pos = rope_positions((20, 16), (70, 56))
    assert (pos // ROPE_GRID).view(20, 16)[3, 0].item() == 10
    assert (pos // ROPE_GRID).view(20, 16)[5, 0].item() == 18  # 17.5 -> 18
    assert torch.equal(rope_positions((2, 3), (64, 64), mode=0), torch.tensor([0, 1, 2, 128, 129, 130]))
    with pytest.raises(ValueError, match="rope2d_normalized_by_hw"):
        rope_positions((2, 2), (64, 64), mode=1)


def test_custom_schedule():
    s = custom_schedule([(1, 1, 1), (1, 2, 2), (1, 4, 4)])
    assert s.h_div_w_template == 1.0 and s.rope_final_grid == (64, 64) and s.pn is None
    assert custom_schedule([(1, h, w) for h, w in TEMPLATE_GRIDS[2.0][:7]]).pn == "0.06M"
    with pytest.raises(ValueError, match="start token"):
        custom_schedule([(2, 2)])
