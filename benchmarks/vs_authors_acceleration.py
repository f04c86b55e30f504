"""Ours + an accelerator against that accelerator's own code, on Infinity: same weights, greedy, same codes.

The authors' code is imported at run time from a local checkout given by ``--reference-repo`` (nothing of it
ships with this package), with the CPU stand-ins of ``benchmarks/official_stubs.py`` for its CUDA-only imports:

* ``fastvar``: the ``Infinity/`` folder of https://github.com/csguoh/FastVAR (its own ``Infinity`` class,
  hard-wired pruning: blocks 3-27, 40 % / 50 % of the 32 / 40 scales, the 48 and 64 scales skipped);
* ``fastervar``: the ``Infinity/`` folder of https://github.com/sen-mao/FasterVAR (its ``autoregressive_infer_cfg``
  with ``alpha``, CFG 0 on the last three scales; the 48 and 64 scales skipped, the 40 one low-rank);
* ``scalekv``: the root of https://github.com/StargazerX0/ScaleKV (the official ``Infinity`` it ships, wrapped by
  ``enable_scale_kv_2b.enable_scale_kv`` with the released arguments and ``budgets/2b_10%_budget.json``; its
  code is hard-wired to the 1:1 1M schedule).

Both sides run the Infinity-2B block (width 2048) at ``--depth`` with seeded random weights (built by the authors'
class, loaded into ours with our converters), random text features, CFG on the logits, greedy. Before timing,
one untimed call of each compares the bits of every scale. The timed calls are interleaved rounds
(``benchmarks/common.py``); every call also records when each scale's codes were sampled, so the table
splits the time by scale (a scale's time: its forward, guidance and sampling, plus the next-scale input
built from the scale before).

    python benchmarks/vs_authors_acceleration.py --method fastvar --reference-repo /path/to/FastVAR/Infinity \\
        --depth 4 --pn 1M --repeats 2 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import official_stubs
from benchmarks import vs_official_infinity as voi
from benchmarks.common import (
    CLOCKS,
    ScaleClock,
    count_params,
    interleaved,
    machine_info,
    markdown_table,
    run_header,
    write_outputs,
)
from vpg_pipelines.acceleration import (
    INFINITY_2B_10,
    RANK_RATIO_PRESETS,
    AccelerationTarget,
    FasterVAR,
    FastVAR,
    ScaleKV,
)
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.models.infinity.adapter import InfinityAdapter, scale_steps
from vpg_pipelines.models.infinity.schedules import PIXEL_BUDGETS, schedule_from_template
from vpg_pipelines.sampling.next_scale import run_next_scale

# method -> (files that prove the checkout, our accelerator, the schedule its code is hard-wired to or None)
METHODS: dict[str, tuple[tuple[str, ...], Any, str | None]] = {
    "fastvar": (("infinity/models/fastvar_basic.py", "infinity/models/fastvar_utils.py"), lambda _: FastVAR(), None),
    # their code looks the capacities up by block index: our blocks get the released 2B blocks' ones
    "scalekv": (("scale_kv.py", "enable_scale_kv_2b.py", "budgets/2b_10%_budget.json"),
                lambda depth: ScaleKV(budget=INFINITY_2B_10.first_blocks(depth)), "1M"),
    # the released 2B setting (tools/interactive_infer.py): alpha 0.96, cfg 0 on the last 3 scales; their low-rank
    # draws come from the process-wide generator seeded right before the call, ours from a generator of that seed.
    # Their ratios go by block chunk (chunk c takes entry c: at depth 4, chunks of one block, entries 0-3), ours by
    # eighth of the depth (block i: entry 8i/depth); the same where theirs was released (8 chunks): the chunk's
    # entries are given explicitly here so that both run the same ratios
    "fastervar": (("infinity/utils/rank_ratio.py", "utils/low_rank_feature.py"),
                  lambda depth: FasterVAR(rank_ratio=_chunk_ratios(depth), cfg0_last_scales=3, seed=FASTERVAR_SEED),
                  None),
}
FASTERVAR_ALPHA, FASTERVAR_SEED = "0.96", 1234


def _chunk_ratios(depth: int) -> tuple[float, ...]:
    """The authors' ratio of each block chunk (``block_chunks`` = gcd(depth, 8), as ``vs_official_infinity``)."""
    return RANK_RATIO_PRESETS[FASTERVAR_ALPHA][: voi.block_chunks(depth)]
