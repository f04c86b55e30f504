"""The memory planner counts the accelerators as exactly as the cache without them (tests/memory style).

FastVAR: pruned blocks store only their kept tokens' keys (per-layer capacities) and the cache holds the
fill scale's sub-layer outputs as row state until the last pruned scale. ScaleKV: the cache holds each
layer at its length, grows with each step's tokens and shrinks to its budget after the layer's attention.
Planned K/V bytes after every step equal ``SamplerTrace.cache_bytes``, and the planned per-step cache peak
equals what the cache code allocates (measured with the tagging cache of ``tests/helpers/memory_probe.py``),
for the VPG layouts that move rows: semantic (the corrupted rows join by duplication, leave with their row
state), a late scale list (cloned, replayed step by step, joined) and ``resample`` (a replayed clone).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.infinity import make_pipe
from tests.helpers.memory_probe import probe_call
from vpg_pipelines.acceleration import INFINITY_2B_10, FastVAR, ScaleKV
from vpg_pipelines.sampling.next_scale import SamplerTrace

LAYOUTS = {
    "vpg semantic": {"vpg_scale": 1.5, "vpg_scales": "semantic"},
    "vpg late list": {"vpg_scale": 1.5, "vpg_scales": [9, 10]},
    "vpg resample": {"vpg_scale": 1.5, "vpg_scales": [9, 10], "vpg_refresh": "resample"},
}
ACCELERATORS = {"fastvar": lambda: FastVAR(blocks=(0, 2)),
                "scalekv": lambda: ScaleKV(budget=INFINITY_2B_10.first_blocks(2))}


@pytest.fixture(scope="module")
def pipe():
    return make_pipe("plain")


def _kwargs(pipe, kind, layout):
    from tests.helpers.infinity import fixture_embeds

    embeds, mask = fixture_embeds("plain")
    return {"prompt_embeds": embeds[:1], "prompt_attention_mask": mask[:1], "guidance_scale": 3.0, "height": 1024,
            "width": 1024, "output_type": "latent", "acceleration": ACCELERATORS[kind](),
            "generator": [torch.Generator().manual_seed(0)], **LAYOUTS[layout]}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", list(ACCELERATORS))
def test_kv_cache_plan_equals_what_the_accelerated_sampler_allocates(pipe, kind, layout, monkeypatch):
    kwargs = _kwargs(pipe, kind, layout)
    estimate = pipe.estimate_memory(**kwargs)
    assert estimate.settings["acceleration"] == kind
    trace = SamplerTrace()
    _, probe = probe_call(pipe, monkeypatch, trace=trace, **kwargs)
    assert [s.index for s in estimate.kv] == sorted(trace.cache_bytes)
    for step in estimate.kv:
        assert step.after == trace.cache_bytes[step.index], step.index
        assert step.peak == probe.kv_peak(step.index), (step.index, step.events)
    if layout == "vpg semantic":  # the step-peak bound of tests/memory/test_memory_planner.py, accelerated
        # from scale 7 on (where both methods act): before it a budgeted cache is a few entries and the
        # estimated sampler state (latent, codes; as without an accelerator) dominates the ratio (up to 1.4x)
        phases = estimate.plans["none"].phases
        for step in estimate.kv[7:]:
            planned = max(p.kv + p.activations for p in phases if p.step == step.index)
            measured = probe.peak(step.index)
            assert 0.98 * measured <= planned <= 1.2 * measured, (step.index, planned, measured)


def test_the_accelerators_save_what_they_promise(pipe):
    """Against the same call without an accelerator: FastVAR's last two scales and pruned keys are gone (its fill
    row state added), ScaleKV's cache ends near its budget."""
    base = {k: v for k, v in _kwargs(pipe, "fastvar", "vpg semantic").items() if k != "acceleration"}
    plain = pipe.estimate_memory(**base)
    fast = pipe.estimate_memory(**base, acceleration=ACCELERATORS["fastvar"]())
    budget = pipe.estimate_memory(**base, acceleration=ACCELERATORS["scalekv"]())
    assert len(fast.kv) == 11 and len(plain.kv) == len(budget.kv) == 13
    assert fast.kv_peak < plain.kv_peak and budget.kv_peak < plain.kv_peak
    g = 2 * 2 * 128 * 4  # keys and values of 2 layers x 128 channels in float32, per row and entry
    rows = 2
    assert budget.kv[11].after == rows * g * (6385 + 465) // 2  # drafter 6385 + refiner 465 entries
