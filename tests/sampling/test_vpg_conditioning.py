"""VPG on a conditioned prefix: forced image / video codes are conditioning, not generated prefix.

Default (``corrupt_conditioning=False``): the corrupted branch sees the conditioning clean, shares its keys and
values, and runs at no conditioning step; only the generated prefix is corrupted. With
``corrupt_conditioning=True`` it corrupts the conditioning too (the behaviour before the choice was made).
docs/vpg.md, "Conditioned prefixes", says why.

Set-up: the shared InfinityStar parity fixture run as image-to-video: the image clip's 33 steps forced to the
fixture's codes and marked as conditioning, the video clip sampled.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.numerics import apg_gain, layout_atol
from tests.helpers.shared import shared_path
from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.loading.infinity_star import load_infinity_star_transformer, load_infinity_star_vae
from vpg_pipelines.models.adapter import StepInput
from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter
from vpg_pipelines.models.infinity_star.schedules import plan_steps
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

CFG, NORM = 34.0, 0.05
IMAGE_STEPS = 33  # the image clip: 11 scales x 3 repetitions
FIRST_VIDEO_SCALE = 11  # (20, 1, 1): 20 sites, the first generated scale


@pytest.fixture(scope="module")
def star():
    root = shared_path("parity", "infinity_star")
    config = json.loads((root / "config.json").read_text())
    transformer = load_infinity_star_transformer(root / "infinity_star.safetensors", text_maxlen=config["text_maxlen"])
    vae = load_infinity_star_vae(root / "videovae.safetensors", detail_scale_min_tokens=100)
    plan = plan_steps(config["scale_schedule"], [3] * 11, [3] * 8 + [2, 1, 1], semantic_scales=8,
                      detail_scale_min_tokens=100, tau_image=1.0, tau_video=0.4)
    cases = load_file(str(root / "cases.safetensors"))
    return InfinityStarAdapter(transformer, vae), plan, cases


def _state(star, conditioning=IMAGE_STEPS):
    adapter, plan, cases = star
    forced = [cases[f"forced_bits.step{i}"] for i in range(IMAGE_STEPS)]
    return adapter.prepare(plan, [cases["text.features"]], [cases["negative_text.features"]], forced_bits=forced,
                           conditioning_steps=conditioning)


def _apg():
    return AdaptiveProjectedGuidance(CFG, norm_threshold=NORM, eta=0.0)


class _InputAt:
    """The adapter with one step's input replaced (everything else delegated)."""

    def __init__(self, adapter, index: int, replaced: StepInput) -> None:
        self._adapter, self._index, self._replaced = adapter, index, replaced

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def step_input(self, state, step):
        return self._replaced if step.index == self._index else self._adapter.step_input(state, step)


def test_conditioning_steps_are_marked_and_not_guided(star):
    adapter, plan, _ = star
    state = _state(star)
    steps = adapter.steps(state)
    assert [s.conditioning for s in steps] == [s.index < IMAGE_STEPS for s in steps]
    clean = PrefixGuidance(1.5, 0.5, scales="all")
    corrupt = PrefixGuidance(1.5, 0.5, scales="all", corrupt_conditioning=True)
    num_scales = len(plan.schedule)
    assert min(clean.guided_steps(steps, num_scales)) == IMAGE_STEPS and clean.shared_steps(steps) == IMAGE_STEPS
    assert min(corrupt.guided_steps(steps, num_scales)) == 3 and corrupt.shared_steps(steps) == 1
    replay = adapter.steps(_state(star, conditioning=0))  # forced codes that replay a generation stay guided
    assert not any(s.conditioning for s in replay) and min(clean.guided_steps(replay, num_scales)) == 3
    with pytest.raises(ValueError, match="`conditioning_steps` must be in \\[0, 33\\]"):
        _state(star, conditioning=34)
    with pytest.raises(ValueError, match="`vpg_corrupt_conditioning` must be a bool"):
        PrefixGuidance(1.5, corrupt_conditioning="yes")


@pytest.mark.parametrize("refresh", ["persistent", "resample"])
@torch.no_grad()
def test_corrupted_branch_sees_the_conditioning_clean(star, refresh):
    """The corrupted branch at the first generated step equals the model run with that step's corrupted input
    and the clean image clip as context; corrupting the conditioning too gives another prediction."""
    adapter, _, _ = star
    traces = {}
    for corrupt in (False, True):
        vpg = PrefixGuidance(1.5, 0.5, refresh=refresh, scales=[FIRST_VIDEO_SCALE], corrupt_conditioning=corrupt)
        trace = SamplerTrace()
        run_next_scale(adapter, _state(star), cfg=_apg(), vpg=vpg, trace=trace,
                       generator=torch.Generator().manual_seed(3))
        traces[corrupt] = trace
    clean, corrupted = traces[False], traces[True]
    assert sorted(clean.corrupted) == sorted(corrupted.corrupted) == [IMAGE_STEPS, IMAGE_STEPS + 1, IMAGE_STEPS + 2]
    drawn = clean.patterns if refresh == "persistent" else clean.resampled[IMAGE_STEPS]
    assert min(drawn) == IMAGE_STEPS  # no conditioning step is corrupted ...
    drawn_too = corrupted.patterns if refresh == "persistent" else corrupted.resampled[IMAGE_STEPS]
    assert IMAGE_STEPS - 1 in drawn_too  # ... unless asked: the image clip's cached scale (step 32) is
    # the reference: the clean model on the corrupted input of step 33, after the clean image clip
    vpg = PrefixGuidance(1.5, 0.5, scales=[FIRST_VIDEO_SCALE])
    pattern = drawn[IMAGE_STEPS]
    inp = clean.inputs[IMAGE_STEPS]
    content, positions = vpg.corrupt(inp.content, inp.position_ids, pattern)
    reference = SamplerTrace()

    def stop(step, state, logits):
        return step.index >= IMAGE_STEPS

    run_next_scale(_InputAt(adapter, IMAGE_STEPS, StepInput(content, positions)), _state(star), cfg=_apg(),
                   trace=reference, on_step=stop, generator=torch.Generator().manual_seed(3))
    expected = reference.guided[IMAGE_STEPS]
    atol = layout_atol(expected, apg_gain(CFG))  # 4 rows against 2 (persistent) or a block call (resample)
    torch.testing.assert_close(clean.corrupted[IMAGE_STEPS], expected, atol=atol, rtol=0)
    assert (corrupted.corrupted[IMAGE_STEPS] - expected).abs().max().item() > 100 * atol


@torch.no_grad()
def test_clean_conditioning_with_unit_scale_changes_nothing(star):
    """w = 1 with the corrupted branch computed anyway: the result is the plain one (conditioning shared)."""
    adapter, _, _ = star
    plain = SamplerTrace()
    run_next_scale(adapter, _state(star), cfg=_apg(), trace=plain, generator=torch.Generator().manual_seed(5))
    trace = SamplerTrace()
    vpg = PrefixGuidance(1.0, 0.5, scales="semantic", always_compute=True)
    run_next_scale(adapter, _state(star), cfg=_apg(), vpg=vpg, trace=trace,
                   generator=torch.Generator().manual_seed(5), keep_corrupted_rows=False)
    assert min(trace.corrupted) == IMAGE_STEPS
    for i in range(IMAGE_STEPS):
        assert torch.equal(trace.codes[i], plain.codes[i])
        torch.testing.assert_close(trace.guided[i], plain.guided[i], rtol=0, atol=0)  # same rows until the join
