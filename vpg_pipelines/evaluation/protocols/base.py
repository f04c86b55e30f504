"""What every benchmark protocol provides to the sharded sampler, and how sampling settings are resolved."""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

VPG_KEYS = ("vpg_scale", "vpg_corruption", "vpg_mode", "vpg_refresh", "vpg_scales")
FLAGS = {
    "guidance_scale": "--guidance-scale", "top_k": "--top-k", "top_p": "--top-p", "tau": "--tau",
    "vpg_scale": "--vpg-scale", "vpg_corruption": "--vpg-corruption", "vpg_mode": "--vpg-mode",
    "vpg_refresh": "--vpg-refresh", "vpg_scales": "--vpg-scales", "height": "--height", "width": "--width",
    "num_frames": "--num-frames", "negative_prompt": "--negative-prompt", "seed": "--seed",
    "chunk_size": "--chunk-size", "batch_size": "--batch-size", "dtype": "--dtype", "model": "--model",
    "per_group": "--per-class / --per-prompt", "classes": "--classes", "prompts_sha256": "--prompts",
    "limit": "--limit", "protocol": "PROTOCOL", "pipeline": "--model", "preset": "--preset",
}
"""Setting name -> the command-line flag that sets it (for error messages)."""


@dataclass(frozen=True)
class Sample:
    """One output: global ``index``, the ``group`` it belongs to (class or prompt position), its ``slot``
    within the group, and the pipeline ``condition`` (a class id or a prompt)."""

    index: int
    group: int
    slot: int
    condition: Any


class Protocol(ABC):
    """A benchmark: its samples, its output files and its paper preset."""

    name: ClassVar[str]
    pipeline: ClassVar[str]
    """The pipeline class (``model_index.json`` ``_class_name``) the protocol samples from."""
    default_chunk_size: ClassVar[int]
    sampling_keys: ClassVar[tuple[str, ...]]
    """Pipeline call arguments recorded as the run's sampling settings."""
    output_kind: ClassVar[str] = "images"

    @property
    def group_size(self) -> int:
        """Samples that must be written together, so a chunk must hold whole groups of them (1: none)."""
        return 1

    @abstractmethod
    def samples(self) -> list[Sample]:
        """Every sample of the run, in index order."""

    @abstractmethod
    def inputs(self) -> dict[str, Any]:
        """The benchmark inputs that determine the output (file hash, classes, counts) for ``run.json``."""

    @abstractmethod
    def call_inputs(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Pipeline arguments that say what to draw for these samples (``class_labels=`` or ``prompt=``)."""

    @abstractmethod
    def write(self, samples: Sequence[Sample], outputs: Sequence[Any], stage) -> None:
        """Write a chunk's outputs: ``stage(relative_path)`` returns the temporary path to write each file to."""

    @abstractmethod
    def preset(self, name: str, pipe) -> dict[str, Any]:
        """Sampling settings of a preset (``"paper"``; ``"none"``: {}), over the pipeline's own defaults."""

    def complete(self, call: dict[str, Any], pipe, preset: str) -> dict[str, Any]:
        """Fill settings the pipeline leaves as ``None`` with the values it would use, so ``run.json`` is exact."""
        return call


def sampling_settings(pipe, keys: Sequence[str], preset: Mapping[str, Any], overrides: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """The complete sampling settings: the pipeline's defaults for ``keys``, then ``preset``, then ``overrides``
    (the flags given; ``None`` = not given). A key the pipeline does not take is an error naming its flag."""
    params = inspect.signature(type(pipe).__call__).parameters
    for key, value in {**preset, **overrides}.items():
        if value is not None and key not in params:
            flag = FLAGS.get(key, f"--call-arg {key}=...")
            raise ValueError(f"{flag} does not apply to {type(pipe).__name__} (it takes no `{key}` argument)")
    call = {k: params[k].default for k in keys if k in params}
    call.update(preset)
    call.update({k: v for k, v in overrides.items() if v is not None})
    return call


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(files: Sequence[Path]) -> str:
    """One hash over several files' names and contents (a prompt folder)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def check_count(flag: str, value: int | None, low: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")


def existing_file(flag: str, path: str | Path | None) -> Path:
    if path is None:
        raise ValueError(f"this protocol needs {flag} (the benchmark's own file; it is not bundled)")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file or folder")
    return path
