"""The one loader: any model source to a pipeline, dispatched on :mod:`vpg_pipelines.registry`.

Sources:

* ``"demo"`` — the bundled tiny class-conditional VAR (:func:`load_demo_pipeline`);
* a saved pipeline folder (``save_pretrained`` / ``vpg convert``), dispatched on its ``model_index.json``
  (:func:`load_saved`);
* official checkpoint files of any kind: the transformer and its companion VAE, an optional T5 folder for
  the text kinds and an optional ``<checkpoint>.json`` sidecar with the settings the weights do not tell
  (:func:`load_official`);
* empty (meta-device) pipelines to plan memory without weights: a released architecture by name
  (:func:`released_pipeline`) or a saved folder read without its weights (:func:`empty_pipeline_from_folder`).

The CLI (``vpg generate | convert | memory``), ``vpg eval`` and the ComfyUI loader use these. A source that
cannot be loaded raises :class:`SourceError`, which names the input at fault.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from ..memory.replay import cast_floating
from ..models.infinity_star.settings import resolve_args
from ..pipelines.pipeline_vpg_var import VPGVARPipeline
from ..registry import KINDS, ModelKind, kind_for_official_file, kind_of, released_model

DEMO_FOLDER = "assets/demo"
"""The bundled tiny model, inside the package."""
DEMO = "demo"
"""The source name of the bundled tiny model."""


class SourceError(ValueError):
    """A model source that cannot be loaded.

    Attributes:
        argument: the input at fault: ``"source"`` (the model / checkpoint), ``"companion"`` (the VAE file),
            ``"text_encoder"``, ``"config"`` or ``"variant"``; a caller with other names for them (CLI flags, node
            widgets) can say the message in its own words.
        detail: the message without the argument's name.
    """

    def __init__(self, argument: str, detail: str) -> None:
        self.argument, self.detail = argument, detail
        super().__init__(f"`{argument}` {detail}")


# -- the bundled demo ----------------------------------------------------------------------------------------
def demo_path() -> Path:
    """The folder of the bundled tiny model (a saved ``VPGVARPipeline``)."""
    return Path(str(resources.files("vpg_pipelines").joinpath(DEMO_FOLDER)))


def load_demo_pipeline(device: str | torch.device = "cpu") -> VPGVARPipeline:
    """The bundled tiny :class:`VPGVARPipeline` (class names usable as prompts), on ``device``."""
    path = demo_path()
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"the bundled demo model is missing from {path} (reinstall vpg-pipelines)")
    return VPGVARPipeline.from_pretrained(str(path)).to(device)


# -- which kind --------------------------------------------------------------------------------------------
def is_saved_folder(path: str | Path) -> bool:
    """Whether ``path`` is a saved pipeline folder (it holds a ``model_index.json``)."""
    return (Path(path) / "model_index.json").is_file()


def saved_kind(folder: str | Path) -> ModelKind:
    """The kind of a saved pipeline folder, from its ``model_index.json`` ``_class_name``."""
    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SourceError("source", f"{index} is not a readable diffusers model_index.json ({err!r})") from err
    try:
        return kind_of(str(class_name))
    except ValueError:
        known = ", ".join(k.class_name for k in KINDS.values())
        raise SourceError("source", f"{folder} holds a {class_name}, which vpg_pipelines cannot load (known: "
                                    f"{known})") from None


def source_kind(source: str | Path) -> ModelKind:
    """The kind a source loads as: the demo (VAR), a released name, a saved folder (its ``model_index.json``)
    or an official file (its name; a file no kind's names match is taken as VAR's, as ``vpg generate
    --model <file> --vae <file>`` always has)."""
    text = str(source)
    if text == DEMO:
        return KINDS["var"]
    try:
        return released_model(text)[0]
    except ValueError:
        pass
    if is_saved_folder(source):
        return saved_kind(source)
    return kind_for_official_file(source) or KINDS["var"]


# -- saved folders -------------------------------------------------------------------------------------------
def load_saved(folder: str | Path, dtype: torch.dtype | None = None) -> Any:
    """A saved pipeline folder, as the class its ``model_index.json`` names.

    ``dtype``: the compute dtype (default: as saved); a kind whose VAE runs in a fixed dtype (InfinityStar's
    video VAE: float32) keeps it.
    """
    cls = saved_class(folder)
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        vae_dtype = cls.vae_dtype
        kwargs["dtype"] = dtype if vae_dtype is None else {"default": dtype, "vae": vae_dtype}
    return cls.from_pretrained(str(folder), **kwargs)


def saved_class(folder: str | Path) -> type:
    """The pipeline class a saved folder's ``model_index.json`` names (a kind's class or one of its variants')."""
    kind = saved_kind(folder)
    class_name = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    return next((c for c in kind.pipeline_classes if c.__name__ == class_name), kind.pipeline_class)


