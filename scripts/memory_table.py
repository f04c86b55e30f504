"""Write the planned-memory tables and the targets of docs/memory.md (between its generated-section markers)
and docs/results/memory_plan.json, from the planner on the released architectures (meta weights).

    python scripts/memory_table.py            # rewrites the generated sections (about 4 minutes of CPU time)
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

from vpg_pipelines import VPGInfinityStarInteractPipeline, VPGInfinityStarPipeline  # noqa: E402
from vpg_pipelines.loading.auto import released_pipeline  # noqa: E402
from vpg_pipelines.memory import OFFLOAD_MODES  # noqa: E402
from vpg_pipelines.memory.choose import CANDIDATES, SAVER_STEPS, usable  # noqa: E402
from vpg_pipelines.memory.planner import combine_savers  # noqa: E402
from vpg_pipelines.models.infinity.adapter import scale_steps as infinity_steps  # noqa: E402
from vpg_pipelines.models.infinity_star.adapter import plan_scale_steps  # noqa: E402
from vpg_pipelines.models.var.adapter import scale_steps as var_steps  # noqa: E402
from vpg_pipelines.pipelines.pipeline_vpg_infinity_star_interact import CONTEXT_FRAMES  # noqa: E402
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
    ("InfinityStar-8B, 720p, 81 frames, semantic VPG", "infinity-star-8b-720p",
     {"height": 720, "width": 1280, "num_frames": 81, **CONFIGS["VPG semantic"]}, 12),
    ("InfinityStar-8B, 480p, 161 frames (10 s), semantic VPG", "infinity-star-8b-480p",
     {"height": 480, "width": 848, "num_frames": 161, **CONFIGS["VPG semantic"]}, 12),
    ("VAR-d30, 256 px, batch 16, VPG", "var-d30", {"class_labels": list(range(16)), "vpg_scale": 1.3}, 12),
]
LEAN = {"forward_chunking": True, "vae_tiling": True}
"""The activation savers at their defaults (InfinityStar: 4096-token chunks, 512-pixel tiles every 384)."""
SAVER_NAMES = {(True, False): "chunking", (False, True): "tiling", (True, True): "chunking + tiling",
               "kv": "chunking + tiling + the K/V cache in host memory"}


def gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def _call(pipe, size: dict, config: dict) -> dict:
    size = {k: v for k, v in size.items() if k != "official_args"}
    base = {"class_labels": [0]} if type(pipe).__name__ == "VPGVARPipeline" else {"prompt": "a photo"}
    if isinstance(pipe, VPGInfinityStarInteractPipeline):  # one clip of a story continued from its context
        height, width = size.get("height", pipe.default_size[0]), size.get("width", pipe.default_size[1])
        context = torch.empty(1, pipe.vae.codebook_dim, CONTEXT_FRAMES, height // 16, width // 16, device="meta")
        base = {"prompt": ["a photo", "a photo"], "context_latents": context}
    return {**base, **size, **config}


def _plan(pipe, call: dict, quantization: str | None, lean: bool = False, kv: bool = False):
    dtype = torch.bfloat16
    savers = (LEAN if _tiles(pipe) else {"forward_chunking": True}) if lean else {}
    if kv:
        savers = {**savers, "kv_cache_offload": True}
    return pipe.estimate_memory(dtype=dtype, quantization=quantization, text_tokens=TEXT_TOKENS, **savers, **call)


def _tiles(pipe) -> bool:
    return hasattr(pipe.vae, "enable_tiling")


def _pipeline(name: str, call: dict):
    """The released architecture; InfinityStar 480p with ``video_frames`` 161 when the call asks for 10 s (the
    script's ``generation_duration = 10``; ``settings_480p.json`` of the 480p fixture)."""
    pipe = released_pipeline(name)
    frames = call.get("num_frames")
    if isinstance(pipe, VPGInfinityStarPipeline) and frames and frames > pipe.config.official_args["video_frames"]:
        args = {**pipe.config.official_args, "video_frames": frames}
        pipe = VPGInfinityStarPipeline(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer,
                                       official_args=args)
    return pipe


def _linear_params(module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def speed(pipe, estimate, sites: dict[int, int], offload: str, kv_offload: bool = False) -> dict:
    """Estimated seconds of a call: transformer compute, plus weight transfers where they are not hidden. With
    the K/V cache in host memory each forward also copies the cache it attends to (bounded by the whole cache
    then) over the same bus, overlapped with compute (the next layer's copy is prefetched)."""
    t = pipe.transformer
    cfg = t.config
    params = _linear_params(t)
    width, depth = int(cfg.embed_dim), int(cfg.depth)
    forwards = [(f, alive) for s in estimate.kv for _, alive, f in s.events if f is not None]
    compute, cache_copy = [], []
    for f, alive in forwards:
        cache_copy.append(alive / PINNED_BPS if kv_offload else 0.0)
        tokens = sum(sites[i] for i in f.steps) if f.steps else f.last_tokens or 1
        keys = f.cached + tokens
        flops = 2 * params * tokens * f.rows + 4 * depth * width * tokens * keys * f.rows
        compute.append(flops / TFLOPS)
    weights = estimate.weights["transformer"]
    text = estimate.weights.get("text_encoder", 0)
    base = sum(compute)
    hidden = sum(max(c, k) for c, k in zip(compute, cache_copy))  # the cache copies overlap compute
    if offload == "none":
        total = hidden
    elif offload == "model":  # text encoder and transformer moved in and out once per call
        total = hidden + 2 * (weights + text) / PAGEABLE_BPS
    elif offload == "group":  # every block in per forward, overlapped with that block's compute
        per = weights / PINNED_BPS
        total = sum(max(c, per + k) for c, k in zip(compute, cache_copy)) + text / PINNED_BPS
    else:  # sequential: every layer's weights copied synchronously at every forward
        total = hidden + len(compute) * weights / PAGEABLE_BPS + text / PAGEABLE_BPS
    return {"seconds": total, "compute_seconds": base}


def tables() -> tuple[str, dict]:
    lines, data = [], {}
    for name in released_names():
        spec = released_model(name)[1]
        sizes = spec.sizes
        lines.append(f"\n### {name}\n")
        lines.append("| size | guidance | weights | K/V peak | " + " | ".join(f"{m}" for m in OFFLOAD_MODES) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(OFFLOAD_MODES))
        for size_name, size in sizes.items():
            pipe = _pipeline(name, size)
            lean_rows = _tiles(pipe)  # the savers matter where a step has tens of thousands of tokens
            for config_name, config in CONFIGS.items():
                for fmt, quantization in FORMATS.items():
                    call = _call(pipe, size, config)
                    for lean in (False, True) if lean_rows else (False,):
                        estimate = _plan(pipe, call, quantization, lean)
                        peaks = [estimate.peak(m) for m in OFFLOAD_MODES]
                        label = f"{fmt}, chunking + tiling" if lean else fmt
                        data[f"{name} {size_name} {config_name} {label}"] = estimate.to_dict()
                        lines.append(f"| {size_name} | {config_name} | {label}: {gib(estimate.weights['transformer'])}"
                                     f" | {gib(estimate.kv_peak)} | " + " | ".join(gib(p) for p in peaks) + " |")
    return "\n".join(lines) + "\n", data


def _candidates(plain, lean, offload: str, tileable: bool, budget: int) -> tuple[int, str | None, int]:
    """``(peak without savers, the savers auto adds (None: none fit), peak with them)`` for one candidate, in
    auto's order (:data:`SAVER_STEPS`); without a fitting combination, the one with the smallest peak."""
    tried = [((c, t), combine_savers(plain, lean, c, t).peak(offload)) for c, t in SAVER_STEPS if tileable or not t]
    for savers, peak in tried:
        if peak <= budget:
            return plain.peak(offload), SAVER_NAMES[savers], peak
    savers, peak = min(tried, key=lambda item: item[1])
    return plain.peak(offload), None, peak


def targets() -> tuple[str, dict]:
    lines, data = [], {}
    for title, name, call_config, target in TARGETS:
        pipe = _pipeline(name, call_config)
        call = _call(pipe, {}, call_config)
        tileable = _tiles(pipe)
        budget = usable(int((target - CUDA_CONTEXT_GIB) * GIB))
        plans = {q: _plan(pipe, call, None if q == "none" else q) for q in ("none", "int8", "nf4")}
        leans = {q: _plan(pipe, call, None if q == "none" else q, lean=True) for q in plans}
        kv_leans = {q: _plan(pipe, call, None if q == "none" else q, lean=True, kv=True) for q in plans}
        sites = {s.index: s.num_sites for s in plan_steps(pipe, plans["none"])}
        rows, chosen, last_resort, smallest = [], None, None, None
        baseline = speed(pipe, plans["none"], sites, "none")["seconds"]
        for quantization, offload in CANDIDATES:
            estimate = plans[quantization]
            plain_peak, savers, saved_peak = _candidates(estimate, leans[quantization], offload, tileable, budget)
            kv_peak = kv_leans[quantization].peak(offload)
            timing = speed(pipe, estimate, sites, offload)
            if chosen is None and plain_peak <= budget:
                chosen = (quantization, offload, None, plain_peak, timing["seconds"])
            elif chosen is None and savers is not None:
                chosen = (quantization, offload, savers, saved_peak, timing["seconds"])
            fits = "yes" if plain_peak <= budget else (f"with {savers}" if savers else "no")
            kv_timing = speed(pipe, estimate, sites, offload, kv_offload=True)
            if plain_peak > budget and savers is None and kv_peak <= budget and last_resort is None:
                last_resort = (quantization, offload, SAVER_NAMES["kv"], kv_peak, kv_timing["seconds"])
            lean_peak = min(leans[quantization].plans[offload].peak, kv_leans[quantization].plans[offload].peak,
                            key=lambda p: p.total)
            if smallest is None or lean_peak.total < smallest[2]:
                smallest = (quantization, offload, lean_peak.total, lean_peak)
            rows.append((quantization, offload, plain_peak, saved_peak, kv_peak, fits, timing, kv_timing))
        kv_needed = chosen is None  # the cache goes to host memory only when nothing fits otherwise (auto's order)
        chosen = chosen or last_resort
        table = []
        for quantization, offload, plain_peak, saved_peak, kv_peak, fits, timing, kv_timing in rows:
            if kv_needed and fits == "no" and kv_peak <= budget:
                fits, timing = f"with {SAVER_NAMES['kv']}", kv_timing
            slow = timing["seconds"] / baseline
            note = " (int8/nf4 compute: see text)" if quantization != "none" else ""
            table.append(f"| {quantization} | {offload} | {gib(plain_peak)} | {gib(saved_peak)} | {gib(kv_peak)} | "
                         f"{fits} | {timing['seconds']:.1f} s ({slow:.2f}x){note} |")
        lines.append(f"\n#### {title}: target {target} GB (plan must stay under {gib(budget)} GiB)\n")
        if chosen is not None:
            q, o, savers, peak, seconds = chosen
            with_savers = f" and {savers}" if savers else ""
            lines.append(f"**Met** with weights `{q}`, offload `{o}`{with_savers}: planned peak **{gib(peak)} GiB**, "
                         f"estimated {seconds:.1f} s per call against {baseline:.1f} s with everything on the GPU "
                         f"({seconds / baseline:.2f}x). Peak phase without offloading: "
                         f"{plans['none'].plans['none'].peak.name}.\n")
        else:
            q, o, peak, phase = smallest
            lines.append(f"**Not met**: the smallest plan (weights `{q}`, offload `{o}`, every saver) peaks at "
                         f"**{gib(peak)} GiB**, {gib(peak - budget)} GiB over the budget, at {phase.name}: weights "
                         f"{gib(phase.weights)} + K/V cache {gib(phase.kv)} + activations {gib(phase.activations)} "
                         f"GiB.\n")
        lines.append("| weights | offload | planned peak (GiB) | with chunking / tiling (GiB) | + K/V cache in host "
                     "memory (GiB) | fits | estimated time per call |")
        lines.append("|---|---|---|---|---|---|---|")
        lines.extend(table)
        data[title] = {"target_gb": target, "budget": budget, "baseline_seconds": baseline,
                       "chosen": None if chosen is None else dict(zip(("quantization", "offload", "savers", "peak",
                                                                       "seconds"), chosen)),
                       "smallest": {"quantization": smallest[0], "offload": smallest[1], "peak": smallest[2],
                                    "phase": smallest[3].name, "weights": smallest[3].weights, "kv": smallest[3].kv,
                                    "activations": smallest[3].activations}}
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
