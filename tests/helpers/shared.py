"""Where the repository and the read-only shared data (``../shared``: parity fixtures, specs) live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


SHARED = Path(os.environ.get("VPG_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"missing shared data {path} (CI keeps ../shared beside the checkout; set VPG_SHARED)")
    return path


def cuda_only(reason: str):
    """Decorator of a test that needs a CUDA GPU: marked ``cuda`` (``scripts/gpu_check.sh`` runs
    ``pytest -m cuda``) and skipped with ``reason`` without one."""

    def mark(test):
        return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason=reason)(test))

    return mark

