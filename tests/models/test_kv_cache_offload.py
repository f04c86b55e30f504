"""The offloaded K/V cache (``KVCache(storage_device=...)``, ``pipe.enable_kv_cache_offload()``).

An offloaded cache hands each layer a *copy* of the entries it sees instead of a view of its storage; the
copied values are the stored ones, so the returned keys and values are bitwise those of the plain cache (a
copy rounds nothing). Whole pipeline runs are compared up to rounding only where the attention then reads
a contiguous copy instead of a strided view (another kernel path; ``tests/helpers/numerics.py``).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.numerics import assert_same_steps, layout_atol, record_draws
from tests.helpers.shared import cuda_only
from tests.helpers.star import SIZE
from vpg_pipelines.models.kv_cache import KVCache
from vpg_pipelines.sampling.next_scale import SamplerTrace

LAYERS, ROWS, HEADS, DIM = 3, 2, 2, 4


def _steps() -> list[tuple[int, bool, list[tuple[int, int]] | None]]:
    """(new tokens, store, visible ranges) per step: stored scales, a repetition that is not stored, and
    steps that see only some earlier ranges (InfinityStar's ``ref_sids``)."""
    return [(1, True, None), (4, True, None), (4, False, None), (9, True, [(0, 1), (5, 5)]), (16, True, [(1, 12)])]


def _run(cache: KVCache, seed: int = 0, between=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Append every step to every layer as a transformer does; returns what each append handed out."""
    g = torch.Generator().manual_seed(seed)
    seen = []
    for i, (n, store, visible) in enumerate(_steps()):
        cache.visible = visible
        for layer in range(LAYERS):
            k = torch.randn(cache.rows, HEADS, n, DIM, generator=g)
            v = torch.randn(cache.rows, HEADS, n, DIM, generator=g)
            out_k, out_v = cache.append(layer, k, v, store=store)
            seen.append((out_k.clone(), out_v.clone()))
        cache.visible = None
        if between is not None:
            between(i, cache)
    return seen


@pytest.mark.parametrize("prefetch", [False, True])
def test_offloaded_appends_hand_out_the_plain_cache_entries(prefetch):
    plain = _run(KVCache(LAYERS, ROWS, 40))
    cache = KVCache(LAYERS, ROWS, 40, storage_device="cpu", prefetch=prefetch)
    offloaded = _run(cache)
    assert len(plain) == len(offloaded)
    for (pk, pv), (ok, ov) in zip(plain, offloaded):
        assert torch.equal(pk, ok) and torch.equal(pv, ov)
    assert cache.gathered_bytes == max(2 * k.numel() * k.element_size() for k, _ in offloaded)


def test_offloaded_cache_follows_row_changes_and_budgets():
    """Rows duplicated, cloned and stacked (VPG's corrupted branch joining) and entries cut (a budget) between
    steps: a prefetched copy made before such a change is never handed out."""

    def rebuild(i: int, cache: KVCache) -> None:
        if i == 1:
            cache.select_rows([0, 1, 1, 0])
        if i == 3:
            cache.keep_entries(1, torch.arange(cache.lengths[1])[1:].expand(cache.rows, HEADS, -1))
        if i == 2:
            clone = cache.clone_rows([0, 1], cache.lengths[0], 40)
            cache.select_rows([0, 1]).extend_rows(clone)

    plain = _run(KVCache(LAYERS, ROWS, 40), between=rebuild)
    for prefetch in (False, True):
        offloaded = _run(KVCache(LAYERS, ROWS, 40, storage_device="cpu", prefetch=prefetch), between=rebuild)
        for (pk, pv), (ok, ov) in zip(plain, offloaded):
            assert torch.equal(pk, ok) and torch.equal(pv, ov)


def test_offloaded_storage_stays_put_and_appends_return_copies():
    cache = KVCache(LAYERS, ROWS, 40, storage_device="cpu")
    _run(cache)
    cache.to(torch.device("meta"))  # what Accelerate's hooks do to a keyword argument
    assert all(t.device.type == "cpu" for t in cache.keys + cache.values)
    k = torch.randn(ROWS, HEADS, 2, DIM)
    out_k, _ = cache.append(0, k, k)
    start, end = cache.keys[0].data_ptr(), cache.keys[0].data_ptr() + cache.keys[0].nbytes
    assert not start <= out_k.data_ptr() < end
    plain = KVCache(LAYERS, ROWS, 40)
    _run(plain)
    plain.to(torch.device("meta"))
    assert all(t.device.type == "meta" for t in plain.keys + plain.values)


def test_pipeline_with_offloaded_cache_samples_the_same_video(fast_pipe):  # noqa: F811
    """Semantic VPG on the InfinityStar fixture (the corrupted rows join and leave the offloaded cache)."""
    kw = dict(prompt="a cat", num_frames=17, **SIZE, vpg_scale=2.0, output_type="latent")
    reference, offloaded = SamplerTrace(), SamplerTrace()
    with record_draws() as draws:
        plain = fast_pipe(**kw, generator=torch.Generator().manual_seed(0), trace=reference).frames
    fast_pipe.enable_kv_cache_offload("cpu")
    try:
        assert fast_pipe.kv_cache_device == torch.device("cpu")
        with record_draws(draws) as replayed:
            frames = fast_pipe(**kw, generator=torch.Generator().manual_seed(0), trace=offloaded).frames
    finally:
        fast_pipe.disable_kv_cache_offload()
    assert fast_pipe.kv_cache_device is None
    assert reference.corrupted, "VPG's corrupted rows ran"
    assert_same_steps(reference, offloaded, replayed, gain=2.0)
    torch.testing.assert_close(frames, plain, atol=layout_atol(plain), rtol=0)


@cuda_only("the side-stream prefetch and pinned host storage need CUDA")
def test_offloaded_cache_on_cuda_prefetches_and_matches(fast_pipe):  # noqa: F811
    """On CUDA: the storage is pinned host memory, copies come from a side stream, and the run takes the same
    steps as with the cache on the GPU (scripts/gpu_check.sh runs the cuda-marked tests)."""
    fast_pipe.to("cuda")
    kw = dict(prompt="a cat", num_frames=17, **SIZE, vpg_scale=2.0, output_type="latent")
    reference, offloaded = SamplerTrace(), SamplerTrace()
    try:
        with record_draws() as draws:
            fast_pipe(**kw, generator=torch.Generator("cuda").manual_seed(0), trace=reference)
        fast_pipe.enable_kv_cache_offload()
        with record_draws(draws) as replayed:
            fast_pipe(**kw, generator=torch.Generator("cuda").manual_seed(0), trace=offloaded)
        assert_same_steps(reference, offloaded, replayed, gain=2.0)
        cache = KVCache(2, 1, 8, storage_device="cpu")
        first, second = torch.randn(1, 2, 3, 4, device="cuda"), torch.randn(1, 2, 2, 4, device="cuda")
        for layer in range(2):
            cache.append(layer, first, first)
        assert cache.keys[1].is_pinned() and cache.keys[1].device.type == "cpu"
        cache.append(0, second, second)
        assert cache._stream is not None and cache._next is not None  # layer 1 is being copied meanwhile
        out_k, _ = cache.append(1, second, second)
        assert out_k.device.type == "cuda" and torch.equal(out_k, torch.cat([first, second], dim=2))
    finally:
        fast_pipe.disable_kv_cache_offload()
        fast_pipe.to("cpu")
