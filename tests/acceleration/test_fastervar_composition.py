"""FasterVAR composed with the guidance rows, beyond the authors' code (batch 1, CFG only, square 1:1 grids).

Most runs use the depth-8 fixture model on the cheap 0.06M schedule (7 scales, 16x16 last) with the low-rank
step on its last scale (``last_scale=-1``), so that every FasterVAR stage acts within a second or two.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.fastervar import FasterVAR, infinity_cases, infinity_models, infinity_state, star_state
from tests.helpers.numerics import assert_greedy_margin, cfg_gain, trace_atol, vpg_gain
from vpg_pipelines.acceleration.base import AccelerationError, AccelerationTarget
from vpg_pipelines.acceleration.fastervar.lowrank import (
    draw_positions,
    gaussian_sketch,
    importance,
    project_tokens,
    restore_tokens,
)
from vpg_pipelines.acceleration.fastervar.method import STATE
from vpg_pipelines.acceleration.presets import resolve_acceleration
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.igg import InformationGroundingGuidance
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.models.adapter import RowBatch, ScaleStep
from vpg_pipelines.models.infinity.transformer import rope_cos_sin
from vpg_pipelines.models.kv_cache import KVCache
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

CFG = 3.0
GAIN = cfg_gain(CFG)
CASE = infinity_cases()[1]["cases"][0]  # tau 0.5, the shipped 2B sampling settings
SEED = 1234


def _run(fastervar: FasterVAR | None, pn: str = "0.06M", vpg=None, guiders=(), cfg=CFG, texts=None,
         h_div_w: float = 1.0, keep: bool = False):
    adapter, state, target = infinity_state(CASE, h_div_w, pn, texts, with_null=cfg != 1.0)
    method = None if fastervar is None else fastervar.resolve(target)
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=ClassifierFreeGuidance(guidance_scale=cfg), vpg=vpg, guiders=list(guiders),
                       trace=trace, generator=torch.Generator().manual_seed(0), acceleration=method,
                       keep_corrupted_rows=keep)
    return state, trace


def _fastervar(**kwargs) -> FasterVAR:
    return FasterVAR(**{"last_scale": -1, "seed": SEED, **kwargs})


def _close(a: SamplerTrace, b: SamplerTrace, gain: float, steps=None) -> None:
    atol = trace_atol(a, gain)
    for k in steps if steps is not None else a.guided:
        assert_greedy_margin(a.guided[k], atol, classes=2)
        torch.testing.assert_close(b.guided[k], a.guided[k], atol=atol, rtol=0)
        assert torch.equal(b.codes[k], a.codes[k]), k


# -- the draws: per sample, per prefix branch ----------------------------------------------------------------
def _plan_call(samples: int, rows: list[tuple[int, int]], hidden: torch.Tensor, seed: int = 7, select=None):
    """FasterVAR's plan of a one-group, one-block toy model at its final (low-rank) scale for batch rows
    ``rows`` = ``(condition row, prefix branch)``; returns (reduced stream, positions, restored stream)."""
    steps = (ScaleStep(0, 0, 1, (1, 1)), ScaleStep(1, 1, 4, (2, 2)), ScaleStep(2, 2, 16, (4, 4), store_kv=False))
    target = AccelerationTarget("infinity", 1, steps, 3, details={"block_chunks": 1})
    method = FasterVAR(rank_ratio=0.5, last_scale=-1, cfg0_last_scales=0, seed=seed,
                       selection_override=select).resolve(target)
    method = method.start(samples, None)
    cache = KVCache(1, len(rows), 8)
    cache.keep_state((STATE, 0), torch.arange(len(rows) * 4 * 3.0).view(len(rows), 2, 2, 3))
    batch = RowBatch(torch.tensor([c for c, _ in rows]), None, torch.zeros(len(rows), 16, dtype=torch.long),
                     [steps[2]], prefix_index=torch.tensor([p for _, p in rows]))
    plan = method.token_plan(steps[2], cache, batch)
    reduced, positions = plan.enter(0, hidden, torch.arange(16).expand(len(rows), -1))
    chosen = plan.positions[0].clone()
    return reduced, positions, chosen, plan.leave(0, reduced)


def test_injected_positions_force_the_first_rows_only():
    """Positions injected for the first rows force those; the others draw as without the override (every row
    still draws, so the streams advance alike); an override that splits rows drawing together is refused."""
    rows = [(0, 0), (1, 0), (0, 1), (1, 1)]  # one sample: clean conditional, clean null, corrupted ones
    hidden = torch.randn(4, 16, 3, generator=torch.Generator().manual_seed(0))
    reduced, _, chosen, _ = _plan_call(1, rows, hidden)
    forced = torch.arange(8).repeat(2, 1)  # rank 0.5 of 16 tokens
    reduced_forced, _, chosen_forced, _ = _plan_call(1, rows, hidden, select=lambda *_: forced)
    assert torch.equal(chosen_forced[:2], forced) and not torch.equal(chosen[:2], forced)
    assert torch.equal(chosen_forced[2:], chosen[2:]) and torch.equal(reduced_forced, reduced)
    for count in (1, 3):
        with pytest.raises(ValueError, match=f"injected positions for the first {count} rows split rows"):
            _plan_call(1, rows, hidden, select=lambda *_, n=count: forced.new_zeros(n, 8))


def test_rows_draw_per_sample_and_branch():
    """A sample's rows draw alike whatever the other samples and VPG's corrupted rows; the corrupted rows draw
    from a stream of their own; the restoration writes each row's outputs at its own positions."""
    gen = torch.Generator().manual_seed(0)
    c0, c1, u0, u1 = (torch.randn(16, 3, generator=gen) for _ in range(4))
    alone0 = _plan_call(1, [(0, 0), (1, 0)], torch.stack([c0, u0]), seed=7)
    alone1 = _plan_call(1, [(0, 0), (1, 0)], torch.stack([c1, u1]), seed=8)
    both = _plan_call(2, [(0, 0), (1, 0), (2, 0), (3, 0)], torch.stack([c0, c1, u0, u1]), seed=7)
    with_vpg = _plan_call(2, [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (3, 1)],
                          torch.stack([c0, c1, u0, u1, c0, c1, u0, u1]), seed=7)
    for part in range(3):
        assert torch.equal(both[part][[0, 2]], alone0[part]) and torch.equal(both[part][[1, 3]], alone1[part])
        assert torch.equal(with_vpg[part][:4], both[part])
    assert not torch.equal(with_vpg[2][4:], both[2])  # same features, another stream
    # by hand: sample 0's two rows, one multinomial then one sketch from the generator seeded 7
    gen = torch.Generator().manual_seed(7)
    x = torch.stack([c0, u0])
    positions = draw_positions(importance(x), 8, gen)
    mixed = project_tokens(x, gaussian_sketch(2, 16, 8, gen))
    assert torch.equal(alone0[2], positions) and torch.equal(alone0[0], mixed)
    assert torch.equal(alone0[1], torch.arange(8).expand(2, -1))  # the scale's first r positions
    fill = torch.arange(2 * 4 * 3.0).view(2, 4, 3)
    assert torch.equal(alone0[3], restore_tokens(mixed, fill, (2, 2), (4, 4), positions))


