"""FasterVAR's low-rank math and stage rules as pure functions, against the authors' recorded draws."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.fastervar import infinity_cases, presets_json, star_cases
from vpg_pipelines.acceleration.fastervar.lowrank import (
    draw_positions,
    gaussian_sketch,
    importance,
    project_tokens,
    rank_of,
    resize_tokens,
    restore_tokens,
)
from vpg_pipelines.acceleration.fastervar.presets import RANK_RATIO_PRESETS, STAR_RANK_RATIO
from vpg_pipelines.acceleration.fastervar.stages import (
    block_groups,
    cfg_off_scales,
    last_run_scale,
    low_rank_scale,
)


def test_rank_presets_are_the_authors_values_and_ranks():
    recorded = presets_json()["infinity"]["rank_ratio_presets"]
    assert list(RANK_RATIO_PRESETS) == list(recorded)  # all 12, in the file's order
    for name, ratios in RANK_RATIO_PRESETS.items():
        assert list(ratios) == recorded[name]["scale40"]["ratio_per_block_chunk"], name
        ranks = [rank_of(r, 1600, plus_one=True) for r in ratios]
        assert ranks == recorded[name]["scale40"]["rank_per_block_chunk_1to1"], name


def test_rank_rules():
    # InfinityStar: floor(N * ratio), clamped to [1, N] (480p / 720p / the fixture's final scale)
    assert [rank_of(STAR_RANK_RATIO, n, plus_one=False) for n in (31800, 72000, 1008)] == [3180, 7200, 100]
    assert rank_of(0.0001, 100, plus_one=False) == 1
    assert rank_of(1.5, 100, plus_one=True) == 100
    _, meta = infinity_cases()
    ranks = {c["tag"]: [lr["rank"] for lr in c["lowrank"]] for c in meta["cases"]}
    assert ranks["shipped2b_a0.96_cfg0last3"] == [rank_of(r, 1600, True) for r in RANK_RATIO_PRESETS["0.96"]]
    assert ranks["tau1_a0.90_cfg0last3"] == [rank_of(r, 1600, True) for r in RANK_RATIO_PRESETS["0.90"]]


def _replay(tensors, prefix: str, chunks: int, tokens: int, rows: int, generator: torch.Generator) -> None:
    for c in range(chunks):
        stored = tensors[f"{prefix}.chunk{c}.indices"]
        rank = stored.shape[1]
        drawn = draw_positions(tensors[f"{prefix}.chunk{c}.prob"], rank, generator)
        assert torch.equal(drawn, stored), f"{prefix} chunk {c}: positions"
        sketch = gaussian_sketch(rows, tokens, rank, generator)
        assert sketch.shape == (rows, tokens, rank)
        # the same draws from the same generator state, but torch.randn's vectorised and scalar Box-Muller paths
        # (AVX2 vs ATEN_CPU_CAPABILITY=default) round the last bits differently: equal up to float32 rounding
        torch.testing.assert_close(sketch[:, :4, :4], tensors[f"{prefix}.chunk{c}.q_corner"], atol=1e-6, rtol=1e-5,
                                   msg=f"{prefix} chunk {c}: sketch")
        # the sum of ~N*r normals / sqrt(r): only the summation order can differ (threads), ~1e-5 of rounding
        torch.testing.assert_close(sketch.sum(dim=(1, 2)), tensors[f"{prefix}.chunk{c}.q_sum"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("case", range(3))
def test_infinity_draws_replay_from_the_seed(case):
    """Positions then sketch, chunk by chunk, from one CPU generator seeded like the fixture's global one."""
    tensors, meta = infinity_cases()
    c = meta["cases"][case]
    rows = c["lowrank"][0]["rows"]
    _replay(tensors, f"{c['tag']}.lowrank", 8, 1600, rows, torch.Generator().manual_seed(meta["rng_seed"]))


@pytest.mark.parametrize("tag", ["shipped_cfg0last3_rp0.1", "neg_rp0.1_rows"])
def test_star_draws_replay_from_the_seed(tag):
    tensors, meta = star_cases()
    c = next(c for c in meta["cases"] if c["tag"] == tag)
    assert meta["rp_seed"] == meta["g_seed"] + 12345
    _replay(tensors, f"{tag}.rp", 2, 1008, c["rp"][0]["rows"], torch.Generator().manual_seed(meta["rp_seed"]))


def test_injected_positions_leave_the_generator_where_a_draw_leaves_it():
    prob = importance(torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(0)))
    own, injected = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drawn = draw_positions(prob, 7, own)
    forced = torch.arange(7).repeat(2, 1)
    assert torch.equal(draw_positions(prob, 7, injected, override=forced), forced)
    assert not torch.equal(drawn, forced)
    assert torch.equal(gaussian_sketch(2, 50, 7, own), gaussian_sketch(2, 50, 7, injected))
    with pytest.raises(ValueError, match=r"injected positions must be \(2, 7\)"):
        draw_positions(prob, 7, injected, override=forced[:, :3])


