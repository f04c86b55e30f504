"""The comparison tools of tests/helpers/numerics.py can fail: they catch real differences and near-ties."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.numerics import DrawLog, assert_greedy_margin, cfg_gain, layout_atol, record_draws
from vpg_pipelines.models.sample import multinomial_rows


def _probs(seed: int, rows: int = 64, vocab: int = 5) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def test_recorded_draws_are_torchs_draws_and_their_margins():
    probs = _probs(0)
    with record_draws() as log:
        codes = multinomial_rows(probs[None], [torch.Generator().manual_seed(7)])[0]
    assert torch.equal(codes, torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7))[:, 0])
    race = probs / torch.empty_like(probs).exponential_(generator=torch.Generator().manual_seed(7))
    top2 = race.topk(2, dim=-1).values
    assert log.margins == [pytest.approx((top2[:, 0].log() - top2[:, 1].log()).min().item())]
    assert torch.equal(log.codes[7][0], codes)
    with pytest.raises(AssertionError, match="within"):
        log.assert_far_from_ties(log.min_margin)  # a tolerance half the margin would pass; this one not


def test_replay_returns_the_reference_codes_and_flags_draws_that_differ_far_from_ties():
    with record_draws() as reference:
        ref = multinomial_rows(_probs(0)[None], [torch.Generator().manual_seed(3)])
    with record_draws(replay=reference) as same:
        multinomial_rows(_probs(0)[None], [torch.Generator().manual_seed(3)])
    assert same.disagreements == []
    same.assert_replay_agrees(1e-3)
    with record_draws(replay=reference) as other:  # other probabilities: other draws, not near-ties
        out = multinomial_rows(_probs(1)[None], [torch.Generator().manual_seed(3)])
    assert torch.equal(out, ref) and other.disagreements
    with pytest.raises(AssertionError, match="differ from the replayed codes"):
        other.assert_replay_agrees(1e-6)
    with pytest.raises(AssertionError, match="no further draw"), record_draws(replay=DrawLog()):
        multinomial_rows(_probs(0)[None], [torch.Generator().manual_seed(3)])


def test_greedy_margin_and_tolerance_arithmetic():
    logits = torch.tensor([[3.0, 1.0, 0.0], [2.0, 1.999, 0.0]])
    assert_greedy_margin(logits[:1], 0.5)
    with pytest.raises(AssertionError, match="tie"):
        assert_greedy_margin(logits, 1e-3)
    assert_greedy_margin(torch.tensor([[0.0, 2.0, 1.9, 0.0]]), 0.1, classes=2)  # two bit pairs: gaps 2 and 1.9 ...
    with pytest.raises(AssertionError):
        assert_greedy_margin(torch.tensor([[0.0, 2.0, 1.9, 0.0]]), 0.1, classes=4)  # ... one 4-way pick: gap 0.1
    assert cfg_gain(3.0) == 5.0 and cfg_gain(1.0) == 1.0
    assert layout_atol(torch.tensor([-10.0, 2.0]), gain=2.0, ulps=1) == pytest.approx(2 * 10 * torch.finfo().eps)