def test_batch_of_two_equals_each_sample_alone():
    """Sample b draws from seed + b: two prompts in one batch (rows c0, c1, u0, u1) give each prompt's run
    alone, up to the rounding of the batch layout. Positions are injected from the single runs so that a
    rounding-level race cannot flip one (their generator streams do not depend on the data)."""
    first = infinity_cases()[0]["text.features"]
    second = torch.randn(5, first.shape[1], generator=torch.Generator().manual_seed(7))  # far from ties
    singles, logs = [], []
    for b, text in enumerate([first, second]):
        log: dict = {}
        singles.append(_run(_fastervar(seed=SEED + b, draw_log=log), texts=[text])[1])
        logs.append(log)
    assert logs[0].keys() == {(6, g) for g in range(8)}

    def select(step, group, part, rows):  # rows of the batch at the low-rank (CFG-off) step: u0, u1
        return torch.cat([logs[0][(step.index, group)].positions, logs[1][(step.index, group)].positions])

    _, batch = _run(_fastervar(selection_override=select), texts=[first, second])
    for b in range(2):
        one = SamplerTrace(guided={k: g[b : b + 1] for k, g in batch.guided.items()},
                           codes={k: c[b : b + 1] for k, c in batch.codes.items()})
        _close(singles[b], one, GAIN)
    assert batch.rows[4] == 2 and batch.rows[3] == 4  # CFG off at the last 3 scales