def test_importance_is_the_normalised_squared_norm():
    x = torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(1))
    x[1, 5] *= 10
    prob = importance(x.to(torch.bfloat16))
    assert prob.dtype == torch.float32 and prob.shape == (3, 40)
    norms = x.to(torch.bfloat16).double().pow(2).sum(-1)
    torch.testing.assert_close(prob.double(), norms / norms.sum(1, keepdim=True), atol=1e-6, rtol=1e-5)
    assert int(prob[1].argmax()) == 5
    assert torch.isfinite(importance(torch.zeros(1, 4, 3))).all()  # the floors: no 0/0


def test_projection_mixes_all_tokens():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 30, 8, generator=gen)
    sketch = gaussian_sketch(2, 30, 5, gen)
    y = project_tokens(x, sketch)
    assert y.shape == (2, 5, 8) and y.dtype == x.dtype
    torch.testing.assert_close(y.double(), torch.einsum("rnk,rnc->rkc", sketch.double(), x.double()),
                               atol=1e-5, rtol=0)
    assert project_tokens(x.to(torch.bfloat16), sketch).dtype == torch.bfloat16
    # 1/sqrt(r): the sketch's columns have unit expected squared norm per token
    big = gaussian_sketch(1, 2000, 4, torch.Generator().manual_seed(3))
    assert abs(big.pow(2).sum(-1).mean().item() - 1.0) < 0.05


def _area_reference(x: torch.Tensor, target: tuple[int, ...]) -> torch.Tensor:
    """Adaptive average pooling written out: output cell i averages input cells [floor(i·n/m), ceil((i+1)·n/m))."""
    out = torch.empty(x.shape[0], *target, x.shape[-1], dtype=torch.float64)
    for cell in torch.cartesian_prod(*[torch.arange(m) for m in target]).reshape(-1, len(target)).tolist():
        window = x
        for axis, (i, n, m) in enumerate(zip(cell, x.shape[1:-1], target, strict=True)):
            lo, hi = (i * n) // m, math.ceil((i + 1) * n / m)
            window = window.narrow(axis + 1, lo, hi - lo)
        out[(slice(None), *cell)] = window.double().mean(dim=tuple(range(1, len(target) + 1)))
    return out


@pytest.mark.parametrize("grid,target", [((32, 32), (40, 40)), ((3, 5), (4, 7)), ((4, 9, 16), (4, 12, 21)),
                                         ((2, 3, 3), (3, 4, 5))])
def test_resize_is_area_pooling(grid, target):
    x = torch.randn(2, *grid, 3, generator=torch.Generator().manual_seed(4))
    resized = resize_tokens(x.reshape(2, -1, 3), grid, target)
    torch.testing.assert_close(resized.double(), _area_reference(x, target).reshape(2, -1, 3), atol=1e-6, rtol=0)


def test_restore_writes_outputs_at_positions_and_fills_the_rest():
    gen = torch.Generator().manual_seed(6)
    previous = torch.randn(2, 4, 5, generator=gen)  # 2x2 grid
    outputs = torch.randn(2, 3, 5, generator=gen)
    positions = torch.tensor([[15, 0, 6], [2, 9, 3]])
    full = restore_tokens(outputs, previous, (2, 2), (4, 4), positions)
    upsampled = previous.view(2, 2, 2, 5).repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(2, 16, 5)
    for r in range(2):
        for j, p in enumerate(positions[r].tolist()):
            assert torch.equal(full[r, p], outputs[r, j])
        rest = [p for p in range(16) if p not in positions[r].tolist()]
        assert torch.equal(full[r, rest], upsampled[r, rest])
    with pytest.raises(ValueError, match="do not fill the grid"):
        restore_tokens(outputs, previous, (3, 2), (4, 4), positions)


def test_block_groups_follow_the_released_chunks_and_carry_to_any_depth():
    def sizes(depth, groups):
        return [len(b) for _, b in block_groups(depth, groups)]

    assert sizes(32, 8) == [4] * 8 and sizes(40, 8) == [5] * 8 and sizes(8, 8) == [1] * 8  # 2B, 8B, fixture
    assert sizes(36, 6) == [6] * 6  # InfinityStar-8B's chunks
    assert block_groups(32, 8)[2] == (2, range(8, 12))
    assert sizes(12, 8) == [2, 1, 2, 1, 2, 1, 2, 1]
    assert block_groups(2, 8) == [(0, range(0, 1)), (4, range(1, 2))]  # block i takes the ratio at its depth
    with pytest.raises(ValueError, match="`depth` and `groups` must be >= 1"):
        block_groups(0, 8)


def test_stage_rules():
    # Infinity, 1:1: 1M (13 scales: 40 low-rank, 48 / 64 skipped), 0.60M (12: 48 skipped), 0.25M (10: whole)
    assert (low_rank_scale(13, 10), last_run_scale(13, 10)) == (10, 10)
    assert (low_rank_scale(12, 10), last_run_scale(12, 10)) == (10, 10)
    assert (low_rank_scale(10, 10), last_run_scale(10, 10)) == (None, 9)
    # InfinityStar: the final scale, nothing skipped
    assert (low_rank_scale(22, None), last_run_scale(22, None)) == (21, 21)
    assert low_rank_scale(1, None) is None
    assert list(cfg_off_scales(13, 3)) == [10, 11, 12] and list(cfg_off_scales(13, 0)) == []
    assert list(cfg_off_scales(2, 3)) == [0, 1]
