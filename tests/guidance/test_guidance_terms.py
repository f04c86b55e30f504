"""The guidance terms and their chain (issue 14): formulas by hand, the diffusers-guider interface,
config round trips, the order of the chain, and the sampler-side contract on a toy model."""

from __future__ import annotations

import math

import pytest
import torch

from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.base import GuidanceStep, GuidanceTerm
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.chain import GuidanceChain
from vpg_pipelines.guidance.igg import InformationGroundingGuidance, grounding
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.guidance.ssg import ScaledSpatialGuidance, dct_matrix, discrete_spatial_enhancement
from vpg_pipelines.guidance.temperature import EntropyAwareTemperature, site_entropy
from vpg_pipelines.models.adapter import ScaleStep, StepInput
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

ALL_TERMS = [
    ClassifierFreeGuidance(scale=[1.0, 2.0, 3.5], schedule="linear", layer=-2, start=0.1, stop=0.9),
    AdaptiveProjectedGuidance(12.0, norm_threshold=0.1, eta=0.5, stop=0.5),
    PrefixGuidance(scale=2.5, corruption=0.25, mode="token", refresh="resample", scales=[1, 3], enabled=False),
    InformationGroundingGuidance(scale=1.5, schedule="constant", max_scores=1000, start=0.25),
    ScaledSpatialGuidance(scale=[0.0, 0.2, 0.4], interpolation="nearest"),
    EntropyAwareTemperature(base=0.9, t0=2.0, alpha=2.5, theta=0.5),
]


def ctx(scale=1, index=None, grid=(2, 2), num_steps=4, num_scales=4, categories=None, memories=None, **extra):
    step = ScaleStep(index=scale if index is None else index, scale=scale, num_sites=math.prod(grid), grid=grid,
                     extra=extra)
    return GuidanceStep(step, num_steps, num_scales, categories, {} if memories is None else memories)


# -- the diffusers guider interface ------------------------------------------------------------------
@pytest.mark.parametrize("term", ALL_TERMS, ids=lambda t: type(t).__name__)
def test_config_round_trips_through_save_pretrained(term, tmp_path):
    term.save_pretrained(tmp_path)
    assert (tmp_path / "guider_config.json").is_file()
    for loader in (type(term), GuidanceTerm):  # the base class reads the class name from the file
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded) is type(term)
        public = {k: v for k, v in term.config.items() if not k.startswith("_")}
        assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
        assert (loaded.start, loaded.stop, loaded.enabled) == (term.start, term.stop, term.enabled)
    changed = term.new(start=0.5, stop=1.0)
    assert type(changed) is type(term) and changed.start == 0.5 and term.start != 0.5


def test_from_pretrained_refuses_another_class(tmp_path):
    ClassifierFreeGuidance(3.0).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a ScaledSpatialGuidance"):
        ScaledSpatialGuidance.from_pretrained(tmp_path)


def test_start_stop_follow_diffusers_rounding():
    """Step i of N is in range when int(start·N) <= i < int(stop·N), exactly as diffusers' CFG guider decides."""
    from diffusers.guiders import ClassifierFreeGuidance as DiffusersCFG

    for start, stop in ((0.0, 1.0), (0.2, 0.7), (0.34, 0.35), (0.5, 0.5), (0.0, 0.1)):
        ours = ClassifierFreeGuidance(3.0, start=start, stop=stop)
        theirs = DiffusersCFG(guidance_scale=3.0, start=start, stop=stop)
        for n in (1, 4, 10, 13):
            for i in range(n):
                theirs.set_state(i, n, None)
                assert ours.in_range(i, n) == theirs._is_cfg_enabled(), (start, stop, n, i)


@pytest.mark.parametrize("kwargs,match", [({"start": 1.0}, "start"), ({"start": 0.5, "stop": 0.2}, "stop"),
                                          ({"stop": 1.5}, "stop"), ({"enabled": 1}, "enabled")])
def test_start_stop_enabled_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaledSpatialGuidance(0.5, **kwargs)


