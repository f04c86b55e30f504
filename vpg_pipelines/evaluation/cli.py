"""``vpg eval sample | pack | fid | sweep``: the argument parsers and what each subcommand runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..devices import pick_device
from ..flags import DTYPES, vpg_scales
from .fid import compute_fid_is
from .image_sets import ImageSet
from .pack import pack_imagenet
from .protocols import PROTOCOLS
from .run_folder import RunFolder
from .runs import feature_net, load_for, make_spec, make_state
from .sampler import sample_run
from .sweep import run_sweep

PRESETS = ("none", "paper")


def _call_arg(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--call-arg takes NAME=VALUE (VALUE as JSON), got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare string


def _add_run_args(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    p.add_argument("--model", required=True,
                   help="'demo', a pipeline folder (vpg convert / save_pretrained) or an official var_d*.pth (+ --vae)")
    p.add_argument("--vae", default=None, help="official VQVAE file with a .pth --model")
    p.add_argument("--config", default=None, help="JSON with the official constructor args, with a .pth --model")
    p.add_argument("--out", required=True, help="output folder (created; an existing run folder is resumed)")
    p.add_argument("--preset", choices=PRESETS, default="none",
                   help="'paper': the sampling settings behind the paper's tables (docs/eval.md); flags given win")
    p.add_argument("--seed", type=int, default=0, help="base seed: sample i draws from its own seed of (seed, i)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="samples per chunk (the unit of resuming and of work per process; default per protocol)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per pipeline call within a chunk (default: the chunk size)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default on a GPU: fp16 (VAR, Infinity) or bf16 (InfinityStar); fp32 on CPU")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    p.add_argument("--classes", default=None, help="imagenet: class ids and ranges, e.g. 0-9,207 (default: all)")
    p.add_argument("--per-class", type=int, default=None, help="imagenet: images per class (default 50)")
    if not sweep:
        p.add_argument("--prompts", default=None,
                       help="geneval: evaluation_metadata.jsonl; dpg: the prompts folder; vbench: a prompt list")
        p.add_argument("--per-prompt", type=int, default=None, help="geneval: images (4), vbench: videos (5)")
        p.add_argument("--limit", type=int, default=None, help="only the first N prompts (a quick trial)")
        p.add_argument("--dry-run", action="store_true", help="print the settings and the plan, sample nothing")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG (InfinityStar: the APG scale)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--tau", type=float, default=None, help="Infinity: temperature")
    p.add_argument("--height", type=int, default=None, help="Infinity, InfinityStar")
    p.add_argument("--width", type=int, default=None, help="Infinity, InfinityStar")
    p.add_argument("--num-frames", type=int, default=None, help="InfinityStar")
    p.add_argument("--negative-prompt", default=None, help="Infinity, InfinityStar")
    if sweep:
        p.add_argument("--vpg-scale", type=float, nargs="+", required=True, help="the w values (1 = VPG off)")
        p.add_argument("--vpg-corruption", type=float, nargs="+", required=True, help="the p values (one line each)")
    else:
        p.add_argument("--vpg-scale", type=float, default=None, help="VPG weight w (1 = off)")
        p.add_argument("--vpg-corruption", type=float, default=None, help="fraction p of corrupted sites")
    p.add_argument("--vpg-mode", default=None, choices=["full", "token", "position", "codebook"])
    p.add_argument("--vpg-refresh", default=None, choices=["persistent", "resample"])
    p.add_argument("--vpg-scales", type=vpg_scales, default=None, help="'all', 'semantic' or e.g. '1,2,3'")
    p.add_argument("--call-arg", type=_call_arg, action="append", default=[], metavar="NAME=VALUE",
                   help="any other pipeline argument (VALUE as JSON), e.g. --call-arg cfg_insertion_layer=-1")


def _add_metric_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", required=True,
                   help="real images: an ADM reference batch (.npz), a folder of images, or emoji32.npz (held-out)")
    net = p.add_mutually_exclusive_group(required=True)
    net.add_argument("--inception-weights", default=None,
                     help="the FID Inception weights file (torch-fidelity's pt_inception-2015-12-05 .pth); "
                          "read from this path, never downloaded")
    net.add_argument("--classifier", default=None,
                     help="the demo model's emoji classifier (.safetensors): classifier-space FD instead")
    p.add_argument("--metric-batch-size", type=int, default=50, help="images per network call")


def add_eval_parser(sub) -> None:
    """Add ``eval`` and its subcommands to the ``vpg`` parser's subparsers."""
    ev = sub.add_parser("eval", help="benchmark sampling at scale (sharded over Accelerate processes, resumable) "
                                     "and offline metrics; see docs/eval.md")
    cmds = ev.add_subparsers(dest="eval_command", required=True)
    sample = cmds.add_parser("sample", help="sample a benchmark protocol into a resumable run folder")
    sample.add_argument("protocol", choices=sorted(PROTOCOLS),
                        help="imagenet (VAR), geneval and dpg (Infinity), vbench (InfinityStar)")
    _add_run_args(sample)
    pack = cmds.add_parser("pack", help="an imagenet run folder -> the ADM evaluator's .npz (arr_0, class order)")
    pack.add_argument("run", help="the run folder of `vpg eval sample imagenet`")
    pack.add_argument("--out", required=True, help="the .npz to write")
    fid = cmds.add_parser("fid", help="FID and Inception Score of samples against real images (offline)")
    fid.add_argument("samples", help="a run folder, a folder of images or an .npz batch (arr_0)")
    _add_metric_args(fid)
    fid.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    fid.add_argument("--out-json", default=None, help="also write the figures as JSON here")
    sweep = cmds.add_parser("sweep", help="imagenet sampling over a grid of --vpg-scale x --vpg-corruption, "
                                          "a metric table and a metric-vs-w plot (one line per p)")
    _add_run_args(sweep, sweep=True)
    _add_metric_args(sweep)