SCALEKV_ARGS = {"window_size": 16, "max_capacity": 650, "kernel_size": 5, "pooling": "maxpool"}
"""``enable_scale_kv``'s arguments in the authors' ``infer_2b.py:104``."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--reference-repo", required=True, help="the authors' checkout (see the module docstring)")
    p.add_argument("--depth", type=int, default=4, help="transformer blocks (even, >= 2; the 2B has 32)")
    p.add_argument("--width", type=int, default=voi.WIDTH, help="transformer width (2048 for the 2B)")
    p.add_argument("--pn", default="1M", choices=list(PIXEL_BUDGETS), help="pixel budget of the 1:1 template")
    p.add_argument("--vae-ch-mult", default="1,1,1,1,1",
                   help="VAE channel multipliers (only the agreement check decodes; d32: 1,2,4,4,4)")
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=0, help="untimed rounds (the agreement calls already warm up)")
    p.add_argument("--guidance-scale", type=float, default=4.0, help="CFG on the logits (the authors' scripts: 4)")
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", default="cpu", choices=CLOCKS)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-json", default=None)
    p.add_argument("--out-md", default=None)
    args = p.parse_args(argv)
    if args.depth < 2 or args.depth % 2 or args.width < 128 or args.width % 128:
        p.error(f"--depth must be even >= 2 and --width a multiple of 128, got {args.depth}, {args.width}")
    fixed = METHODS[args.method][2]
    if fixed is not None and args.pn != fixed:
        p.error(f"--pn must be {fixed} for {args.method} (the authors' code is hard-wired to that schedule)")
    try:
        args.vae_ch_mult = tuple(int(c) for c in args.vae_ch_mult.split(","))
    except ValueError:
        p.error(f"--vae-ch-mult must be 5 comma-separated integers, got {args.vae_ch_mult!r}")
    if len(args.vae_ch_mult) != 5 or args.repeats < 1 or args.warmup < 0 or not 1 <= args.text_len <= voi.TEXT_MAXLEN:
        p.error("--vae-ch-mult takes 5 integers, --repeats >= 1, --warmup >= 0, --text-len in [1, 512]")
    # what vs_official_infinity's builders read
    args.h_div_w, args.batch, args.top_k, args.top_p, args.no_decode = 1.0, 1, 1, 0.0, True
    return args


def import_authors(args: argparse.Namespace) -> dict[str, Any]:
    """The authors' ``Infinity``, ``vae_model``, schedule table (and ScaleKV's ``enable_scale_kv``)."""
    required = METHODS[args.method][0]
    m = official_stubs.import_infinity_checkout(
        args.reference_repo, f"{args.method} (authors')", required,
        ("infinity.models.infinity", "infinity.models.bsq_vae.vae", "infinity.utils.dynamic_resolution"), voi.NEEDED)
    if args.method == "fastvar":  # its block's cross-attention has the same bf16 casts as basic.py's (exact fp32 here)
        official_stubs.exact_attention_casts(sys.modules["infinity.models.fastvar_basic"])
    out = {"Infinity": m["infinity.models.infinity"].Infinity, "vae_model": m["infinity.models.bsq_vae.vae"].vae_model,
           "dynamic_resolution_h_w": m["infinity.utils.dynamic_resolution"].dynamic_resolution_h_w}
    if args.method == "scalekv":
        repo = str(Path(args.reference_repo).expanduser().resolve())
        sys.path.insert(0, repo)
        try:
            import enable_scale_kv_2b  # noqa: PLC0415 (the authors' module, from the checkout)
        finally:
            sys.path.remove(repo)
        out["enable_scale_kv"] = enable_scale_kv_2b.enable_scale_kv
    return out


def enable_theirs(authors: dict[str, Any], model: Any, args: argparse.Namespace) -> None:
    """Switch the authors' method on where it is a wrapper (ScaleKV; FastVAR is built into its class)."""
    if args.method == "scalekv":
        cwd = os.getcwd()
        os.chdir(Path(args.reference_repo).expanduser())  # the budget file is read relative to the repository
        try:
            authors["enable_scale_kv"](model, **SCALEKV_ARGS)
        finally:
            os.chdir(cwd)