def test_enable_disable_and_num_conditions():
    cfg, ssg = ClassifierFreeGuidance(3.0), ScaledSpatialGuidance(0.5)
    assert cfg.num_conditions == 2 and PrefixGuidance().num_conditions == 2 and ssg.num_conditions == 1
    cfg.disable()
    assert not cfg.is_on(ctx()) and cfg.strength(ctx()) == 1.0 and not cfg.is_active(4)
    cfg.enable()
    assert cfg.strength(ctx()) == 3.0


# -- CFG / APG / VPG as terms ---------------------------------------------------------------------------
def test_cfg_apg_vpg_reductions_are_their_formulas():
    c, u = torch.tensor([[[[2.0, 1.0]]]]), torch.tensor([[[[1.0, 3.0]]]])
    # s = 3 at every scale: 3c - 2u
    assert torch.equal(ClassifierFreeGuidance(3.0).reduce_conditions(c, u, None, ctx()), 3 * c - 2 * u)
    # VAR's ramp at scale 2 of 5: s = 1 + 2·2/4 = 2
    ramp = ClassifierFreeGuidance(2.0, schedule="linear")
    assert torch.equal(ramp.reduce_conditions(c, u, None, ctx(2, num_scales=5)), 2 * c - u)
    apg = AdaptiveProjectedGuidance(3.0, norm_threshold=0.0)
    assert torch.equal(apg.reduce_conditions(c, u, None, ctx()), apg.combine(c, u, 3.0))
    vpg = PrefixGuidance(scale=2.0)
    assert torch.equal(vpg.reduce_prefix(c, u, ctx()), u + 2 * (c - u))
    assert vpg.reduce_prefix(c, None, ctx()) is c  # an unguided step


def test_cfg_outside_its_range_gives_the_conditional_logits():
    c, u = torch.randn(1, 2, 4, 5), torch.randn(1, 2, 4, 5)
    cfg = ClassifierFreeGuidance(4.0, start=0.5)
    assert torch.equal(cfg.reduce_conditions(c, u, None, ctx(1, num_steps=4)), c)  # int(0.5·4) = 2 > 1
    assert torch.equal(cfg.reduce_conditions(c, u, None, ctx(2, num_steps=4)), cfg.combine(c, u, 4.0))
    with pytest.raises(ValueError, match="switched on during sampling"):
        ClassifierFreeGuidance(4.0).reduce_conditions(c, None, None, ctx())


def test_vpg_steps_follow_scales_and_start_stop():
    steps = [ScaleStep(i, i, (i + 1) ** 2, (i + 1, i + 1)) for i in range(6)]
    assert PrefixGuidance(scale=2.0).guided_steps(steps, 6) == {1, 2, 3, 4, 5}  # step 0 has one site
    assert PrefixGuidance(scale=2.0, stop=0.5).guided_steps(steps, 6) == {1, 2}
    assert PrefixGuidance(scale=2.0, start=0.5, scales=[1, 4]).guided_steps(steps, 6) == {4}
    assert PrefixGuidance(scale=1.0).guided_steps(steps, 6) == set()
    off = PrefixGuidance(scale=2.0)
    off.disable()
    assert off.is_noop and off.guided_steps(steps, 6) == set()


# -- SSG -----------------------------------------------------------------------------------------------
def test_dct_is_orthonormal():
    for n in (1, 2, 5, 8):
        mat = dct_matrix(n)
        torch.testing.assert_close(mat @ mat.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)


def test_dse_by_hand():
    """[1, 3] -> 4 sites. Linear interpolation (align_corners=False): [1, 1.5, 2.5, 3]; its orthonormal DCT
    has X0 = 4, X1 = -1.57716; the old grid's DCT is (2.82843, -1.41421), times sqrt(4/2): (4, -2). So the
    prior is the interpolation plus (-2 + 1.57716)·C[1] = -0.42284·(0.65328, 0.27060, -0.27060, -0.65328)."""
    prior = discrete_spatial_enhancement(torch.tensor([[[1.0, 3.0]]]), (4,))
    torch.testing.assert_close(prior, torch.tensor([[[0.72377, 1.38558, 2.61442, 3.27623]]]), atol=1e-5, rtol=0)


