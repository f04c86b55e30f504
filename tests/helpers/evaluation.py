"""Helpers of the ``vpg eval`` tests: running the CLI in this process or under ``accelerate launch``, and
reading a run folder's files back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from vpg_pipelines.cli import main

DEMO_FLAGS = ["--model", "demo", "--guidance-scale", "3", "--top-k", "0", "--top-p", "0.95"]
"""The demo model with its own sampling settings (vpg_pipelines.demo.DEMO_SETTINGS)."""


@contextmanager
def one_thread():
    """torch on one thread, as the subprocesses below (OMP_NUM_THREADS=1): the same computation, bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_here(*argv: str) -> int:
    with one_thread():
        return main(["eval", *argv])


def subprocess_env(tmp: Path) -> dict[str, str]:
    """Offline, one thread per process, and no user accelerate config (HF_HOME points into ``tmp``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HOME=str(tmp / "hf_home"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(num_processes: int, *argv: str) -> list[str]:
    """``accelerate launch`` of ``vpg eval`` with every launcher setting given, so it asks for no config.

    On a machine without GPUs ``--multi_gpu`` is Accelerate's torchrun launcher; the processes then join a
    gloo group on the CPU (``--cpu`` would select Accelerate's single-process / MPI launcher instead)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "vpg_pipelines.cli", "eval", *argv]


def run_subprocess(command: list[str], tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=subprocess_env(tmp), capture_output=True, text=True, timeout=timeout)
    tail = f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{command}\n{tail}"
    return result


def output_files(run: Path) -> dict[str, bytes]:
    """Every output file of a run folder (not its bookkeeping) -> its bytes."""
    skip = ("run.json", "chunks/", ".partial/")
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and not str(p.relative_to(run)).startswith(skip)}