def test_another_aspect_where_the_authors_code_breaks():
    """h/w 1.75 at 1M: their width test hits the 70x40 scale and its square reshape fails. Here the 56x32
    scale (index 10) runs low-rank, filled from the 42x24 one, and equals the blocks and the pure functions
    composed by hand on the same prefix."""
    draws: dict = {}
    state, trace = _run(FasterVAR(seed=SEED, draw_log=draws), pn="1M", h_div_w=1.75)
    assert sorted(trace.guided) == list(range(11)) and state.bits[10].shape[2:4] == (56, 32)
    transformer, _ = infinity_models()
    adapter, fresh, _ = infinity_state(CASE, 1.75, "1M")
    steps = adapter.steps(fresh)
    cache = KVCache(8, 2, 20000)
    outputs = {}
    with torch.no_grad():
        for step in steps[:10]:  # the same codes, CFG rows (c, u), each block's output kept at scale 9
            inp = adapter.step_input(fresh, step)
            content = None if inp.content is None else inp.content.repeat(2, 1, 1)
            batch = RowBatch(torch.tensor([0, 1]), content, inp.position_ids.expand(2, -1), [step])
            adapter.forward(fresh, batch, cache, lambda i, h: outputs.__setitem__(i, h) or h)
            adapter.update(fresh, _bits(state, step), step)
        cache.select_rows([1])  # CFG off: the null row
        step = steps[10]
        inp = adapter.step_input(fresh, step)
        cond = fresh.condition
        null = torch.tensor([1])
        x = transformer.word_embed(inp.content).float() + transformer.lvl_embed(torch.tensor([10])).float()
        head_dim = transformer.config.embed_dim // transformer.config.num_heads
        for i, block in enumerate(transformer.iter_blocks()):
            positions = draws[(10, i)].positions
            rank = positions.shape[1]
            gen = torch.Generator()  # only the sketch is redrawn: the stream after the multinomial, as in the run
            gen.manual_seed(SEED)
            _replay_stream(gen, draws, i, x.shape[1])
            sketch = gaussian_sketch(1, x.shape[1], rank, gen)
            y = project_tokens(x, sketch)
            rope = rope_cos_sin(inp.position_ids[None, :rank], head_dim)
            y = block(y, cond.modulation[null], rope, cond, null, i, cache, None, False, cache.memo_for(cond))
            x = restore_tokens(y, outputs[i][1:].reshape(1, -1, x.shape[-1]), (42, 24), (56, 32), positions)
        logits = transformer.head(transformer.head_nm(x, cond.pooled[null])).float() / CASE["tau_list"][10]
    torch.testing.assert_close(trace.guided[10], logits.view(1, -1, 16, 2), atol=1e-5, rtol=0)


def _bits(state, step):
    h, w = step.grid
    return state.bits[step.scale].reshape(1, h * w, -1)


def _replay_stream(gen: torch.Generator, draws: dict, group: int, tokens: int) -> None:
    """Advance ``gen`` past the draws of groups ``< group`` and the multinomial of ``group`` (one row)."""
    for g in range(group + 1):
        rank = draws[(10, g)].positions.shape[1]
        torch.multinomial(torch.full((1, tokens), 1.0 / tokens), rank, generator=gen)
        if g < group:
            torch.randn(1, tokens, rank, generator=gen)


