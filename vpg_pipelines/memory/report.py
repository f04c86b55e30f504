"""Text rendering of a :class:`~.planner.MemoryEstimate` (``print(pipe.estimate_memory(...))``, ``vpg memory``).

The planner's ``MemoryEstimate.__str__`` calls :func:`format_estimate`; this module reads the estimate's fields
and imports nothing from the planner.
"""

from __future__ import annotations

from typing import Any

GIB = 1024**3


def gib(nbytes: int) -> str:
    """``12.34 GiB``, or ``56.7 MiB`` below 1 GiB."""
    if nbytes >= GIB:
        return f"{nbytes / GIB:.2f} GiB"
    return f"{nbytes / 1024**2:.1f} MiB"


def format_estimate(estimate: Any) -> str:
    """A readable summary of a :class:`~.planner.MemoryEstimate`: settings, per-component figures, then the
    peak per offload mode (in the planner's order of the modes)."""
    s = estimate.settings
    lines = ["planned accelerator memory (GiB = 2^30 bytes, MiB = 2^20)",
             "  " + ", ".join(f"{k} {v}" for k, v in s.items())]
    for name, nbytes in estimate.weights.items():
        lines.append(f"  weights  {name:<13} {gib(nbytes):>12}")
    kv_step = estimate.kv_peak_step
    where = "  in host memory (offloaded)" if s.get("kv_cache", "").startswith("host") else ""
    lines.append(f"  K/V cache peak          {gib(estimate.kv_peak):>12}  (step {kv_step}){where}")
    step = estimate.largest_step
    lines.append(f"  activations, largest    {gib(estimate.activations[step]):>12}  (step {step})")
    if estimate.text_encoder is not None:
        lines.append(f"  text encoder (activ.)   {gib(estimate.text_encoder):>12}")
    if getattr(estimate, "reference_encode", None) is not None:
        lines.append(f"  reference encode (act.) {gib(estimate.reference_encode):>12}")
    lines.append(f"  decode (activations)    {gib(estimate.decode):>12}")
    lines.append("  offload      peak        at")
    for mode, plan in estimate.plans.items():
        peak = plan.peak
        parts = f"weights {gib(peak.weights)} + K/V {gib(peak.kv)} + activations {gib(peak.activations)}"
        lines.append(f"  {mode:<11} {gib(peak.total):>10}  {peak.name} ({parts})")
    lines.extend(f"  note: {n}" for n in estimate.notes)
    return "\n".join(lines)
