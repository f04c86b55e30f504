"""Write the planned-memory tables and the targets of docs/memory.md (between its generated-section markers)
and docs/results/memory_plan.json, from the planner on the released architectures (meta weights).

    python scripts/memory_table.py            # rewrites the generated sections (a few minutes on a CPU)
    python scripts/memory_table.py --check    # fails when docs/memory.md is not what it would write

Speed costs are **estimates** from a simple model (stated in the doc), not measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vpg_pipelines.loading.auto import released_pipeline  # noqa: E402
from vpg_pipelines.memory import OFFLOAD_MODES  # noqa: E402
from vpg_pipelines.memory.choose import CANDIDATES, usable  # noqa: E402
from vpg_pipelines.models.infinity.adapter import scale_steps as infinity_steps  # noqa: E402
from vpg_pipelines.models.infinity_star.adapter import plan_scale_steps  # noqa: E402
from vpg_pipelines.models.var.adapter import scale_steps as var_steps  # noqa: E402
from vpg_pipelines.registry import released_model, released_names  # noqa: E402

GIB = 1024**3
TEXT_TOKENS = 64
FORMATS = {"bf16": None, "int8": "int8", "nf4": "nf4"}
CONFIGS = {"CFG only": {"vpg_scale": 1.0}, "VPG all": {"vpg_scale": 1.5, "vpg_scales": "all"},
           "VPG semantic": {"vpg_scale": 1.5, "vpg_scales": "semantic"}}
CUDA_CONTEXT_GIB = 0.5
"""What a CUDA context and the framework take before the first tensor (not in the plan)."""
# the speed model (an estimate): an RTX 4090-class card
TFLOPS = 100e12  # sustained bf16 matrix throughput
PINNED_BPS = 20 * GIB  # host -> device over PCIe 4.0 x16, pinned memory (group offloading)
PAGEABLE_BPS = 10 * GIB  # the same from pageable memory (accelerate's model / sequential offload)
TARGETS = [
    ("Infinity-2B, 1024 px, all-scale VPG", "infinity-2b", {"height": 1024, "width": 1024, **CONFIGS["VPG all"]}, 12),
    ("Infinity-8B, 1024 px, VPG (semantic scales)", "infinity-8b",
     {"height": 1024, "width": 1024, **CONFIGS["VPG semantic"]}, 24),
    ("InfinityStar-8B, 480p, 81 frames, semantic VPG", "infinity-star-8b-480p",
     {"height": 480, "width": 848, "num_frames": 81, **CONFIGS["VPG semantic"]}, 24),
    ("VAR-d30, 256 px, batch 16, VPG", "var-d30", {"class_labels": list(range(16)), "vpg_scale": 1.3}, 12),
]


def gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def _call(pipe, size: dict, config: dict) -> dict:
    size = {k: v for k, v in size.items() if k != "official_args"}
    base = {"class_labels": [0]} if type(pipe).__name__ == "VPGVARPipeline" else {"prompt": "a photo"}
    return {**base, **size, **config}


def _plan(pipe, call: dict, quantization: str | None):
    dtype = torch.bfloat16
    return pipe.estimate_memory(dtype=dtype, quantization=quantization, text_tokens=TEXT_TOKENS, **call)


def _linear_params(module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def speed(pipe, estimate, sites: dict[int, int], offload: str) -> dict:
    """Estimated seconds of a call: transformer compute, plus weight transfers where they are not hidden."""
    t = pipe.transformer
    cfg = t.config
    params = _linear_params(t)
    width, depth = int(cfg.embed_dim), int(cfg.depth)
    forwards = [f for s in estimate.kv for _, _, f in s.events if f is not None]
    compute = []
    for f in forwards:
        tokens = sum(sites[i] for i in f.steps) if f.steps else f.last_tokens or 1
        keys = f.cached + tokens
        flops = 2 * params * tokens * f.rows + 4 * depth * width * tokens * keys * f.rows
        compute.append(flops / TFLOPS)
    weights = estimate.weights["transformer"]
    text = estimate.weights.get("text_encoder", 0)
    base = sum(compute)
    if offload == "none":
        total = base
    elif offload == "model":  # text encoder and transformer moved in and out once per call
        total = base + 2 * (weights + text) / PAGEABLE_BPS
    elif offload == "group":  # every block in per forward, overlapped with that block's compute
        per = weights / PINNED_BPS
        total = sum(max(c, per) for c in compute) + text / PINNED_BPS
    else:  # sequential: every layer's weights copied synchronously at every forward
        total = base + len(compute) * weights / PAGEABLE_BPS + text / PAGEABLE_BPS
    return {"seconds": total, "compute_seconds": base}


def tables() -> tuple[str, dict]:
    lines, data = [], {}
    for name in released_names():
        spec = released_model(name)[1]
        pipe = released_pipeline(name)
        lines.append(f"\n### {name}\n")
        lines.append("| size | guidance | weights | K/V peak | " + " | ".join(f"{m}" for m in OFFLOAD_MODES) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(OFFLOAD_MODES))
        for size_name, size in spec.sizes.items():
            for config_name, config in CONFIGS.items():
                for fmt, quantization in FORMATS.items():
                    call = _call(pipe, size, config)
                    estimate = _plan(pipe, call, quantization)
                    peaks = [estimate.peak(m) for m in OFFLOAD_MODES]
                    key = f"{name} {size_name} {config_name} {fmt}"
                    data[key] = estimate.to_dict()
                    lines.append(f"| {size_name} | {config_name} | {fmt}: {gib(estimate.weights['transformer'])} | "
                                 f"{gib(estimate.kv_peak)} | " + " | ".join(gib(p) for p in peaks) + " |")
    return "\n".join(lines) + "\n", data


def targets() -> tuple[str, dict]:
    lines, data = [], {}
    for title, name, call_config, target in TARGETS:
        pipe = released_pipeline(name)
        call = _call(pipe, {}, call_config)
        budget = usable(int((target - CUDA_CONTEXT_GIB) * GIB))
        plans = {q: _plan(pipe, call, None if q == "none" else q) for q in ("none", "int8", "nf4")}
        sites = {s.index: s.num_sites for s in plan_steps(pipe, plans["none"])}
        rows, chosen = [], None
        baseline = speed(pipe, plans["none"], sites, "none")["seconds"]
        for quantization, offload in CANDIDATES:
            estimate = plans[quantization]
            peak = estimate.peak(offload)
            fits = peak <= budget
            timing = speed(pipe, estimate, sites, offload)
            if fits and chosen is None:
                chosen = (quantization, offload, peak, timing["seconds"])
            slow = timing["seconds"] / baseline
            note = " (int8/nf4 compute: see text)" if quantization != "none" else ""
            rows.append(f"| {quantization} | {offload} | {gib(peak)} | {'yes' if fits else 'no'} | "
                        f"{timing['seconds']:.1f} s ({slow:.2f}x){note} |")
        assert chosen is not None, title
        q, o, peak, seconds = chosen
        lines.append(f"\n#### {title}: target {target} GB (plan must stay under {gib(budget)} GiB)\n")
        lines.append(f"**Met** with weights `{q}`, offload `{o}`: planned peak **{gib(peak)} GiB**, estimated "
                     f"{seconds:.1f} s per call against {baseline:.1f} s with everything on the GPU "
                     f"({seconds / baseline:.2f}x). Peak phase without offloading: "
                     f"{plans['none'].plans['none'].peak.name}.\n")
        lines.append("| weights | offload | planned peak (GiB) | fits | estimated time per call |")
        lines.append("|---|---|---|---|---|")
        lines.extend(rows)
        data[title] = {"target_gb": target, "budget": budget, "chosen": {"quantization": q, "offload": o,
                                                                          "peak": peak, "seconds": seconds},
                       "baseline_seconds": baseline}
    return "\n".join(lines) + "\n", data


def plan_steps(pipe, estimate):
    """The steps of the planned call (their site counts feed the speed model)."""
    settings = estimate.settings
    if settings["model"] == "var":
        return var_steps(list(pipe.transformer.config.patch_nums))
    h, w = (int(v) for v in settings["size"].split("x"))
    if settings["model"] == "infinity":
        return infinity_steps(pipe.schedule_for(h, w))
    return plan_scale_steps(pipe.plan(settings["num_frames"], h, w))


def replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    opts = parser.parse_args(argv)
    doc = REPO / "docs" / "memory.md"
    target_md, target_data = targets()
    table_md, table_data = tables()
    text = replace(replace(doc.read_text(encoding="utf-8"), "memory-targets", target_md), "memory-tables", table_md)
    if opts.check:
        if text != doc.read_text(encoding="utf-8"):
            print("docs/memory.md is out of date: run python scripts/memory_table.py", file=sys.stderr)
            return 1
        return 0
    doc.write_text(text, encoding="utf-8")
    out = REPO / "docs" / "results" / "memory_plan.json"
    out.write_text(json.dumps({"targets": target_data, "tables": table_data}, indent=1, default=str) + "\n",
                   encoding="utf-8")
    print(f"wrote {doc} and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
