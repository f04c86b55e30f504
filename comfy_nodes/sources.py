"""What VPG Load Model's dropdowns offer, and how a choice becomes a pipeline.

Loading is the package's one loader (:mod:`vpg_pipelines.loading.auto`, dispatched on
:mod:`vpg_pipelines.registry`); this module adds what only the node knows: the folders ComfyUI lists, the
widget names (``model_name``, ``vae_file``, ``text_encoder``) in every message, and the checks a user of a
model folder needs before loading (files cut short, a ``vae_file`` the choice cannot use).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vpg_pipelines.loading.auto import SourceError, attach_text_encoder, demo_path, is_saved_folder, load_official
from vpg_pipelines.loading.auto import load_saved as load_saved_folder
from vpg_pipelines.loading.auto import saved_kind as saved_folder_kind
from vpg_pipelines.registry import KINDS, kind_for_official_file

from .files import check_readable, explain_refusal

DEMO_CHOICE = "bundled demo (VAR, 30 emoji classes)"
"""The loader's dropdown entry for the tiny model shipped inside ``vpg_pipelines`` (no download)."""
NO_COMPANION = "none"
"""The ``vae_file`` / ``text_encoder`` entry for sources that need no second file."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_VARIANT = "auto"
"""The ``variant`` entry that takes the variant from the checkpoint's name (as the Python loader does)."""
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
WIDGET_OF_SOURCE = {"source": "model_name", "config": "model_name", "companion": "vae_file",
                    "text_encoder": "text_encoder"}
""":class:`~vpg_pipelines.loading.auto.SourceError`'s argument -> the loader widget that sets it."""


class ChoiceError(ValueError):
    """A combination of the loader's widgets that cannot work (already in the widgets' words)."""


_TRANSFORMERS_WEIGHTS = re.compile(r"(^|/)(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)$")


# -- the dropdowns ---------------------------------------------------------------------------------------
def _shard_folders(names: list[str], saved: set[str]) -> set[str]:
    """Folders (``"x/"``) holding a transformers-style shard index, outside saved pipeline folders."""
    return {n.rsplit("/", 1)[0] + "/" for n in names
            if n.endswith(".index.json") and "/" in n and not any(n.startswith(f) for f in saved)}


def loader_choices(filenames: list[str]) -> list[str]:
    """``model_name``: the bundled demo, saved folders' ``model_index.json``, checkpoint files and shard
    folders (``infinitystar_8b_720p_weights``: a folder with a ``*.index.json``).

    ``filenames`` are the files listed under ``models/vpg`` (relative, ``/``-separated). Files inside a
    saved pipeline folder or a shard folder are not offered on their own.
    """
    names = [f.replace("\\", "/") for f in filenames]
    folders = {n.rsplit("/", 1)[0] + "/" for n in names if n.endswith("/model_index.json")}
    shards = _shard_folders(names, folders)
    chosen = [f.rstrip("/") for f in shards]
    for name in names:
        if name.rsplit("/", 1)[-1] == "model_index.json":
            chosen.append(name)
        elif name.endswith(WEIGHT_SUFFIXES) and not any(name.startswith(f) for f in folders | shards):
            chosen.append(name)
    return [DEMO_CHOICE, *sorted(chosen)]


def companion_choices(filenames: list[str]) -> list[str]:
    """``vae_file``: :data:`NO_COMPANION` and every checkpoint file under ``models/vpg``."""
    names = sorted(f.replace("\\", "/") for f in filenames)
    return [NO_COMPANION, *(n for n in names if n.endswith(WEIGHT_SUFFIXES))]


def text_encoder_choices(filenames: list[str]) -> list[str]:
    """``text_encoder``: :data:`NO_COMPANION` and every transformers folder listed under
    ``models/text_encoders`` or ``models/vpg``, outside saved pipelines.

    A folder counts when it holds a ``config.json``, or transformers-named weights (``model.safetensors``,
    ``model-00001-of-00002.safetensors``, ``pytorch_model.bin`` ...) and no listed ``.json`` at all:
    ComfyUI lists only weight files under ``text_encoders``, while ``models/vpg`` lists everything (so a
    transformer shard folder there shows its index and no config). Loose top-level files are other encoders.
    """
    names = [f.replace("\\", "/") for f in filenames]
    saved = {n.rsplit("/", 1)[0] + "/" for n in names if n.endswith("/model_index.json")}
    names = [n for n in names if "/" in n and not any(n.startswith(f) for f in saved)]
    with_json = {n.rsplit("/", 1)[0] for n in names if n.endswith(".json")}
    found = {n.rsplit("/", 1)[0] for n in names if n.endswith("/config.json")}
    found |= {n.rsplit("/", 1)[0] for n in names if _TRANSFORMERS_WEIGHTS.search(n)} - with_json
    return [NO_COMPANION, *sorted(found)]


def variant_choices() -> list[str]:
    """``variant``: :data:`AUTO_VARIANT` and InfinityStar's released variants (the registry's names)."""
    return [AUTO_VARIANT, *KINDS["infinity_star"].variants]


# -- loading a choice --------------------------------------------------------------------------------------
def _resolve(resolve: Callable[[str], Path], widget: str, name: str) -> Path:
    """The path of a listed name, checked for files cut short."""
    try:
        path = Path(resolve(name))
    except Exception as err:  # folder_paths raises FileNotFoundError; custom resolvers may differ
        raise ChoiceError(f"`{widget}` {name!r} was not found in the models/vpg folder ({err})") from err
    if not path.exists():
        raise ChoiceError(f"`{widget}` {name!r} points to {path}, which does not exist")
    try:
        check_readable(widget, name, path)
    except ValueError as err:
        raise ChoiceError(str(err)) from None
    return path


