"""What VPG (and the other guidance terms) cost: latency and peak memory against CFG alone, same model, same run.

Every configuration samples the same classes with the same seed; repetitions are interleaved
(round-robin, rotating order) so that load drifting on a shared machine hits all of them alike, and
ratios are taken per round against the CFG-only run of that round. The VQVAE decode is the same for
every configuration, so it is timed on its own: "sampler" ratios exclude it, "end-to-end" ratios add
the decode time of the same round. Peak memory is measured per configuration in a fresh process on
CPU (peak RSS, forked from a clean fork server) and with ``torch.cuda.max_memory_allocated`` on CUDA.

    python benchmarks/vpg_overhead.py --model tiny --repeats 20
    python benchmarks/vpg_overhead.py --model d16 --device cuda --dtype float16 --batch 1 8

The ``igg``, ``ssg`` and ``entropy-temperature`` configurations add one term each to CFG (issue 14).
``--term-costs`` times each term's reduction alone, per step, on synthetic logits of the released
models' largest steps (VAR-d16 / d30, Infinity 1024², InfinityStar 720p), which no CPU run reaches.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import math
import time

from benchmarks.common import (
    CLOCKS,
    DTYPES,
    TransformerFlops,
    build_pipeline,
    count_params,
    current_rss,
    fmt_mib,
    fmt_range,
    fmt_seconds,
    interleaved,
    machine_info,
    markdown_table,
    paired_ratios,
    peak_rss,
    reset_peak_rss,
    run_header,
    write_outputs,
)
from vpg_pipelines.guidance.base import GuidanceStep
from vpg_pipelines.guidance.igg import InformationGroundingGuidance
from vpg_pipelines.guidance.ssg import ScaledSpatialGuidance
from vpg_pipelines.guidance.temperature import EntropyAwareTemperature
from vpg_pipelines.models.adapter import ScaleStep

CONFIGS: dict[str, dict[str, Any]] = {
    "cfg": {"vpg_scale": 1.0},
    "vpg-all-persistent": {"vpg_scales": "all", "vpg_refresh": "persistent"},
    "vpg-all-resample": {"vpg_scales": "all", "vpg_refresh": "resample"},
    "vpg-semantic": {"vpg_scales": "semantic", "vpg_refresh": "persistent"},
    "igg": {"vpg_scale": 1.0, "igg_scale": 1.0},
    "ssg": {"vpg_scale": 1.0, "ssg_scale": 0.5},
    "entropy-temperature": {"vpg_scale": 1.0, "entropy_temperature": True},
}
TERM_SHAPES = {  # name -> (grid of the largest step, logit shape per site, categories)
    "VAR-d16 256px, scale 16x16": ((16, 16), (4096,), None),
    "VAR-d30 512px, scale 32x32": ((32, 32), (4096,), None),
    "Infinity-2B 1024², scale 64x64": ((64, 64), (32, 2), None),
    "InfinityStar 720p, clip scale 20x45x80": ((20, 45, 80), (128,), 2),
}
BASELINE = "cfg"
TARGETS = {  # (configuration, device type) -> max latency ratio vs CFG-only
    ("vpg-all-persistent", "cpu"): 2.0,
    ("vpg-all-persistent", "cuda"): 1.6,
    ("vpg-semantic", "cpu"): 1.1,
    ("vpg-semantic", "cuda"): 1.05,
}
MEMORY_TARGET = ("vpg-semantic", 0.10)  # peak-memory overhead vs CFG-only


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny' (demo or parity model) or d16/d20/d24/d30 (random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (images per call)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs every configuration once)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--guidance-scale", type=float, default=1.5)
    p.add_argument("--vpg-scale", type=float, default=3.0)
    p.add_argument("--vpg-corruption", type=float, default=0.5)
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", default="wall", choices=CLOCKS,
                   help="rank by wall time, or by this process's CPU time (shared CPUs; use with --threads 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--term-costs", action="store_true",
                   help="also time each guidance term's reduction alone at the released models' largest steps")
    p.add_argument("--max-term-gflop", type=float, default=200.0,
                   help="skip timing a term whose estimated work at a shape exceeds this (e.g. IGG at 720p on CPU)")
    p.add_argument("--out-json", default=None)
    p.add_argument("--out-md", default=None)
    args = p.parse_args(argv)
    if BASELINE not in args.configs:
        args.configs = [BASELINE, *args.configs]
    if args.clock == "cpu" and args.device.startswith("cuda"):
        p.error("--clock cpu measures host CPU time; use --clock wall on CUDA")
    if args.repeats < 1 or args.warmup < 0 or min(args.batch) < 1:
        p.error("--repeats must be >= 1, --warmup >= 0 and every --batch >= 1")
    return args


def call_kwargs(args: argparse.Namespace, name: str, num_classes: int, batch: int) -> dict[str, Any]:
    kwargs = {
        "class_labels": [(7 * i + 1) % num_classes for i in range(batch)],
        "guidance_scale": args.guidance_scale,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "vpg_scale": args.vpg_scale,
        "vpg_corruption": args.vpg_corruption,
        "output_type": "latent",
    }
    kwargs.update(CONFIGS[name])
    return kwargs


def make_run(pipe, args: argparse.Namespace, name: str, batch: int):
    kwargs = call_kwargs(args, name, pipe.transformer.config.num_classes, batch)
    device = pipe.device

    def run() -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(args.seed)
        return pipe(generator=generator, **kwargs).images

    return run


# -- memory ----------------------------------------------------------------------------------------
def _measure_memory(pipe, args: argparse.Namespace, name: str, batch: int) -> dict[str, int]:
    """Peak memory of one sampler call, then of the decode (bytes; ``base`` = before the call)."""
    run = make_run(pipe, args, name, batch)
    cuda = pipe.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = current_rss()
    latents = run()
    if cuda:
        torch.cuda.synchronize()
        sampler_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        sampler_peak = peak_rss()
        reset_peak_rss()
    with torch.no_grad():
        pipe.vae.decode_latent(latents)
    if cuda:
        torch.cuda.synchronize()
    decode_peak = torch.cuda.max_memory_allocated() if cuda else peak_rss()
    return {"base": base, "sampler_peak": sampler_peak, "decode_peak": decode_peak}


def _memory_child(model: str, device: str, dtype: str, threads: int, args: argparse.Namespace, name: str,
                  batch: int) -> dict[str, int]:
    torch.set_num_threads(threads)
    pipe, _ = build_pipeline(model, device, DTYPES[dtype], args.seed)
    return _measure_memory(pipe, args, name, batch)


def measure_memory(pipe, args: argparse.Namespace, batch: int) -> dict[str, dict[str, int]]:
    """Per configuration: a fresh process on CPU (peak RSS is per process), in-process on CUDA.

    CPU children are forked from a fork server that has imported this module but built no model,
    so a child's peak holds its own model and run only (and the imports are paid once); where there is no
    fork server (Windows) they are spawned, which pays the imports per child and measures the same peak.
    """
    out = {}
    ctx = None
    if pipe.device.type != "cuda":
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
        else:
            ctx = mp.get_context("spawn")
    for name in args.configs:
        if ctx is None:
            out[name] = _measure_memory(pipe, args, name, batch)
            continue
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            job = pool.submit(_memory_child, args.model, args.device, args.dtype, torch.get_num_threads(), args,
                              name, batch)
            out[name] = job.result()
    return out


# -- one benchmark ---------------------------------------------------------------------------------
def bench_batch(pipe, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    counter = TransformerFlops(pipe.transformer)
    flops: dict[str, float] = {}

    def counted(name: str):
        run = make_run(pipe, args, name, batch)

        def wrapped() -> torch.Tensor:
            before = counter.total
            out = run()
            flops.setdefault(name, counter.total - before)
            return out

        return wrapped

    runs = {name: counted(name) for name in args.configs}
    latents = runs[BASELINE]()

    def decode() -> torch.Tensor:
        with torch.no_grad():
            return pipe.vae.decode_latent(latents)

    runs["decode"] = decode
    series = interleaved(runs, args.repeats, args.warmup, str(pipe.device), args.clock)
    counter.remove()
    decode = series.pop("decode")
    decode_times = decode.times
    ratios = paired_ratios(series, BASELINE)
    base_e2e = [t + d for t, d in zip(series[BASELINE].times, decode_times)]
    result: dict[str, Any] = {"batch": batch, "decode_times": decode_times, "decode_wall": decode.wall,
                              "decode_cpu": decode.cpu, "configs": {}}
    for name, s in series.items():
        e2e = [t + d for t, d in zip(s.times, decode_times)]
        result["configs"][name] = {
            "times": s.times,
            "wall": s.wall,
            "cpu": s.cpu,
            "median": s.median,
            "ratio": ratios[name],
            "end_to_end_ratio": [a / b for a, b in zip(e2e, base_e2e)],
            "transformer_flops": flops[name],
            "flop_ratio": flops[name] / flops[BASELINE],
        }
    if not args.no_memory:
        memory = measure_memory(pipe, args, batch)
        for name, m in memory.items():
            result["configs"][name]["memory"] = m
    return result


def target_lines(result: dict[str, Any]) -> list[str]:
    dev = "cuda" if result["device"].startswith("cuda") else "cpu"
    lines = []
    for b in result["batches"]:
        configs = b["configs"]
        for (name, device), limit in TARGETS.items():
            if device != dev or name not in configs:
                continue
            r = median(configs[name]["ratio"])
            e = median(configs[name]["end_to_end_ratio"])
            verdict = "met" if r <= limit else "missed"
            lines.append(f"- batch {b['batch']}, `{name}` sampler ratio {r:.2f}× (end-to-end {e:.2f}×) vs target "
                         f"≤ {limit}×: **{verdict}**")
        name, limit = MEMORY_TARGET
        if name in configs and "memory" in configs[name]:
            over = memory_overhead(configs[name]["memory"], configs[BASELINE]["memory"])
            verdict = "met" if over <= limit else "missed"
            lines.append(f"- batch {b['batch']}, `{name}` peak-memory overhead {over:+.1%} vs target ≤ "
                         f"{limit:.0%}: **{verdict}**")
    return lines


def memory_overhead(m: dict[str, int], base: dict[str, int]) -> float:
    """Relative growth of the whole call's peak (sampler or decode, whichever is larger)."""
    peak = max(m["sampler_peak"], m["decode_peak"])
    ref = max(base["sampler_peak"], base["decode_peak"])
    return peak / ref - 1


