"""The memory plan of one pipeline call: accelerator bytes per phase and offload mode, and the peak.

Phases: encoding the prompt (text models), every sampler step (each of its cache events: the
forward, VPG's rows joining or leaving, ``resample``'s clone and replay), and decoding. A phase holds

* the weights resident on the accelerator under the offload mode (:mod:`.weights`),
* the K/V cache alive at that moment (:mod:`.kv_timeline`, exact),
* activations: the call's own (:mod:`.replay`), plus what the sampler keeps from the previous step
  (its logits, guided logits) and, after the forward, the guidance and sampling temporaries, plus the
  sampler's state (step inputs, latent, codes; estimated from their sizes).

Offload modes (see :mod:`.offload` for how each is applied):

* ``none`` — every component on the accelerator.
* ``model`` — ``enable_model_cpu_offload``: the text encoder on the accelerator only while the prompt
  is encoded, the transformer only while sampling (it is released before decoding), the VAE (small,
  also used inside the sampling loop) always.
* ``group`` — diffusers' block-level group offloading of the text encoder and the transformer (CUDA
  streams prefetch the next block, so two blocks are resident), the VAE kept on the accelerator.
* ``sequential`` — ``enable_sequential_cpu_offload``: one layer (with its parents' own parameters) at
  a time, the VAE kept on the accelerator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..models.adapter import ScaleStep
from .kv_timeline import Forward, KVStep
from .report import format_estimate
from .weights import WeightLayout

OFFLOAD_MODES = ("none", "model", "group", "sequential")


@dataclass(frozen=True)
class Phase:
    """Accelerator bytes at one moment of the call."""

    name: str
    step: int | None
    weights: int
    kv: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.activations


@dataclass
class OffloadPlan:
    """Every phase under one offload mode and the one that holds the peak."""

    mode: str
    phases: list[Phase]

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)


@dataclass
class PlanInputs:
    """What the planner needs to know about one call (built by :mod:`.calls`).

    Attributes:
        settings: the call as planned (for the report).
        steps: the sampler's steps; ``batch`` samples, ``prefixes`` per step (2 on VPG-guided steps).
        timeline: the K/V cache per step.
        weights: per component (``text_encoder``, ``transformer``, ``vae``).
        activation: ``Forward -> bytes`` (a replay); ``state``: ``(step index, batch) -> bytes`` of the
            sampler's own state during the step (an estimate).
        vocab: logit values per site of a step; ``cfg``: CFG / APG rows present; ``guided``: VPG steps.
        sampling_bytes: bytes per logit value the sampling step allocates (filter, softmax).
        decode: activations of decoding; ``encode``: of encoding the prompt (None: no text encoder run);
            ``reference_encode``: of encoding a reference video with the VAE (InfinityStar-Interact; None: none).
        stream: CUDA streams for group offloading (prefetch: two blocks resident).
        scoring: per step, activation bytes a K/V budget's scoring adds to the step's forward (an estimate).
        kv_on_host: the cache's storage lives in host memory (``enable_kv_cache_offload``): the timeline is
            host memory, the accelerator holds only the copies the replayed forwards make.
    """

    settings: dict[str, Any]
    steps: list[ScaleStep]
    batch: int
    timeline: list[KVStep]
    weights: dict[str, WeightLayout]
    activation: Callable[[Forward], int]
    state: Callable[[int, int], int]
    vocab: Callable[[ScaleStep], int]
    cfg: bool
    guided: set[int]
    refresh: str
    sampling_bytes: int
    decode: int
    encode: int | None
    stream: bool = True
    notes: list[str] = field(default_factory=list)
    scoring: dict[int, int] = field(default_factory=dict)
    reference_encode: int | None = None
    kv_on_host: bool = False


@dataclass
class MemoryEstimate:
    """The planned accelerator memory of a call (``pipe.estimate_memory(...)``).

    Attributes:
        settings: the call as planned.
        weights: bytes per component (for the planned dtype / quantization).
        kv: the cache per step (:class:`~.kv_timeline.KVStep`); ``kv_peak`` and ``kv_peak_step``.
        activations: per step, the largest activation total of its phases (without weights and cache).
        decode, text_encoder: activations of decoding and of encoding the prompt; ``reference_encode``: of
            encoding a reference video (InfinityStar-Interact).
        plans: per offload mode, every phase and the peak.
    """

    settings: dict[str, Any]
    weights: dict[str, int]
    kv: list[KVStep]
    activations: dict[int, int]
    decode: int
    text_encoder: int | None
    plans: dict[str, OffloadPlan]
    notes: list[str] = field(default_factory=list)
    reference_encode: int | None = None

    @property
    def kv_peak(self) -> int:
        return max((s.peak for s in self.kv), default=0)

    @property
    def kv_peak_step(self) -> int | None:
        return max(self.kv, key=lambda s: s.peak).index if self.kv else None

    @property
    def largest_step(self) -> int:
        return max(self.activations, key=self.activations.get)

    def peak(self, offload: str = "none") -> int:
        """Planned peak bytes under ``offload``."""
        return self.plans[offload].peak.total

    def fits(self, free_bytes: int, offload: str = "none") -> bool:
        return self.peak(offload) <= free_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "weights": self.weights,
            "kv_peak": self.kv_peak,
            "kv_peak_step": self.kv_peak_step,
            "kv_after_step": {s.index: s.after for s in self.kv},
            "activations_largest_step": self.largest_step,
            "activations_largest": self.activations[self.largest_step],
            "decode": self.decode,
            "text_encoder": self.text_encoder,
            "reference_encode": self.reference_encode,
            "plans": {m: {"peak": p.peak.total, "phase": p.peak.name, "step": p.peak.step,
                          "weights": p.peak.weights, "kv": p.peak.kv, "activations": p.peak.activations}
                      for m, p in self.plans.items()},
            "notes": self.notes,
        }

    def __str__(self) -> str:
        return format_estimate(self)


def combine_savers(plain: MemoryEstimate, lean: MemoryEstimate, chunked: bool, tiled: bool) -> MemoryEstimate:
    """The estimate with forward chunking only, tiling only, both or neither, from one estimate without and
    one with both (the same call otherwise). Chunking changes only the sampler steps' activations and
    tiling only the decode's, so each phase comes from the estimate that has its saver as wanted."""
    if [p.name for p in plain.plans["none"].phases] != [p.name for p in lean.plans["none"].phases]:
        raise ValueError("the two estimates plan different calls")

    def pick(phase: Phase, other: Phase) -> Phase:
        if phase.name == "decode":
            return other if tiled else phase
        return other if chunked and phase.step is not None else phase

    plans = {mode: OffloadPlan(mode, [pick(a, b) for a, b in zip(plain.plans[mode].phases, lean.plans[mode].phases)])
             for mode in plain.plans}
    settings = {**plain.settings}
    for key, use_lean in (("forward_chunking", chunked), ("vae_tiling", tiled)):
        settings[key] = (lean if use_lean else plain).settings[key]
    return MemoryEstimate(
        settings=settings, weights=plain.weights, kv=plain.kv,
        activations=dict(lean.activations if chunked else plain.activations),
        decode=lean.decode if tiled else plain.decode, text_encoder=plain.text_encoder, plans=plans,
        notes=list(plain.notes),
    )