def make_runs(model: Any, vae: Any, pipe: Any, authors: dict[str, Any], args: argparse.Namespace, clock: ScaleClock
              ) -> tuple[dict[str, Any], Any]:
    schedule = schedule_from_template(args.h_div_w, args.pn)
    theirs_schedule = [(1, h, w) for _, h, w in authors["dynamic_resolution_h_w"][args.h_div_w][args.pn]["scales"]]
    if theirs_schedule != schedule.scale_schedule:
        raise RuntimeError(f"schedules differ: theirs {theirs_schedule}, ours {schedule.scale_schedule}")
    features, lens = voi.text_inputs(args)
    n = schedule.num_scales
    lens_t = torch.tensor(lens, dtype=torch.int32)
    cu_seqlens = torch.nn.functional.pad(lens_t.cumsum(0, dtype=torch.int32), (1, 0))
    adapter = InfinityAdapter(pipe.transformer, pipe.vae)
    accel = resolved(args, schedule)

    cfg_list, extra = [args.guidance_scale] * n, {}
    if args.method == "fastervar":
        cfg_list, extra = [args.guidance_scale] * (n - 3) + [0.0] * 3, {"alpha": FASTERVAR_ALPHA}

    def theirs() -> None:
        if args.method == "fastervar":
            torch.manual_seed(FASTERVAR_SEED)
        with torch.inference_mode():
            model.autoregressive_infer_cfg(
                vae=vae, scale_schedule=theirs_schedule, label_B_or_BLT=(features, lens_t, cu_seqlens, max(lens)),
                B=1, g_seed=args.seed, cfg_list=cfg_list, tau_list=[args.tau] * n, top_k=1, top_p=0.0,
                returns_vemb=1, cfg_insertion_layer=[0], vae_type=voi.BITS, ret_img=False, inference_mode=True, **extra)

    def ours_state() -> Any:
        cfg = ClassifierFreeGuidance(guidance_scale=args.guidance_scale, schedule="constant", layer=0)
        state = adapter.prepare(features, lens, schedule, with_null=True, tau=args.tau, top_k=1, top_p=0.0)
        with torch.inference_mode():
            run_next_scale(adapter, state, cfg=cfg, generator=torch.Generator().manual_seed(args.seed),
                           acceleration=accel)
        return state

    runs = {"theirs": clock.around("theirs", theirs), "ours": clock.around("ours", ours_state)}
    return runs, ours_state


def resolved(args: argparse.Namespace, schedule: Any) -> Any:
    """Our accelerator resolved for the call (as the pipeline does; ScaleKV finds its first compressed scale)."""
    target = AccelerationTarget("infinity", args.depth, tuple(scale_steps(schedule)), schedule.num_scales,
                                template=(args.h_div_w, args.pn))
    return METHODS[args.method][1](args.depth).resolve(target)


def agreement(vae: Any, runs: dict[str, Any], ours_state: Any) -> dict[str, Any]:
    """Bits of every scale the two run (the authors' recorded by ``indices_to_codes``), untimed."""
    with voi.Recorder(vae) as rec:
        runs["theirs"]()
    state = ours_state()
    theirs_grids = [int(b.shape[-2]) for b in rec.bits]
    ours_grids = [int(b.shape[-2]) for b in state.bits]
    differ = [int((a.to(b.dtype) != b).sum()) for a, b in zip(state.bits, rec.bits)]
    return {"scales_run": {"theirs": theirs_grids, "ours": ours_grids}, "bits_total": sum(b.numel() for b in rec.bits),
            "bits_differ_per_scale": differ, "agree": theirs_grids == ours_grids and not any(differ)}