def to_markdown(result: dict[str, Any]) -> str:
    a = result["args"]
    head = run_header(result, f"VPG w={a['vpg_scale']} p={a['vpg_corruption']}, sampler without the VQVAE decode")
    header = ["batch", "configuration", "sampler median [min–max]", "ratio vs CFG (paired median [range])",
              "transformer FLOP ratio", "end-to-end ratio", "peak memory (sampler / decode)", "peak vs CFG"]
    rows = []
    for b in result["batches"]:
        base_mem = b["configs"][BASELINE].get("memory")
        for name, c in b["configs"].items():
            mem = c.get("memory")
            if mem is None:
                mem_text, over_text = "not measured", ""
            else:
                mem_text = f"{fmt_mib(mem['sampler_peak'])} / {fmt_mib(mem['decode_peak'])}"
                over_text = "—" if name == BASELINE else f"{memory_overhead(mem, base_mem):+.1%}"
            times = c["times"]
            rows.append([
                b["batch"], f"`{name}`",
                f"{fmt_seconds(c['median'])} [{fmt_seconds(min(times))}–{fmt_seconds(max(times))}]",
                "1" if name == BASELINE else f"{median(c['ratio']):.2f}× [{fmt_range(c['ratio'])}]",
                f"{c['flop_ratio']:.2f}×" if name != BASELINE else f"1 ({c['transformer_flops'] / 1e9:.3g} GFLOP)",
                "1" if name == BASELINE else f"{median(c['end_to_end_ratio']):.2f}×",
                mem_text, over_text,
            ])
        dec = b["decode_times"]
        rows.append([b["batch"], "(VQVAE decode)", f"{fmt_seconds(median(dec))} [{fmt_seconds(min(dec))}–"
                     f"{fmt_seconds(max(dec))}]", "", "", "", "", ""])
    memory_note = ("Peak memory: CUDA `max_memory_allocated` (weights included)." if result["device"].startswith("cuda")
                   else "Peak memory: peak RSS of a fresh process per configuration (weights, Python and torch "
                   "runtime included).")
    lines = [head, "", markdown_table(header, rows), "", memory_note, "", "Targets:", *target_lines(result)]
    return "\n".join(lines)