# -- guidance invariants ------------------------------------------------------------------------------------
def test_unit_vpg_scale_with_fastervar_is_fastervar_unguided():
    """w = 1 with the corrupted branch computed at every scale (its rows drop CFG's conditional rows and run
    low-rank too, from their own stream): the clean rows draw as without VPG, the result is FasterVAR's."""
    plain_log, vpg_log = {}, {}
    _, plain = _run(_fastervar(draw_log=plain_log))
    vpg = PrefixGuidance(guidance_scale=1.0, corruption=0.5, always_compute=True)
    _, guided = _run(_fastervar(draw_log=vpg_log), vpg=vpg)
    assert sorted(guided.corrupted) == list(range(1, 7)) and guided.rows[6] == 2 and guided.rows[3] == 4
    _close(plain, guided, GAIN * vpg_gain(1.0))
    for key, draw in plain_log.items():  # the clean row's race, unless within rounding of a tie
        assert vpg_log[key].positions.shape == (2, draw.positions.shape[1])
        torch.testing.assert_close(vpg_log[key].prob[:1], draw.prob, atol=1e-6, rtol=1e-4)


def test_semantic_vpg_rows_leave_and_free_their_cache():
    """Semantic VPG (scales up to half the final side) ends before FasterVAR's stages: after its last guided
    step the corrupted rows are gone and the cache holds exactly what FasterVAR alone holds."""
    _, plain = _run(_fastervar())
    vpg = PrefixGuidance(guidance_scale=1.5, corruption=0.5, scales="semantic")
    _, guided = _run(_fastervar(), vpg=vpg)
    last = max(guided.corrupted)
    assert last < 5
    for k in range(last + 1, 7):
        assert guided.rows[k] == plain.rows[k]
        assert guided.cache_bytes[k] == plain.cache_bytes[k]
    assert guided.rows[last] == 2 * plain.rows[last]


def test_start_and_stop_refer_to_the_schedule():
    """FasterVAR skips the 48 / 64 scales; VPG's start / stop still cut the schedule's 13 steps, as without it."""
    vpg = PrefixGuidance(guidance_scale=1.5, corruption=0.5, start=0.2, stop=0.6)
    _, trace = _run(FasterVAR(seed=SEED), pn="1M", vpg=vpg)
    assert sorted(trace.corrupted) == [s for s in range(13) if int(0.2 * 13) <= s < int(0.6 * 13)] == [2, 3, 4, 5, 6]
    assert sorted(trace.guided) == list(range(11))


def test_cfg_off_is_the_authors_cfg_zero():
    """FasterVAR's CFG off = CFG with strength 0 on those scales (0·c + 1·u = u), without the conditional rows."""
    _, off = _run(_fastervar(low_rank=False))
    _, zero = _run(None, cfg=[CFG] * 4 + [0.0] * 3)
    assert [off.rows[k] for k in range(7)] == [2] * 4 + [1] * 3 and all(zero.rows[k] == 2 for k in range(7))
    for k in range(4):  # the very same computation before the switch
        assert torch.equal(off.guided[k], zero.guided[k])
    _close(zero, off, 1.0, steps=range(4, 7))


def test_condition_terms_stop_when_cfg_is_off():
    """IGG switched on from step 4 changes nothing once CFG is off there (the condition stage does not run);
    without FasterVAR the same IGG changes step 4."""
    igg = InformationGroundingGuidance(guidance_scale=2.0, start=4 / 7)
    _, off = _run(_fastervar(low_rank=False))
    _, off_igg = _run(_fastervar(low_rank=False), guiders=[igg])
    for k in range(7):
        assert torch.equal(off.guided[k], off_igg.guided[k])
    _, plain = _run(None)
    _, plain_igg = _run(None, guiders=[igg])
    assert torch.equal(plain.guided[3], plain_igg.guided[3])
    assert not torch.allclose(plain.guided[4], plain_igg.guided[4], atol=1e-3)