# -- official files --------------------------------------------------------------------------------------------
def sidecar_config(checkpoint: str | Path) -> dict | None:
    """``<checkpoint>.json`` beside a checkpoint file or shard folder (``var_d2.safetensors`` ->
    ``var_d2.json``), read as the ``config`` of ``from_official``: the settings of sizes the weights do not
    tell. ``None`` when there is none."""
    checkpoint = Path(checkpoint)
    sidecar = checkpoint.parent / f"{checkpoint.stem if checkpoint.is_file() else checkpoint.name}.json"
    if not sidecar.exists():
        return None
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8"))
    except ValueError as err:
        raise SourceError("config", f"{sidecar} (the checkpoint's sidecar config) is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise SourceError("config", f"{sidecar} (the checkpoint's sidecar config) must hold a JSON object")
    return value


def load_text_encoder(folder: str | Path, dtype: torch.dtype | None = None) -> tuple[T5EncoderModel, Any]:
    """A ``T5EncoderModel`` and its tokenizer from a transformers folder (``config.json``, weights, tokenizer
    files), e.g. ``google/flan-t5-xl`` downloaded to a local folder."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise SourceError("text_encoder", f"{folder} has no config.json (expected a transformers T5 folder)")
    try:
        encoder = T5EncoderModel.from_pretrained(str(folder), dtype=dtype).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), legacy=True)
    except (OSError, ValueError, KeyError) as err:
        raise SourceError("text_encoder", f"{folder}: cannot load it as a T5 encoder ({err})") from err
    return encoder, tokenizer


def attach_text_encoder(pipe: Any, folder: str | Path, dtype: torch.dtype | None = None) -> Any:
    """Give a text pipeline that has none (saved without it) the T5 encoder and tokenizer of ``folder``."""
    kind = kind_of(pipe)
    if not kind.text_encoder:
        raise SourceError("text_encoder", f"{folder}: {kind.name} pipelines are class-conditional and take no "
                                          "text encoder")
    if getattr(pipe, "text_encoder", None) is not None:
        raise SourceError("text_encoder", f"{folder}: the pipeline brings its own text encoder")
    encoder, tokenizer = load_text_encoder(folder, dtype)
    _check_text_width(encoder, pipe.transformer, folder)
    pipe.register_modules(text_encoder=encoder, tokenizer=tokenizer)
    return pipe


def _check_text_width(encoder: Any, transformer: torch.nn.Module, folder: str | Path) -> None:
    width = getattr(encoder.config, "d_model", None)
    if width != transformer.config.text_channels:
        raise SourceError("text_encoder", f"{Path(folder).name} gives {width}-channel features but the transformer "
                                          f"takes {transformer.config.text_channels}")


def check_official_names(kind: ModelKind, checkpoint: str | Path, companion: str | Path) -> None:
    """Refuse a pair whose names say it is not ``kind``'s: the VAE picked as the transformer, or a companion
    that is not the kind's VAE."""
    if kind.is_companion_file(checkpoint):
        raise SourceError("source", f"{Path(checkpoint).name!r} is the {kind.name} VAE: pick the transformer "
                                    f"({kind.transformer_hint}) and pass the VAE as the companion")
    if not kind.is_companion_file(companion):
        raise SourceError("companion", f"{Path(companion).name!r} is not the {kind.name} VAE; pick "
                                       f"{kind.companion_hint}")


def load_official(
    checkpoint: str | Path,
    companion: str | Path,
    kind: str | ModelKind | None = None,
    *,
    text_encoder: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
    variant: str | None = None,
) -> Any:
    """A pipeline from official files: the transformer ``checkpoint`` (a file or a shard folder) and its
    ``companion`` VAE file.

    Args:
        kind: the kind (name or :class:`~vpg_pipelines.registry.ModelKind`); ``None``: from the checkpoint's
            name, and the names of both files are checked (:func:`check_official_names`).
        text_encoder: a T5 folder (:func:`load_text_encoder`) for the text kinds; ``None``: prompts need
            ``prompt_embeds``.
        config: ``from_official``'s ``config`` (the official constructor arguments / settings); default: the
            checkpoint's sidecar (:func:`sidecar_config`).
        dtype: the compute dtype (default: float32).
        quantization: the transformer's weight format (``"int8"``, ``"nf4"``, ``"fp8"``; ``docs/memory.md``).
        variant: the official script to run the checkpoint like (InfinityStar: ``"720p"``, ``"480p"``,
            ``"interact"``; the kind's released entries); ``None``: the one the checkpoint's name says, if any.
            ``config`` overrides its settings.
    """
    if kind is None:
        found = kind_for_official_file(checkpoint)
        if found is None:
            patterns = {k.name: k.official_files for k in KINDS.values()}
            raise SourceError("source", f"{Path(checkpoint).name!r} is not named like an official checkpoint "
                                        f"(patterns: {patterns})")
        check_official_names(found, checkpoint, companion)
        kind = found
    kind = kind if isinstance(kind, ModelKind) else kind_of(kind)
    variant = _variant(kind, checkpoint, variant)
    if config is None:
        config = sidecar_config(checkpoint)
    config = dict(config) if config is not None else None
    pipeline_class = kind.pipeline_class_for(variant)
    extra = {} if variant is None else {"variant": variant}
    if not kind.text_encoder:
        if text_encoder is not None:
            raise SourceError("text_encoder", f"{kind.name} models are class-conditional: they take no text encoder")
        return pipeline_class.from_official(str(checkpoint), str(companion), config=config, torch_dtype=dtype,
                                            quantization=quantization, **extra)
    encoder = tokenizer = None
    if text_encoder is not None:
        encoder, tokenizer = load_text_encoder(text_encoder, dtype)
    return pipeline_class.from_official(checkpoint, companion, text_encoder=encoder, tokenizer=tokenizer,
                                        config=config, torch_dtype=dtype, quantization=quantization, **extra)


def _variant(kind: ModelKind, checkpoint: str | Path, variant: str | None) -> str | None:
    """The variant asked for (checked against the kind's) or the one the checkpoint's name says."""
    if variant is None:
        return kind.variant_for_file(checkpoint)
    if not kind.variants:
        raise SourceError("variant", f"{variant!r}: {kind.name} checkpoints have no variants (InfinityStar's are "
                                     f"{tuple(KINDS['infinity_star'].variants)})")
    if variant not in kind.variants:
        raise SourceError("variant", f"must be one of {tuple(kind.variants)} (the official scripts), got {variant!r}")
    return variant


def load_pipeline(source: str | Path, companion: str | Path | None = None, config: Mapping[str, Any] | None = None,
                  dtype: torch.dtype | None = None, variant: str | None = None) -> Any:
    """``"demo"``, a saved pipeline folder, or an official transformer file with its ``companion`` VAE (the
    kind from the file's name, VAR when no kind's names match it; ``variant``: see :func:`load_official`)."""
    if str(source) == DEMO:
        if variant is not None:
            raise SourceError("variant", "goes with official InfinityStar checkpoints, not with the demo")
        return load_demo_pipeline()
    if is_saved_folder(source):
        for argument, value in (("companion", companion), ("config", config), ("variant", variant)):
            if value is not None:
                raise SourceError(argument, f"goes with an official checkpoint, not with a saved pipeline folder "
                                            f"({source})")
        return load_saved(source, dtype)
    if companion is None:
        raise SourceError("companion", f"is needed: {source} is not a pipeline folder, so it is an official "
                                       "checkpoint that loads with its VAE file")
    return load_official(source, companion, source_kind(source), config=config, dtype=dtype, variant=variant)


# -- empty pipelines (planning without weights) ---------------------------------------------------------------
def _empty_text_encoder(config: Mapping[str, Any]) -> T5EncoderModel:
    with init_empty_weights():
        model = T5EncoderModel(T5Config(**config)).eval()
    model.tie_weights()  # as from_pretrained does: the encoder's embedding is the shared one
    return model


def released_pipeline(name: str, official_args: Mapping[str, Any] | None = None) -> Any:
    """An empty pipeline with the released architecture ``name`` (meta weights): plan with it, do not run it.

    ``official_args`` (InfinityStar) replaces the entry's settings (``infinity-star-8b-480p``: the 480p
    script's; ``-720p``: the released 720p script's; ``-interact``: the Interact script's).
    """
    kind, spec = released_model(name)
    parts: dict[str, Any] = {}
    vae_args = dict(spec.vae)
    if kind.name == "infinity_star":
        settings = official_args if official_args is not None else spec.official_args
        parts["official_args"] = resolve_args(dict(settings) if settings is not None else None)
        parts["variant"] = spec.variant
        vae_args["detail_scale_min_tokens"] = parts["official_args"]["detail_scale_min_tokens"]
    with init_empty_weights():
        transformer, vae = kind.transformer_class(**spec.transformer), kind.vae_class(**vae_args)
    if spec.text_encoder is not None:
        parts["text_encoder"] = _empty_text_encoder(spec.text_encoder)
    return kind.pipeline_class_for(spec.variant)(transformer.eval(), vae.eval(), **parts)


def _saved_dtype(path: Path) -> torch.dtype | None:
    """The dtype most floating tensors of a component folder are stored in (read from the safetensors headers)."""
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    counts: Counter = Counter()
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                dtype = names.get(f.get_slice(key).get_dtype())
                if dtype is not None and "._weight_" not in key:  # not a quantized tensor's parts (TorchAO)
                    counts[dtype] += 1
    return counts.most_common(1)[0][0] if counts else None


def _as_saved(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    dtype = _saved_dtype(path)
    return cast_floating(model, dtype) if dtype is not None else model


def empty_pipeline_from_folder(folder: str | Path) -> Any:
    """The pipeline a saved folder holds, with meta weights built from each component's ``config.json`` in
    the dtype its safetensors store (the tokenizer is loaded: it is small and tells prompt lengths). A
    transformer saved quantized is built unquantized: :func:`saved_quantization` says its format."""
    folder = Path(folder)
    cls = saved_class(folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    kwargs: dict[str, Any] = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if not (isinstance(value, list) and len(value) == 2):
            kwargs[name] = value  # a registered setting (id2label, default size, official args ...)
            continue
        library, class_name = value
        if library is None:
            kwargs[name] = None
            continue
        component = getattr(importlib.import_module(library), class_name)
        path = folder / name
        if name == "tokenizer":
            kwargs[name] = component.from_pretrained(str(path))
        elif library.startswith("transformers"):
            config = component.config_class.from_pretrained(str(path))
            with init_empty_weights():
                model = component(config).eval()
            model.tie_weights()  # as from_pretrained does: tied embeddings are one tensor
            kwargs[name] = _as_saved(model, path)
        else:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            config.pop("quantization_config", None)
            with init_empty_weights():
                kwargs[name] = _as_saved(component.from_config(config).eval(), path)
    return cls(**kwargs)


def saved_quantization(folder: str | Path) -> str | None:
    """The weight format a saved folder's transformer is stored in (``"int8"``, ``"nf4"``; ``None``: its dtype)."""
    config = json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    quantized = config.get("quantization_config")
    if quantized is None:
        return None
    return "nf4" if str(quantized.get("quant_method", "")) == "bitsandbytes" else "int8"