# -- subcommands -----------------------------------------------------------------------------------------
def _sample(args: argparse.Namespace) -> None:
    state = make_state(args.cpu)
    pipe, dtype_name = load_for(args.protocol, args, state)
    spec = make_spec(args.protocol, args, pipe, dtype_name)
    plan = spec.check()
    if args.dry_run:
        if state.is_main_process:
            folder = RunFolder(spec.out)
            done = len(folder.finished_chunks()) if folder.run_file.exists() else 0
            print(json.dumps({"samples": plan.total, "chunks": plan.num_chunks, "chunks_done": done,
                              "settings": spec.identity()}, indent=1))
        return
    sample_run(spec, pipe, state)


def _pack(args: argparse.Namespace) -> None:
    print(f"wrote {pack_imagenet(args.run, args.out)}")


def _fid(args: argparse.Namespace) -> None:
    device = torch.device("cpu") if args.cpu else pick_device()
    samples, reference = ImageSet(args.samples, "samples"), ImageSet(args.reference, "--reference")
    net, space = feature_net(args, device)
    result = {"samples_path": str(samples.path), "reference_path": str(reference.path), "feature_space": space,
              **compute_fid_is(samples, reference, net, args.metric_batch_size)}
    inception = space == "inception"
    fd_name, score_name = ("FID", "Inception Score") if inception else ("FD (classifier)", "classifier score")
    print(f"{fd_name}: {result['fid']:.4f}\n{score_name}: {result['inception_score']:.4f} "
          f"± {result['inception_score_std']:.4f} ({result['is_splits']} split(s))\n"
          f"{result['samples']} samples vs {result['reference']} reference images at {result['image_size']}")
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def _sweep(args: argparse.Namespace) -> None:
    run_sweep(args)


def run_eval(args: argparse.Namespace) -> None:
    {"sample": _sample, "pack": _pack, "fid": _fid, "sweep": _sweep}[args.eval_command](args)
