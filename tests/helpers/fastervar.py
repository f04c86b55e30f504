"""The FasterVAR parity fixtures (``tests/fixtures/fastervar``, made with the authors' code: see its README)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fastervar"


@cache
def presets_json() -> dict:
    return json.loads((FIXTURES / "presets.json").read_text())


@cache
def infinity_cases() -> tuple[dict, dict]:
    """(tensors, cases.json) of the Infinity fixture."""
    root = FIXTURES / "infinity"
    return load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())


@cache
def star_cases() -> tuple[dict, dict]:
    """(tensors, cases.json) of the InfinityStar fixture."""
    root = FIXTURES / "infinity_star"
    return load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())
