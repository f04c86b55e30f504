"""Our VAR sampler against the official one: same config, same weights, same greedy samples.

The official code is imported at run time from a local checkout of https://github.com/FoundationVision/VAR
(``--reference-repo``); nothing of it ships with this package. The official VQVAE and VAR are built
with the configuration of our model and loaded with our state dicts (the official VAR additionally
holds three buffers derived from the config, which its constructor builds). Both samplers run greedy
(``top_k=1``) by default, so their images must agree; the script reports the largest difference.

Both run the same work: CFG on (the official sampler always runs the conditional and the null rows),
no VPG, VQVAE decode included. On CUDA with half precision the official sampler runs with its float32
weights under ``torch.autocast`` (as its demo does) and ours with weights cast to that dtype.

    python benchmarks/vs_official.py --reference-repo /path/to/VAR --model tiny --repeats 10
    python benchmarks/vs_official.py --reference-repo /path/to/VAR --model d16 --batch 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
from pathlib import Path
from statistics import median
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CLOCKS,
    DTYPES,
    build_pipeline,
    count_params,
    fmt_mib,
    fmt_range,
    fmt_seconds,
    interleaved,
    machine_info,
    markdown_table,
    run_header,
    synchronize,
    write_outputs,
)
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.models.var.adapter import VARAdapter
from vpg_pipelines.sampling.next_scale import run_next_scale

OFFICIAL_MODULES = ("dist", "models", "utils")
OFFICIAL_VQVAE_ARGS = ("vocab_size", "z_channels", "ch", "dropout", "beta", "using_znorm", "quant_conv_ks",
                       "quant_resi",
                       "share_quant_resi", "default_qresi_counts", "v_patch_nums", "test_mode")
OFFICIAL_VAR_ARGS = ("num_classes", "depth", "embed_dim", "num_heads", "mlp_ratio", "norm_eps", "shared_aln",
                     "attn_l2_norm", "patch_nums")
DERIVED = ("lvl_1L", "attn_bias_for_masking", "zero_k_bias")
OURS = ("ours", "ours-sampler")
NAMES = {"official": "official `autoregressive_infer_cfg`", "ours": "ours: `VPGVARPipeline.__call__`",
         "ours-sampler": "ours: `run_next_scale` + decode"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-repo", required=True, help="local checkout of the official VAR repository")
    p.add_argument("--model", default="tiny", help="'tiny' (the parity model) or d16/d20/d24/d30 (random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=1, help="1 = greedy (outputs must agree)")
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", default="wall", choices=CLOCKS,
                   help="rank by wall time, or by this process's CPU time (shared CPUs; use with --threads 1)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--samplers", nargs="+", default=list(OURS), choices=OURS,
                   help="which of ours to time against the official sampler (default: both)")
    p.add_argument("--out-json", default=None)
    p.add_argument("--out-md", default=None)
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.device.startswith("cuda"):
        p.error("--clock cpu measures host CPU time; use --clock wall on CUDA")
    if args.repeats < 1 or args.warmup < 0 or min(args.batch) < 1:
        p.error("--repeats must be >= 1, --warmup >= 0 and every --batch >= 1")
    return args


# -- the official code -----------------------------------------------------------------------------
def import_official(repo: str | Path) -> tuple[type, type]:
    """``(VQVAE, VAR)`` classes of the official checkout at ``repo`` (its top-level ``dist``/``models``)."""
    repo = Path(repo).expanduser().resolve()
    if not (repo / "models" / "var.py").is_file() or not (repo / "dist.py").is_file():
        raise ValueError(f"`--reference-repo` {repo} is not a checkout of the official VAR code "
                         "(expected models/var.py and dist.py)")
    for name in OFFICIAL_MODULES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) or str(next(iter(getattr(module, "__path__", [])), ""))
        if module is not None and not origin.startswith(str(repo)):
            raise RuntimeError(f"a different top-level module {name!r} ({origin}) is already imported; "
                               "run the benchmark in a fresh process")
    sys.path.insert(0, str(repo))
    try:
        vqvae = importlib.import_module("models.vqvae")
        var = importlib.import_module("models.var")
    finally:
        sys.path.remove(str(repo))
    return vqvae.VQVAE, var.VAR


def official_args(pipe) -> tuple[dict, dict]:
    """Official constructor arguments equivalent to our pipeline's models."""
    vcfg, tcfg = dict(pipe.vae.config), dict(pipe.transformer.config)
    if tuple(vcfg["ch_mult"]) != (1, 1, 2, 2, 4) or vcfg["num_res_blocks"] != 2:
        raise ValueError("this VQVAE (ch_mult/num_res_blocks) cannot be built by the official class")
    vae_args = {k: vcfg[k] for k in OFFICIAL_VQVAE_ARGS}
    vae_args["v_patch_nums"] = tuple(vae_args["v_patch_nums"])
    var_args = {k: tcfg[k] for k in OFFICIAL_VAR_ARGS}
    var_args["patch_nums"] = tuple(var_args["patch_nums"])
    var_args.update(drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, cond_drop_rate=0.1,
                    flash_if_available=True, fused_if_available=True)
    return vae_args, var_args


