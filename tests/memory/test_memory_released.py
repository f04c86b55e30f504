"""The planner at the released sizes, on the meta device: the architectures are the released ones
(``shared/spec/manifests``), the weights are the manifests' bytes, the K/V cache is what a full-depth
forward allocates, and the cache figures follow the issue's arithmetic."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from tests.helpers.shared import shared_path
from vpg_pipelines.loading.auto import released_pipeline
from vpg_pipelines.loading.infinity import DROPPED_BUFFERS
from vpg_pipelines.memory import weight_layout
from vpg_pipelines.memory.kv_timeline import Forward
from vpg_pipelines.memory.replay import META, InfinityStarStepReplay, InfinityStepReplay, VARStepReplay
from vpg_pipelines.models.infinity.bsq_vae import DERIVED_KEYS as INFINITY_VAE_DERIVED
from vpg_pipelines.models.infinity.transformer import DERIVED_KEYS as INFINITY_DERIVED
from vpg_pipelines.models.infinity_star.video_vae import DERIVED_KEYS as STAR_VAE_DERIVED
from vpg_pipelines.models.kv_cache import KVCache
from vpg_pipelines.models.var.transformer import DERIVED_BUFFERS as VAR_DERIVED
from vpg_pipelines.registry import released_model, released_names

# keys of the released files our modules rebuild or drop instead of storing (see the model modules)
NOT_STORED = (VAR_DERIVED, INFINITY_DERIVED, INFINITY_VAE_DERIVED, STAR_VAE_DERIVED,
              re.compile("^(" + "|".join(DROPPED_BUFFERS) + ")$"))


def _manifest(name: str) -> dict[str, list[int]]:
    shapes = json.loads(shared_path("spec", "manifests", f"{name}.json").read_text())["state_dict"]
    return {k: v for k, v in shapes.items() if not any(p.search(k) for p in NOT_STORED)}


def _non_persistent_bytes(module: torch.nn.Module, size: int) -> int:
    """Buffers the state dict does not hold (e.g. VAR's ``site_scale``), at their planned size."""
    saved = set(module.state_dict())
    total = 0
    for name, buffer in module.named_buffers():
        if name not in saved:
            total += buffer.numel() * (size if buffer.is_floating_point() else buffer.element_size())
    return total


@pytest.mark.parametrize("name", released_names())
def test_released_architectures_are_the_manifests(name):
    pipe = released_pipeline(name)
    transformer_manifest, vae_manifest = released_model(name)[1].manifests
    for module, manifest in ((pipe.transformer, transformer_manifest), (pipe.vae, vae_manifest)):
        expected = _manifest(manifest)
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert ours == expected


@pytest.mark.parametrize("name", released_names())
def test_released_weights_are_the_manifest_bytes(name):
    """bf16 planning: every stored value in 2 bytes (``_keep_in_fp32_modules``: 4), plus the buffers our
    modules compute instead of storing; int8 planning: TorchAO's layout for every Linear weight (int8 values,
    a float32 scale and an int8 zero point per output row)."""
    pipe = released_pipeline(name)
    model = pipe.transformer
    shapes = _manifest(released_model(name)[1].manifests[0])
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    expected = sum(math.prod(v) * (4 if k.split(".")[0] in keep else 2) for k, v in shapes.items())
    expected += _non_persistent_bytes(model, 2)
    assert weight_layout(model, torch.bfloat16).total == expected
    linear = {k[: -len(".weight")]: v for k, v in shapes.items()
              if k.endswith(".weight") and len(v) == 2 and isinstance(model.get_submodule(k[: -len(".weight")]),
                                                                      torch.nn.Linear)}
    quantized = {k for k in linear if k.split(".")[0] not in keep}
    saving = sum(out * inp * 2 - (out * inp + out * 5) for k, (out, inp) in linear.items() if k in quantized)
    assert weight_layout(model, torch.bfloat16, "int8").total == expected - saving


def test_flan_t5_xl_encoder_size():
    """flan-T5-XL's encoder: 24 layers of width 2048 (32 heads x 64), gated feed-forward of 5120, the shared
    embedding tied to the encoder's (``tie_weights``, as ``from_pretrained`` calls it), and its feed-forward
    outputs (``wo``) kept in float32 by transformers (``_keep_in_fp32_modules``)."""
    encoder = released_pipeline("infinity-2b").text_encoder
    assert encoder.shared.weight is encoder.encoder.embed_tokens.weight
    params = sum(p.numel() for p in encoder.parameters())
    per_layer = 4 * 2048 * 2048 + 3 * 2048 * 5120 + 2 * 2048
    assert params == 32128 * 2048 + 24 * per_layer + 32 * 32 + 2048  # 1.22 B
    wo = 24 * 2048 * 5120
    assert weight_layout(encoder, torch.bfloat16).total == 2 * params + 2 * wo


def _full_depth_cache(pipe, replay, forward: Forward) -> KVCache:
    """The cache a full-depth meta forward of ``forward`` allocates."""
    geometry = replay.geometry()
    cache = KVCache(geometry.layers, forward.rows, replay.capacity)
    from vpg_pipelines.memory.replay import meta_copy

    full = meta_copy(pipe.transformer, torch.bfloat16)
    replay.adapter.transformer, one_block = full, replay.adapter.transformer
    try:
        with torch.no_grad():
            replay._run(forward, cache)
    finally:
        replay.adapter.transformer = one_block
    return cache


@pytest.mark.parametrize("name", ["var-d30", "infinity-8b", "infinity-star-8b-720p"])
def test_released_cache_geometry_is_what_a_full_forward_allocates(name):
    pipe = released_pipeline(name)
    kind = released_model(name)[0].name
    if kind == "var":
        from vpg_pipelines.models.var.adapter import VARAdapter

        steps = VARAdapter(pipe.transformer, pipe.vae).steps(None)
        replay = VARStepReplay(pipe.transformer, steps, 2, torch.bfloat16)
    elif kind == "infinity":
        from types import SimpleNamespace

        from vpg_pipelines.models.infinity.adapter import InfinityAdapter

        schedule = pipe.schedule_for(1024, 1024)
        steps = InfinityAdapter(pipe.transformer, pipe.vae).steps(SimpleNamespace(schedule=schedule))
        replay = InfinityStepReplay(pipe.transformer, steps, 2, torch.bfloat16, text_tokens=16)
    else:
        from types import SimpleNamespace

        from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter

        plan = pipe.plan(1, *pipe.default_size)
        steps = InfinityStarAdapter(pipe.transformer, pipe.vae).steps(SimpleNamespace(plan=plan, conditioning_steps=0))
        replay = InfinityStarStepReplay(pipe.transformer, steps, 2, torch.bfloat16, plan=plan, text_tokens=16,
                                        batch=1)
    forward = replay._first_call()
    cache = _full_depth_cache(pipe, replay, forward)
    geometry = replay.geometry()
    config = pipe.transformer.config
    heads = getattr(config, "num_key_value_heads", config.num_heads)
    assert (geometry.layers, geometry.heads, geometry.head_dim, geometry.element_size) == (
        config.depth, heads, config.embed_dim // config.num_heads, 2)
    assert all(k is not None and k.device == META for k in cache.keys)
    assert cache.memory_bytes() == geometry.storage(forward.rows, replay.capacity)


def test_issue_arithmetic_for_infinity_2b_at_1024():
    """The issue's figures: 6,425 cached tokens (every scale but the last) x 32 layers x K and V x 2048 x
    2 bytes per row; CFG holds 2 rows, all-scale VPG 4 until its corrupted rows leave."""
    pipe = released_pipeline("infinity-2b")
    per_row = 6425 * 32 * 2 * 2048 * 2
    cfg = pipe.estimate_memory(dtype=torch.bfloat16, prompt="a cat", vpg_scale=1.0, text_tokens=16)
    vpg = pipe.estimate_memory(dtype=torch.bfloat16, prompt="a cat", vpg_scale=1.5, text_tokens=16)
    assert max(s.after for s in cfg.kv) == 2 * per_row
    assert max(s.after for s in vpg.kv) == 4 * per_row
    assert cfg.weights["transformer"] == weight_layout(pipe.transformer, torch.bfloat16).total


def test_var_d30_batch_16_cache():
    pipe = released_pipeline("var-d30")
    estimate = pipe.estimate_memory(dtype=torch.bfloat16, class_labels=list(range(16)), vpg_scale=1.3)
    rows, tokens = 2 * 2 * 16, 424  # CFG x VPG x batch; every scale but the last (16 x 16)
    assert max(s.after for s in estimate.kv) == rows * tokens * 30 * 2 * 1920 * 2


def test_infinity_star_480p_plan_keeps_only_the_image_clip():
    pipe = released_pipeline("infinity-star-8b-480p")
    estimate = pipe.estimate_memory(dtype=torch.bfloat16, prompt="a cat", height=480, width=848, num_frames=81,
                                    text_tokens=32)
    kv_per_token_row = 36 * 2 * 8 * 128 * 2  # GQA: 8 key/value heads of 128
    stored = 30 * 53  # the image clip's full scale (30 x 53 sites) is the only scale later steps refer to
    # APG: 2 rows; semantic VPG: 4 until the last semantic step, then the corrupted rows leave
    assert max(s.after for s in estimate.kv) == 4 * (32 + stored) * kv_per_token_row
    assert estimate.kv[-1].end == 2 * (32 + stored) * kv_per_token_row
    assert estimate.decode > 0 and estimate.largest_step == len(estimate.kv) - 1
