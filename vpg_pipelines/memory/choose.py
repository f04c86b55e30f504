"""``auto``: the least costly memory savers whose planned peak fits the free accelerator memory.

Candidates are tried in this order (cost: speed first, then output changes):

1. no offload; 2. ``model`` offload (the text encoder leaves before sampling; a few seconds of weight
transfers per call); 3. ``group`` offload (every transformer block streamed in at every step, overlapped
with compute on a side stream where the device has streams); 4.–7. the same with ``int8`` then ``nf4``
weights (outputs change within the errors in ``docs/memory.md``; ``nf4`` only where it runs);
8. ``sequential`` offload (slowest), then with ``int8``.

Offloading never changes the output, so it comes before quantization; sequential offloading is so slow
(one synchronous copy per layer) that quantizing with group offloading is preferred to it.

Within each candidate, when it does not fit as the pipeline is set, the activation savers are tried before
the next candidate, cheapest first: forward chunking (``transformer.enable_forward_chunking``: the same
computation in token chunks, outputs equal up to rounding, about the same speed), then tiled decoding
(``vae.enable_tiling``, InfinityStar: some decoder work repeated where tiles overlap, a seam error far below
the 8-bit output step), then both. They cost less than any move down the list. When no candidate fits
with them, the candidates are tried again in the same order with both savers and the K/V cache kept in host
memory (``pipe.enable_kv_cache_offload``: outputs unchanged, but the attended cache crosses the bus at every
step, the next layer's entries copied while a layer computes): the long videos whose cache outgrows the card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..devices import describe, device_memory, pick_device, savers
from ..models.infinity_star.vae_tiling import TileSettings
from .calls import current_quantization, planned_chunking, planned_kv_offload, planned_tiling
from .offload import apply_offload
from .planner import MemoryEstimate, combine_savers
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


SAVER_STEPS: tuple[tuple[bool, bool], ...] = ((True, False), (False, True), (True, True))
"""(forward chunking, tiled decoding) in the order ``auto`` adds them to a candidate that does not fit."""


@dataclass(frozen=True)
class Choice:
    """The savers ``auto`` picked (``fits`` False: nothing fits; the smallest plan is returned).

    ``forward_chunking`` (tokens per chunk) and ``vae_tiling`` are what the pipeline runs with under the
    choice (``None``: off), whether it had them already or the choice adds them.
    """

    quantization: str
    offload: str
    peak: int
    fits: bool
    estimate: MemoryEstimate
    forward_chunking: int | None = None
    vae_tiling: TileSettings | None = None
    kv_cache_offload: bool = False

    def savers(self) -> list[str]:
        """The activation / cache savers the choice runs with, readable (empty: none)."""
        out = [f"forward chunking {self.forward_chunking}"] if self.forward_chunking is not None else []
        if self.vae_tiling is not None:
            out.append(f"tiled decoding {self.vae_tiling.min_height}x{self.vae_tiling.min_width}")
        if self.kv_cache_offload:
            out.append("K/V cache in host memory")
        return out


def choose_savers(
    pipe: Any,
    free_bytes: int,
    quantizations: tuple[str, ...] | None = None,
    offloads: tuple[str, ...] | None = None,
    device: str | torch.device | None = None,
    activation_savers: bool = True,
    **call_kwargs: Any,
) -> Choice:
    """The first of :data:`CANDIDATES` (restricted to ``quantizations`` / ``offloads``) whose planned peak
    for ``pipe(**call_kwargs)`` fits :func:`usable` ``(free_bytes)``, each tried as the pipeline is set and
    then (``activation_savers``) with forward chunking / tiled decoding added (:data:`SAVER_STEPS`).

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
    chunk_now = planned_chunking(pipe.transformer, None)
    tiles_now = planned_tiling(pipe.vae, None)
    tileable = hasattr(pipe.vae, "enable_tiling")
    lean_kwargs = {"forward_chunking": chunk_now or True, "vae_tiling": True if tileable and tiles_now is None
                   else None}
    kv_now = planned_kv_offload(pipe, None)
    estimates: dict[tuple[str, bool, bool], MemoryEstimate] = {}

    def estimate(quantization: str, lean: bool, kv: bool = False) -> MemoryEstimate:
        if (quantization, lean, kv) not in estimates:
            planned = None if quantization == "none" else quantization
            extra = {**(lean_kwargs if lean else {}), **({"kv_cache_offload": True} if kv else {})}
            estimates[quantization, lean, kv] = pipe.estimate_memory(quantization=planned, **extra, **call_kwargs)
        return estimates[quantization, lean, kv]

    budget = usable(free_bytes)
    best: Choice | None = None
    last_resort = []  # the K/V cache in host memory: tried only when nothing else fits (it costs bus time per step)
    for quantization, offload in CANDIDATES:
        if quantization not in quantizations or offload not in offloads:
            continue
        label = current if quantization == "none" else quantization
        options = [(estimate(quantization, False), chunk_now, tiles_now, kv_now)]
        if activation_savers:
            plain, lean = options[0][0], estimate(quantization, True)
            chunk_lean, tiles_lean = planned_chunking_of(lean), planned_tiling(pipe.vae, True) if tileable else None
            for chunked, tiled in SAVER_STEPS:
                if tiled and not tileable:
                    continue
                options.append((combine_savers(plain, lean, chunked, tiled), chunk_lean if chunked else chunk_now,
                                tiles_lean if tiled else tiles_now, kv_now))
            if not kv_now:
                last_resort.append((label, offload, quantization, chunk_lean, tiles_lean))
        for planned, chunk, tiles, kv in options:
            peak = planned.peak(offload)
            choice = Choice(label, offload, peak, peak <= budget, planned, chunk, tiles, kv)
            if choice.fits:
                return choice
            if best is None or peak < best.peak:
                best = choice
    for label, offload, quantization, chunk, tiles in last_resort:
        planned = estimate(quantization, True, True)
        peak = planned.peak(offload)
        choice = Choice(label, offload, peak, peak <= budget, planned, chunk, tiles, True)
        if choice.fits:
            return choice
        if peak < best.peak:
            best = choice
    if best is None:
        raise ValueError(f"no candidate among quantizations {quantizations} and offloads {offloads}")
    return best


def planned_chunking_of(estimate: MemoryEstimate) -> int | None:
    """Tokens per chunk an estimate was planned with (``None``: unchunked)."""
    value = estimate.settings.get("forward_chunking", "off")
    return None if value == "off" else int(value)


def apply_activation_savers(pipe: Any, forward_chunking: int | None, vae_tiling: TileSettings | None,
                            kv_cache_offload: bool = False) -> None:
    """Turn on what a :class:`Choice` runs with (what is already on stays on)."""
    if kv_cache_offload and pipe.kv_cache_device is None:
        pipe.enable_kv_cache_offload()
    if forward_chunking is not None:
        pipe.transformer.enable_forward_chunking(forward_chunking)
    if vae_tiling is not None:
        pipe.vae.enable_tiling(vae_tiling.min_height, vae_tiling.min_width, vae_tiling.stride_height,
                               vae_tiling.stride_width)


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
    (``quantization.apply_quantization``), then the offload mode (``offload.apply_offload``), forward
    chunking and tiled decoding. Returns the :class:`Choice`; when nothing fits it applies the smallest plan
    and says so (``fits`` False).
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
    apply_activation_savers(pipe, choice.forward_chunking, choice.vae_tiling, choice.kv_cache_offload)
    return choice
