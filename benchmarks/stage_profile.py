"""Where a VAR or Infinity call spends its time, ours against the official sampler, split by stage (``torch.profiler``).

Both samplers run the same call as ``vs_official.py`` (VAR: same weights, CFG, greedy, decode included) or
``vs_official_infinity.py`` (``--family infinity``: its arguments, e.g. ``--pn 0.25M --depth 4``).
Each stage is marked by wrapping the modules and functions that implement it in
``torch.profiler.record_function`` for the duration of the profile (nothing is changed in either
code base); every profiled operator's own CPU time is charged to the innermost stage around it, so the
stages add up to the profiled call. Inside attention the operators are split further by kind: the
SDPA kernel, the q/k/v and output projections, and the key/value cache (ours: ``KVCache.append``;
the official code: its ``torch.cat`` of the cached and new keys/values).

    python benchmarks/stage_profile.py --reference-repo /path/to/VAR --model d16 --batch 4 --threads 2
    python benchmarks/stage_profile.py --family infinity --reference-repo /path/to/Infinity --pn 0.25M \\
        --depth 4 --text-len 64 --no-decode --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import build_pipeline, count_params, machine_info, markdown_table, write_outputs
from benchmarks.vs_official import build_official, make_runs
from vpg_pipelines.guidance.chain import GuidanceChain
from vpg_pipelines.models.kv_cache import KVCache
from vpg_pipelines.models.var.adapter import VARAdapter

PREFIX = "stage:"
STAGES = ("embedding", "block: norms, AdaLN, residual", "attention: q/k/v + output projections",
          "attention: SDPA", "attention: K/V cache writes and reads", "attention: other",
          "cross-attention", "mlp", "head", "guidance", "sampling", "next-scale input", "decode", "other")


@contextlib.contextmanager
def _wrapped(owner: Any, attr: str, stage: str) -> Iterator[None]:
    """Run ``owner.attr`` inside a ``record_function`` range named after ``stage`` (restored on exit)."""
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        with record_function(PREFIX + stage):
            return original(*args, **kwargs)

    had_own = attr in vars(owner) if hasattr(owner, "__dict__") else False
    setattr(owner, attr, wrapper)
    try:
        yield
    finally:
        if had_own or isinstance(owner, type) or not isinstance(owner, torch.nn.Module):
            setattr(owner, attr, original)
        else:
            delattr(owner, attr)


def _transformer_marks(model: torch.nn.Module) -> list[tuple[Any, str, str]]:
    """(owner, attribute, stage) for the transformer parts of either implementation."""
    marks = [(model.word_embed, "forward", "embedding"), (model.head_nm, "forward", "head"),
             (model.head, "forward", "head")]
    for block in model.blocks:
        marks += [(block, "forward", "block: norms, AdaLN, residual"), (block.attn, "forward", "attention: other"),
                  (block.ffn, "forward", "mlp")]
    return marks


def ours_marks(pipe) -> list[tuple[Any, str, str]]:
    marks = _transformer_marks(pipe.transformer)
    marks += [(KVCache, "append", "attention: K/V cache writes and reads"), (VARAdapter, "sample", "sampling"),
              (VARAdapter, "update", "next-scale input"), (VARAdapter, "step_input", "next-scale input"),
              (GuidanceChain, "reduce_conditions", "guidance"), (GuidanceChain, "reduce_prefix", "guidance"),
              (GuidanceChain, "reduce_logits", "guidance"), (pipe.vae, "decode_latent", "decode")]
    return marks


def official_marks(official) -> list[tuple[Any, str, str]]:
    var_module = sys.modules[type(official).__module__]
    quant = official.vae_quant_proxy[0]
    marks = _transformer_marks(official)
    marks += [(var_module, "sample_with_top_k_top_p_", "sampling"),
              (quant, "get_next_autoregressive_input", "next-scale input"),
              (quant.embedding, "forward", "next-scale input"),
              (official.vae_proxy[0], "fhat_to_img", "decode")]
    return marks


def infinity_ours_marks(pipe) -> list[tuple[Any, str, str]]:
    """Our Infinity transformer, adapter and guidance chain (``--family infinity``)."""
    from vpg_pipelines.models.infinity.adapter import InfinityAdapter

    model = pipe.transformer
    marks = [(model.word_embed, "forward", "embedding"), (model.head_nm, "forward", "head"),
             (model.head, "forward", "head")]
    for block in model.iter_blocks():
        marks += [(block, "forward", "block: norms, AdaLN, residual"), (block.sa, "forward", "attention: other"),
                  (block.ca, "forward", "cross-attention"), (block.ffn, "forward", "mlp")]
    marks += [(KVCache, "append", "attention: K/V cache writes and reads"), (InfinityAdapter, "sample", "sampling"),
              (InfinityAdapter, "update", "next-scale input"), (InfinityAdapter, "step_input", "next-scale input"),
              (GuidanceChain, "reduce_conditions", "guidance"), (GuidanceChain, "reduce_prefix", "guidance"),
              (GuidanceChain, "reduce_logits", "guidance"), (InfinityAdapter, "decode", "decode")]
    return marks


def infinity_official_marks(model, vae) -> list[tuple[Any, str, str]]:
    """The official ``Infinity`` (its loop's inline CFG and interpolations fall under "other")."""
    module = sys.modules[type(model).__module__]
    marks = [(model.word_embed, "forward", "embedding"), (model, "add_lvl_embeding", "embedding"),
             (model.head_nm, "forward", "head"), (model.head, "forward", "head")]
    for block in model.unregistered_blocks:
        marks += [(block, "forward", "block: norms, AdaLN, residual"), (block.sa, "forward", "attention: other"),
                  (block.ca, "forward", "cross-attention"), (block.ffn, "forward", "mlp")]
    marks += [(module, "sample_with_top_k_top_p_also_inplace_modifying_logits_", "sampling"),
              (vae.quantizer.lfq, "indices_to_codes", "next-scale input"), (vae, "decode", "decode")]
    return marks


def _kind(op: str) -> str:
    """Which attention sub-stage an operator directly under the attention range belongs to."""
    if "scaled_dot_product" in op or "flash_attention" in op:
        return "attention: SDPA"
    if op in ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul"):
        return "attention: q/k/v + output projections"
    if op == "aten::cat":  # the official cache is a cat of the cached and the new keys/values
        return "attention: K/V cache writes and reads"
    return "attention: other"


def stage_times(events) -> dict[str, float]:
    """Self CPU time (ms) of every operator, charged to the innermost stage range around it."""
    totals: dict[str, float] = defaultdict(float)
    for evt in events:
        if evt.name.startswith(PREFIX):
            continue
        stage, top, parent = "other", evt.name, evt.cpu_parent
        while parent is not None:
            if parent.name.startswith(PREFIX):
                stage = parent.name[len(PREFIX):]
                break
            top, parent = parent.name, parent.cpu_parent
        if stage == "attention: other":
            stage = _kind(top)
        totals[stage] += evt.self_cpu_time_total / 1e3
    return dict(totals)


def profile_call(run: Callable[[], Any], marks: list[tuple[Any, str, str]]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        for owner, attr, stage in marks:
            stack.enter_context(_wrapped(owner, attr, stage))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            run()
            wall = time.perf_counter() - start
    events = prof.events()
    return {"wall_ms": wall * 1e3, "stages_ms": stage_times(events), "operators": len(events)}


def to_markdown(result: dict[str, Any]) -> str:
    m, a = result["machine"], result["args"]
    head = (f"**{result['model']}** ({result['params'] / 1e6:.1f} M transformer parameters), batch {a['batch']}, "
            f"float32 on the CPU; one profiled call each after {a['warmup']} warm-up; {m['date']}; {m['cpu']}, "
            f"{m['cores']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}; cfg {a['guidance_scale']}, "
            f"top-k {a['top_k']}; no VPG, {'decode not profiled' if a.get('decode') is False else 'decode included'}.")
    names = list(result["profiles"])
    rows = []
    for stage in STAGES:
        values = [result["profiles"][n]["stages_ms"].get(stage, 0.0) for n in names]
        if not any(values):
            continue
        rows.append([stage, *(f"{v:.0f}" for v in values), f"{values[-1] - values[0]:+.0f}"])
    totals = [sum(result["profiles"][n]["stages_ms"].values()) for n in names]
    rows.append(["**sum of stages**", *(f"{t:.0f}" for t in totals), f"{totals[-1] - totals[0]:+.0f}"])
    walls = [result["profiles"][n]["wall_ms"] for n in names]
    rows.append(["wall time of the profiled call", *(f"{w:.0f}" for w in walls), f"{walls[-1] - walls[0]:+.0f}"])
    ops = [result["profiles"][n]["operators"] for n in names]
    rows.append(["operators called", *(str(o) for o in ops), f"{ops[-1] - ops[0]:+d}"])
    header = ["stage (ms)", *names, f"{names[-1]} − {names[0]}"]
    return "\n".join([head, "", markdown_table(header, rows)])


def infinity_main(argv: list[str]) -> dict[str, Any]:
    """``--family infinity``: the models and calls of ``vs_official_infinity.py`` (its arguments)."""
    from benchmarks import vs_official_infinity as voi

    args = voi.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    official = voi.import_official(args.reference_repo)
    model, vae, pipe = voi.build_models(official, args)
    runs, _ = voi.make_runs(model, vae, pipe, official, args)
    plan = {"official": infinity_official_marks(model, vae), "ours-sampler": infinity_ours_marks(pipe)}
    for _ in range(args.warmup):
        for name in plan:
            runs[name]()
    h, w = voi.schedule_from_template(args.h_div_w, args.pn).image_size
    result: dict[str, Any] = {
        "benchmark": "stage_profile", "family": "infinity",
        "model": f"Infinity-2B block at depth {args.depth}, width {args.width}, {args.pn} ({h}x{w} px), random weights",
        "params": count_params(pipe.transformer), "device": "cpu", "machine": machine_info("cpu"),
        "args": vars(args), "profiles": {name: profile_call(runs[name], marks) for name, marks in plan.items()},
    }
    result["args"]["decode"] = not args.no_decode
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--family" in argv:
        at = argv.index("--family")
        family = argv[at + 1] if at + 1 < len(argv) else ""
        if family not in ("var", "infinity"):
            raise SystemExit(f"--family must be 'var' or 'infinity', got {family!r}")
        argv = argv[:at] + argv[at + 2:]
        if family == "infinity":
            out_json, out_md = _pop(argv, "--out-json"), _pop(argv, "--out-md")
            result = infinity_main(argv)
            markdown = to_markdown(result)
            write_outputs(result, markdown, out_json, out_md)
            print(markdown)
            return result
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="var", choices=("var", "infinity"),
                   help="var (these arguments) or infinity (the arguments of vs_official_infinity.py)")
    p.add_argument("--reference-repo", required=True, help="local checkout of the official VAR repository")
    p.add_argument("--model", default="d16", help="'tiny' (the parity model) or d16/d20/d24/d30 (random weights)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-json", default=None)
    p.add_argument("--out-md", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = "parity" if args.model == "tiny" else args.model
    pipe, description = build_pipeline(model, "cpu", torch.float32, args.seed)
    official = build_official(args.reference_repo, pipe)
    args.dtype, args.samplers = "float32", ["ours-sampler"]  # what make_runs reads
    runs = make_runs(pipe, official, args, args.batch)
    plan = {"official": official_marks(official), "ours-sampler": ours_marks(pipe)}
    for _ in range(args.warmup):
        for name in plan:
            runs[name]()
    result: dict[str, Any] = {
        "benchmark": "stage_profile", "model": description, "params": count_params(pipe.transformer),
        "device": "cpu", "machine": machine_info("cpu"),
        "args": vars(args), "profiles": {name: profile_call(runs[name], marks) for name, marks in plan.items()},
    }
    markdown = to_markdown(result)
    write_outputs(result, markdown, args.out_json, args.out_md)
    print(markdown)
    return result


def _pop(argv: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` from ``argv`` and return the value (outputs are written here, not by the runs)."""
    if flag not in argv:
        return None
    at = argv.index(flag)
    value = argv[at + 1]
    del argv[at : at + 2]
    return value


if __name__ == "__main__":
    main(sys.argv[1:])
