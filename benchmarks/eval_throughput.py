"""Samples per second per process of ``vpg eval sample`` on the CPU for the tiny models, with 1 and 2 processes.

Models: the bundled demo model (imagenet protocol, 32 x 32) and the parity fixtures of ``../shared/parity``
converted with a tiny random T5 (Infinity at 256 x 256 for geneval / dpg; InfinityStar for vbench, 17 frames at
192 x 336). Inputs: small files in the benchmarks' own formats (written here, not the benchmarks' prompts).
Each process runs one torch thread (``OMP_NUM_THREADS=1``); two processes go through
``accelerate launch --multi_gpu --num_processes 2`` (on a machine without GPUs: gloo on the CPU). The figure
is samples / seconds spent in chunks, per process, from ``run.json``'s per-chunk timings, after each process's
first chunk (which pays the warm-up; the figure including it is reported too).

    python benchmarks/eval_throughput.py --make-tiny tiny          # only write the tiny models and inputs
    python benchmarks/eval_throughput.py --out-json docs/results/eval_throughput.json --out-md out/eval.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, markdown_table, write_outputs
from vpg_pipelines.cli import main as vpg_main
from vpg_pipelines.testing import STAR_FAST_ARGS, tiny_t5

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VPG_SHARED", REPO.parent / "shared"))
GENEVAL = [{"tag": "single_object", "include": [{"class": c, "count": 1}], "prompt": f"a photo of a {c}"}
           for c in ("cat", "dog", "car", "bird")]
DPG = {f"item{k}": text for k, text in enumerate(["a red cat on a car", "a blue house by the sea", "a white bird",
                                                   "a green tree in the city"])}
VBENCH = ["a red cat walking on the beach", "a bird in the sky, frozen in time", "a dog on a car", "the sea"]


def make_tiny(folder: Path) -> dict[str, Path]:
    """Tiny Infinity / InfinityStar pipeline folders (parity weights + a random tiny T5) and small input files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"infinity": folder / "infinity", "infinity_star": folder / "infinity-star"}
    for channels, name in ((128, "t5-128"), (64, "t5-64")):
        encoder, tokenizer = tiny_t5(channels)
        encoder.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    root = SHARED / "parity"
    if not paths["infinity"].exists():
        assert vpg_main(["convert", "--infinity", str(root / "infinity/infinity.safetensors"), "--vae",
                     str(root / "infinity/vae.safetensors"), "--config", str(root / "infinity/config.json"),
                     "--text-encoder", str(folder / "t5-128"), "--out", str(paths["infinity"])]) == 0
    if not paths["infinity_star"].exists():
        config = json.loads((root / "infinity_star/config.json").read_text(encoding="utf-8"))
        config["args"] = {**config["args"], **STAR_FAST_ARGS}
        (folder / "infinity-star-config.json").write_text(json.dumps(config), encoding="utf-8")
        assert vpg_main(["convert", "--infinity-star", str(root / "infinity_star/infinity_star.safetensors"), "--vae",
                     str(root / "infinity_star/videovae.safetensors"), "--config",
                     str(folder / "infinity-star-config.json"), "--text-encoder", str(folder / "t5-64"),
                     "--out", str(paths["infinity_star"])]) == 0
    paths["geneval"] = folder / "evaluation_metadata.jsonl"
    paths["geneval"].write_text("".join(json.dumps(m) + "\n" for m in GENEVAL), encoding="utf-8")
    paths["dpg"] = folder / "dpg_prompts"
    paths["dpg"].mkdir(exist_ok=True)
    for item, text in DPG.items():
        (paths["dpg"] / f"{item}.txt").write_text(text + "\n", encoding="utf-8")
    paths["vbench"] = folder / "vbench_prompts.txt"
    paths["vbench"].write_text("\n".join(VBENCH) + "\n", encoding="utf-8")
    return paths


