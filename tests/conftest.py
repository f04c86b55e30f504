"""Shared test fixtures: where the read-only parity fixtures and specs live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VPG_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"missing shared data {path} (CI keeps ../shared beside the checkout; set VPG_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def var_pipe():
    """The tiny official-format VAR of the parity fixtures as a pipeline (progress bar off)."""
    import json

    from vpg_pipelines import VPGVARPipeline

    root = shared_path("parity", "var")
    config = json.loads((root / "config.json").read_text())
    pipe = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cuda_only(reason: str):
    """Decorator of a test that needs a CUDA GPU: marked ``cuda`` (``scripts/gpu_check.sh`` runs
    ``pytest -m cuda``) and skipped with ``reason`` without one."""

    def mark(test):
        return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason=reason)(test))

    return mark
