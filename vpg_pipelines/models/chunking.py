"""Forward chunking over the token axis (diffusers' ``enable_forward_chunking``).

A transformer block computes every token's feed-forward, norms and attention *queries* independently
of the other tokens; only the attention's keys and values are shared. Running those per-token parts on
``chunk_size`` tokens at a time bounds their intermediate tensors (the SwiGLU / GELU hidden layer is 4x
the width, the float32 norms 2x) by the chunk instead of the whole step: the same computation split
into chunks, so the outputs are equal up to rounding (matrix products over fewer rows may take another
kernel path).

Models opt in per module: a module with ``set_chunk_feed_forward(chunk_size, dim)`` (diffusers' hook
name) runs chunked; :class:`ForwardChunkingMixin` gives the model diffusers' ``enable_forward_chunking`` /
``disable_forward_chunking`` that set it on every such module.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import nn

DEFAULT_CHUNK_TOKENS = 4096
"""Tokens per chunk when ``enable_forward_chunking()`` gets no ``chunk_size``.

diffusers' default is 1 (one token per chunk), which on a 72,000-token step would launch 72,000 small
matrix products per layer; 4096 tokens keep each product large enough to run at full speed while the
hidden layer of a chunk stays a few hundred MiB on the 8B models."""


def token_spans(tokens: int, chunk_size: int) -> list[slice]:
    """Consecutive slices of at most ``chunk_size`` tokens covering ``range(tokens)`` (the last may be shorter)."""
    return [slice(start, min(start + chunk_size, tokens)) for start in range(0, tokens, chunk_size)]


def chunks_needed(tokens: int, chunk_size: int | None) -> bool:
    """Whether ``tokens`` tokens run in more than one chunk of ``chunk_size``."""
    return chunk_size is not None and tokens > chunk_size


def chunked_over_tokens(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk_size: int | None,
                        residual: bool = False) -> torch.Tensor:
    """``fn(x)`` (plus ``x`` when ``residual``) for ``x`` ``(R, N, C)``, ``fn`` applied to ``chunk_size`` tokens at
    a time and written into one output (no list of chunks and no concatenation: one output-sized tensor).

    ``fn`` must treat every token on its own (feed-forward, norms); without chunking it is ``fn(x)``.
    """
    if not chunks_needed(x.shape[1], chunk_size):
        return x + fn(x) if residual else fn(x)
    out = None
    for span in token_spans(x.shape[1], chunk_size):
        part = x[:, span]
        y = part + fn(part) if residual else fn(part)
        if out is None:
            out = y.new_empty((*x.shape[:-1], y.shape[-1]))
        out[:, span] = y
    return out


def check_chunking(chunk_size: int | None, dim: int) -> int:
    """``chunk_size`` (``None``: :data:`DEFAULT_CHUNK_TOKENS`) after checking both arguments."""
    if isinstance(dim, bool) or dim != 1:
        raise ValueError(f"`dim` must be 1 (the token axis; these transformers chunk tokens only), got {dim!r}")
    if chunk_size is None:
        return DEFAULT_CHUNK_TOKENS
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive number of tokens (or None for {DEFAULT_CHUNK_TOKENS}), "
                         f"got {chunk_size!r}")
    return int(chunk_size)


class ChunkedFeedForward:
    """Mixin for an ``nn.Module`` whose ``forward`` reads ``self.chunk_size`` (``None``: not chunked)."""

    chunk_size: int | None = None

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 1) -> None:
        """diffusers' per-module hook: run on ``chunk_size`` tokens at a time (``None``: all at once)."""
        self.chunk_size = None if chunk_size is None else check_chunking(chunk_size, dim)


class ForwardChunkingMixin:
    """``enable_forward_chunking`` / ``disable_forward_chunking`` for a model (diffusers' names and arguments)."""

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 1) -> None:
        """Run the per-token parts of every block (and the output head) on ``chunk_size`` tokens at a time.

        Args:
            chunk_size: tokens per chunk (``None``: :data:`DEFAULT_CHUNK_TOKENS`). Steps with at most this
                many tokens run unchunked.
            dim: the axis to chunk; only 1 (tokens) is supported (diffusers also offers 0, the batch).
        """
        size = check_chunking(chunk_size, dim)
        _set_on_modules(self, size)

    def disable_forward_chunking(self) -> None:
        """Run every step in one piece again."""
        _set_on_modules(self, None)

    @property
    def forward_chunk_size(self) -> int | None:
        """Tokens per chunk, or ``None`` when forward chunking is off."""
        return getattr(self, "_forward_chunk_size", None)


def _set_on_modules(model: nn.Module, chunk_size: int | None) -> None:
    model._forward_chunk_size = chunk_size
    for module in model.modules():
        if module is not model and isinstance(module, ChunkedFeedForward):
            module.set_chunk_feed_forward(chunk_size)