def test_cfg_off_keeps_vpg_on_the_null_rows():
    """All-scale VPG past the switch: the null rows of both prefix branches remain, VPG combines them."""
    vpg = PrefixGuidance(guidance_scale=2.0, corruption=0.5)
    _, trace = _run(_fastervar(), vpg=vpg)
    for k in (4, 5, 6):
        assert trace.rows[k] == 2
        torch.testing.assert_close(trace.guided[k], vpg.combine(trace.clean[k], trace.corrupted[k]), atol=0, rtol=0)
    assert trace.rows[3] == 4


def test_without_condition_rows_cfg_off_has_nothing_to_drop():
    """No condition term (guidance_scale 1): the batch holds the conditional rows only and keeps sampling them
    (the authors' code would build null rows for the whole run to sample them at the end)."""
    _, plain = _run(None, cfg=1.0)
    _, off = _run(_fastervar(low_rank=False), cfg=1.0)
    assert all(off.rows[k] == 1 for k in range(7))
    for k in range(7):
        assert torch.equal(off.guided[k], plain.guided[k])


# -- resolving and refusing ------------------------------------------------------------------------------------
def test_released_settings_by_name():
    _, _, target = infinity_state(CASE, 1.0, "1M")
    infinity = resolve_acceleration("fastervar").resolve(target)
    assert (infinity.rank_ratio, infinity.cfg0_last_scales, infinity.last_scale) == ("0.96", 3, 10)
    assert (infinity.low_rank_at, infinity.fill_scale) == (10, 9)
    assert [s.scale for s in infinity.run_steps(target.steps)] == list(range(11))
    assert infinity.run_steps(target.steps)[-1].store_kv is False  # nothing after it reads its keys
    assert [infinity.rank(r, 1600) for r in infinity.group_ratios()] == [27, 219, 337, 401, 410, 317, 252, 306]
    _, _, star = star_state(negative=False)
    star_method = resolve_acceleration("fastervar").resolve(star)
    assert (star_method.rank_ratio, star_method.cfg0_last_scales, star_method.last_scale) == (0.1, 3, 21)
    assert star_method.group_ratios() == (0.1, 0.1) and not star_method.plus_one
    assert len(star_method.run_steps(star.steps)) == 61
    cfg0 = resolve_acceleration("fastervar-cfg0").resolve(target)
    assert cfg0.low_rank_at is None and len(cfg0.run_steps(target.steps)) == 11


@pytest.mark.parametrize("kwargs,match", [
    ({"rank_ratio": "0.5"}, "`rank_ratio` must be one of the presets"),
    ({"rank_ratio": 0.0}, "`rank_ratio` must be a preset name, a ratio in"),
    ({"rank_ratio": [0.1, 2.0]}, "`rank_ratio` must be a preset name, a ratio in"),
    ({"cfg0_last_scales": -1}, "`cfg0_last_scales` must be an integer >= 0"),
    ({"groups": 0}, "`groups` must be an integer >= 1"),
    ({"last_scale": 2.5}, "`last_scale` must be a scale index"),
    ({"seed": True}, "`seed` must be an integer"),
])
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FasterVAR(**kwargs)


def test_refuses_what_it_does_not_apply_to():
    steps = (ScaleStep(0, 0, 1, (1, 1)), ScaleStep(1, 1, 4, (2, 2)))
    with pytest.raises(AccelerationError, match="`acceleration` 'fastervar' applies to infinity and infinity_star"):
        FasterVAR().resolve(AccelerationTarget("var", 4, steps, 2))
    with pytest.raises(AccelerationError, match="has 3 ratios in `rank_ratio` but `groups` is 2"):
        FasterVAR(rank_ratio=[0.1, 0.2, 0.3], groups=2).resolve(AccelerationTarget("infinity", 4, steps, 2))
    with pytest.raises(AccelerationError, match="`last_scale` -5 is before the first"):
        FasterVAR(last_scale=-5).resolve(AccelerationTarget("infinity", 4, steps, 2))
