"""Fixtures every test folder can use: the shared parity data and the pipelines built from it.

The builders live in ``tests/helpers``; importing their pytest fixtures here registers them for the whole suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import infinity_folder, star480_folder, star_folder  # noqa: F401 (fixtures)
from tests.helpers.interact import fast_interact_pipe, interact_fixture, interact_pipe  # noqa: F401 (fixtures)
from tests.helpers.quality import fake_dataset  # noqa: F401 (fixture)
from tests.helpers.shared import shared_path
from tests.helpers.star import fast_pipe, fixture_files, parity_pipe  # noqa: F401 (fixtures)
from vpg_pipelines import VPGVARPipeline


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def var_pipe():
    """The tiny official-format VAR of the parity fixtures as a pipeline (progress bar off)."""
    root = shared_path("parity", "var")
    config = json.loads((root / "config.json").read_text())
    pipe = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=config)
    pipe.set_progress_bar_config(disable=True)
    return pipe