def _resident(layouts: dict[str, WeightLayout], mode: str, phase: str, stream: bool) -> int:
    """Weights on the accelerator in ``phase`` (``encode`` / ``sample`` / ``decode``) under ``mode``."""
    active = {"encode": "text_encoder", "sample": "transformer", "decode": "vae"}[phase]
    total = 0
    for name, layout in layouts.items():
        if mode == "none" or name == "vae":
            total += layout.total
        elif name == active:
            total += layout.total if mode == "model" else layout.resident(mode, stream)
    return total


def _step_logits(inputs: PlanInputs, record: KVStep, step: ScaleStep) -> tuple[int, int]:
    """``(kept, transient)``: bytes the step's logits and guided logits keep alive after its forward, and
    the guidance + sampling temporaries on top of them."""
    n, vocab = step.num_sites, inputs.vocab(step)
    per_sample = inputs.batch * n * vocab * 4
    prefixes = record.rows // max(1, (2 if inputs.cfg else 1) * inputs.batch)
    kept = record.rows * n * vocab * 4  # the forward's float32 logits
    if inputs.cfg:
        kept += prefixes * per_sample  # CFG / APG combine per prefix branch
    if step.index in inputs.guided:
        kept += per_sample  # the VPG combine
        if inputs.refresh == "resample":
            kept += (record.rows + 1) * n * vocab * 4  # the replay's logits and the corrupted branch
    transient = inputs.batch * n * vocab * inputs.sampling_bytes
    return kept, transient


def build_estimate(inputs: PlanInputs) -> MemoryEstimate:
    """Combine weights, cache and activations into every phase under every offload mode."""
    phase_parts: list[tuple[str, str, int | None, int, int]] = []  # (name, kind, step, kv, activations)
    activations: dict[int, int] = {}
    carry = 0
    if inputs.encode is not None:
        phase_parts.append(("encode prompt", "encode", None, 0, inputs.encode))
    if inputs.reference_encode is not None:  # the VAE alone, like decoding
        phase_parts.append(("encode reference video", "decode", None, 0, inputs.reference_encode))
    for record, step in zip(inputs.timeline, inputs.steps):
        kept, transient = _step_logits(inputs, record, step)
        state = inputs.state(step.index, inputs.batch)
        largest = 0
        for what, kv, forward in record.events:
            act = state + carry + (inputs.activation(forward) if forward is not None else 0)
            if what == "forward":
                act += inputs.scoring.get(step.index, 0)
            phase_parts.append((f"step {step.index}: {what}", "sample", step.index, kv, act))
            largest = max(largest, act)
        act = state + kept + transient
        phase_parts.append((f"step {step.index}: guidance + sampling", "sample", step.index, record.after, act))
        activations[step.index] = max(largest, act)
        carry = kept
    phase_parts.append(("decode", "decode", None, 0, inputs.decode))
    plans = {}
    for mode in OFFLOAD_MODES:
        phases = [Phase(name, step, _resident(inputs.weights, mode, kind, inputs.stream),
                        0 if inputs.kv_on_host else kv, act)
                  for name, kind, step, kv, act in phase_parts]
        plans[mode] = OffloadPlan(mode, phases)
    return MemoryEstimate(
        settings=inputs.settings,
        weights={name: layout.total for name, layout in inputs.weights.items()},
        kv=inputs.timeline,
        activations=activations,
        decode=inputs.decode,
        text_encoder=inputs.encode,
        plans=plans,
        notes=list(inputs.notes),
        reference_encode=inputs.reference_encode,
    )
