"""The guidance terms through the three pipelines (issue 14): keyword arguments, off = the sampler without
them, strengths changed by ``callback_on_step_end`` from the next step on, and where a term is not defined."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.infinity import fixture_embeds, make_pipe
from tests.helpers.star import SIZE, fast_pipe, fixture_files, parity_pipe  # noqa: F401 (fixtures)
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.igg import InformationGroundingGuidance
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.guidance.ssg import ScaledSpatialGuidance
from vpg_pipelines.guidance.temperature import EntropyAwareTemperature
from vpg_pipelines.models.var.adapter import VARAdapter
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

LABELS = [3, 7]


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _var(pipe, trace=None, **kwargs):
    kw = dict(class_labels=LABELS, guidance_scale=3.0, top_k=0, top_p=0.0, vpg_scale=1.0, output_type="pt")
    kw.update(kwargs)
    return pipe(**kw, generator=gens(0, 1), trace=trace).images


def _set(name, value, at):
    """A callback setting ``pipe.<name>`` after step ``at``."""

    def callback(pipe, i, scale, kwargs):
        if i == at:
            setattr(pipe, name, value)
        return {}

    return callback


# -- VAR -------------------------------------------------------------------------------------------
def test_terms_off_reproduce_the_sampler_without_them(var_pipe):
    """Default arguments (SSG 0, IGG None, temperature off) are literally the CFG + VPG sampler: the same
    rows, the same reductions, so the same bits."""
    trace = SamplerTrace()
    _var(var_pipe, trace, vpg_scale=2.0, ssg_scale=0.0, igg_scale=None, entropy_temperature=False)
    adapter = VARAdapter(var_pipe.transformer, var_pipe.vae)
    state = adapter.prepare(torch.tensor(LABELS), with_null=True, device=torch.device("cpu"), dtype=torch.float32,
                            top_k=0, top_p=0.0)
    plain = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, cfg=ClassifierFreeGuidance(3.0, schedule="linear"),
                       vpg=PrefixGuidance(guidance_scale=2.0), generator=gens(0, 1), trace=plain)
    for k in plain.guided:
        assert torch.equal(trace.guided[k], plain.guided[k]) and torch.equal(trace.codes[k], plain.codes[k])


@pytest.mark.parametrize("kwargs", [{"ssg_scale": 0.5}, {"igg_scale": 1.0}, {"igg_scale": 0.0},
                                    {"entropy_temperature": True}])
def test_each_term_changes_the_guided_logits(var_pipe, kwargs):
    off, on = SamplerTrace(), SamplerTrace()
    _var(var_pipe, off)
    _var(var_pipe, on, **kwargs)
    if "ssg_scale" in kwargs:
        assert torch.equal(off.guided[0], on.guided[0])  # no previous scale: no prior
    assert not torch.equal(off.guided[2], on.guided[2])


def test_pipeline_properties_follow_the_call(var_pipe):
    _var(var_pipe, vpg_scale=2.0, ssg_scale=0.25, igg_scale=1.5, entropy_temperature=True)
    assert (var_pipe.guidance_scale, var_pipe.vpg_scale, var_pipe.ssg_scale, var_pipe.igg_scale,
            var_pipe.entropy_temperature) == (3.0, 2.0, 0.25, 1.5, True)


def test_guidance_scale_set_in_a_callback_takes_effect_from_the_next_step(var_pipe):
    """diffusers' pipelines re-read ``guidance_scale`` every step; so does this one. VAR's ramp with g = 3 up
    to step 1 and g = 0.5 after equals a per-scale list of those strengths, bit for bit."""
    changed = _var(var_pipe, callback_on_step_end=_set("_guidance_scale", 0.5, at=1))
    k_max = var_pipe.num_timesteps - 1
    strengths = [1.0 + float(3.0 if k <= 1 else 0.5) * k / max(k_max, 1) for k in range(k_max + 1)]
    listed = _var(var_pipe, guiders=[ClassifierFreeGuidance(guidance_scale=strengths)])
    assert torch.equal(changed, listed)
    assert not torch.equal(changed, _var(var_pipe))
    # diffusers' CFG cut-off callback pattern: 0 (VAR: conditional logits only) from step 2 on
    cut = _var(var_pipe, callback_on_step_end=_set("_guidance_scale", 0.0, at=1))
    ones = [strengths[0], strengths[1], 1.0, 1.0]
    assert torch.equal(cut, _var(var_pipe, guiders=[ClassifierFreeGuidance(guidance_scale=ones)]))


@pytest.mark.parametrize("name,value,term", [
    ("_ssg_scale", 0.5, ScaledSpatialGuidance(guidance_scale=[0.0, 0.0, 0.5, 0.5])),
    ("_igg_scale", 1.0, InformationGroundingGuidance(guidance_scale=1.0, start=0.5)),
    ("_entropy_temperature", True, EntropyAwareTemperature(start=0.5)),
])
def test_new_terms_switched_on_in_a_callback(var_pipe, name, value, term):
    """Switched on after step 1 of 4 = the same term acting from step 2 (a per-scale list or start=0.5)."""
    dynamic = _var(var_pipe, callback_on_step_end=_set(name, value, at=1))
    assert torch.equal(dynamic, _var(var_pipe, guiders=[term]))
    assert not torch.equal(dynamic, _var(var_pipe))


def test_vpg_scale_set_in_a_callback(var_pipe):
    """Same draws up to step 2, so the branches at step 2 are the same; only the combination's w differs."""
    fixed, dynamic = SamplerTrace(), SamplerTrace()
    _var(var_pipe, fixed, vpg_scale=2.0)
    _var(var_pipe, dynamic, vpg_scale=2.0, callback_on_step_end=_set("_vpg_scale", 3.0, at=1))
    assert torch.equal(fixed.guided[1], dynamic.guided[1]) and torch.equal(fixed.clean[2], dynamic.clean[2])
    clean, corrupted = dynamic.clean[2], dynamic.corrupted[2]
    assert torch.equal(dynamic.guided[2], corrupted + (clean - corrupted) * 3.0)


