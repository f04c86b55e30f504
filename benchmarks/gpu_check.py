"""One part of the prepared GPU check (``scripts/gpu_check.sh`` runs every part under its own timeout).

Parts (each writes ``<out>/gpu_<part>.json`` after every measurement, so a part stopped by its timeout
leaves what it measured, marked ``"complete": false``):

* ``cuda_tests`` — every CUDA-only test (``pytest -m cuda``).
* ``precision`` — fp16 / bf16 (and int8, fp8, nf4 weights) against float32 on CUDA, on the parity
  fixtures' teacher-forced logits: relative logits error and greedy code agreement.
* ``planner`` — the planner against ``torch.cuda.max_memory_allocated`` at the released sizes with random
  weights (the architecture is all memory needs): the whole call's peak and every step's.
* ``offload`` — time and peak of each offload mode and weight format (Infinity-2B, 1024 px, VPG).
* ``benchmarks`` — the GPU rows of ``docs/benchmarks.md`` (``vpg_overhead.py`` at d16 / d30 in fp16 and
  bf16, ``infinity_star_clip.py`` at 480p), with fewer repetitions than the documented commands.
* ``accelerated`` — Infinity-2B at 1024² (random weights, bf16): time and peak of CFG alone, semantic VPG alone
  and semantic VPG with each accelerator (FastVAR, FasterVAR, ScaleKV; docs/acceleration.md), one warm-up each.

``--dry-run`` lists what each part would run and runs tiny versions of them on the CPU (the bundled
demo model and the parity fixtures) into a temporary folder: what CI checks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/gpu_check.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import copy

from benchmarks import infinity_star_clip, vpg_overhead
from benchmarks.common import REPO, machine_info
from benchmarks.parity_logits import MODELS, agreement, relative_error
from vpg_pipelines import load_demo_pipeline
from vpg_pipelines.loading.auto import released_pipeline
from vpg_pipelines.memory.meter import TensorMeter
from vpg_pipelines.memory.offload import apply_offload
from vpg_pipelines.memory.quantization import apply_quantization, quantize_transformer
from vpg_pipelines.memory.replay import cast_floating
from vpg_pipelines.registry import released_model

PARTS = ("cuda_tests", "precision", "planner", "offload", "benchmarks", "accelerated")
TIMEOUTS = {"cuda_tests": 70, "precision": 60, "planner": 130, "offload": 95, "benchmarks": 80, "accelerated": 45}
"""Seconds per part in ``scripts/gpu_check.sh``: 480 s together, the 8 minutes of the issue (the accelerated rows'
45 s came out of the planner's and the offload part's limits; none of these limits has been timed on a GPU yet)."""


class Results:
    """A part's JSON file, rewritten after every record (partial results survive a timeout)."""

    def __init__(self, out: Path, part: str, device: str) -> None:
        self.path = out / f"gpu_{part}.json"
        self.data: dict[str, Any] = {"part": part, "complete": False, "machine": machine_info(device), "records": []}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    def add(self, **record: Any) -> None:
        self.data["records"].append(record)
        print(json.dumps(record, default=str), flush=True)
        self.save()

    def done(self) -> None:
        self.data["complete"] = True
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n", encoding="utf-8")


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if torch.device(device).type == "cuda" else None


def _guarded(results: Results, what: str, fn: Callable[[], dict]) -> None:
    """One measurement; an error is recorded (with its message) instead of ending the part."""
    start = time.perf_counter()
    try:
        record = fn()
    except Exception as err:  # noqa: BLE001 (a failed measurement is a result too)
        record = {"error": f"{type(err).__name__}: {err}"}
    results.add(what=what, seconds=round(time.perf_counter() - start, 3), **record)


