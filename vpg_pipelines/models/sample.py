"""Sampling from guided logits with the official VAR / Infinity semantics."""

from __future__ import annotations

import torch

Generators = torch.Generator | list[torch.Generator] | None


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask logits (last dim) outside the top-k and the top-p nucleus with ``-inf`` (a new tensor).

    top-k keeps logits >= the k-th largest (ties kept); top-p sorts ascending and drops the entries
    whose cumulative probability is <= 1 - p, always keeping the largest (official semantics).
    """
    logits = logits.clone()
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, float("-inf"))
    if top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        logits.masked_fill_(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def multinomial_rows(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One draw per row of ``probs`` (B, N, V) -> (B, N).

    A single generator draws all rows at once (the official call); a list draws sample ``b`` with
    ``generator[b]`` so that a sample does not depend on its batch neighbours.
    """
    batch, n, vocab = probs.shape
    if isinstance(generator, list):
        out = [_draw(probs[b].reshape(-1, vocab), g) for b, g in enumerate(generator)]
        return torch.stack(out).view(batch, n)
    return _draw(probs.reshape(-1, vocab), generator).view(batch, n)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = probs.device
    if generator is not None and generator.device != device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, replacement=True, generator=generator)[:, 0].to(device)


def sample_top_k_top_p(
    logits: torch.Tensor, top_k: int, top_p: float, generator: Generators
) -> torch.Tensor:
    """Filter, softmax and draw: ``(B, N, V)`` float logits -> ``(B, N)`` indices."""
    filtered = top_k_top_p_filter(logits.float(), top_k, top_p)
    return multinomial_rows(filtered.softmax(dim=-1), generator)


def gumbel_softmax(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Soft Gumbel-softmax with a generator (VAR's ``more_smooth``)."""
    noise = torch.empty_like(logits)
    if generator is not None and generator.device != logits.device:
        noise = torch.empty(logits.shape, device=generator.device).exponential_(generator=generator).to(logits.device)
    else:
        noise.exponential_(generator=generator)
    return ((logits - noise.log()) / tau).softmax(dim=-1)