@pytest.mark.parametrize("kwargs,name,value", [
    ({"guidance_scale": 0.0}, "_guidance_scale", 3.0),  # VAR: 0 = CFG off, no null rows
    ({"vpg_scale": 1.0}, "_vpg_scale", 2.0),
])
def test_a_term_off_at_the_start_cannot_be_switched_on(var_pipe, kwargs, name, value):
    with pytest.raises(ValueError, match="switched on during sampling"):
        _var(var_pipe, **kwargs, callback_on_step_end=_set(name, value, at=0))


def test_igg_switched_on_without_null_rows_says_why(var_pipe):
    with pytest.raises(ValueError, match="IGG: no null-condition rows"):
        _var(var_pipe, guidance_scale=0.0, callback_on_step_end=_set("_igg_scale", 1.0, at=0))


def test_igg_replaces_cfg_when_cfg_is_off(var_pipe):
    """CFG off (VAR: 0) with IGG on: CFG's weight is unset, IGG builds the null rows and gives u + t·G —
    the sampler with IGG as its only term, bit for bit."""
    trace = SamplerTrace()
    _var(var_pipe, trace, guidance_scale=0.0, igg_scale=1.0)
    assert set(trace.rows.values()) == {4}
    adapter = VARAdapter(var_pipe.transformer, var_pipe.vae)
    state = adapter.prepare(torch.tensor(LABELS), with_null=True, device=torch.device("cpu"), dtype=torch.float32,
                            top_k=0, top_p=0.0)
    alone = SamplerTrace()
    with torch.no_grad():
        run_next_scale(adapter, state, guiders=[InformationGroundingGuidance(1.0)], generator=gens(0, 1), trace=alone)
    for k in alone.guided:
        assert torch.equal(trace.guided[k], alone.guided[k])
    with pytest.raises(ValueError, match="IGG in its place"):
        _var(var_pipe, guidance_scale=0.0, igg_scale=1.0, callback_on_step_end=_set("_guidance_scale", 2.0, at=0))


def test_guiders_replace_the_term_of_the_same_job(var_pipe):
    via_kwarg = _var(var_pipe, ssg_scale=0.3)
    assert torch.equal(via_kwarg, _var(var_pipe, guiders=[ScaledSpatialGuidance(0.3)]))
    with pytest.raises(ValueError, match="two ScaledSpatialGuidance"):
        _var(var_pipe, guiders=[ScaledSpatialGuidance(0.3), ScaledSpatialGuidance(0.2)])


