"""Which pipeline kinds the node pack can load, and how a dropdown choice becomes a pipeline.

A *kind* bundles what the nodes need to know about one pipeline class: how to load a saved folder
or the official checkpoint files, how its conditioning works, and how to turn a partial latent into a
preview. VAR is registered here; Infinity / InfinityStar register themselves the same way with
:func:`register_kind` once their pipelines exist. No ComfyUI imports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEMO_CHOICE = "bundled demo (VAR, 30 emoji classes)"
"""The loader's dropdown entry for the tiny model shipped inside ``vpg_pipelines`` (no download)."""

NO_COMPANION = "none"
"""The loader's ``vae_file`` entry for sources that need no second file."""

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class VPGLoadError(ValueError):
    """A model choice that cannot be loaded; the message says what to change."""


@dataclass(frozen=True)
class PipelineKind:
    """What the node pack needs to drive one pipeline class.

    Attributes:
        name: short id (``"var"``).
        class_name: the ``_class_name`` in a saved folder's ``model_index.json``.
        load_folder: ``(folder, dtype) -> pipeline`` for a saved pipeline folder.
        load_official: ``(checkpoint, companion, dtype) -> pipeline`` for the released files, or ``None``.
        official_files: regular expression matching the released checkpoint file names of this kind.
        companion_hint: what the second file is (shown in errors), e.g. ``"vae_ch160v4096z32.pth"``.
        conditioning: ``"class"`` (class ids / names) or ``"text"`` (prompts).
        cfg_schedule: the pipeline's CFG schedule (``"linear"`` for VAR, ``"constant"`` for Infinity).
        preview: ``(pipeline, latents) -> (B, 3, H, W)`` images in [0, 1] from a partial latent.
        modules: ``pipeline -> {name: nn.Module}``, the weights ComfyUI's model management should own.
        grid: ``(pipeline, scale_index) -> (h, w)``, the token grid of a scale (for guidance maps).
    """

    name: str
    class_name: str
    load_folder: Callable[[Path, torch.dtype], Any]
    load_official: Callable[[Path, Path, torch.dtype], Any] | None
    official_files: str
    companion_hint: str
    conditioning: str
    cfg_schedule: str
    preview: Callable[[Any, torch.Tensor], torch.Tensor]
    modules: Callable[[Any], dict[str, torch.nn.Module]]
    grid: Callable[[Any, int], tuple[int, int]]


KINDS: dict[str, PipelineKind] = {}


def register_kind(kind: PipelineKind) -> None:
    """Add (or replace) a pipeline kind, keyed by its name."""
    if kind.conditioning not in ("class", "text"):
        raise ValueError(f"`conditioning` must be 'class' or 'text', got {kind.conditioning!r}")
    KINDS[kind.name] = kind


def kind_of_pipeline(pipeline: Any) -> PipelineKind:
    """The registered kind of a pipeline object (by class name)."""
    for kind in KINDS.values():
        if type(pipeline).__name__ == kind.class_name:
            return kind
    raise VPGLoadError(f"{type(pipeline).__name__} is not a registered VPG pipeline kind ({sorted(KINDS)})")


# -- VAR ---------------------------------------------------------------------------------------------
def _var_load_folder(folder: Path, dtype: torch.dtype) -> Any:
    from vpg_pipelines import VPGVARPipeline

    kwargs = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    return VPGVARPipeline.from_pretrained(str(folder), **kwargs)


def _var_load_official(checkpoint: Path, companion: Path, dtype: torch.dtype) -> Any:
    """The official pair; a ``<checkpoint>.json`` beside it (``{"var": {...}, "vqvae": {...}}``) gives
    the constructor arguments of non-standard sizes that cannot be inferred from the weights."""
    from vpg_pipelines import VPGVARPipeline

    sidecar = checkpoint.with_suffix(".json")
    config = json.loads(sidecar.read_text()) if sidecar.exists() else None
    return VPGVARPipeline.from_official(str(checkpoint), str(companion), config=config, torch_dtype=dtype)


def _var_preview(pipeline: Any, latents: torch.Tensor) -> torch.Tensor:
    vae = pipeline.vae
    decoded = vae.decode_latent(latents.to(device=vae.device, dtype=vae.dtype))
    return ((decoded.float() + 1) / 2).clamp(0, 1)


register_kind(
    PipelineKind(
        name="var",
        class_name="VPGVARPipeline",
        load_folder=_var_load_folder,
        load_official=_var_load_official,
        official_files=r"^var_d\d+.*\.(pth|pt|bin|safetensors)$",
        companion_hint="the VAR VQVAE file vae_ch160v4096z32.pth",
        conditioning="class",
        cfg_schedule="linear",
        preview=_var_preview,
        modules=lambda pipe: {"transformer": pipe.transformer, "vae": pipe.vae},
        grid=lambda pipe, k: (pipe.transformer.config.patch_nums[k],) * 2,
    )
)