# -- one term's reduction alone ----------------------------------------------------------------------
def term_costs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median time of each term's per-step reduction on random logits (batch 1, one prefix branch)."""
    rows = []
    for shape_name, (grid, per_site, categories) in TERM_SHAPES.items():
        rows += _term_rows(args, shape_name, grid, per_site, categories)
    return rows


def _term_rows(args: argparse.Namespace, shape_name: str, grid: tuple[int, ...], per_site: tuple[int, ...],
               categories: int | None) -> list[dict[str, Any]]:


    device = torch.device(args.device)
    n, v = math.prod(grid), math.prod(per_site)
    prev_grid = tuple(max(1, g * 3 // 4) if i >= len(grid) - 2 else g for i, g in enumerate(grid))
    gen = torch.Generator(device).manual_seed(args.seed)
    cond, uncond = (torch.randn(1, 1, n, *per_site, generator=gen, device=device) for _ in range(2))
    prev = torch.randn(1, math.prod(prev_grid), *per_site, generator=gen, device=device)
    estimates = {"igg": 4 * n * n * v / 1e9, "ssg": 8 * n * v * (sum(grid) + sum(prev_grid)) / 1e9,
                 "entropy-temperature": 8 * n * v / 1e9}

    def ctx(scale: int, g: tuple[int, ...], memories: dict) -> GuidanceStep:
        return GuidanceStep(ScaleStep(scale, scale, math.prod(g), g), 10, 10, categories, memories)

    def run_igg() -> None:
        InformationGroundingGuidance(1.0).reduce_conditions(cond, uncond, cond, ctx(9, grid, {}))

    def run_ssg() -> None:
        term, memories = ScaledSpatialGuidance(0.5), {}
        term.reduce(prev, ctx(8, prev_grid, memories))
        term.reduce(cond[0], ctx(9, grid, memories))

    def run_temperature() -> None:
        EntropyAwareTemperature().reduce(cond[0], ctx(9, grid, {}))

    rows = []
    for term, fn in (("igg", run_igg), ("ssg", run_ssg), ("entropy-temperature", run_temperature)):
        row = {"shape": shape_name, "term": term, "sites": n, "logits_per_site": v, "gflop": estimates[term],
               "seconds": None}
        if estimates[term] <= args.max_term_gflop:
            times = []
            for _ in range(max(1, min(args.repeats, 5))):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.no_grad():
                    fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            row["seconds"] = median(times)
        rows.append(row)
    return rows


def term_costs_markdown(rows: list[dict[str, Any]], device: str) -> str:
    header = ["largest step of", "term", "sites × logits", "work (GFLOP, est.)", f"time per step ({device})"]
    table = [[r["shape"], f"`{r['term']}`", f"{r['sites']} × {r['logits_per_site']}", f"{r['gflop']:.3g}",
              fmt_seconds(r["seconds"]) if r["seconds"] is not None else "not timed (over --max-term-gflop)"]
             for r in rows]
    return markdown_table(header, table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, description = build_pipeline(args.model, args.device, DTYPES[args.dtype], args.seed)
    result: dict[str, Any] = {
        "benchmark": "vpg_overhead",
        "model": description,
        "params": count_params(pipe.transformer),
        "device": str(pipe.device),
        "machine": machine_info(args.device),
        "args": vars(args),
        "batches": [bench_batch(pipe, args, batch) for batch in args.batch],
    }
    markdown = to_markdown(result)
    if args.term_costs:
        result["term_costs"] = term_costs(args)
        markdown += "\n\nEach term's reduction alone, batch 1:\n\n" + term_costs_markdown(result["term_costs"],
                                                                                           args.device)
    write_outputs(result, markdown, args.out_json, args.out_md)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