@pytest.mark.parametrize("kwargs,name", [
    ({"igg_scale": -1.0}, "igg_scale"), ({"ssg_scale": float("nan")}, "ssg_scale"),
    ({"entropy_temperature": "yes"}, "entropy_temperature"), ({"entropy_temperature_alpha": 0.0}, "alpha"),
    ({"entropy_temperature_t0": 0.0, "entropy_temperature_theta": 0.0}, "theta"),
    ({"guiders": ["ssg"]}, "guiders"), ({"guiders": ScaledSpatialGuidance(0.1)}, "guiders"),
])
def test_bad_guidance_arguments_name_the_argument(var_pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        var_pipe(class_labels=[1], **kwargs)


# -- Infinity ---------------------------------------------------------------------------------------
def test_infinity_terms_and_where_igg_is_not_defined():
    pipe = make_pipe("plain")
    embeds, mask = fixture_embeds("plain")
    kw = dict(prompt_embeds=embeds[:1], prompt_attention_mask=mask[:1], guidance_scale=3.0, top_k=0, top_p=0.0,
              vpg_scale=1.0, output_type="latent")
    off = pipe(**kw, generator=gens(0)).images
    for extra in ({"ssg_scale": 0.5}, {"igg_scale": 1.0}, {"entropy_temperature": True}):
        on = pipe(**kw, **extra, generator=gens(0)).images
        assert not torch.equal(on, off), extra
    assert torch.equal(off, pipe(**kw, ssg_scale=0.0, generator=gens(0)).images)
    with pytest.raises(ValueError, match="cfg_insertion_layer"):
        pipe(**kw, cfg_insertion_layer=-1, igg_scale=1.0)
    with pytest.raises(ValueError, match="cfg_insertion_layer"):
        pipe(**kw, cfg_insertion_layer=-1, callback_on_step_end=_set("_igg_scale", 1.0, at=0))


# -- InfinityStar -----------------------------------------------------------------------------------
def test_infinity_star_terms_on_video_clips(fast_pipe):  # noqa: F811
    """SSG works inside a clip over (t, h, w) and leaves the first step of a clip, and a step whose previous
    scale has another logit shape (the detail codebook), unchanged; IGG and the temperature run on APG."""
    kw = dict(prompt="a cat", num_frames=17, **SIZE, vpg_scale=1.0, output_type="latent")
    ssg = SamplerTrace()
    fast_pipe(**kw, ssg_scale=0.5, generator=gens(0), trace=ssg)
    plan = fast_pipe.plan(17, **SIZE)
    changed, kept = [], []
    for step in plan.steps[1:]:
        earlier = [s for s in plan.steps if s.scale < step.scale]
        prev = earlier[-1] if earlier else None
        same = (prev is not None and prev.clip == step.clip
                and ssg.guided[prev.index].shape[2:] == ssg.guided[step.index].shape[2:])
        (changed if same else kept).append(step.index)
        if not same:
            assert torch.equal(ssg.guided[step.index], ssg.clean[step.index]), step.index
    assert changed and any(plan.steps[k].clip == 1 for k in changed)
    assert any(not torch.equal(ssg.guided[k], ssg.clean[k]) for k in changed)
    assert any(plan.steps[k].clip == 1 and plan.steps[k].scale > 0 for k in kept)  # a new clip starts fresh
    off = fast_pipe(**kw, generator=gens(0)).frames
    for extra in ({"igg_scale": 1.0}, {"entropy_temperature": True}):
        assert not torch.equal(fast_pipe(**kw, **extra, generator=gens(0)).frames, off), extra


# -- CLI --------------------------------------------------------------------------------------------
def test_cli_flags_match_the_pipeline_arguments(tmp_path, capsys):
    import numpy as np
    import PIL.Image

    from vpg_pipelines import load_demo_pipeline
    from vpg_pipelines.cli import main

    out = tmp_path / "plant.png"
    flags = ["--ssg-scale", "0.5", "--igg-scale", "1", "--entropy-temperature", "--entropy-temperature-alpha", "2"]
    assert main(["generate", "--model", "demo", "--prompt", "plant", "--seed", "4", "--vpg-scale", "1",
                 *flags, "--out", str(out)]) == 0
    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt=["plant"], vpg_scale=1.0, ssg_scale=0.5, igg_scale=1.0, entropy_temperature=True,
                    entropy_temperature_alpha=2.0, generator=[torch.Generator().manual_seed(4)]).images[0]
    assert np.array_equal(np.asarray(PIL.Image.open(out).convert("RGB")), np.asarray(expected))
    assert main(["generate", "--model", "demo", "--prompt", "plant", "--ssg-scale", "-1",
                 "--out", str(tmp_path / "bad.png")]) == 2
    assert "ssg_scale" in capsys.readouterr().err


def test_infinity_star_guidance_scale_set_in_a_callback(fast_pipe):  # noqa: F811
    """APG 34 turned off (1) after step 2 equals APG with one strength per scale (one step per scale here)."""
    from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance

    kw = dict(prompt="a cat", num_frames=1, **SIZE, vpg_scale=1.0, output_type="latent")
    dynamic = fast_pipe(**kw, generator=gens(0), callback_on_step_end=_set("_guidance_scale", 1.0, at=2)).frames
    steps = fast_pipe.plan(1, **SIZE).steps
    assert [s.scale for s in steps] == list(range(len(steps)))
    listed = AdaptiveProjectedGuidance(guidance_scale=[34.0 if k <= 2 else 1.0 for k in range(len(steps))])
    assert torch.equal(dynamic, fast_pipe(**kw, generator=gens(0), guiders=[listed]).frames)
    assert not torch.equal(dynamic, fast_pipe(**kw, generator=gens(0)).frames)
