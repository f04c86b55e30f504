"""Which pipeline kinds the node pack can load, and how a dropdown choice becomes a pipeline.

A *kind* bundles what the nodes need to know about one pipeline class: how to load a saved folder
or the official checkpoint files, how its conditioning works, and how to turn a partial latent into a
preview. VAR, Infinity and InfinityStar are registered here with :func:`register_kind`.

This module is the pack's side of issue 20's switch-over: its kind table and loading are what
``vpg_pipelines.registry`` and ``vpg_pipelines.loading.auto`` take over; nothing else in the pack keeps
per-kind knowledge or a name -> kind table. Its errors name the loader's widgets; the loader node adds
its title.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, T5EncoderModel

from vpg_pipelines import VPGInfinityPipeline, VPGInfinityStarPipeline, VPGVARPipeline
from vpg_pipelines.demo import demo_path

from .files import check_readable, explain_refusal

DEMO_CHOICE = "bundled demo (VAR, 30 emoji classes)"
"""The loader's dropdown entry for the tiny model shipped inside ``vpg_pipelines`` (no download)."""

NO_COMPANION = "none"
"""The loader's ``vae_file`` entry for sources that need no second file."""

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class VPGLoadError(ValueError):
    """A model choice that cannot be loaded; the message names the widget and says what to change."""


@dataclass(frozen=True)
class PipelineKind:
    """What the node pack needs to drive one pipeline class.

    Attributes:
        name: short id (``"var"``).
        class_name: the ``_class_name`` in a saved folder's ``model_index.json``.
        load_folder: ``(folder, dtype) -> pipeline`` for a saved pipeline folder.
        load_official: ``(checkpoint, companion, text_encoder, dtype) -> pipeline`` for the released files
            (``text_encoder`` a T5 folder or ``None``), or ``None``.
        official_files: regular expression matching the released checkpoint file names of this kind.
        companion_hint: what the second file is (shown in errors), e.g. ``"vae_ch160v4096z32.pth"``.
        conditioning: ``"class"`` (class ids / names) or ``"text"`` (prompts).
        cfg_schedule: the pipeline's CFG schedule (``"linear"`` for VAR, ``"constant"`` for Infinity).
        preview: ``(pipeline, latents) -> (B, 3, H, W)`` images in [0, 1] from a partial latent.
        modules: ``pipeline -> {name: nn.Module}``, the weights ComfyUI's model management should own.
        grids: ``(pipeline, height, width) -> [(h, w), ...]``, the token grid of each scale of a call of
            that size (for guidance maps; empty: the kind has none).
        media: ``"image"`` or ``"video"`` (which sampler node drives it).
        needs_text_encoder: ``"t5"`` when the official files take a T5 folder (``text_encoder``), else ``""``.
        guidance_kinds: the guidance terms its CFG-type nodes may add (``"cfg"``, ``"apg"``).
        num_scales: ``pipeline -> number of scales`` of the model's default call (what the Prefix
            Guidance node checks explicit scale indices against; the samplers check the actual call's).
    """

    name: str
    class_name: str
    load_folder: Callable[[Path, torch.dtype], Any]
    load_official: Callable[[Path, Path, Path | None, torch.dtype], Any] | None
    official_files: str
    companion_hint: str
    conditioning: str
    cfg_schedule: str
    preview: Callable[[Any, torch.Tensor], torch.Tensor]
    modules: Callable[[Any], dict[str, torch.nn.Module]]
    grids: Callable[[Any, int, int], list[tuple[int, int]]]
    media: str = "image"
    needs_text_encoder: str = ""
    guidance_kinds: tuple[str, ...] = ("cfg",)
    num_scales: Callable[[Any], int] | None = None


KINDS: dict[str, PipelineKind] = {}


def register_kind(kind: PipelineKind) -> None:
    """Add (or replace) a pipeline kind, keyed by its name."""
    if kind.conditioning not in ("class", "text"):
        raise ValueError(f"`conditioning` must be 'class' or 'text', got {kind.conditioning!r}")
    if kind.media not in ("image", "video"):
        raise ValueError(f"`media` must be 'image' or 'video', got {kind.media!r}")
    if kind.num_scales is None:
        raise ValueError(f"kind {kind.name!r} needs `num_scales`")
    KINDS[kind.name] = kind


def kind_of_pipeline(pipeline: Any) -> PipelineKind:
    """The registered kind of a pipeline object (by class name)."""
    for kind in KINDS.values():
        if type(pipeline).__name__ == kind.class_name:
            return kind
    raise VPGLoadError(f"{type(pipeline).__name__} is not a registered VPG pipeline kind ({sorted(KINDS)})")