# -- choosing and loading ----------------------------------------------------------------------------
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def loader_choices(filenames: list[str]) -> list[str]:
    """The loader's dropdown: the bundled demo, saved folders' ``model_index.json``, checkpoint files.

    ``filenames`` are the files listed under ``models/vpg`` (relative, ``/``-separated). Files inside a
    saved pipeline folder are not offered on their own: the folder is picked through its index.
    """
    names = [f.replace("\\", "/") for f in filenames]
    folders = {n.rsplit("/", 1)[0] + "/" for n in names if n.endswith("/model_index.json")}
    chosen = []
    for name in sorted(names):
        if name.rsplit("/", 1)[-1] == "model_index.json":
            chosen.append(name)
        elif name.endswith(WEIGHT_SUFFIXES) and not any(name.startswith(f) for f in folders):
            chosen.append(name)
    return [DEMO_CHOICE, *chosen]


def companion_choices(filenames: list[str]) -> list[str]:
    """The ``vae_file`` dropdown: :data:`NO_COMPANION` and every checkpoint file under ``models/vpg``."""
    names = sorted(f.replace("\\", "/") for f in filenames)
    return [NO_COMPANION, *(n for n in names if n.endswith(WEIGHT_SUFFIXES))]


def _folder_kind(folder: Path) -> PipelineKind:
    index = folder / "model_index.json"
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as err:
        raise VPGLoadError(f"{index} is not a readable diffusers model_index.json ({err})") from err
    for kind in KINDS.values():
        if kind.class_name == class_name:
            return kind
    names = sorted(k.class_name for k in KINDS.values())
    raise VPGLoadError(f"{folder} holds a {class_name}, which this node pack cannot load (known: {names})")


def _official_kind(checkpoint: Path) -> PipelineKind:
    matches = [k for k in KINDS.values() if k.load_official and re.match(k.official_files, checkpoint.name)]
    if not matches:
        known = {k.name: k.official_files for k in KINDS.values() if k.load_official}
        raise VPGLoadError(
            f"`model_name` {checkpoint.name!r} is not a checkpoint file name the loader recognises "
            f"(patterns: {known}); pick a saved pipeline's model_index.json or an official checkpoint."
        )
    return matches[0]


def load_pipeline(
    choice: str,
    companion: str,
    resolve: Callable[[str], Path],
    dtype: str = "fp32",
) -> tuple[Any, PipelineKind]:
    """Load the pipeline behind a loader choice (on the CPU, progress bars off).

    Args:
        choice: :data:`DEMO_CHOICE`, a saved folder's ``model_index.json`` or an official checkpoint
            file, as listed in the ``vpg`` model folder.
        companion: the second file of an official pair (the VAE), or :data:`NO_COMPANION`.
        resolve: maps a listed file name to its full path (``folder_paths.get_full_path_or_raise``).
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    """
    if dtype not in DTYPES:
        raise VPGLoadError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    if choice == DEMO_CHOICE:
        from vpg_pipelines.demo import demo_path

        folder = demo_path()
        if not (folder / "model_index.json").exists():
            raise VPGLoadError(f"the bundled demo model is missing from {folder} (reinstall vpg-pipelines)")
        pipe = KINDS["var"].load_folder(folder, torch_dtype)
    else:
        path = _resolve(resolve, "model_name", choice)
        if path.name == "model_index.json" or path.is_dir():
            folder = path if path.is_dir() else path.parent
            kind = _folder_kind(folder)
            try:
                pipe = kind.load_folder(folder, torch_dtype)
            except (ValueError, KeyError, OSError, RuntimeError) as err:
                raise VPGLoadError(f"cannot load the {kind.name} pipeline folder {folder}: {err}") from err
        else:
            kind = _official_kind(path)
            if companion in (None, "", NO_COMPANION):
                raise VPGLoadError(
                    f"`model_name` {choice!r} is an official checkpoint; also pick {kind.companion_hint} as `vae_file`."
                )
            second = _resolve(resolve, "vae_file", companion)
            try:
                pipe = kind.load_official(path, second, torch_dtype)
            except (ValueError, KeyError, OSError, RuntimeError) as err:
                raise VPGLoadError(f"cannot load {choice!r} with {companion!r} as a {kind.name} pair: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe, kind_of_pipeline(pipe)


def _resolve(resolve: Callable[[str], Path], arg: str, name: str) -> Path:
    try:
        path = Path(resolve(name))
    except Exception as err:  # folder_paths raises FileNotFoundError; custom resolvers may differ
        raise VPGLoadError(f"`{arg}` {name!r} was not found in the models/vpg folder ({err})") from err
    if not path.exists():
        raise VPGLoadError(f"`{arg}` {name!r} points to {path}, which does not exist")
    return path