def test_dse_keeps_constants_and_the_old_grid_spectrum():
    const = torch.full((2, 3, 2, 3), 5.0)
    torch.testing.assert_close(discrete_spatial_enhancement(const, (4, 6)), torch.full((2, 3, 4, 6), 5.0))
    old = torch.randn(1, 2, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(discrete_spatial_enhancement(old, (3, 2)), old)  # same grid: unchanged
    new = discrete_spatial_enhancement(old, (5, 4))
    spectrum = torch.einsum("ai,bj,ncij->ncab", dct_matrix(5), dct_matrix(4), new)
    expected = torch.einsum("ai,bj,ncij->ncab", dct_matrix(3), dct_matrix(2), old) * math.sqrt(20 / 6)
    torch.testing.assert_close(spectrum[..., :3, :2], expected)
    video = torch.randn(1, 2, 1, 2, 2, dtype=torch.float64)  # (t, h, w) grids: the DCT runs over all three
    assert discrete_spatial_enhancement(video, (1, 3, 4)).shape == (1, 2, 1, 3, 4)
    with pytest.raises(ValueError, match="coarser to a finer"):
        discrete_spatial_enhancement(old, (2, 4))


def test_ssg_formula_memory_and_where_it_is_not_defined():
    ssg = ScaledSpatialGuidance(scale=0.5)
    memories: dict = {}
    first = torch.tensor([[[1.0, 2.0]]])  # scale 0: one site, nothing to compare with
    assert ssg.reduce(first, ctx(0, grid=(1, 1), memories=memories)) is first
    now = torch.tensor([[[1.0, 0.0], [3.0, 1.0], [0.0, 0.0], [2.0, 2.0]]])
    out = ssg.reduce(now, ctx(1, grid=(2, 2), memories=memories))
    # the prior of a 1x1 field on a 2x2 grid is the constant field: l + 0.5·(l − (1, 2))
    torch.testing.assert_close(out, now + 0.5 * (now - torch.tensor([1.0, 2.0])))
    # an InfinityStar repetition of scale 1 uses the same prior (scale 0), not repetition 0
    again = torch.zeros(1, 4, 2)
    torch.testing.assert_close(ssg.reduce(again, ctx(1, index=2, grid=(2, 2), memories=memories)),
                               -0.5 * torch.tensor([1.0, 2.0]).expand(1, 4, 2))
    # another clip, or a finer previous grid: unchanged
    other = ScaledSpatialGuidance(0.5)
    mem2: dict = {}
    other.reduce(torch.ones(1, 4, 2), ctx(1, grid=(2, 2), memories=mem2, clip=0))
    x = torch.randn(1, 4, 2)
    assert other.reduce(x, ctx(2, grid=(2, 2), memories=mem2, clip=1)) is x
    mem3: dict = {}
    other.reduce(torch.ones(1, 9, 2), ctx(1, grid=(3, 3), memories=mem3))
    assert other.reduce(x, ctx(2, grid=(2, 2), memories=mem3)) is x


def test_ssg_beta_zero_or_disabled_is_the_identity():
    memories: dict = {}
    ssg = ScaledSpatialGuidance(0.0)
    ssg.reduce(torch.randn(1, 1, 3), ctx(0, grid=(1, 1), memories=memories))
    x = torch.randn(1, 4, 3)
    assert ssg.reduce(x, ctx(1, memories=memories)) is x
    off = ScaledSpatialGuidance(1.0, enabled=False)
    off.reduce(torch.randn(1, 1, 3), ctx(0, grid=(1, 1), memories={}))
    assert off.reduce(x, ctx(1)) is x


def test_ssg_on_bitwise_logits_acts_per_channel():
    """Infinity's (n, d, 2) logits: the same as SSG on the flat (n, 2d) channels."""
    prev, now = torch.randn(2, 4, 3, 2), torch.randn(2, 9, 3, 2)
    a, b = ScaledSpatialGuidance(0.3), ScaledSpatialGuidance(0.3)
    ma, mb = {}, {}
    a.reduce(prev, ctx(1, grid=(2, 2), memories=ma))
    b.reduce(prev.flatten(2), ctx(1, grid=(2, 2), memories=mb))
    out_a = a.reduce(now, ctx(2, grid=(3, 3), memories=ma))
    out_b = b.reduce(now.flatten(2), ctx(2, grid=(3, 3), memories=mb))
    torch.testing.assert_close(out_a.flatten(2), out_b)
    assert not torch.equal(out_a, now)


# -- IGG -----------------------------------------------------------------------------------------------
def test_grounding_by_hand():
    """d = I (2 sites, V = 2): scores I/sqrt(2), softmax rows (e^0.7071, 1)/(e^0.7071 + 1) = (0.66976, 0.33024)."""
    d = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    expected = torch.tensor([[[[0.66976, 0.33024], [0.33024, 0.66976]]]])
    torch.testing.assert_close(grounding(d), expected, atol=1e-5, rtol=0)


def test_grounding_chunks_give_the_same_result():
    """Chunking only splits the query rows; each row's arithmetic is unchanged up to the matmul's blocking."""
    d = torch.randn(2, 3, 37, 4, 2)
    whole = grounding(d, max_scores=1 << 30)
    for budget in (1, 37 * 6, 1000):
        torch.testing.assert_close(grounding(d, max_scores=budget), whole, atol=1e-6, rtol=1e-6)


def test_igg_formula_ramp_and_replacement_of_cfg():
    c, u = torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 6)
    g = grounding(c - u)
    igg = InformationGroundingGuidance(scale=2.0)
    step = ctx(2, num_scales=5)  # r = 2/4, t = 1 + 0.5·2 = 2
    assert igg.weight(step) == 2.0
    torch.testing.assert_close(igg.reduce_conditions(c, u, None, step), u + 2.0 * g)  # alone: replaces CFG
    cfg = ClassifierFreeGuidance(3.0, schedule="linear")  # t_cfg = 1 + 0.5·3 = 2.5
    chain = GuidanceChain([cfg, igg])
    split = torch.stack([c, u], dim=1)
    torch.testing.assert_close(chain.reduce_conditions(split, step), cfg.combine(c, u, 2.5) + 2.0 * g)
    reversed_order = GuidanceChain([igg, cfg]).reduce_conditions(split, step)  # u + tG + (s·c + (1-s)·u − u)
    torch.testing.assert_close(reversed_order, cfg.combine(c, u, 2.5) + 2.0 * g, atol=1e-5, rtol=1e-5)
    assert InformationGroundingGuidance(scale=0.0).weight(step) == 1.0  # w = 0 is not off
    assert InformationGroundingGuidance(scale=2.0, schedule="constant").weight(ctx(0)) == 3.0
    off = InformationGroundingGuidance(scale=2.0, enabled=False)
    assert off.reduce_conditions(c, u, None, step) is None  # contributes nothing, wherever it stands
    for terms in ([off, cfg], [cfg, off]):
        assert torch.equal(GuidanceChain(terms).reduce_conditions(split, step), cfg.combine(c, u, 2.5))
    assert torch.equal(GuidanceChain([off]).reduce_conditions(split, step), c)


