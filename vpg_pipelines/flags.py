"""Flag values shared by the ``vpg`` commands (``cli.py``) and ``vpg eval`` (``evaluation/cli.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""``--dtype`` names."""


def vpg_scales(text: str) -> str | list[int]:
    """``--vpg-scales``: ``all``, ``semantic`` or a comma list of scale indices."""
    if text in ("all", "semantic"):
        return text
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--vpg-scales must be 'all', 'semantic' or a comma list of ints, got {text!r}"
        ) from None


def read_json_object(path: str | None, flag: str) -> dict | None:
    """The JSON object in the file a flag names (``None`` when the flag is not given)."""
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} {path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} {path} must hold a JSON object, got {type(value).__name__}")
    return value