def build_official(repo: str | Path, pipe) -> Any:
    """The official VAR (with its VQVAE) holding our pipeline's weights, float32, on the pipeline's device."""
    vqvae_cls, var_cls = import_official(repo)
    vae_args, var_args = official_args(pipe)
    device = pipe.device
    with torch.device(device), contextlib.redirect_stdout(io.StringIO()):  # the official constructor prints
        vae = vqvae_cls(**vae_args)
        var = var_cls(vae_local=vae, **var_args)
    vae.load_state_dict({k: v.float() for k, v in pipe.vae.state_dict().items()}, strict=True)
    result = var.load_state_dict({k: v.float() for k, v in pipe.transformer.state_dict().items()}, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k.rsplit(".", 1)[-1] not in DERIVED]
    if missing or unexpected:
        raise RuntimeError(f"state dicts do not line up: missing {missing}, unexpected {unexpected}")
    return var.eval()


# -- runs ------------------------------------------------------------------------------------------
def labels_for(num_classes: int, batch: int) -> list[int]:
    return [(7 * i + 1) % num_classes for i in range(batch)]


def make_runs(pipe, official, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    device = pipe.device
    labels = labels_for(pipe.transformer.config.num_classes, batch)
    label_tensor = torch.tensor(labels, device=device)
    dtype = DTYPES[args.dtype]

    def autocast():
        """The official code keeps float32 weights and runs half precision under autocast (as its demo)."""
        return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def ours() -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(args.seed)
        return pipe(class_labels=labels, guidance_scale=args.guidance_scale, top_k=args.top_k, top_p=args.top_p,
                    vpg_scale=1.0, generator=generator, output_type="pt").images

    def ours_sampler() -> torch.Tensor:
        """The shared sampler without the pipeline's argument checks and post-processing."""
        adapter = VARAdapter(pipe.transformer, pipe.vae)
        cfg = ClassifierFreeGuidance(guidance_scale=args.guidance_scale, schedule="linear")
        state = adapter.prepare(label_tensor, with_null=True, device=device, dtype=pipe.transformer.dtype,
                                top_k=args.top_k, top_p=args.top_p)
        with torch.inference_mode():
            run_next_scale(adapter, state, cfg=cfg, generator=torch.Generator(device).manual_seed(args.seed))
            return adapter.decode(state).add(1).mul(0.5).clamp(0, 1)

    def theirs() -> torch.Tensor:
        with torch.inference_mode(), autocast():
            return official.autoregressive_infer_cfg(batch, label_tensor, g_seed=args.seed, cfg=args.guidance_scale,
                                                     top_k=args.top_k, top_p=args.top_p)

    runs = {"official": theirs, "ours": ours, "ours-sampler": ours_sampler}
    return {name: run for name, run in runs.items() if name == "official" or name in args.samplers}


def cuda_peaks(runs: dict[str, Any]) -> dict[str, int]:
    peaks = {}
    for name, run in runs.items():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
    return peaks


def bench_batch(pipe, official, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    runs = make_runs(pipe, official, args, batch)
    images = {name: run().float() for name, run in runs.items()}
    synchronize(str(pipe.device))
    ours = [name for name in OURS if name in runs]
    diffs = {name: (images[name] - images["official"]).abs().max().item() for name in ours}
    series = interleaved(runs, args.repeats, args.warmup, str(pipe.device), args.clock)
    result = {
        "batch": batch,
        "max_abs_image_diff": diffs,
        "times": {name: s.times for name, s in series.items()},
        "wall": {name: s.wall for name, s in series.items()},
        "cpu": {name: s.cpu for name, s in series.items()},
        "median": {name: s.median for name, s in series.items()},
        # official time / our time, per round (> 1: ours is faster)
        "speedup": {name: [o / u for o, u in zip(series["official"].times, series[name].times)] for name in ours},
    }
    if pipe.device.type == "cuda":
        result["working_memory"] = cuda_peaks(runs)
    return result


def to_markdown(result: dict[str, Any]) -> str:
    head = run_header(result, "no VPG, VQVAE decode included")
    header = ["batch", "sampler", "median [min–max]", "our speed vs official (paired median [range])",
              "max abs image diff vs official"]
    cuda = any("working_memory" in b for b in result["batches"])
    if cuda:
        header.append("working memory (peak above weights)")
    rows = []
    for b in result["batches"]:
        for name in ("official", *(n for n in OURS if n in b["speedup"])):
            t = b["times"][name]
            row = [b["batch"], NAMES[name], f"{fmt_seconds(median(t))} [{fmt_seconds(min(t))}–{fmt_seconds(max(t))}]"]
            if name == "official":
                row += ["1", "—"]
            else:
                s = b["speedup"][name]
                row += [f"{median(s):.2f}× [{fmt_range(s)}]", f"{b['max_abs_image_diff'][name]:.2e}"]
            if cuda:
                row.append(fmt_mib(b["working_memory"][name]))
            rows.append(row)
    lines = [head, "", markdown_table(header, rows), "", "Target: our sampler ≥ 1.0× the official speed:"]
    for b in result["batches"]:
        for name in b["speedup"]:
            s = median(b["speedup"][name])
            lines.append(f"- batch {b['batch']}, {NAMES[name]}: {s:.2f}×: **{'met' if s >= 1.0 else 'missed'}**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = "parity" if args.model == "tiny" else args.model
    pipe, description = build_pipeline(model, args.device, torch.float32, args.seed)
    official = build_official(args.reference_repo, pipe)
    if DTYPES[args.dtype] != torch.float32:
        pipe = pipe.to(dtype=DTYPES[args.dtype])
    result: dict[str, Any] = {
        "benchmark": "vs_official",
        "model": description,
        "params": count_params(pipe.transformer),
        "device": str(pipe.device),
        "machine": machine_info(args.device),
        "args": vars(args),
        "batches": [bench_batch(pipe, official, args, batch) for batch in args.batch],
    }
    markdown = to_markdown(result)
    write_outputs(result, markdown, args.out_json, args.out_md)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
