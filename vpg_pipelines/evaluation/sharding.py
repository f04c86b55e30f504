"""Fixed chunks of sample indices, one seed per sample, and chunks dealt to processes.

Sample ``i`` always lies in chunk ``i // chunk_size`` and draws from its own generator seeded from
``(seed, i)``; a chunk is computed as the same fixed batches whichever process runs it. So the output
does not depend on how many processes share the work (bit for bit on one machine with the same
thread settings; across devices only up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``: ``numpy.random.SeedSequence([seed, index])``'s first 64-bit word.

    A hash of both numbers, so runs with different base seeds share no sample seeds (``seed + index``
    would: seed 0 sample 1 = seed 1 sample 0).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed}, index={index}")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def sample_generators(seed: int, indices: range | list[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per sample (the pipelines' convention: image ``i`` depends only on its own)."""
    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]


@dataclass(frozen=True)
class ChunkPlan:
    """``total`` samples cut into chunks of ``chunk_size`` (the last one may be shorter)."""

    total: int
    chunk_size: int

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ValueError(f"nothing to sample: the protocol yields {self.total} samples")
        if self.chunk_size < 1:
            raise ValueError(f"--chunk-size must be an integer >= 1, got {self.chunk_size}")

    @property
    def num_chunks(self) -> int:
        return -(-self.total // self.chunk_size)

    def chunk_of(self, index: int) -> int:
        return index // self.chunk_size

    def indices(self, chunk: int) -> range:
        if not 0 <= chunk < self.num_chunks:
            raise IndexError(f"chunk {chunk} is outside [0, {self.num_chunks - 1}]")
        start = chunk * self.chunk_size
        return range(start, min(start + self.chunk_size, self.total))


def batches(indices: range, batch_size: int) -> list[range]:
    """A chunk's fixed pipeline batches: ``batch_size`` samples each from its start (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1, got {batch_size}")
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def deal(chunks: list[int], process_index: int, num_processes: int) -> list[int]:
    """The chunks one process runs: every ``num_processes``-th of the (ordered) pending list."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process index {process_index} outside [0, {num_processes - 1}]")
    return list(chunks[process_index::num_processes])