def _in_widget_words(err: SourceError) -> str:
    """The loader's message with the widget in place of its argument (``companion`` -> ``vae_file``)."""
    detail = err.detail.replace("pass the VAE as the companion", "put the VAE in `vae_file`")
    return f"`{WIDGET_OF_SOURCE.get(err.argument, err.argument)}` {detail}"


def load_choice(choice: str, vae_file: str, resolve: Callable[[str], Path], dtype: str = "fp32",
                text_encoder: str = NO_COMPANION, resolve_text: Callable[[str], Path] | None = None,
                variant: str = AUTO_VARIANT) -> Any:
    """The pipeline behind the loader's widgets (on the CPU, progress bars off).

    Args:
        choice: :data:`DEMO_CHOICE`, a saved folder's ``model_index.json``, an official checkpoint file or
            shard folder, as listed in the ``vpg`` model folder.
        vae_file: the VAE of an official pair, or :data:`NO_COMPANION`.
        resolve: maps a listed name to its full path (file or folder).
        dtype: a key of :data:`DTYPES`.
        text_encoder: a T5 folder from :func:`text_encoder_choices` for the text kinds' official files (or a
            saved folder stored without one), or :data:`NO_COMPANION`.
        resolve_text: maps a ``text_encoder`` choice to its folder (default: ``resolve``).
        variant: an official InfinityStar checkpoint's script (:func:`variant_choices`); :data:`AUTO_VARIANT`:
            the one its name says.

    Raises ``ValueError`` naming the widget and what to change.
    """
    torch_dtype = None if DTYPES[dtype] == torch.float32 else DTYPES[dtype]
    has_vae = vae_file not in (None, "", NO_COMPANION)
    encoder = None
    if text_encoder not in (None, "", NO_COMPANION):
        encoder = _resolve(resolve_text or resolve, "text_encoder", text_encoder)
    if choice == DEMO_CHOICE:
        folder, chosen = demo_path(), {}
    else:
        path = _resolve(resolve, "model_name", choice)
        folder = path.parent if path.name == "model_index.json" else path
        chosen = {folder: ("model_name", choice)}
    picked = None if variant in (None, "", AUTO_VARIANT) else variant
    try:
        if choice == DEMO_CHOICE or is_saved_folder(folder):
            _check_no_variant(choice, picked)
            pipe = _load_saved(choice, folder, has_vae, vae_file, encoder, torch_dtype)
        else:
            _check_variant(choice, folder, picked)
            vae = _official_vae(choice, folder, vae_file, resolve)
            if vae is not None:
                chosen[vae] = ("vae_file", vae_file)
            pipe = load_official(folder, vae, text_encoder=encoder, dtype=torch_dtype, variant=picked)
    except SourceError as err:
        raise ValueError(_in_widget_words(err)) from err
    except ChoiceError:
        raise
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        raise ValueError(explain_refusal(err, chosen) or f"cannot load {choice!r}: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_no_variant(choice: str, variant: str | None) -> None:
    """The demo and saved folders bring their settings: only ``auto`` applies."""
    if variant is not None:
        name = "the bundled demo" if choice == DEMO_CHOICE else f"`model_name` {choice!r} (a saved pipeline folder)"
        raise ChoiceError(f"`variant` {variant!r} is for official InfinityStar checkpoints; {name} brings its own "
                          f"settings: set `variant` to {AUTO_VARIANT}")


def _check_variant(choice: str, folder: Path, variant: str | None) -> None:
    """A variant other than ``auto`` only for a kind that has variants (InfinityStar) and one of its names."""
    if variant is None:
        return
    allowed = variant_choices()
    if variant not in allowed:
        raise ChoiceError(f"`variant` must be one of {', '.join(repr(v) for v in allowed)}, got {variant!r}")
    kind = kind_for_official_file(folder)
    if kind is not None and not kind.variants:
        raise ChoiceError(f"`variant` {variant!r} is for official InfinityStar checkpoints; `model_name` {choice!r} "
                          f"is an official {kind.name} checkpoint: set `variant` to {AUTO_VARIANT}")


def _official_vae(choice: str, folder: Path, vae_file: str, resolve: Callable[[str], Path]) -> Path | None:
    """The VAE file of an official checkpoint (``None``: none picked, for a name no kind knows; the loader
    then says what the name should look like)."""
    kind = kind_for_official_file(folder)
    if vae_file in (None, "", NO_COMPANION):
        if kind is not None:
            raise ChoiceError(f"`model_name` {choice!r} is an official {kind.name} checkpoint; also pick its VAE "
                              f"({kind.companion_hint}) as `vae_file`")
        return None
    return _resolve(resolve, "vae_file", vae_file)


def _load_saved(choice: str, folder: Path, has_vae: bool, vae_file: str, encoder: Path | None,
                dtype: torch.dtype | None) -> Any:
    """The demo or a saved folder, which bring their VAE (and a text model's T5, unless saved without)."""
    name = "the bundled demo" if choice == DEMO_CHOICE else f"`model_name` {choice!r} (a saved pipeline folder)"
    if has_vae:
        raise ChoiceError(f"{name} brings its own VAE and cannot use `vae_file` {vae_file!r}; set `vae_file` to none")
    kind = saved_folder_kind(folder)
    if encoder is not None and not kind.text_encoder:
        raise ChoiceError(f"{name} is a class-conditional {kind.name} model: set `text_encoder` to none")
    pipe = load_saved_folder(folder, dtype)
    if encoder is not None:
        attach_text_encoder(pipe, encoder, dtype)
    return pipe
