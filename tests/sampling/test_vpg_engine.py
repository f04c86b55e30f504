"""The VPG engine: the invariants of spec/vpg.md §6 on the tiny parity VAR, and the cost discipline."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.numerics import assert_greedy_margin, cfg_gain, layout_atol, record_draws, vpg_gain
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.corruption import apply_corruption, corruption_count, draw_pattern
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.models.var.adapter import VARAdapter
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

LABELS = [0, 4]  # classes whose greedy picks stay far from ties (top-two gap >= 0.09 at every site)
CFG = 4.0
LAST_CFG_GAIN = cfg_gain(1 + CFG)  # VAR's ramp reaches s = 1 + cfg at the last scale


def _run(pipe, vpg, seed=0, cfg=CFG, top_k=1, keep=False, labels=LABELS):
    adapter = VARAdapter(pipe.transformer, pipe.vae)
    guidance = ClassifierFreeGuidance(cfg, schedule="linear")
    state = adapter.prepare(torch.tensor(labels), with_null=guidance.is_active(4), device=torch.device("cpu"),
                            dtype=torch.float32, top_k=top_k, top_p=0.0)
    trace = SamplerTrace()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=guidance, vpg=vpg, generator=gen, trace=trace, keep_corrupted_rows=keep)
    return state, trace


def _codes(trace):
    return [trace.codes[k] for k in sorted(trace.codes)]


def test_w1_and_p0_reproduce_unguided_sampler(var_pipe):
    """The runs differ in their row count (4 vs 8), so they agree up to rounding, not bit for bit."""
    _, plain = _run(var_pipe, None)
    _, w1 = _run(var_pipe, PrefixGuidance(scale=1.0, corruption=0.5, always_compute=True))
    _, p0 = _run(var_pipe, PrefixGuidance(scale=3.0, corruption=0.0, always_compute=True))
    assert w1.corrupted and p0.corrupted, "the corrupted branch must actually run in this test"
    for k in plain.guided:
        # CFG's gain (and VPG's for w = 3) amplifies the rounding of the differently batched forward
        atol = layout_atol(plain.guided[k], LAST_CFG_GAIN * vpg_gain(3.0))
        assert_greedy_margin(plain.guided[k], atol)  # top_k = 1: the picks cannot differ
        torch.testing.assert_close(w1.guided[k], plain.guided[k], atol=atol, rtol=0)
        torch.testing.assert_close(p0.guided[k], plain.guided[k], atol=atol, rtol=0)
        if k in p0.corrupted:  # p = 0: the corrupted rows repeat the clean rows' inputs
            torch.testing.assert_close(p0.corrupted[k], p0.clean[k], atol=atol, rtol=0)
    for a, b, c in zip(_codes(plain), _codes(w1), _codes(p0)):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_skipped_when_it_cannot_change_anything(var_pipe):
    _, w1 = _run(var_pipe, PrefixGuidance(scale=1.0))
    assert not w1.corrupted and all(rows == 4 for rows in w1.rows.values())


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.29, 0.5, 0.7, 1.0])
def test_pattern_replaces_floor_pn_sites_with_same_scale_donors(fraction):
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    for n in (1, 4, 9, 16, 100):
        pattern = draw_pattern(3, n, fraction, gens)
        expected = corruption_count(n, fraction) if n > 1 else 0
        assert expected == (int(fraction * n + 1e-9) if n > 1 else 0)
        assert pattern.selected.sum(1).tolist() == [expected] * 3
        sites = torch.arange(n)
        assert torch.equal(pattern.source[~pattern.selected], sites.expand(3, -1)[~pattern.selected])
        donors = pattern.source[pattern.selected]
        assert ((donors >= 0) & (donors < n)).all()
        assert not (pattern.source == sites)[pattern.selected].any(), "a site is never its own donor"


def test_first_scale_has_no_corrupted_branch_and_rows_leave_after_last_guided(var_pipe):
    _, trace = _run(var_pipe, PrefixGuidance(scale=3.0, scales=[1, 2]))
    assert trace.rows == {0: 4, 1: 8, 2: 8, 3: 4}
    assert sorted(trace.corrupted) == [1, 2] and 0 not in trace.patterns
    assert trace.cache_bytes[3] < trace.cache_bytes[2] * 2  # the corrupted half of the cache was freed


def test_dropping_corrupted_rows_changes_nothing(var_pipe):
    vpg = PrefixGuidance(scale=3.0, scales=[1, 2])
    with record_draws() as draws:
        _, dropped = _run(var_pipe, vpg, top_k=0)
    _, kept = _run(var_pipe, vpg, top_k=0, keep=True)
    assert kept.rows[3] == 8 and dropped.rows[3] == 4
    # step 3 runs 4 rows in one run and 8 in the other: equal up to rounding, amplified by CFG
    atol = layout_atol(dropped.guided[3], LAST_CFG_GAIN)
    draws.assert_far_from_ties(atol)  # so the multinomial draws cannot differ either
    for k in dropped.guided:
        torch.testing.assert_close(dropped.guided[k], kept.guided[k], atol=atol, rtol=0)
    for a, b in zip(_codes(dropped), _codes(kept)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scales", ["all", [2, 3]])
@pytest.mark.parametrize("mode", ["full", "token", "position", "codebook"])
def test_persistent_cache_equals_from_scratch_corrupted_prefix(var_pipe, scales, mode):
    """The corrupted branch computed incrementally equals one block-causal pass over the corrupted
    prefix rebuilt from the recorded patterns (also when the first guided scale is not the first)."""
    vpg = PrefixGuidance(scale=3.0, corruption=0.5, mode=mode, scales=scales)
    _, trace = _run(var_pipe, vpg, top_k=0)
    model = var_pipe.transformer
    labels = torch.tensor(LABELS + [model.null_class] * 2)
    for k in sorted(trace.corrupted):
        contents, positions = [], [torch.zeros(4, 1, dtype=torch.long)]
        for j in range(1, k + 1):
            inp = trace.inputs[j]
            c, p = apply_corruption(inp.content, inp.position_ids, trace.patterns[j], mode)
            contents.append(c.repeat(2, 1, 1))
            positions.append(p.repeat(2, 1))
        with torch.no_grad():
            logits = model(labels, torch.cat(contents, 1), torch.cat(positions, 1), include_start=True,
                           multi_scale=True, last_tokens=trace.inputs[k].position_ids.shape[0])
        s = ClassifierFreeGuidance(CFG, schedule="linear").scale_at(k, 4)
        expected = ClassifierFreeGuidance.combine(logits[:2], logits[2:], s)
        # one block-causal call over all scales vs one call per scale: equal up to rounding
        torch.testing.assert_close(trace.corrupted[k], expected, atol=layout_atol(logits, cfg_gain(s)), rtol=0)


def test_resample_draws_a_fresh_prefix_each_step(var_pipe):
    _, trace = _run(var_pipe, PrefixGuidance(scale=3.0, refresh="resample"), top_k=0)
    assert trace.rows == {0: 4, 1: 4, 2: 4, 3: 4}  # the corrupted branch runs as a second call
    assert sorted(trace.resampled) == [1, 2, 3]
    assert sorted(trace.resampled[3]) == [1, 2, 3]
    assert not torch.equal(trace.resampled[2][1].source, trace.resampled[3][1].source) or not torch.equal(
        trace.resampled[2][2].source, trace.resampled[3][2].source)
    _, p0 = _run(var_pipe, PrefixGuidance(scale=3.0, corruption=0.0, refresh="resample", always_compute=True))
    _, plain = _run(var_pipe, None)
    for k in plain.guided:  # the corrupted branch is a second call: w = 3 amplifies its rounding
        atol = layout_atol(plain.guided[k], LAST_CFG_GAIN * vpg_gain(3.0))
        assert_greedy_margin(plain.guided[k], atol)
        torch.testing.assert_close(p0.guided[k], plain.guided[k], atol=atol, rtol=0)
    for a, b in zip(_codes(p0), _codes(plain)):
        assert torch.equal(a, b)


def test_modes_change_only_what_they_should():
    torch.manual_seed(0)
    content, positions = torch.randn(2, 9, 4), torch.arange(10, 19)
    pattern = draw_pattern(2, 9, 0.5, torch.Generator().manual_seed(1),
                           random_content=lambda n, g: torch.full((n, 4), 7.0))
    sel = pattern.selected
    full_c, full_p = apply_corruption(content, positions, pattern, "full")
    tok_c, tok_p = apply_corruption(content, positions, pattern, "token")
    pos_c, pos_p = apply_corruption(content, positions, pattern, "position")
    cb_c, cb_p = apply_corruption(content, positions, pattern, "codebook")
    own = positions.expand(2, -1)
    donor_pos = positions[pattern.source]
    assert torch.equal(full_p, donor_pos) and torch.equal(full_c, tok_c)
    assert torch.equal(tok_p, own) and torch.equal(pos_c, content) and torch.equal(pos_p, donor_pos)
    assert torch.equal(cb_p, own)
    assert torch.equal(cb_c[~sel], content[~sel]) and (cb_c[sel] == 7.0).all()
    assert torch.equal(full_c[~sel], content[~sel]) and not torch.equal(full_c[sel], content[sel])
    assert (full_p != own).sum() == sel.sum()


class _FixedLogits:
    """A 2-step toy model whose logits depend only on the row's branch (for the composition test)."""

    num_layers = 1

    def __init__(self, values):
        self.values = values  # (clean cond, clean null, corrupted cond, corrupted null)

    def steps(self, state):
        from vpg_pipelines.models.adapter import ScaleStep

        return [ScaleStep(0, 0, 1, (1, 1)), ScaleStep(1, 1, 4, (2, 2))]

    def num_condition_rows(self, state):
        return 2

    def step_input(self, state, step):
        from vpg_pipelines.models.adapter import StepInput

        ids = torch.arange(step.num_sites)
        return StepInput(None if step.index == 0 else torch.zeros(1, step.num_sites, 3), ids)

    def forward(self, state, batch, kv_cache, hidden_hook=None, last_tokens=None):
        n = batch.position_ids.shape[1]
        kv_cache.append(0, torch.zeros(batch.rows, 1, n, 2), torch.zeros(batch.rows, 1, n, 2))
        vals = torch.tensor(self.values[: batch.rows])
        return vals[:, None, None].expand(batch.rows, n, 5).clone()

    def random_content(self, count, generator, device):
        return torch.zeros(count, 3)

    def sample(self, state, logits, step, generator):
        state.append(logits)
        return logits.argmax(-1)

    def update(self, state, codes, step):
        pass


