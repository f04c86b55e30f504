"""Same-scale corruption of a prefix scale: which sites are replaced, by which donor, and how.

For scale j with n sites, ``floor(p * n)`` distinct sites are drawn uniformly; each takes a donor
drawn uniformly from the other ``n - 1`` sites of the same scale. A pattern is drawn per sample and
shared by that sample's real- and null-condition rows, so CFG inside the corrupted branch stays
coherent. All randomness comes from the caller's generator(s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Generators = torch.Generator | list[torch.Generator] | None


def corruption_count(num_sites: int, fraction: float) -> int:
    """``floor(p * n)``, robust to float error (0.29 * 100 is 28.999...)."""
    return min(num_sites, math.floor(fraction * num_sites + 1e-9))


def _generator_for(generators: Generators, sample: int) -> torch.Generator | None:
    return generators[sample] if isinstance(generators, list) else generators


@dataclass
class CorruptionPattern:
    """Per-sample donors of one scale.

    Attributes:
        source: ``(B, n)`` long; ``source[b, i]`` is the site whose input site ``i`` takes
            (``i`` itself when not selected).
        selected: ``(B, n)`` bool; the replaced sites.
        random_content: ``(B, n, C)`` codebook contents for the ``"codebook"`` mode, else ``None``.
    """

    source: torch.Tensor
    selected: torch.Tensor
    random_content: torch.Tensor | None = None


def draw_pattern(
    batch: int,
    num_sites: int,
    fraction: float,
    generators: Generators,
    random_content: Callable[[int, torch.Generator | None], torch.Tensor] | None = None,
) -> CorruptionPattern:
    """Draw one scale's corruption for every sample (on the generators' device)."""
    count = corruption_count(num_sites, fraction) if num_sites > 1 else 0
    sources, selected, contents = [], [], []
    for b in range(batch):
        gen = _generator_for(generators, b)
        device = gen.device if gen is not None else torch.device("cpu")
        src = torch.arange(num_sites, device=device)
        sel = torch.zeros(num_sites, dtype=torch.bool, device=device)
        if count:
            sites = torch.randperm(num_sites, generator=gen, device=device)[:count]
            donors = torch.randint(0, num_sites - 1, (count,), generator=gen, device=device)
            donors = donors + (donors >= sites).long()  # skip the site itself
            src[sites] = donors
            sel[sites] = True
        sources.append(src)
        selected.append(sel)
        if random_content is not None:
            contents.append(random_content(num_sites, gen))
    rc = torch.stack(contents) if random_content is not None else None
    return CorruptionPattern(torch.stack(sources), torch.stack(selected), rc)


def apply_corruption(
    content: torch.Tensor, position_ids: torch.Tensor, pattern: CorruptionPattern, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupted ``(content (B, n, C), position_ids (B, n))`` for one scale.

    ``full``: both from the donor; ``token``: the donor's content at the own position;
    ``position``: the own content at the donor's position; ``codebook``: a random codebook entry's
    content at the own position.
    """
    batch = content.shape[0]
    positions = position_ids.expand(batch, -1) if position_ids.dim() == 1 else position_ids
    src = pattern.source.to(content.device)
    gathered_content = content.gather(1, src[..., None].expand(-1, -1, content.shape[-1]))
    gathered_positions = positions.gather(1, src)
    if mode == "full":
        return gathered_content, gathered_positions
    if mode == "token":
        return gathered_content, positions
    if mode == "position":
        return content, gathered_positions
    if mode == "codebook":
        if pattern.random_content is None:
            raise ValueError("the 'codebook' corruption needs random codebook contents in the pattern")
        sel = pattern.selected.to(content.device)[..., None]
        return torch.where(sel, pattern.random_content.to(content), content), positions
    raise ValueError(f"unknown corruption mode {mode!r}")