def install_clocks(clock: ScaleClock, vae: Any, adapter_cls: type) -> contextlib.ExitStack:
    """Stamp every scale: the authors' ``indices_to_codes`` (once per scale run) and our adapter's ``update``."""
    stack = contextlib.ExitStack()
    lfq = vae.quantizer.lfq
    to_codes = lfq.indices_to_codes

    def theirs_codes(indices, *a, **kw):
        clock.stamp(int(indices.shape[-2]))
        return to_codes(indices, *a, **kw)

    update = adapter_cls.update

    def ours_update(self, state, codes, step):
        clock.stamp(int(step.grid[1]))
        return update(self, state, codes, step)

    lfq.indices_to_codes = theirs_codes
    adapter_cls.update = ours_update
    stack.callback(lambda: delattr(lfq, "indices_to_codes"))
    stack.callback(lambda: setattr(adapter_cls, "update", update))
    return stack


def to_markdown(result: dict[str, Any]) -> str:
    a = result["args"]
    settings = (f"method {a['method']} ({result['method_setting']}); depth {a['depth']}, width {a['width']}, "
                f"{result['schedule']}, tau {a['tau']}, CFG on the logits, random text features ({a['text_len']} "
                "tokens), VAE decode not timed")
    head = run_header(result, settings)
    times, speed = result["times"], result["speedup"]
    rows = [[f"{a['method']}: the authors' code", f"{statistics.median(times['theirs']):.2f} s", "1"],
            [f"{a['method']}: ours (`run_next_scale`, `acceleration=`)", f"{statistics.median(times['ours']):.2f} s",
             f"{statistics.median(speed):.2f}× [{min(speed):.2f}–{max(speed):.2f}]"]]
    table = markdown_table(["sampler", "median", "our speed vs theirs (paired median [range])"], rows)
    per = result["per_scale"]
    grids = sorted(set(per["theirs"]) | set(per["ours"]))
    scale_rows = [[f"{g}×{g}", *(f"{per[n].get(g, 0.0):.2f}" for n in ("theirs", "ours")),
                   f"{per['ours'].get(g, 0.0) - per['theirs'].get(g, 0.0):+.2f}"] for g in grids]
    scale_table = markdown_table(["scale", "theirs (s)", "ours (s)", "ours − theirs"], scale_rows)
    agree = result["agreement"]
    return "\n".join([head, "", table, "", scale_table, "",
                      f"Agreement: greedy bits {'equal' if agree['agree'] else 'DIFFERENT'} at every scale run "
                      f"({agree['bits_total']} bits; scales run {agree['scales_run']['theirs']}; differing per scale "
                      f"{agree['bits_differ_per_scale']})."])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    authors = import_authors(args)
    with contextlib.redirect_stdout(io.StringIO()):
        model, vae, pipe = voi.build_models(authors, args)
        enable_theirs(authors, model, args)
    clock = ScaleClock()
    runs, ours_state = make_runs(model, vae, pipe, authors, args, clock)
    agree = agreement(vae, runs, ours_state)
    with install_clocks(clock, vae, InfinityAdapter):
        clock.calls.clear()
        series = interleaved(runs, args.repeats, args.warmup, "cpu", args.clock)
    schedule = schedule_from_template(args.h_div_w, args.pn)
    h, w = schedule.image_size
    result: dict[str, Any] = {
        "benchmark": "vs_authors_acceleration", "method_setting": repr(resolved(args, schedule)),
        "model": f"Infinity-2B block at depth {args.depth}, random weights", "params": count_params(pipe.transformer),
        "device": "cpu", "machine": machine_info("cpu"), "args": {**vars(args), "device": "cpu", "dtype": "float32"},
        "schedule": f"{schedule.num_scales} scales ({sum(schedule.num_sites)} tokens), {h}x{w} px",
        "agreement": agree, "times": {n: s.times for n, s in series.items()},
        "wall": {n: s.wall for n, s in series.items()}, "cpu": {n: s.cpu for n, s in series.items()},
        "speedup": [t / o for t, o in zip(series["theirs"].times, series["ours"].times)],  # > 1: ours is faster
        "per_scale": {n: clock.per_scale(n, args.clock, args.warmup) for n in runs},
    }
    markdown = to_markdown(result)
    write_outputs(result, markdown, args.out_json, args.out_md)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