# -- VAR ---------------------------------------------------------------------------------------------
def _var_load_folder(folder: Path, dtype: torch.dtype) -> Any:
    kwargs = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    return VPGVARPipeline.from_pretrained(str(folder), **kwargs)


def _var_load_official(checkpoint: Path, companion: Path, text_encoder: Path | None, dtype: torch.dtype) -> Any:
    """The official pair; a ``<checkpoint>.json`` beside it (``{"var": {...}, "vqvae": {...}}``) gives
    the constructor arguments of non-standard sizes that cannot be inferred from the weights."""
    if text_encoder is not None:
        raise VPGLoadError("VAR is class-conditional: set `text_encoder` to 'none'")
    return VPGVARPipeline.from_official(str(checkpoint), str(companion), config=_sidecar(checkpoint),
                                        torch_dtype=dtype)


def _sidecar(checkpoint: Path) -> dict | None:
    """``<checkpoint>.json`` next to a checkpoint (file or shard folder): constructor settings of sizes that
    cannot be read off the weights (the ``config`` argument of ``from_official``)."""
    sidecar = checkpoint.parent / f"{checkpoint.stem if checkpoint.is_file() else checkpoint.name}.json"
    if not sidecar.exists():
        return None
    try:
        return json.loads(sidecar.read_text())
    except ValueError as err:
        raise VPGLoadError(f"the sidecar config {sidecar} is not valid JSON ({err})") from err


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
        grids=lambda pipe, height, width: [(side, side) for side in pipe.transformer.config.patch_nums],
        num_scales=lambda pipe: len(pipe.transformer.config.patch_nums),
    )
)


# -- Infinity (text-to-image) ------------------------------------------------------------------------
def _load_text_encoder(folder: Path | None, dtype: torch.dtype) -> tuple[Any, Any]:
    """A ``T5EncoderModel`` and its tokenizer from a transformers folder (``config.json`` + weights +
    tokenizer files), e.g. ``google/flan-t5-xl`` downloaded to ``models/text_encoders/flan-t5-xl``."""
    if folder is None:
        return None, None
    if not (folder / "config.json").exists():
        raise VPGLoadError(f"`text_encoder` {folder} has no config.json (expected a transformers T5 folder)")
    try:
        encoder = T5EncoderModel.from_pretrained(str(folder), dtype=dtype).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), legacy=True)
    except (OSError, ValueError, KeyError) as err:
        raise VPGLoadError(f"cannot load the T5 text encoder folder {folder}: {err}") from err
    return encoder, tokenizer


def _infinity_load_folder(folder: Path, dtype: torch.dtype) -> Any:
    kwargs = {} if dtype == torch.float32 else {"dtype": dtype}
    return VPGInfinityPipeline.from_pretrained(str(folder), **kwargs)


def _infinity_load_official(checkpoint: Path, companion: Path, text_encoder: Path | None, dtype: torch.dtype) -> Any:
    if re.match(r"^infinity_vae", checkpoint.name):
        raise VPGLoadError(f"`model_name` {checkpoint.name!r} is the VAE: pick the transformer "
                           "(infinity_2b_reg.pth or the 8B shard folder) and put the VAE in `vae_file`")
    if not re.match(r"^infinity_vae", companion.name):
        raise VPGLoadError(f"`vae_file` {companion.name!r} is not an Infinity VAE (infinity_vae_d32reg.pth for 2B, "
                           "infinity_vae_d56_f8_14_patchify.pth for 8B)")
    encoder, tokenizer = _load_text_encoder(text_encoder, dtype)
    return VPGInfinityPipeline.from_official(str(checkpoint), str(companion), text_encoder=encoder,
                                             tokenizer=tokenizer, config=_sidecar(checkpoint),
                                             torch_dtype=None if dtype == torch.float32 else dtype)


def _infinity_preview(pipeline: Any, latents: torch.Tensor) -> torch.Tensor:
    param = next(pipeline.vae.parameters())
    return ((pipeline.vae.decode(latents.to(device=param.device)) + 1) / 2).clamp(0, 1)


