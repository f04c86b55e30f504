"""What is wrong with a chosen model file, said in the loader's words.

Before loading, :func:`check_readable` finds files cut short (an interrupted download): a ``.safetensors``
whose header promises more bytes than the file holds, a PyTorch zip archive without its end. After a
refused pickle, :func:`explain_refusal` names the calls the pickle would have made (read from its
opcodes, never run).
"""

from __future__ import annotations

import json
import pickletools
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vpg_pipelines.loading.checkpoint import UnsafeCheckpointError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode")
"""Globals of ordinary tensor checkpoints (rebuilding tensors and storages): not worth naming."""


def weight_files(path: Path) -> list[Path]:
    """The weight files behind a choice: the file itself, or every weight file inside a folder."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", *TORCH_SUFFIXES))


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"holds {size} bytes, less than a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"ends inside its header ({size} bytes, the header alone needs {8 + length})"
        try:
            header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "has an unreadable header"
    if 8 + length + end > size:
        return f"holds {size} bytes but its header describes {8 + length + end}"
    return None


def _torch_file_problem(path: Path) -> str | None:
    with path.open("rb") as f:
        start = f.read(4)
    if start == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return "is a PyTorch zip archive without its end (the central directory is missing)"
    if start[:1] not in (b"P", b"\x80"):
        return "is neither a PyTorch zip archive nor a pickle"
    return None


def check_readable(widget: str, name: str, path: Path) -> None:
    """Raise a ``ValueError`` naming the widget when a weight file of the choice is cut short or corrupt."""
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
        elif file.suffix in TORCH_SUFFIXES:
            problem = _torch_file_problem(file)
        else:
            continue
        if problem:
            inside = "" if file == path else f" ({file.relative_to(path).as_posix()})"
            raise ValueError(f"`{widget}` {name!r}{inside} is truncated or corrupt: it {problem}. "
                             "Download it again (an interrupted download leaves such a file).")


def _globals_in(stream: IO[bytes]) -> Iterator[str]:
    """The globals (``module.name``) each pickle in the stream asks for, read from its opcodes."""
    while True:
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    yield str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    yield f"{strings[-2]}.{strings[-1]}"
                elif isinstance(arg, str):
                    strings.append(arg)
        except ValueError:  # the end of the stream, or bytes that are not a pickle
            return


def pickle_calls(path: Path) -> list[str]:
    """The globals a pickled checkpoint asks for beyond plain tensors (``posix.system`` ...), in order."""
    found: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".pkl"):
                    with archive.open(member) as stream:
                        found += _globals_in(stream)
    else:
        with path.open("rb") as stream:
            found += _globals_in(stream)
    calls = [g for g in found if not g.startswith(SAFE_GLOBAL_PREFIXES)]
    return list(dict.fromkeys(calls))


def explain_refusal(err: BaseException, chosen: dict[Path, tuple[str, str]]) -> str | None:
    """For a load that failed on a refused pickle: which widget's file it was and the calls it would make.

    ``chosen`` maps each chosen path to its ``(widget, name)``. ``None`` when no pickle was refused.
    """
    refused = err
    while refused is not None and not isinstance(refused, UnsafeCheckpointError):
        refused = refused.__cause__ or refused.__context__
    if refused is None:
        return None
    path = Path(refused.path)
    calls = list(refused.blocked) or pickle_calls(path)
    widget, name = next(((w, n) for p, (w, n) in chosen.items() if path == p or p in path.parents),
                        ("model_name", path.name))
    named = ", ".join(f"`{c}`" for c in calls) if calls else "code outside plain tensors"
    return (f"`{widget}` {name!r} is a pickle that would call {named} when loaded; torch.load(weights_only=True) "
            "blocked it and nothing in it ran. Use the official file, or a .safetensors copy of a checkpoint "
            "you trust.")
