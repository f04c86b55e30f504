"""Forward chunking over the token axis (``enable_forward_chunking``): the same computation split into token
chunks, so the outputs equal the unchunked ones up to rounding.

Why not bitwise: a matrix product over a chunk's rows may take another kernel path than over all rows (on
this CPU the steps whose last chunk is a few tokens differ by 1-2 ulps of the logits; the others are
bitwise equal), so logits are compared within ``layout_atol``, the rounding budget of a layout change
(``tests/helpers/numerics.py``). A wrong chunk boundary, a mask row or a key missing from a chunk changes
logits by orders of magnitude more.
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.parity_logits import MODELS
from tests.helpers.numerics import layout_atol
from vpg_pipelines.models.chunking import DEFAULT_CHUNK_TOKENS, token_spans
from vpg_pipelines.models.infinity_star.transformer import StarBlock, rope_angles
from vpg_pipelines.models.kv_cache import KVCache


@pytest.fixture(scope="module", params=list(MODELS))
def parity(request):
    pipe, logits = MODELS[request.param]()
    return request.param, pipe, logits


def test_chunked_logits_equal_unchunked_up_to_rounding(parity):
    """Chunks of 37 tokens divide no scale (a ragged last chunk everywhere; InfinityStar's 7-token text
    prefix runs unchunked)."""
    name, pipe, logits = parity
    model = copy.deepcopy(pipe.transformer)  # a copy's weights sit elsewhere in memory: its own reference
    reference = logits(model)
    model.enable_forward_chunking(37)
    chunked = logits(model)
    torch.testing.assert_close(chunked, reference, atol=layout_atol(reference), rtol=0)
    print(f"{name}, chunks of 37: bitwise equal {torch.equal(chunked, reference)}, "
          f"max difference {(chunked - reference).abs().max().item():.2e}")


def _block_and_inputs(seed: int = 0):
    torch.manual_seed(seed)
    block = StarBlock(128, 4, 2, 4.0, False).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.1)
    x = torch.randn(2, 150, 128)
    rope = rope_angles(torch.randint(0, 20, (2, 150, 4)), 32)
    cached = torch.randn(2, 2, 40, 32)
    return block, x, rope, cached


def _masks(rows: int, tokens: int, keys: int) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(1)
    steps = torch.zeros(tokens, keys)  # block-causal over scales: a (tokens, keys) mask
    steps[:, -tokens:].masked_fill_(torch.rand(tokens, tokens, generator=g) > 0.5, float("-inf"))
    steps[:, -tokens:].fill_diagonal_(0)
    text = torch.zeros(rows, 1, 1, keys)  # a row's text padding hidden: (rows, 1, 1, keys)
    text[1, ..., 30:40] = float("-inf")
    return {"none": None, "steps": steps, "text": text, "both": text + steps}


@pytest.mark.parametrize("mask_kind", ["none", "steps", "text", "both"])
@pytest.mark.parametrize("store", [True, False])
def test_chunked_block_attends_to_the_cache_as_one_piece(mask_kind, store):
    """Every chunk's queries see the cached keys and all of the step's keys (grouped-query heads stacked on
    the query axis), under the masks the adapter builds; the cache receives the same keys."""
    block, x, rope, cached = _block_and_inputs()
    mask = _masks(2, 150, 40 + 150)[mask_kind]
    outs, caches = [], []
    for chunk in (None, 32):
        block.set_chunk_feed_forward(chunk)
        cache = KVCache(1, 2, 400)
        cache.append(0, cached, cached * 0.5)
        with torch.no_grad():
            outs.append(block(x, rope, 0, cache, store, mask))
        caches.append(cache)
    torch.testing.assert_close(outs[1], outs[0], atol=layout_atol(outs[0]), rtol=0)
    assert caches[0].lengths == caches[1].lengths == [190 if store else 40]
    if store:
        torch.testing.assert_close(caches[1].keys[0][:, :, :190], caches[0].keys[0][:, :, :190],
                                   atol=layout_atol(caches[0].keys[0][:, :, :190]), rtol=0)


def test_a_per_head_mask_is_refused_when_chunked():
    block, x, rope, _ = _block_and_inputs()
    block.set_chunk_feed_forward(64)
    with pytest.raises(ValueError, match="per-head attention mask"):
        block(x, rope, 0, None, True, torch.zeros(2, 4, 150, 150))


def test_enable_forward_chunking_arguments(fast_pipe):
    model = copy.deepcopy(fast_pipe.transformer)
    with pytest.raises(ValueError, match="`dim` must be 1"):
        model.enable_forward_chunking(64, dim=0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="`chunk_size` must be a positive number of tokens"):
            model.enable_forward_chunking(bad)
    model.enable_forward_chunking()
    assert model.forward_chunk_size == DEFAULT_CHUNK_TOKENS
    chunked = [m for m in model.modules() if getattr(m, "chunk_size", None) is not None]
    assert chunked and all(m.chunk_size == DEFAULT_CHUNK_TOKENS for m in chunked)
    model.disable_forward_chunking()
    assert not [m for m in model.modules() if getattr(m, "chunk_size", None) is not None]


def test_pipeline_level_switch(fast_pipe):
    fast_pipe.enable_forward_chunking(128)
    try:
        assert fast_pipe.transformer.forward_chunk_size == 128
        assert fast_pipe.estimate_memory(prompt="a fox", num_frames=17, height=192, width=336,
                                         output_type="latent").settings["forward_chunking"] == 128
    finally:
        fast_pipe.disable_forward_chunking()
    assert fast_pipe.transformer.forward_chunk_size is None


def test_vae_switches_need_a_tiling_vae(var_pipe):
    var_pipe.enable_forward_chunking(8)  # chunking works on every transformer
    var_pipe.disable_forward_chunking()
    with pytest.raises(NotImplementedError, match="enable_tiling is not implemented for VARVQVAE"):
        var_pipe.enable_vae_tiling()


def test_token_spans_cover_every_token_once():
    spans = token_spans(10, 4)
    assert [(s.start, s.stop) for s in spans] == [(0, 4), (4, 8), (8, 10)]
    assert token_spans(4, 4) == [slice(0, 4)]