def cases(paths: dict[str, Path]) -> dict[str, list[str]]:
    return {
        "imagenet (demo, 32 px)": ["imagenet", "--model", "demo", "--guidance-scale", "3", "--top-k", "0",
                                   "--top-p", "0.95", "--classes", "0-9", "--per-class", "4", "--chunk-size", "4"],
        "geneval (tiny Infinity, 256 px)": ["geneval", "--model", str(paths["infinity"]), "--prompts",
                                            str(paths["geneval"]), "--per-prompt", "2", "--chunk-size", "2"],
        "dpg (tiny Infinity, 4 x 256 px)": ["dpg", "--model", str(paths["infinity"]), "--prompts", str(paths["dpg"]),
                                            "--chunk-size", "4", "--batch-size", "2"],
        "vbench (tiny InfinityStar, 17 x 192 x 336)": ["vbench", "--model", str(paths["infinity_star"]), "--prompts",
                                                       str(paths["vbench"]), "--per-prompt", "1", "--num-frames",
                                                       "17", "--height", "192", "--width", "336"],
    }


def run_case(argv: list[str], processes: int, out: Path, port: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    launcher = [sys.executable, "-m", "vpg_pipelines.cli"] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "vpg_pipelines.cli"]
    start = time.perf_counter()
    done = subprocess.run([*launcher, "eval", "sample", *argv, "--out", str(out)], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{argv} x{processes} failed:\n{done.stderr[-3000:]}")
    chunks = json.loads((out / "run.json").read_text(encoding="utf-8"))["invocations"][-1]["chunks"]
    per_process: dict[int, list[tuple[int, float]]] = {}
    for c in chunks:
        per_process.setdefault(c["process"], []).append((c["samples"][1] - c["samples"][0], c["seconds"]))
    # a process's first chunk pays the warm-up (first calls, allocations): steady state is the rest
    steady = [sum(n for n, _ in runs[1:]) / sum(s for _, s in runs[1:]) if len(runs) > 1 else runs[0][0] / runs[0][1]
              for _, runs in sorted(per_process.items())]
    overall = [sum(n for n, _ in runs) / sum(s for _, s in runs) for _, runs in sorted(per_process.items())]
    return {"processes": processes, "samples": sum(n for runs in per_process.values() for n, _ in runs),
            "chunks": chunks, "wall_seconds": wall, "samples_per_second_per_process": steady,
            "samples_per_second_per_process_incl_first_chunk": overall}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-tiny", type=Path, default=None, help="write the tiny models and inputs here, then stop")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--out-md", default=None)
    args = parser.parse_args(argv)
    if args.make_tiny:
        for name, path in make_tiny(args.make_tiny).items():
            print(f"{name}: {path}")
        return None
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_tiny(Path(tmp) / "tiny")
        for k, (name, case) in enumerate(cases(paths).items()):
            for processes in args.processes:
                r = run_case(case, processes, Path(tmp) / f"run{k}-{processes}", 29600 + 7 * k + processes)
                results.setdefault(name, []).append(r)
                print(name, processes, [f"{x:.3f}" for x in r["samples_per_second_per_process"]], flush=True)
    rows = [[name, r["processes"], r["samples"], " / ".join(f"{x:.3f}" for x in r["samples_per_second_per_process"]),
             " / ".join(f"{x:.3f}" for x in r["samples_per_second_per_process_incl_first_chunk"]),
             f"{r['wall_seconds']:.0f}"] for name, runs in results.items() for r in runs]
    machine = machine_info("cpu")
    markdown = "\n".join([
        f"{machine['date']}; {machine['cpu']}, {machine['cores']} cores shared with other jobs (load average "
        f"{machine.get('load_average', 0):.1f}); torch {machine['torch']}; one torch thread per process.",
        "",
        markdown_table(["protocol (model, output)", "processes", "samples",
                        "samples/s per process (after the first chunk)", "… incl. the first chunk",
                        "wall s (incl. start-up)"], rows)])
    result = {"benchmark": "eval_throughput", "machine": machine, "results": results}
    write_outputs(result, markdown, args.out_json, args.out_md)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