def test_cfg_then_vpg_composition_by_hand():
    # c=2, u=1 (clean), c~=1.5, u~=0.5 (corrupted); s=3: g = 3*2 - 2*1 = 4, g~ = 3*1.5 - 2*0.5 = 3.5;
    # w=2: out = 3.5 + 2*(4 - 3.5) = 4.5. Step 0 has one site: no VPG, out = g = 4.
    seen: list[torch.Tensor] = []
    run_next_scale(_FixedLogits([2.0, 1.0, 1.5, 0.5]), seen, cfg=ClassifierFreeGuidance(3.0),
                   vpg=PrefixGuidance(scale=2.0, corruption=0.5))
    assert torch.allclose(seen[0], torch.full((1, 1, 5), 4.0))
    assert torch.allclose(seen[1], torch.full((1, 4, 5), 4.5))


def test_same_seed_same_image_bit_for_bit(var_pipe):
    kwargs = dict(class_labels=LABELS, guidance_scale=4.0, vpg_scale=3.0, output_type="pt")
    a = var_pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images
    b = var_pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images
    c = var_pipe(**kwargs, generator=torch.Generator().manual_seed(6)).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_vpg_changes_the_sample(var_pipe):
    kwargs = dict(class_labels=LABELS, guidance_scale=4.0, top_k=1, top_p=0.0, output_type="pt")
    plain = var_pipe(**kwargs, vpg_scale=1.0).images
    guided = var_pipe(**kwargs, vpg_scale=3.0, generator=torch.Generator().manual_seed(0)).images
    assert not torch.equal(plain, guided)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"vpg_scale": -0.5}, "vpg_scale"),
        ({"vpg_scale": float("nan")}, "vpg_scale"),
        ({"vpg_corruption": 1.5}, "vpg_corruption"),
        ({"vpg_corruption": -0.1}, "vpg_corruption"),
        ({"vpg_mode": "blur"}, "vpg_mode"),
        ({"vpg_refresh": "sometimes"}, "vpg_refresh"),
        ({"vpg_scales": [0, 4]}, "vpg_scales"),
        ({"vpg_scales": "early"}, "vpg_scales"),
    ],
)
def test_out_of_range_vpg_arguments_name_the_argument(var_pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        var_pipe(class_labels=[1], **kwargs)


@pytest.mark.parametrize("preset", ["all", "semantic"])
def test_pipeline_runs_every_option(var_pipe, preset):
    for mode in ("full", "token", "position", "codebook"):
        for refresh in ("persistent", "resample"):
            out = var_pipe(class_labels=[1, 2], vpg_scale=3.0, vpg_mode=mode, vpg_refresh=refresh, vpg_scales=preset,
                           generator=torch.Generator().manual_seed(0), output_type="pt")
            assert out.images.shape == (2, 3, 64, 64) and torch.isfinite(out.images).all()


@pytest.mark.parametrize("scales", ["all", [2, 3]])
def test_cfg_at_a_hidden_layer_composes_with_the_persistent_branch(var_pipe, scales):
    """CFG mixing hidden states after block 0 (it then shapes block 1's cached keys/values) inside each
    prefix branch: the incremental corrupted branch equals a from-scratch pass with the same mixing."""
    from vpg_pipelines.sampling.branches import BranchLayout

    model = var_pipe.transformer
    adapter = VARAdapter(model, var_pipe.vae)
    cfg = ClassifierFreeGuidance(4.0, schedule="linear", layer=-model.config.depth)
    state = adapter.prepare(torch.tensor(LABELS), with_null=True, device=torch.device("cpu"), dtype=torch.float32)
    trace = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=cfg, vpg=PrefixGuidance(3.0, scales=scales),
                       generator=torch.Generator().manual_seed(0), trace=trace)
    labels = torch.tensor(LABELS + [model.null_class] * 2)
    layout = BranchLayout(batch=2, conditions=2, prefixes=1)
    for k in sorted(trace.corrupted):
        contents, positions, strengths = [], [torch.zeros(4, 1, dtype=torch.long)], [torch.ones(1)]
        for j in range(1, k + 1):
            inp = trace.inputs[j]
            c, p = apply_corruption(inp.content, inp.position_ids, trace.patterns[j], "full")
            contents.append(c.repeat(2, 1, 1))
            positions.append(p.repeat(2, 1))
            strengths.append(torch.full((p.shape[1],), cfg.scale_at(j, 4)))
        s = torch.cat(strengths)

        def hook(block, h, s=s):
            return layout.mix_conditions(h, s) if block == 0 else h

        with torch.no_grad():
            logits = model(labels, torch.cat(contents, 1), torch.cat(positions, 1), include_start=True,
                           multi_scale=True, hidden_hook=hook, last_tokens=trace.inputs[k].position_ids.shape[0])
        # block-causal call vs one call per scale; the hidden mixing amplifies rounding like CFG does
        atol = layout_atol(logits, cfg_gain(cfg.scale_at(k, 4)))
        torch.testing.assert_close(trace.corrupted[k], logits[:2], atol=atol, rtol=0)