def _text_pipeline_modules(pipe: Any) -> dict[str, torch.nn.Module]:
    """Transformer, VAE and (when present) the T5 encoder: what model management moves as one."""
    modules = {"transformer": pipe.transformer, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
    return {name: module for name, module in modules.items() if module is not None}


def _infinity_grids(pipeline: Any, height: int, width: int) -> list[tuple[int, int]]:
    return [(int(grid[-2]), int(grid[-1])) for grid in pipeline.schedule_for(height, width).grids]


register_kind(
    PipelineKind(
        name="infinity",
        class_name="VPGInfinityPipeline",
        load_folder=_infinity_load_folder,
        load_official=_infinity_load_official,
        official_files=r"^infinity_",
        companion_hint="the Infinity VAE file infinity_vae_d32reg.pth (2B) or infinity_vae_d56_f8_14_patchify.pth (8B)",
        conditioning="text",
        cfg_schedule="constant",
        preview=_infinity_preview,
        modules=_text_pipeline_modules,
        grids=_infinity_grids,
        num_scales=lambda pipe: pipe.schedule_for(pipe.config.default_height, pipe.config.default_width).num_scales,
        needs_text_encoder="t5",
    )
)


# -- InfinityStar (text-to-video) --------------------------------------------------------------------
def _star_load_folder(folder: Path, dtype: torch.dtype) -> Any:
    kwargs = {} if dtype == torch.float32 else {"dtype": dtype}
    return VPGInfinityStarPipeline.from_pretrained(str(folder), **kwargs)


def _star_load_official(checkpoint: Path, companion: Path, text_encoder: Path | None, dtype: torch.dtype) -> Any:
    if "videovae" in checkpoint.name:
        raise VPGLoadError(f"`model_name` {checkpoint.name!r} is the video VAE: pick the transformer "
                           "(the infinitystar_8b_720p_weights shard folder) and put the VAE in `vae_file`")
    if "videovae" not in companion.name:
        raise VPGLoadError(f"`vae_file` {companion.name!r} is not the InfinityStar video VAE "
                           "(infinitystar_videovae.pth)")
    encoder, tokenizer = _load_text_encoder(text_encoder, dtype)
    return VPGInfinityStarPipeline.from_official(checkpoint, companion, text_encoder=encoder, tokenizer=tokenizer,
                                                 config=_sidecar(checkpoint),
                                                 torch_dtype=None if dtype == torch.float32 else dtype)


def _star_preview(pipeline: Any, latents: torch.Tensor) -> torch.Tensor:
    """The newest latent frame decoded on its own, ``(B, 3, H, W)``: cheap (one frame, not the whole video
    each step) and, outside the first clip, only an approximation of the final frames."""
    video = pipeline.decode_latents(latents[:, :, -1:])
    return ((video[:, :, -1] + 1) / 2).clamp(0, 1)


def _star_num_scales(pipeline: Any) -> int:
    args = pipeline.config.official_args
    height, width = pipeline.default_size
    return len(pipeline.plan(int(args["video_frames"]), height, width).schedule)


register_kind(
    PipelineKind(
        name="infinity_star",
        class_name="VPGInfinityStarPipeline",
        load_folder=_star_load_folder,
        load_official=_star_load_official,
        official_files=r"^infinitystar_",
        companion_hint="the InfinityStar video VAE infinitystar_videovae.pth",
        conditioning="text",
        cfg_schedule="constant",
        preview=_star_preview,
        modules=_text_pipeline_modules,
        grids=lambda pipe, height, width: [],
        media="video",
        needs_text_encoder="t5",
        guidance_kinds=("cfg", "apg"),
        num_scales=_star_num_scales,
    )
)


# -- choosing and loading ----------------------------------------------------------------------------
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def _shard_folders(names: list[str], saved: set[str]) -> set[str]:
    """Folders (``"x/"``) holding a transformers-style shard index, outside saved pipeline folders."""
    return {n.rsplit("/", 1)[0] + "/" for n in names
            if n.endswith(".index.json") and "/" in n and not any(n.startswith(f) for f in saved)}


def loader_choices(filenames: list[str]) -> list[str]:
    """The loader's dropdown: the bundled demo, saved folders' ``model_index.json``, checkpoint files and
    shard folders (``infinitystar_8b_720p_weights``: a folder with a ``*.index.json``).

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


_TRANSFORMERS_WEIGHTS = re.compile(r"(^|/)(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)$")


def text_encoder_choices(filenames: list[str]) -> list[str]:
    """The ``text_encoder`` dropdown: :data:`NO_COMPANION` and every transformers folder listed under
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
    text_encoder: str = NO_COMPANION,
    resolve_text: Callable[[str], Path] | None = None,
) -> tuple[Any, PipelineKind]:
    """Load the pipeline behind a loader choice (on the CPU, progress bars off).

    Args:
        choice: :data:`DEMO_CHOICE`, a saved folder's ``model_index.json``, an official checkpoint
            file or shard folder, as listed in the ``vpg`` model folder.
        companion: the second file of an official pair (the VAE), or :data:`NO_COMPANION`.
        resolve: maps a listed name to its full path (file or folder).
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        text_encoder: a T5 folder from :func:`text_encoder_choices` for the text-conditioned kinds'
            official files (or a saved folder stored without one), or :data:`NO_COMPANION`.
        resolve_text: maps a ``text_encoder`` choice to its folder (default: ``resolve``).
    """
    if dtype not in DTYPES:
        raise VPGLoadError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    encoder_path = None
    if text_encoder not in (None, "", NO_COMPANION):
        encoder_path = _resolve(resolve_text or resolve, "text_encoder", text_encoder)
    if choice == DEMO_CHOICE:
        if encoder_path is not None:
            raise VPGLoadError("the bundled demo is class-conditional: set `text_encoder` to 'none'")
        if companion not in (None, "", NO_COMPANION):
            raise VPGLoadError(f"the bundled demo brings its own VAE and cannot use `vae_file` {companion!r}; "
                               "set `vae_file` to none")
        folder = demo_path()
        if not (folder / "model_index.json").exists():
            raise VPGLoadError(f"the bundled demo model is missing from {folder} (reinstall vpg-pipelines)")
        pipe = KINDS["var"].load_folder(folder, torch_dtype)
    else:
        path = _resolve(resolve, "model_name", choice)
        saved = path if path.name == "model_index.json" else path / "model_index.json"
        if saved.exists():
            folder = saved.parent
            kind = _folder_kind(folder)
            if companion not in (None, "", NO_COMPANION):
                raise VPGLoadError(f"`model_name` {choice!r} is a saved pipeline folder, which brings its own VAE "
                                   f"and cannot use `vae_file` {companion!r}; set `vae_file` to none")
            try:
                pipe = kind.load_folder(folder, torch_dtype)
            except (ValueError, KeyError, OSError, RuntimeError) as err:
                refusal = explain_refusal(err, {folder: ("model_name", choice)})
                raise VPGLoadError(refusal or f"cannot load the {kind.name} pipeline folder {folder}: {err}") from err
            if encoder_path is not None:
                _attach_text_encoder(pipe, kind, folder, encoder_path, torch_dtype)
        else:
            kind = _official_kind(path)
            if companion in (None, "", NO_COMPANION):
                raise VPGLoadError(
                    f"`model_name` {choice!r} is an official checkpoint; also pick {kind.companion_hint} as `vae_file`."
                )
            second = _resolve(resolve, "vae_file", companion)
            if encoder_path is not None and not kind.needs_text_encoder:
                raise VPGLoadError(f"{kind.name} models take no text encoder: set `text_encoder` to 'none'")
            try:
                pipe = kind.load_official(path, second, encoder_path, torch_dtype)
            except VPGLoadError:
                raise
            except (ValueError, KeyError, OSError, RuntimeError) as err:
                refusal = explain_refusal(err, {path: ("model_name", choice), second: ("vae_file", companion)})
                raise VPGLoadError(refusal or f"cannot load {choice!r} with {companion!r} as an official {kind.name} "
                                   f"pair: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe, kind_of_pipeline(pipe)


def _attach_text_encoder(pipe: Any, kind: PipelineKind, folder: Path, encoder: Path, dtype: torch.dtype) -> None:
    if not kind.needs_text_encoder:
        raise VPGLoadError(f"{folder} holds a class-conditional {kind.name} pipeline: set `text_encoder` to 'none'")
    if getattr(pipe, "text_encoder", None) is not None:
        raise VPGLoadError(f"{folder} brings its own text encoder: set `text_encoder` to 'none'")
    text_encoder, tokenizer = _load_text_encoder(encoder, dtype)
    width = getattr(text_encoder.config, "d_model", None)
    if width != pipe.transformer.config.text_channels:
        raise VPGLoadError(f"`text_encoder` {encoder.name} gives {width}-channel features, the model takes "
                           f"{pipe.transformer.config.text_channels}")
    pipe.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)


def _resolve(resolve: Callable[[str], Path], arg: str, name: str) -> Path:
    try:
        path = Path(resolve(name))
    except Exception as err:  # folder_paths raises FileNotFoundError; custom resolvers may differ
        raise VPGLoadError(f"`{arg}` {name!r} was not found in the models/vpg folder ({err})") from err
    if not path.exists():
        raise VPGLoadError(f"`{arg}` {name!r} points to {path}, which does not exist")
    try:
        check_readable(arg, name, path)
    except ValueError as err:
        raise VPGLoadError(str(err)) from None
    return path
