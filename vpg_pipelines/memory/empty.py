"""A saved pipeline folder as an empty (meta-device) pipeline: plan its memory without reading its weights."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights

from .replay import cast_floating


def _saved_dtype(path: Path) -> torch.dtype | None:
    """The dtype most floating tensors of a component folder are stored in (read from the safetensors headers)."""
    from collections import Counter

    from safetensors import safe_open

    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    counts: Counter = Counter()
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                dtype = names.get(f.get_slice(key).get_dtype())
                if dtype is not None and "._weight_" not in key:  # not a quantized tensor's parts (TorchAO)
                    counts[dtype] += 1
    return counts.most_common(1)[0][0] if counts else None


def empty_pipeline_from_folder(folder: str | Path) -> Any:
    """The pipeline a ``save_pretrained`` folder holds, with meta weights built from each component's
    ``config.json`` in the dtype its safetensors store (the tokenizer is loaded: it is small and tells
    prompt lengths).

    A transformer saved quantized (its config carries a ``quantization_config``) is planned in that format:
    its ``quantization`` is returned in the pipeline's ``_planned_quantization`` attribute.
    """
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    from ..cli import _pipeline_class

    cls = _pipeline_class(index["_class_name"])
    kwargs: dict[str, Any] = {}
    quantization = None
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
            config = json.loads((path / "config.json").read_text())
            quantized = config.pop("quantization_config", None)
            if quantized is not None and name == "transformer":
                method = str(quantized.get("quant_method", ""))
                quantization = "nf4" if method == "bitsandbytes" else "int8"
            with init_empty_weights():
                kwargs[name] = _as_saved(component.from_config(config).eval(), path)
    pipe = cls(**kwargs)
    pipe._planned_quantization = quantization
    return pipe


def _as_saved(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    dtype = _saved_dtype(path)
    return cast_floating(model, dtype) if dtype is not None else model
