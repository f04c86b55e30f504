"""The sharded, resumable sampling loop that every process of ``vpg eval sample`` runs.

Process control is Accelerate's (``PartialState``: one process per device, launched by ``accelerate launch``;
gloo on CPUs, NCCL on GPUs). The main process opens the run folder and finds the unfinished chunks; every
process takes every ``world_size``-th of them. They advance in rounds of one chunk each so the main
process can sum what all of them finished (one small all-reduce per round) into a single progress bar.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accelerate
import diffusers
import numpy
import torch
import transformers
from accelerate.utils import broadcast_object_list, gather_object, reduce
from tqdm.auto import tqdm

from .. import __version__
from .protocols.base import FLAGS, Protocol
from .run_folder import RunFolder, now, output_path_problem
from .sharding import ChunkPlan, batches, deal, sample_generators

SEED_RULE = "sample i draws from torch.Generator().manual_seed(SeedSequence([seed, i]).generate_state(1, uint64)[0])"


@dataclass
class RunSpec:
    """One ``vpg eval sample`` run: the protocol, where it goes, and everything that determines its output."""

    protocol: Protocol
    out: Path
    model: str
    pipeline: str
    seed: int
    chunk_size: int
    batch_size: int
    dtype: str
    call: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """The settings stored in ``run.json``; a rerun must match them exactly to resume."""
        return {"protocol": self.protocol.name, "pipeline": self.pipeline, "model": self.model,
                "inputs": self.protocol.inputs(), "seed": self.seed, "seed_rule": SEED_RULE,
                "chunk_size": self.chunk_size, "batch_size": self.batch_size, "dtype": self.dtype,
                "call": self.call, **self.extra}

    def check(self) -> ChunkPlan:
        plan = ChunkPlan(len(self.protocol.samples()), self.chunk_size)
        group = self.protocol.group_size
        if self.chunk_size % group:
            raise ValueError(f"--chunk-size {self.chunk_size}: {self.protocol.name} writes {group} samples together "
                             f"(one grid per prompt), so it must be a multiple of {group}")
        if not 1 <= self.batch_size <= self.chunk_size:
            raise ValueError(f"--batch-size must be in [1, --chunk-size={self.chunk_size}], got {self.batch_size}")
        name_of = getattr(self.protocol, "file_name", None)  # imagenet, vbench: known before sampling
        if name_of is not None and plan.total:
            longest = max((name_of(s) for s in self.protocol.samples()), key=len)
            problem = output_path_problem(self.out, longest)
            if problem:
                raise ValueError(f"--out {self.out}: the output file {longest!r}: {problem}")
        return plan


def versions() -> dict[str, str]:
    return {"vpg_pipelines": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def _say(line: str, main: bool) -> None:
    if main:
        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _prepare(spec: RunSpec, plan: ChunkPlan, state) -> dict[str, Any]:
    """Main process: open (or check) the folder and list the unfinished chunks; shared with every process."""
    payload: dict[str, Any] = {}
    if state.is_main_process:
        try:
            folder = RunFolder(spec.out)
            folder.open(spec.identity(), FLAGS)
            done = folder.finished_chunks()
            pending = [c for c in range(plan.num_chunks) if c not in done]
            payload = {"pending": pending, "done_samples": sum(len(plan.indices(c)) for c in done)}
        except (ValueError, OSError) as err:
            payload = {"error": str(err)}
    shared = [payload]
    broadcast_object_list(shared)
    if "error" in shared[0]:
        raise ValueError(shared[0]["error"])
    return shared[0]


def _run_chunk(spec: RunSpec, plan: ChunkPlan, samples: list, chunk: int, pipe, writer) -> dict[str, Any]:
    """Sample one chunk in its fixed batches, stage its files and commit them; returns the chunk record."""
    start = time.perf_counter()
    indices = plan.indices(chunk)
    outputs: list[Any] = []
    for batch in batches(indices, spec.batch_size):
        chosen = [samples[i] for i in batch]
        result = pipe(**spec.protocol.call_inputs(chosen), **spec.call,
                      generator=sample_generators(spec.seed, batch), output_type="pil")
        outputs.extend(result.frames if spec.protocol.output_kind == "videos" else result.images)
    spec.protocol.write([samples[i] for i in indices], outputs, writer.stage)
    seconds = time.perf_counter() - start
    return {"samples": [indices.start, indices.stop], "seconds": round(seconds, 4)}


def sample_run(spec: RunSpec, pipe, state) -> dict[str, Any]:
    """Run (or resume) ``spec`` on this process's share of the chunks; every process calls this.

    Args:
        spec: the run.
        pipe: the pipeline, already on ``state.device``.
        state: ``accelerate.PartialState`` (process index, count, main-process checks, collectives).

    Returns:
        A summary: samples and chunks done now, seconds, samples per second of this process.
    """
    plan = spec.check()
    samples = spec.protocol.samples()
    main, rank, world = state.is_main_process, state.process_index, state.num_processes
    began, wall = now(), time.perf_counter()
    shared = _prepare(spec, plan, state)
    pending = shared["pending"]
    mine = deal(pending, rank, world)
    if main:
        print(f"vpg eval sample {spec.protocol.name}: {plan.total} samples in {plan.num_chunks} chunks of "
              f"{spec.chunk_size}; {plan.num_chunks - len(pending)} chunks already done; {world} process(es)\n"
              f"settings: {json.dumps(spec.identity(), sort_keys=True)}", flush=True)
    my_samples = sum(len(plan.indices(c)) for c in mine)
    _say(f"[process {rank}/{world} {state.device}] {len(mine)} chunks ({my_samples} samples) to do", main)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    folder = RunFolder(spec.out)
    writer = folder.writer(rank)
    bar = tqdm(total=plan.total, initial=shared["done_samples"], unit="sample", disable=not main,
               desc=f"{spec.protocol.name} x{world}", dynamic_ncols=True, file=sys.stderr)
    done_here, busy = 0, 0.0
    rounds = -(-len(pending) // world)
    for r in range(rounds):
        finished = 0
        if r < len(mine):
            record = _run_chunk(spec, plan, samples, mine[r], pipe, writer)
            writer.commit(mine[r], {**record, "process": rank, "world_size": world, "device": str(state.device)})
            finished = record["samples"][1] - record["samples"][0]
            done_here += finished
            busy += record["seconds"]
        total = reduce(torch.tensor([finished], device=state.device), reduction="sum")
        bar.update(int(total.item()))
    bar.close()
    rate = done_here / busy if busy else 0.0
    _say(f"[process {rank}/{world} {state.device}] done: {done_here} samples in {busy:.1f} s "
         f"({rate:.3f} samples/s)", main)
    hosts = gather_object([{"process": rank, "device": str(state.device), "samples": done_here,
                            "seconds": round(busy, 3)}])
    state.wait_for_everyone()
    summary = {"samples": done_here, "seconds": busy, "samples_per_second": rate, "pending_chunks": len(pending)}
    if main:
        records = folder.finished_chunks()
        missing = [c for c in pending if c not in records]
        folder.log_invocation({
            "started": began, "finished": now(),
            "seconds": round(time.perf_counter() - wall, 3), "world_size": world, "processes": hosts,
            "versions": versions(),
            "chunks": [{k: records[c][k] for k in ("chunk", "process", "seconds", "samples", "host", "device")
                        if k in records[c]} for c in pending if c in records],
        })
        shutil.rmtree(folder.partial, ignore_errors=True)
        if missing:
            raise RuntimeError(f"chunks {missing[:10]} were not recorded; rerun the same command to finish them")
        print(f"{spec.out}: all {plan.total} samples done "
              f"({len(pending)} chunks now, {plan.num_chunks - len(pending)} before)", flush=True)
    return summary
