"""The output folder of a ``vpg eval sample`` run: ``run.json``, the chunk manifest and atomic commits.

Layout (besides the protocol's own files)::

    <out>/run.json                  settings (the run's identity), versions, one entry per invocation
    <out>/chunks/chunk-000012.json  one record per finished chunk: its samples, files, seconds, process
    <out>/.partial/                 files being written (moved into place by a rename)

A chunk counts as done only when its record exists and every file it lists is there. Files are written
under ``.partial/`` and renamed into place, then the record is renamed into ``chunks/``: a process killed
at any point leaves no half-written file and no record for an unfinished chunk, and a rerun redoes that
chunk (overwriting any of its files already moved, with the same content).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..paths import path_length_problem

RUN_FILE = "run.json"
CHUNK_DIR = "chunks"
PARTIAL_DIR = ".partial"
FORMAT = 1
LONGEST_STAGING = "p999-4294967295-ffffffff"
"""The longest name of a process's staging folder (``p<index>-<pid>-<8 hex>``), for path-length checks."""


def output_path_problem(root: Path, relative: str) -> str | None:
    """Why ``<root>/<relative>``, or the copy staged for it under ``.partial/``, would be too long to write
    here (Windows without long paths), or ``None``."""
    staged = Path(root) / PARTIAL_DIR / LONGEST_STAGING / f"00000-{Path(relative).name}"
    return path_length_problem(Path(root) / relative) or path_length_problem(staged)


class SettingsMismatch(ValueError):
    """An existing run folder holds a run with other settings."""


def write_json_atomically(path: Path, value: Any, staging: Path) -> None:
    """Write JSON to a temporary file in ``staging`` (same file system) and rename it onto ``path``."""
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{uuid.uuid4().hex}-{path.name}"
    tmp.write_text(json.dumps(value, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"call": {"top_k": 900}}`` -> ``{"call.top_k": 900}`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, wanted value) for every setting that differs (JSON-normalised)."""
    a = flatten(json.loads(json.dumps(stored)))
    b = flatten(json.loads(json.dumps(wanted)))
    missing = object()
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)]


class RunFolder:
    """One run's folder; only the main process calls :meth:`open` and :meth:`log_invocation`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def partial(self) -> Path:
        return self.root / PARTIAL_DIR

    def chunk_file(self, chunk: int) -> Path:
        return self.root / CHUNK_DIR / f"chunk-{chunk:06d}.json"

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.root} holds no {RUN_FILE}: not a `vpg eval sample` output folder") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.run_file} is not valid JSON ({err}); it was not written by `vpg eval`") from None

    def open(self, identity: dict[str, Any], flags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create the folder for a run with ``identity`` (its output-determining settings), or check that
        an existing one holds the same run. Returns the ``run.json`` content. Clears stale ``.partial/``.

        Raises:
            SettingsMismatch: naming every setting that differs (and its command-line flag when known).
            ValueError: ``root`` is a file, or a non-empty folder that is not a run folder.
        """
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--out {self.root} is a file; give a folder")
        if self.run_file.exists():
            run = self.read()
            diff = differences(run.get("settings", {}), identity)
            if diff:
                flags = flags or {}
                lines = []
                for key, old, new in diff:
                    flag = flags.get(key.split(".")[-1])
                    named = f"{key} ({flag})" if flag else key
                    lines.append(f"{named}: the run there used {_shown(old)}, this command asks {_shown(new)}")
                raise SettingsMismatch(
                    f"--out {self.root} holds a run with other settings; nothing was changed. "
                    + "; ".join(lines)
                    + ". Rerun with the same settings to resume it, or choose a new --out."
                )
        else:
            if self.root.is_dir() and any(p.name != PARTIAL_DIR for p in self.root.iterdir()):
                raise ValueError(f"--out {self.root} is not empty and holds no {RUN_FILE}: choose a new folder "
                                 "(nothing was overwritten)")
            run = {"format": FORMAT, "settings": identity, "created": now(), "invocations": []}
            write_json_atomically(self.run_file, run, self.partial)
        shutil.rmtree(self.partial, ignore_errors=True)  # leftovers of killed processes
        return run

    def finished_chunks(self) -> dict[int, dict[str, Any]]:
        """Chunk id -> record, for every chunk whose record exists and whose files all exist."""
        done: dict[int, dict[str, Any]] = {}
        folder = self.root / CHUNK_DIR
        if not folder.is_dir():
            return done
        for path in sorted(folder.glob("chunk-*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                chunk = int(record["chunk"])
                files = list(record["files"])
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours: the chunk is redone
            if path.name == f"chunk-{chunk:06d}.json" and all((self.root / f).is_file() for f in files):
                done[chunk] = record
        return done

    def writer(self, process_index: int) -> ChunkWriter:
        return ChunkWriter(self, self.partial / f"p{process_index}-{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def log_invocation(self, entry: dict[str, Any]) -> None:
        """Append one invocation (world size, versions, per-chunk timings) to ``run.json``."""
        run = self.read()
        run.setdefault("invocations", []).append(entry)
        write_json_atomically(self.run_file, run, self.partial)


class ChunkWriter:
    """Stages one chunk's files, then commits them: files renamed into place, then the record."""

    def __init__(self, folder: RunFolder, staging: Path) -> None:
        self.folder = folder
        self.staging = staging
        self._staged: list[tuple[Path, str]] = []

    def stage(self, relative: str) -> Path:
        """A temporary path to write the file that will become ``<out>/<relative>`` (its suffix kept)."""
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise ValueError(f"output file {relative!r} must be a relative path inside the run folder")
        tmp = self.staging / f"{len(self._staged):05d}-{Path(relative).name}"
        problem = path_length_problem(self.folder.root / relative) or path_length_problem(tmp)
        if problem:
            raise ValueError(f"--out {self.folder.root}: the output file {relative!r}: {problem}")
        self.staging.mkdir(parents=True, exist_ok=True)
        self._staged.append((tmp, relative))
        return tmp

    def commit(self, chunk: int, record: dict[str, Any]) -> dict[str, Any]:
        """Move the staged files into place, then write the chunk's record (the chunk is done from then on)."""
        files = []
        for tmp, relative in self._staged:
            if not tmp.is_file():
                raise RuntimeError(f"the writer staged {relative!r} but wrote no file")
            target = self.folder.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            files.append(relative)
        record = {"chunk": chunk, **record, "files": sorted(set(files)), "host": socket.gethostname(),
                  "finished": now()}
        write_json_atomically(self.folder.chunk_file(chunk), record, self.staging)
        self._staged = []
        return record


def now() -> str:
    """Local time as ISO 8601 with its UTC offset (``time.strftime("%z")`` gives a localized zone *name* on
    some Windows versions)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _shown(value: Any) -> str:
    return "nothing" if type(value) is object else json.dumps(value)
