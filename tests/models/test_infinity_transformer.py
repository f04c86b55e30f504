"""Infinity transformer: text pooling and teacher-forced logits equal the official model's."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.infinity import FOLDERS, load_fixture, report
from tests.helpers.numerics import layout_atol
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.models.kv_cache import KVCache

ATOL = 1e-4


def _schedule(transformer, config):
    return schedule_from_template(config["h_div_w_template"], config["pn"],
                                  bool(transformer.config.apply_spatial_patchify))


@pytest.mark.parametrize("folder", FOLDERS)
def test_text_pooled_matches_official(folder):
    transformer, _, cases, _, _ = load_fixture(folder)
    with torch.no_grad():
        cond = transformer.encode_text(cases["text.features"], cases["text.lens"])
    assert report(f"{folder} text pooled", cond.pooled, cases["transformer.text_pooled"]) <= ATOL


@pytest.mark.parametrize("folder", FOLDERS)
def test_teacher_forced_logits_match_official(folder):
    transformer, _, cases, config, _ = load_fixture(folder)
    schedule = _schedule(transformer, config)
    assert schedule.scale_schedule == [tuple(s) for s in config["scale_schedule"]]
    with torch.no_grad():
        logits = transformer.teacher_forced_logits(
            cases["text.features"], cases["text.lens"], cases["transformer.teacher_forcing_input"], schedule)
    expected = cases["transformer.teacher_forced_logits"]
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    assert report(f"{folder} teacher-forced logits", logits, expected) <= ATOL


@pytest.mark.parametrize("folder", FOLDERS)
def test_cached_scale_by_scale_equals_teacher_forcing(folder):
    """One scale per call with the KV cache gives the block-causal teacher-forced logits."""
    transformer, _, cases, config, _ = load_fixture(folder)
    schedule = _schedule(transformer, config)
    inputs = cases["transformer.teacher_forcing_input"]
    batch = inputs.shape[0]
    with torch.no_grad():
        cond = transformer.encode_text(cases["text.features"], cases["text.lens"])
        cache = KVCache(transformer.config.depth, batch, schedule.offsets[-1])
        outs = []
        for k in range(schedule.num_scales):
            start, end = schedule.offsets[k], schedule.offsets[k + 1]
            content = None if k == 0 else inputs[:, start - 1 : end - 1]
            pos = schedule.position_ids(k).expand(batch, -1)
            outs.append(transformer(cond, content, pos, torch.full((end - start,), k), include_start=k == 0,
                                    kv_cache=cache))
    logits = torch.cat(outs, 1)
    assert report(f"{folder} cached vs teacher forcing", logits, cases["transformer.teacher_forced_logits"]) <= ATOL


def test_null_rows_use_cfg_uncond_truncated_to_each_prompt():
    transformer, _, cases, _, _ = load_fixture("plain")
    feats, lens = cases["text.features"], cases["text.lens"].tolist()
    with torch.no_grad():
        both = transformer.encode_text(feats, lens, null_rows=True)
        null = transformer.encode_text(torch.cat([transformer.cfg_uncond[:n] for n in lens]), lens)
        real = transformer.encode_text(feats, lens)
    assert both.rows == 2 * len(lens)
    # one call over both row groups vs one call each: equal up to rounding
    torch.testing.assert_close(both.pooled[: len(lens)], real.pooled, atol=layout_atol(real.pooled), rtol=0)
    torch.testing.assert_close(both.pooled[len(lens):], null.pooled, atol=layout_atol(null.pooled), rtol=0)
    assert both.mask[len(lens):].sum(1).tolist() == lens


def test_per_row_positions_and_hidden_hook():
    """A row whose tokens are permuted together with their positions gives the permuted logits;
    the hidden hook sees every block once, in order."""
    transformer, _, cases, config, _ = load_fixture("plain")
    schedule = _schedule(transformer, config)
    k = 2
    start, end = schedule.offsets[k], schedule.offsets[k + 1]
    content = cases["transformer.teacher_forcing_input"][:, start - 1 : end - 1]
    pos = schedule.position_ids(k).expand(2, -1)
    perm = torch.randperm(end - start, generator=torch.Generator().manual_seed(0))
    seen = []

    def hook(block, hidden):
        seen.append(block)
        return hidden

    with torch.no_grad():
        cond = transformer.encode_text(cases["text.features"], cases["text.lens"])
        base = transformer(cond, content, pos, torch.full((end - start,), k), hidden_hook=hook)
        moved = transformer(cond, content[:, perm], pos[:, perm], torch.full((end - start,), k))
    assert seen == list(range(transformer.config.depth))
    # the same tokens in another order: equal up to rounding
    torch.testing.assert_close(moved, base[:, perm], atol=layout_atol(base), rtol=0)


def test_bad_text_inputs_raise():
    transformer, _, cases, _, _ = load_fixture("plain")
    with pytest.raises(ValueError, match="text_features"):
        transformer.encode_text(cases["text.features"][:-1], cases["text.lens"])
    with pytest.raises(ValueError, match="text_lens"):
        transformer.encode_text(cases["text.features"], [0, 14])
    too_long = torch.zeros(40, transformer.config.text_channels)
    with pytest.raises(ValueError, match="null condition"):
        transformer.encode_text(too_long, [40], null_rows=True)