def test_igg_is_refused_with_cfg_at_a_hidden_layer():
    with pytest.raises(ValueError, match="cfg_insertion_layer=0"):
        GuidanceChain([ClassifierFreeGuidance(3.0, layer=-1), InformationGroundingGuidance(1.0)])


# -- entropy-aware temperature ----------------------------------------------------------------------------
def test_entropy_temperature_by_hand():
    """Uniform over 4: H = ln 4, T = 2.5·exp(−ln4/3) + 0.6 = 2.5·0.62996 + 0.6 = 2.17490."""
    term = EntropyAwareTemperature()
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0]]])
    t = term.temperature(logits)
    assert math.isclose(t[0, 0].item(), 2.174901, rel_tol=1e-5)
    p = torch.tensor([2.0, 1.0, 0.0, -1.0]).softmax(0)
    h = -(p * p.log()).sum().item()
    assert math.isclose(t[0, 1].item(), 2.5 * math.exp(-h / 3) + 0.6, rel_tol=1e-5)
    out = term.reduce(logits, ctx(1, grid=(1, 2)))
    torch.testing.assert_close(out[0, 1], logits[0, 1] / t[0, 1])
    # two independent uniform bits carry ln 4 nats: the same T as the uniform 4-way site
    bits = torch.zeros(1, 1, 4)  # InfinityStar layout: (bit, label) pairs flat
    assert math.isclose(term.temperature(bits, categories=2).item(), 2.174901, rel_tol=1e-5)
    assert math.isclose(term.temperature(torch.zeros(1, 1, 2, 2)).item(), 2.174901, rel_tol=1e-5)  # Infinity
    constant = EntropyAwareTemperature(base=0.8, t0=0.0, theta=1.0)
    torch.testing.assert_close(constant.reduce(logits, ctx(1, grid=(1, 2))), logits / 0.8)


