"""``auto``: the least costly memory savers whose planned peak fits the free accelerator memory.

Candidates are tried in this order (cost: speed first, then output changes):

1. no offload; 2. ``model`` offload (the text encoder leaves before sampling; a few seconds of weight
transfers per call); 3. ``group`` offload (every transformer block streamed in at every step, overlapped
with compute on a side stream where the device has streams); 4.–7. the same with ``int8`` then ``nf4``
weights (outputs change within the errors in ``docs/memory.md``; ``nf4`` only where it runs);
8. ``sequential`` offload (slowest), then with ``int8``.

Offloading never changes the output, so it comes before quantization; sequential offloading is so slow
(one synchronous copy per layer) that quantizing with group offloading is preferred to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..devices import describe, device_memory, pick_device, savers
from .calls import current_quantization
from .offload import apply_offload
from .planner import MemoryEstimate
from .quantization import apply_quantization

CANDIDATES: tuple[tuple[str, str], ...] = (
    ("none", "none"), ("none", "model"), ("none", "group"),
    ("int8", "none"), ("int8", "model"), ("int8", "group"),
    ("nf4", "model"), ("nf4", "group"),
    ("none", "sequential"), ("int8", "sequential"),
)
"""(quantization, offload) in the order ``auto`` tries them."""

MARGIN_BYTES = 256 * 1024**2
MARGIN_FRACTION = 0.05


def usable(free_bytes: int) -> int:
    """Bytes of ``free_bytes`` a plan may take: 5 % (at least 256 MiB) stay free for the allocator's
    rounding and fragmentation and the kernels' workspaces, which the plan does not count."""
    return int(free_bytes - max(MARGIN_BYTES, MARGIN_FRACTION * free_bytes))


@dataclass(frozen=True)
class Choice:
    """The savers ``auto`` picked (``fits`` False: nothing fits; the smallest plan is returned)."""

    quantization: str
    offload: str
    peak: int
    fits: bool
    estimate: MemoryEstimate


def choose_savers(
    pipe: Any,
    free_bytes: int,
    quantizations: tuple[str, ...] | None = None,
    offloads: tuple[str, ...] | None = None,
    device: str | torch.device | None = None,
    **call_kwargs: Any,
) -> Choice:
    """The first of :data:`CANDIDATES` (restricted to ``quantizations`` / ``offloads``) whose planned peak
    for ``pipe(**call_kwargs)`` fits :func:`usable` ``(free_bytes)``.

    ``quantizations`` defaults to the pipeline's own weights (``"none"``) plus those of ``int8`` / ``nf4``
    that run on ``device`` (default: the one :func:`~vpg_pipelines.devices.pick_device` picks; ``nf4``: CUDA,
    ROCm, XPU); a pipeline whose transformer is already quantized is planned as it is. Given ``quantizations``
    are planned as given (``vpg memory`` plans for a GPU the machine may not have).
    """
    current = current_quantization(pipe.transformer)
    if quantizations is None:
        runnable = savers(pick_device() if device is None else device)
        quantizations = tuple(q for q in ("none", "int8", "nf4") if q in runnable)
    if current != "none":
        quantizations = ("none",)  # already quantized: plan what it holds
    offloads = offloads or ("none", "model", "group", "sequential")
    estimates: dict[str, MemoryEstimate] = {}
    budget = usable(free_bytes)
    best: Choice | None = None
    for quantization, offload in CANDIDATES:
        if quantization not in quantizations or offload not in offloads:
            continue
        if quantization not in estimates:
            planned = None if quantization == "none" else quantization
            estimates[quantization] = pipe.estimate_memory(quantization=planned, **call_kwargs)
        estimate = estimates[quantization]
        peak = estimate.peak(offload)
        label = current if quantization == "none" else quantization
        if peak <= budget:
            return Choice(label, offload, peak, True, estimate)
        if best is None or peak < best.peak:
            best = Choice(label, offload, peak, False, estimate)
    if best is None:
        raise ValueError(f"no candidate among quantizations {quantizations} and offloads {offloads}")
    return best


def fit_to_memory(
    pipe: Any,
    free_bytes: int | None = None,
    device: str | torch.device | None = None,
    quantizations: tuple[str, ...] | None = None,
    **call_kwargs: Any,
) -> Choice:
    """Pick (:func:`choose_savers`) and apply the savers that fit ``pipe(**call_kwargs)`` on ``device``.

    ``device`` defaults to :func:`~vpg_pipelines.devices.pick_device`'s; ``free_bytes`` to its free memory
    (:func:`~vpg_pipelines.devices.device_memory`: CUDA / ROCm / XPU through ``torch.accelerator``, ``mps``
    through Metal's recommended working set). The quantization is applied to the transformer
    (``quantization.apply_quantization``), then the offload mode (``offload.apply_offload``). Returns the
    :class:`Choice`; when nothing fits it applies the smallest plan and says so (``fits`` False).
    """
    device = pick_device() if device is None else torch.device(device)
    if free_bytes is None:
        memory = device_memory(device)
        if memory is None:
            raise ValueError(f"`free_bytes` is needed on {describe(device)}: it has no free-memory figure to plan "
                             "against")
        free_bytes = memory.free
    current = current_quantization(pipe.transformer)
    choice = choose_savers(pipe, int(free_bytes), quantizations=quantizations, device=device, **call_kwargs)
    if choice.quantization != current:
        apply_quantization(pipe, choice.quantization)
    apply_offload(pipe, choice.offload, device)
    return choice