# -- parts ---------------------------------------------------------------------------------------------
def part_cuda_tests(opts: argparse.Namespace, results: Results) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider"]
    if opts.dry_run:
        cmd += ["--collect-only", "tests/memory/test_memory_savers.py"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    results.add(what="pytest -m cuda", command=" ".join(cmd[1:]), returncode=proc.returncode, summary=tail)


def _format_logits(name, pipe, logits, reference, dtype_name: str, quantization: str | None, device: str) -> dict:
    """Logits of ``pipe``'s transformer in ``dtype_name`` (and weight format) against the float32 ones."""


    dtype = getattr(torch, dtype_name)
    model = copy.deepcopy(pipe.transformer).to("cpu").to(dtype)
    model = quantize_transformer(model, quantization, dtype)
    ours = logits(model.to(device))
    return {"model": name, "dtype": dtype_name, "quantization": quantization or "none",
            "relative_error": relative_error(ours, reference), "agreement": agreement(ours, reference)}


def part_precision(opts: argparse.Namespace, results: Results) -> None:

    formats = [("float16", None), ("bfloat16", None), ("bfloat16", "int8"), ("bfloat16", "fp8"),
               ("bfloat16", "nf4")]
    names = ["var"] if opts.dry_run else list(MODELS)
    for name in names:
        pipe, logits = MODELS[name]()
        reference = logits(pipe.transformer.to(opts.device))
        for dtype_name, quantization in (formats[:1] if opts.dry_run else formats):
            _guarded(results, f"{name} {dtype_name} {quantization or ''}".strip(),
                     lambda a=(name, pipe, logits, reference, dtype_name, quantization, opts.device):
                     _format_logits(*a))


def _random_released(name: str, device: str, dtype: torch.dtype):
    """A released architecture with seeded random weights, built on ``device`` (N(0, 0.02) matrices)."""

    kind, spec = released_model(name)
    empty = released_pipeline(name)
    torch.manual_seed(0)
    parts = {}
    with torch.device(device):
        parts["transformer"] = type(empty.transformer)(**spec.transformer)
        vae_args = dict(spec.vae)
        if kind.name == "infinity_star":
            vae_args["detail_scale_min_tokens"] = empty.config.official_args["detail_scale_min_tokens"]
        parts["vae"] = type(empty.vae)(**vae_args)
        if empty.text_encoder is not None:
            parts["text_encoder"] = type(empty.text_encoder)(empty.text_encoder.config)
    with torch.no_grad():
        for pname, param in parts["transformer"].named_parameters():
            if param.dim() >= 2 and not pname.endswith("scale_mul_1H11"):  # keep the attention's log(4) scale
                param.normal_(0.0, 0.02)

    for key, module in parts.items():
        keep_vae_fp32 = key == "vae" and kind.name == "infinity_star"
        cast_floating(module, torch.float32 if keep_vae_fp32 else dtype).eval()
    kwargs = {"official_args": empty.config.official_args} if kind.name == "infinity_star" else {}
    if kind.name != "var":
        kwargs["text_encoder"] = parts.get("text_encoder")
    pipe = type(empty)(parts["transformer"], parts["vae"], **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _planner_cases(dry_run: bool) -> list[tuple[str, dict]]:
    if dry_run:
        return [("demo", {"prompt": ["plant"], "guidance_scale": 3.0, "vpg_scale": 1.5})]
    return [
        ("var-d30", {"class_labels": list(range(16)), "vpg_scale": 1.3}),
        ("infinity-2b", {"height": 1024, "width": 1024, "vpg_scale": 1.5}),
        ("infinity-8b", {"height": 1024, "width": 1024, "vpg_scale": 1.5, "vpg_scales": "semantic"}),
        ("infinity-star-8b-480p", {"height": 480, "width": 848, "num_frames": 81, "vpg_scales": "semantic"}),
    ]


def _text_call(pipe, call: dict, device: str) -> dict:
    """Random T5-shaped prompt features (no tokenizer in a random pipeline)."""
    if type(pipe).__name__ == "VPGVARPipeline":
        return call
    channels = pipe.transformer.config.text_channels
    embeds = torch.randn(1, 32, channels, generator=torch.Generator().manual_seed(0)).to(device)
    return {**call, "prompt_embeds": embeds}


def part_planner(opts: argparse.Namespace, results: Results) -> None:

    dtype = torch.bfloat16 if not opts.dry_run else torch.float32
    for name, call in _planner_cases(opts.dry_run):
        def measure(name=name, call=call):
            pipe = load_demo_pipeline() if name == "demo" else _random_released(name, opts.device, dtype)
            pipe.to(opts.device)
            pipe.set_progress_bar_config(disable=True)
            call = {**_text_call(pipe, call, opts.device), "output_type": "pt"}
            batch = pipe.estimate_memory(**call).settings["batch"]
            call["generator"] = [torch.Generator().manual_seed(i) for i in range(batch)]
            estimate = pipe.estimate_memory(**call)
            steps: dict[int, int | None] = {}

            def on_step(_pipe, index, scale, kwargs):
                steps[index] = _peak(opts.device)
                if torch.device(opts.device).type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                return {}

            _reset_peak(opts.device)
            if opts.dry_run:  # no allocator statistics on the CPU: the tensor meter instead
                with TensorMeter() as meter:
                    pipe(**call, callback_on_step_end=on_step)
                measured = meter.peak + sum(estimate.weights.values())
            else:
                pipe(**call, callback_on_step_end=on_step)
                _sync(opts.device)
                measured = max([_peak(opts.device) or 0, *[v or 0 for v in steps.values()]])
            planned = estimate.peak("none")
            per_step = {i: {"planned": max(p.total for p in estimate.plans["none"].phases if p.step == i),
                            "measured": steps.get(i)} for i in steps}
            del pipe
            return {"model": name, "call": {k: v for k, v in call.items() if k not in ("generator", "prompt_embeds")},
                    "planned_peak": planned, "measured_peak": measured, "ratio": measured / planned,
                    "planned_phase": estimate.plans["none"].peak.name, "steps": per_step}

        _guarded(results, f"planner {name}", measure)
        if torch.device(opts.device).type == "cuda":
            torch.cuda.empty_cache()


def part_offload(opts: argparse.Namespace, results: Results) -> None:

    if opts.dry_run:
        modes = [("none", "none"), ("group", "int8")]
        device = "cpu"
    else:
        modes = [("none", "none"), ("model", "none"), ("group", "none"), ("none", "int8"), ("none", "fp8"),
                 ("none", "nf4"), ("model", "int8"), ("group", "int8"), ("sequential", "none")]
        device = opts.device
    for offload, quantization in modes:
        def measure(offload=offload, quantization=quantization):
            if opts.dry_run:
                pipe = load_demo_pipeline()
                pipe.set_progress_bar_config(disable=True)
                call = {"prompt": ["plant"], "vpg_scale": 1.5}
            else:
                pipe = _random_released("infinity-2b", "cpu", torch.bfloat16)
                call = {"height": 1024, "width": 1024, "vpg_scale": 1.5,
                        "prompt_embeds": torch.randn(1, 32, 2048, generator=torch.Generator().manual_seed(0))}
            planned = pipe.estimate_memory(quantization=None if quantization == "none" else quantization,
                                           **call).peak(offload)
            apply_quantization(pipe, quantization)
            apply_offload(pipe, offload, device)
            call = {**call, "output_type": "pt", "generator": torch.Generator().manual_seed(0)}
            pipe(**call)  # warm-up (kernels, the stream prefetch order)
            _reset_peak(device)
            start = time.perf_counter()
            pipe(**call)
            _sync(device)
            seconds = time.perf_counter() - start
            return {"offload": offload, "quantization": quantization, "call_seconds": seconds,
                    "planned_peak": planned, "measured_peak": _peak(device)}

        _guarded(results, f"offload {offload} / {quantization}", measure)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


def part_benchmarks(opts: argparse.Namespace, results: Results) -> None:

    out = Path(opts.out)
    if opts.dry_run:
        tiny = ["--model", "tiny", "--repeats", "1", "--warmup", "0", "--no-memory",
                "--out-json", str(out / "gpu_bench_tiny.json")]
        runs = [("vpg_overhead tiny", vpg_overhead.main, tiny)]
    else:
        runs = [(f"vpg_overhead {m} {dt}", vpg_overhead.main,
                 ["--model", m, "--device", opts.device, "--dtype", dt, "--batch", "1", "8", "--repeats", "3",
                  "--warmup", "1", "--out-json", str(out / f"gpu_vpg_overhead_{m}_{dt}.json")])
                for m in ("d16", "d30") for dt in ("float16", "bfloat16")]
        runs.append(("infinity_star_clip 8b 480p", infinity_star_clip.main,
                     ["--model", "8b", "--size", "480p", "--device", opts.device, "--dtype", "bfloat16",
                      "--configs", "guidance,vpg-semantic", "--out-json", str(out / "gpu_infinity_star_480p.json")]))
    for what, main, argv in runs:
        _guarded(results, what, lambda main=main, argv=argv: {"argv": argv, "ran": bool(main(argv) or True)})


# (row name, call settings): CFG alone is the baseline the issue compares with (issue 23: <= 0.5x of its time)
ACCELERATED_ROWS = (
    ("cfg only", {"vpg_scale": 1.0, "acceleration": None}),
    ("semantic vpg", {"vpg_scale": 1.5, "vpg_scales": "semantic", "acceleration": None}),
    ("semantic vpg + fastvar", {"vpg_scale": 1.5, "vpg_scales": "semantic", "acceleration": "fastvar"}),
    ("semantic vpg + fastervar", {"vpg_scale": 1.5, "vpg_scales": "semantic", "acceleration": "fastervar"}),
    ("semantic vpg + scalekv", {"vpg_scale": 1.5, "vpg_scales": "semantic", "acceleration": "scalekv"}),
)


def part_accelerated(opts: argparse.Namespace, results: Results) -> None:

    if opts.dry_run:  # the parity fixture's plain Infinity (depth 2, no decode); ScaleKV: its first 2 blocks' budgets
        from benchmarks.parity_logits import infinity_logits

        pipe = infinity_logits()[0]
        scalekv = {"method": "scalekv", "budget": f"infinity-2b-10%[:{pipe.transformer.config.depth}]"}
        rows = [(name, {**call, "acceleration": scalekv} if call["acceleration"] == "scalekv" else call)
                for name, call in ACCELERATED_ROWS if call["acceleration"]]  # CI's time: the accelerated rows only
        warmup = 0
    else:
        pipe = _random_released("infinity-2b", opts.device, torch.bfloat16)
        rows, warmup = list(ACCELERATED_ROWS), 1
    pipe.to(opts.device)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.transformer.config
    tokens = min(32, config.text_maxlen)  # the fixture model takes 16
    embeds = torch.randn(1, tokens, config.text_channels, generator=torch.Generator().manual_seed(0))
    base = {"height": 1024, "width": 1024, "guidance_scale": 3.0, "output_type": "latent" if opts.dry_run else "pt",
            "prompt_embeds": embeds.to(opts.device, next(pipe.transformer.parameters()).dtype)}
    for name, settings in rows:
        def measure(settings=settings):
            call = {**base, **settings}
            for _ in range(warmup):
                pipe(**call, generator=torch.Generator().manual_seed(0))
            _reset_peak(opts.device)
            start = time.perf_counter()
            pipe(**call, generator=torch.Generator().manual_seed(0))
            _sync(opts.device)
            return {"call": {k: v for k, v in settings.items()}, "call_seconds": time.perf_counter() - start,
                    "measured_peak": _peak(opts.device)}

        _guarded(results, f"accelerated {name}", measure)


PART_FUNCTIONS = {"cuda_tests": part_cuda_tests, "precision": part_precision, "planner": part_planner,
                  "offload": part_offload, "benchmarks": part_benchmarks, "accelerated": part_accelerated}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", required=True, choices=(*PARTS, "all"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny versions on the CPU")
    opts = parser.parse_args(argv)
    if opts.dry_run:
        opts.device = "cpu"
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    parts = PARTS if opts.part == "all" else (opts.part,)
    for part in parts:
        results = Results(Path(opts.out), part, opts.device)
        PART_FUNCTIONS[part](opts, results)
        results.done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
