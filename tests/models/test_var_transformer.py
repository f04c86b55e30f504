"""VAR transformer: keys/shapes of the released checkpoints and teacher-forced parity."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.shared import shared_path
from vpg_pipelines.loading.checkpoint import CheckpointError, load_strict
from vpg_pipelines.loading.var import build_transformer, infer_transformer_config
from vpg_pipelines.models.var.transformer import DERIVED_BUFFERS, VARTransformer

OFFICIAL_BUFFERS = {"lvl_1L", "attn_bias_for_masking"}


def _manifest(name: str) -> dict:
    return json.loads(shared_path("spec", "manifests", f"var_{name}.json").read_text())


@pytest.mark.parametrize("depth", ["d16", "d20", "d24", "d30", "d36"])
def test_released_checkpoint_keys_and_shapes(depth):
    manifest = _manifest(depth)
    official = manifest["config"]["var"]
    vqvae = manifest["config"]["vqvae"]
    with torch.device("meta"):
        model = VARTransformer(
            vocab_size=vqvae["vocab_size"], vae_channels=vqvae["z_channels"], num_classes=official["num_classes"],
            depth=official["depth"], embed_dim=official["embed_dim"], num_heads=official["num_heads"],
            norm_eps=official["norm_eps"], shared_aln=official["shared_aln"], attn_l2_norm=official["attn_l2_norm"],
            patch_nums=tuple(official["patch_nums"]),
        )
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest["state_dict"]
    derived = {k for k in expected if DERIVED_BUFFERS.match(k)}
    # exactly the three derived buffers are dropped, everything else matches key for key
    assert {k.split(".")[-1] if k.startswith("blocks") else k for k in derived} == OFFICIAL_BUFFERS | {"zero_k_bias"}
    assert len([k for k in derived if k.endswith("zero_k_bias")]) == official["depth"]
    assert ours == {k: v for k, v in expected.items() if k not in derived}


def test_config_is_inferred_from_weight_shapes():
    manifest = _manifest("d36")
    with torch.device("meta"):
        state = {k: torch.empty(v) for k, v in manifest["state_dict"].items()}
    config = infer_transformer_config(state)
    official = manifest["config"]["var"]
    assert config["depth"] == official["depth"] and config["embed_dim"] == official["embed_dim"]
    assert config["num_heads"] == official["num_heads"] and config["shared_aln"] is True
    assert list(config["patch_nums"]) == official["patch_nums"] and config["mlp_ratio"] == 4.0


def _parity_model() -> tuple[VARTransformer, dict]:
    cfg = json.loads(shared_path("parity", "var", "config.json").read_text())
    state = load_file(str(shared_path("parity", "var", "var.safetensors")))
    config = infer_transformer_config(state, cfg["var"]["patch_nums"])
    return build_transformer(config, state), load_file(str(shared_path("parity", "var", "cases.safetensors")))


def test_teacher_forced_logits_match_official():
    model, cases = _parity_model()
    with torch.no_grad():
        logits = model.teacher_forced_logits(cases["var.class_labels"], cases["var.teacher_forcing_input"])
    expected = cases["var.teacher_forced_logits"]
    err = (logits - expected).abs().max().item()
    print(f"teacher-forced logits max abs error {err:.3e}")
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_cached_steps_equal_one_block_causal_pass():
    """Scale-by-scale with the KV cache gives the teacher-forced logits (the cache is exact)."""
    from vpg_pipelines.models.kv_cache import KVCache

    model, cases = _parity_model()
    labels, x = cases["var.class_labels"], cases["var.teacher_forcing_input"]
    offsets = model.scale_offsets()
    cache = KVCache(model.config.depth, rows=2, capacity=model.num_sites)
    outs = []
    with torch.no_grad():
        outs.append(model(labels, None, torch.zeros(2, 1, dtype=torch.long), include_start=True, kv_cache=cache))
        for k in range(1, len(offsets) - 1):
            ids = torch.arange(offsets[k], offsets[k + 1]).expand(2, -1)
            outs.append(model(labels, x[:, offsets[k] - 1 : offsets[k + 1] - 1], ids, kv_cache=cache))
    torch.testing.assert_close(torch.cat(outs, 1), cases["var.teacher_forced_logits"], atol=1e-4, rtol=1e-5)


def test_mismatched_checkpoint_lists_keys():
    model, _ = _parity_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    state["word_embed.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as info:
        load_strict(VARTransformer(**model.config), state)
    message = str(info.value)
    assert "missing keys (1): head.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "word_embed.weight: checkpoint (3, 3)" in message


def test_condition_modulations_are_computed_once_per_run():
    """With ``condition_index`` and a cache, each AdaLN modulation is computed at the first step only and
    reused; the logits equal the per-row computation (the same condition rows, gathered)."""
    from vpg_pipelines.models.kv_cache import KVCache

    model, cases = _parity_model()
    labels, x = cases["var.class_labels"], cases["var.teacher_forcing_input"]
    conditions = torch.cat([labels, torch.full_like(labels, model.null_class)])  # CFG's condition rows
    index = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # two prefix branches of the four condition rows
    offsets = model.scale_offsets()
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for m in [*(b.ada_lin for b in model.blocks), model.head_nm.ada_lin]]
    memo_cache, plain_cache = (KVCache(model.config.depth, rows=8, capacity=model.num_sites) for _ in range(2))
    with torch.no_grad():
        for k in range(len(offsets) - 1):
            ids = torch.arange(offsets[k], offsets[k + 1]).expand(8, -1)
            content = None if k == 0 else x[:, offsets[k] - 1 : offsets[k + 1] - 1].repeat(4, 1, 1)
            ids = torch.zeros(8, 1, dtype=torch.long) if k == 0 else ids
            memo = model(conditions, content, ids, include_start=k == 0, kv_cache=memo_cache, condition_index=index)
            calls_after_memo = len(calls)
            plain = model(conditions[index], content, ids, include_start=k == 0, kv_cache=plain_cache)
            # the same modulations up to the rows they were computed over (4 vs 8 rows: different matmul
            # blocking may change the last bits); logits of this fp32 model are O(1): 1e-5 is ~100 ulps
            torch.testing.assert_close(memo, plain, atol=1e-5, rtol=1e-5)
            assert len(calls) - calls_after_memo == model.config.depth + 1  # the plain call computes every time
    for h in handles:
        h.remove()
    per_step_plain = model.config.depth + 1
    memo_calls = len(calls) - per_step_plain * (len(offsets) - 1)
    assert memo_calls == model.config.depth + 1  # the memoised run: once, at the first step
    assert set(memo_cache.memo) == {("ada", i) for i in range(model.config.depth)} | {"head"}
    assert memo_cache.memo_for(conditions.clone()) == {}  # other condition rows: a fresh memo