def test_site_entropy_counts_filtered_entries_as_zero():
    logits = torch.tensor([[[0.0, float("-inf"), 0.0]]])
    assert math.isclose(site_entropy(logits).item(), math.log(2), rel_tol=1e-6)


def test_entropy_temperature_off_is_the_identity_and_arguments_are_checked():
    x = torch.randn(1, 4, 8)
    assert EntropyAwareTemperature(enabled=False).reduce(x, ctx()) is x
    for kwargs, name in (({"alpha": 0.0}, "alpha"), ({"base": -1.0}, "base"), ({"t0": float("nan")}, "t0"),
                         ({"t0": 0.0, "theta": 0.0}, "theta")):
        with pytest.raises(ValueError, match=name):
            EntropyAwareTemperature(**kwargs)


# -- the chain ------------------------------------------------------------------------------------------
def test_chain_orders_stages_and_keeps_list_order_inside_one():
    cfg, vpg, ssg, temp = ClassifierFreeGuidance(2.0), PrefixGuidance(2.0), ScaledSpatialGuidance(0.5), \
        EntropyAwareTemperature()
    chain = GuidanceChain([temp, vpg, ssg, None, cfg])
    assert chain.terms == [cfg, vpg, temp, ssg]
    assert chain.condition_terms == [cfg] and chain.prefix_term is vpg and chain.logit_terms == [temp, ssg]
    with pytest.raises(ValueError, match="two ClassifierFreeGuidance"):
        GuidanceChain([cfg, ClassifierFreeGuidance(3.0)])
    with pytest.raises(TypeError, match="guiders\\[1\\]"):
        GuidanceChain([cfg, "ssg"])


class _Toy:
    """Two steps (1x1, then 2x2 sites) whose logits depend only on the row's branch: rows are
    (clean cond, clean null, corrupted cond, corrupted null), V = 3."""

    num_layers = 1
    values = torch.tensor([[2.0, 0.0, 1.0], [1.0, 0.5, 0.0], [1.5, 0.0, 1.0], [0.5, 0.5, 0.5]])

    def steps(self, state):
        return [ScaleStep(0, 0, 1, (1, 1)), ScaleStep(1, 1, 4, (2, 2))]

    def num_condition_rows(self, state):
        return state["rows"]

    def step_input(self, state, step):
        ids = torch.arange(step.num_sites)
        return StepInput(None if step.index == 0 else torch.zeros(1, step.num_sites, 3), ids)

    def forward(self, state, batch, kv_cache, hidden_hook=None, last_tokens=None):
        n = batch.position_ids.shape[1]
        kv_cache.append(0, torch.zeros(batch.rows, 1, n, 2), torch.zeros(batch.rows, 1, n, 2))
        rows = self.values[: batch.rows] * (batch.steps[-1].index + 1)  # step 1 doubles every logit
        return rows[:, None].expand(batch.rows, n, 3).clone()

    def random_content(self, count, generator, device):
        return torch.zeros(count, 3)

    def sample(self, state, logits, step, generator):
        state["seen"].append(logits)
        return logits.argmax(-1)

    def update(self, state, codes, step):
        pass


