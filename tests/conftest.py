"""Shared test fixtures: where the read-only parity fixtures and specs live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
