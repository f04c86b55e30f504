"""Adaptive projected guidance: the official formula, per-scale strengths, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance


def _reference(cond, uncond, s, threshold, eta):
    """Per sample, in float64: clip the RMS of the difference, drop its part along cond (eta keeps some)."""
    out = []
    for c, u in zip(cond.double(), uncond.double()):
        d = c - u
        rms = d.pow(2).mean().sqrt().item()
        if threshold > 0 and rms > threshold:
            d = d * (threshold / rms)
        unit = c / c.norm()
        par = (d * unit).sum() * unit
        out.append(c + (s - 1) * ((d - par) + eta * par))
    return torch.stack(out)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    strength=st.floats(0.5, 40.0),
    threshold=st.sampled_from([0.0, 0.05, 1.0]),
    eta=st.sampled_from([0.0, 0.5, 1.0]),
    spread=st.floats(0.01, 3.0),
)
def test_matches_the_projection_formula(seed, strength, threshold, eta, spread):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(2, 5, 8, generator=g) * 3
    uncond = cond + torch.randn(2, 5, 8, generator=g) * spread
    apg = AdaptiveProjectedGuidance(strength, norm_threshold=threshold, eta=eta)
    out = apg.combine(cond, uncond, strength)
    assert out.dtype == cond.dtype and out.shape == cond.shape
    torch.testing.assert_close(out.double(), _reference(cond, uncond, strength, threshold, eta), atol=1e-4, rtol=1e-5)


def test_guided_change_is_orthogonal_to_cond_and_bounded():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 100, 32, generator=g), torch.randn(1, 100, 32, generator=g)
    apg = AdaptiveProjectedGuidance(34.0, norm_threshold=0.05)
    change = (apg.combine(cond, uncond, 34.0) - cond).double()
    assert abs((change * cond.double()).sum().item()) < 1e-3 * change.norm().item() * cond.norm().item()
    assert change.pow(2).mean().sqrt().item() <= 33 * 0.05 * (1 + 1e-5)
    # leading (branch) dims are independent samples
    stacked = apg.combine(torch.cat([cond, uncond])[None], torch.cat([uncond, cond])[None], 34.0)
    torch.testing.assert_close(stacked[0, 0], apg.combine(cond, uncond, 34.0)[0])


def test_unit_strength_returns_cond_and_schedules_match_cfg():
    cond, uncond = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    assert torch.equal(AdaptiveProjectedGuidance(1.0).combine(cond, uncond, 1.0), cond)
    for kwargs in ({"guidance_scale": 34.0}, {"guidance_scale": 2.0, "schedule": "linear"},
                   {"guidance_scale": [1.0, 2.0, 3.0]}):
        apg, cfg = AdaptiveProjectedGuidance(**kwargs), ClassifierFreeGuidance(**kwargs)
        assert [apg.strength_at(k, 3) for k in range(3)] == [cfg.strength_at(k, 3) for k in range(3)]
        assert apg.is_active(3) == cfg.is_active(3)
    assert not AdaptiveProjectedGuidance(1.0).is_active(4)
    assert AdaptiveProjectedGuidance(34.0).strength_at(0, 22) == 34.0


def test_threshold_caps_the_difference_rms():
    cond = torch.zeros(1, 4, 4)
    cond[0, 0, 0] = 1.0
    uncond = cond.clone()
    uncond[0, 1, 1] = -2.0  # difference orthogonal to cond, rms = 2 / 4 = 0.5
    out = AdaptiveProjectedGuidance(3.0, norm_threshold=0.05).combine(cond, uncond, 3.0)
    assert math.isclose(out[0, 1, 1].item(), 2 * 2.0 * 0.05 / 0.5, rel_tol=1e-6)
    out = AdaptiveProjectedGuidance(3.0, norm_threshold=0.0).combine(cond, uncond, 3.0)
    assert math.isclose(out[0, 1, 1].item(), 4.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"schedule": "cosine"}, "schedule"), ({"layer": -2}, "layer"), ({"norm_threshold": -1.0}, "norm_threshold"),
     ({"guidance_scale": float("nan")}, "guidance_scale"), ({"guidance_scale": []}, "guidance_scale"),
     ({"eta": "x"}, "eta")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveProjectedGuidance(**kwargs)
    with pytest.raises(ValueError, match="values for"):
        AdaptiveProjectedGuidance([1.0, 2.0]).strength_at(0, 3)