def _toy(terms, rows=2):
    state = {"rows": rows, "seen": []}
    run_next_scale(_Toy(), state, guiders=terms, generator=torch.Generator().manual_seed(0))
    return state["seen"]


def test_whole_chain_by_hand_on_the_toy_model():
    """CFG s=3, VPG w=2, SSG beta=0.5, then a constant temperature 0.5 (the documented order).

    Step 0 (1 site, no VPG): g = 3·(2,0,1) − 2·(1,.5,0) = (4,−1,3); SSG has no prior; /0.5 -> (8,−2,6).
    Step 1 (logits doubled): g = (8,−2,6), g~ = 2·(3·(1.5,0,1) − 2·(.5,.5,.5)) = (7,−2,4); VPG:
    g~ + 2(g − g~) = (9,−2,8); SSG's prior is its step-0 input (4,−1,3) on every site:
    (9,−2,8) + 0.5·(5,−1,5) = (11.5,−2.5,10.5); /0.5 -> (23,−5,21)."""
    seen = _toy([ClassifierFreeGuidance(3.0), PrefixGuidance(scale=2.0, corruption=0.5), ScaledSpatialGuidance(0.5),
                 EntropyAwareTemperature(base=0.5, t0=0.0, theta=1.0)])
    torch.testing.assert_close(seen[0], torch.tensor([[[8.0, -2.0, 6.0]]]))
    torch.testing.assert_close(seen[1], torch.tensor([23.0, -5.0, 21.0]).expand(1, 4, 3))
    # stages first (CFG, VPG), then the list order: here the temperature before SSG, whose prior is then
    # the scaled (8,−2,6): (18,−4,16) + 0.5·(10,−2,10) = (23,−5,21) — these linear terms commute ...
    swapped = _toy([EntropyAwareTemperature(base=0.5, t0=0.0, theta=1.0), ScaledSpatialGuidance(0.5),
                    PrefixGuidance(scale=2.0, corruption=0.5), ClassifierFreeGuidance(3.0)])
    torch.testing.assert_close(swapped[1], seen[1])
    # ... the entropy-aware temperature does not: SSG before it is SSG on the raw guided logits
    a = _toy([ClassifierFreeGuidance(3.0), ScaledSpatialGuidance(0.5), EntropyAwareTemperature()])
    b = _toy([ClassifierFreeGuidance(3.0), EntropyAwareTemperature(), ScaledSpatialGuidance(0.5)])
    assert not torch.allclose(a[1], b[1])
    x = torch.tensor([10.0, -2.5, 7.5])  # (8,−2,6) + 0.5·((8,−2,6) − (4,−1,3))
    torch.testing.assert_close(a[1][0, 0], x / EntropyAwareTemperature().temperature(x[None, None])[0, 0])


def test_igg_rows_are_built_without_cfg_and_replace_it():
    """IGG alone needs the null rows: the toy's (clean cond, clean null) rows give u + t·G(c − u)."""
    seen = _toy([InformationGroundingGuidance(scale=1.0)])
    c, u = 2 * _Toy.values[0], 2 * _Toy.values[1]  # step 1 doubles the logits
    d = (c - u).expand(1, 1, 4, 3)
    expected = u + 2.0 * grounding(d)[0]  # step 1 of 2: r = 1, t = 1 + 1·1
    torch.testing.assert_close(seen[1], expected)


def test_trace_records_clean_and_final_logits():
    trace = SamplerTrace()
    state = {"rows": 2, "seen": []}
    run_next_scale(_Toy(), state, cfg=ClassifierFreeGuidance(3.0), guiders=[ScaledSpatialGuidance(1.0)],
                   trace=trace)
    assert torch.equal(trace.guided[1], state["seen"][1]) and not torch.equal(trace.clean[1], trace.guided[1])
