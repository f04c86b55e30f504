"""Reading checkpoint files safely and loading them strictly, with errors a person can act on."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose keys do not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that names code to run or objects to build, refused without running them.

    Attributes:
        path: the refused file.
        blocked: the globals the pickle asks for (e.g. ``posix.system``), as far as they could be read.
    """

    def __init__(self, path: Path, blocked: list[str]) -> None:
        self.path, self.blocked = path, blocked
        named = ", ".join(f"`{g}`" for g in blocked) if blocked else "objects outside plain tensors and numbers"
        super().__init__(
            f"refused to load {path}: loading it would run code. The file is a pickle that calls {named}, "
            "which a checkpoint of weights never needs; it was read with torch.load(weights_only=True), which "
            "blocked it, and nothing in the file ran. Never load this file with weights_only=False: that would "
            "run it. A safe checkpoint holds tensors only: a .safetensors file, or a .pth/.bin whose pickle is a "
            "dict of tensors (as the official releases are). To turn a checkpoint you trust into one, save its "
            "state dict with safetensors; `vpg convert` writes a safetensors pipeline folder from the official files."
        )


def read_state_dict(
    path: str | os.PathLike, unwrap: Iterable[str] = ("model", "state_dict")
) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` / ``.pth`` file or a sharded index ``.json``.

    ``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle that would run code is
    refused. A dict holding the weights under one of the ``unwrap`` keys is unwrapped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        index = sorted(path.glob("*.index.json"))
        if not index:
            raise CheckpointError(f"{path} is a folder without a '*.index.json' shard index")
        path = index[0]
    name = path.name.lower()
    try:
        if name.endswith(".index.json"):
            return _read_sharded(path)
        if name.endswith(".safetensors"):
            state = load_file(str(path))
        elif name.endswith(_TORCH_SUFFIXES):
            state = _load_weights_only(path)
        else:
            raise CheckpointError(
                f"unsupported checkpoint type '{path.suffix}' for {path}; expected .safetensors, "
                f"{', '.join(_TORCH_SUFFIXES)} or a sharded '*.index.json'"
            )
    except CheckpointError:
        raise
    except Exception as err:  # truncated file, foreign format, refused pickle
        raise CheckpointError(f"could not read checkpoint {path}: {type(err).__name__}: {err}") from err
    if isinstance(state, Mapping):
        for key in unwrap:
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _load_weights_only(path: Path) -> object:
    """``torch.load(weights_only=True)``; a refused pickle raises :class:`UnsafeCheckpointError`.

    torch's own message for a refused pickle advises retrying with ``weights_only=False``, which would
    run the payload; it is replaced (not chained) by ours, which names what was blocked.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:  # reads the pickle's opcodes without running them
        blocked = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        blocked = []
    raise UnsafeCheckpointError(path, blocked)


def cast_weights(module: nn.Module, dtype: torch.dtype | None, keep_fp32: Iterable[str] = ()) -> nn.Module:
    """Cast ``module`` to ``dtype``, keeping the named submodules in float32; returns ``module``.

    Plain ``nn.Module.to``: diffusers' ``ModelMixin.to(dtype)`` warns on every call that modules "should be
    kept in float32" (listing none for most models), which is about ``from_pretrained``'s own casting; the
    loaders here keep their float32 modules themselves.
    """
    if dtype is None:
        return module
    nn.Module.to(module, dtype)
    for name in keep_fp32:
        sub = module.get_submodule(name)
        nn.Module.to(sub, torch.float32)
    return module


def _read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path} has no 'weight_map'")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_state_dict(index_path.parent / shard, unwrap=()))
    return state


def describe_mismatch(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], ignore_unexpected: Iterable[str] = ()
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and ``key: checkpoint shape vs model shape`` lines."""
    expected = module.state_dict(keep_vars=True)
    ignored = set(ignore_unexpected)
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected and k not in ignored)
    wrong = sorted(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    return missing, unexpected, wrong


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str = "checkpoint",
    ignore_unexpected: Iterable[str] = (),
    assign: bool = False,
) -> None:
    """``load_state_dict(strict=True)`` with one readable error listing every mismatch.

    ``ignore_unexpected`` names checkpoint keys that carry no learned information and are dropped
    knowingly (e.g. derived buffers the official files include).
    """
    missing, unexpected, wrong = describe_mismatch(module, state_dict, ignore_unexpected)
    if missing or unexpected or wrong:
        lines = [f"{what} does not match {type(module).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                shown = keys[:20] + ([f"... and {len(keys) - 20} more"] if len(keys) > 20 else [])
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(shown))
        raise CheckpointError("\n".join(lines))
    ignored = set(ignore_unexpected)
    filtered = {k: v for k, v in state_dict.items() if k not in ignored}
    module.load_state_dict(filtered, strict=True, assign=assign)
