"""Smaller transformer weights through diffusers' own machinery.

=========  ===================================================================  ======================
name       what                                                                 runs on
=========  ===================================================================  ======================
``int8``   TorchAO int8 weight-only (``TorchAoConfig(Int8WeightOnlyConfig())``)  every device (plain
                                                                                 PyTorch ops)
``nf4``    bitsandbytes 4-bit NF4 (``BitsAndBytesConfig(load_in_4bit=True)``),  CUDA, ROCm, XPU (not
           bf16 compute                                                          the CPU, not ``mps``)
``fp8``    ``enable_layerwise_casting``: float8_e4m3fn storage, bf16 compute     CPU, CUDA, ROCm (no
                                                                                 float8 on mps / xpu)
=========  ===================================================================  ======================

Where each runs is data: :data:`vpg_pipelines.devices.CONSTRAINTS`; :func:`check_quantization` refuses a format
the device lacks, naming the device.

``int8`` and ``nf4`` are diffusers ``quantization_config`` s: pass them to ``from_pretrained`` (or
``quantization=`` here); a model that is already built (``from_official``) is quantized by a round trip
through a temporary folder with ``from_pretrained(..., quantization_config=...)``, so the result is
exactly what diffusers loads (and ``save_pretrained`` stores it quantized). ``fp8`` is a forward hook on
every Linear / Embedding layer and is applied to the loaded model (it is not saved).
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from diffusers import BitsAndBytesConfig, PipelineQuantizationConfig, TorchAoConfig

from ..devices import check_saver, pick_device
from .weights import QUANTIZATIONS


def _check(name: str) -> None:
    if name not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {name!r}")


def check_quantization(name: str | None, device: str | torch.device | None = None,
                       argument: str = "`quantization`") -> None:
    """``None`` or a name of :data:`QUANTIZATIONS` that runs on ``device`` (default: the device
    :func:`~vpg_pipelines.devices.pick_device` picks, which is where the quantizers put the weights)."""
    if name is None:
        return
    _check(name)
    check_saver(name, pick_device() if device is None else device, argument)


def diffusers_quantization_config(name: str, compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """The diffusers quantization config of ``name`` (``int8`` or ``nf4``)."""
    _check(name)
    if name == "int8":
        try:  # torchao is optional (the `quant` extra); only int8 needs it
            from torchao.quantization import Int8WeightOnlyConfig
        except ImportError as err:
            raise ImportError("`quantization='int8'` needs torchao: pip install torchao") from err
        return TorchAoConfig(Int8WeightOnlyConfig())
    if name == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    raise ValueError(f"`quantization={name!r}` is not a diffusers quantization_config (fp8 is layerwise casting)")


def pipeline_quantization_config(name: str, compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """``PipelineQuantizationConfig`` quantizing the transformer only (the text encoder and VAE keep
    their dtype)."""
    return PipelineQuantizationConfig(quant_mapping={"transformer": diffusers_quantization_config(name, compute_dtype)})


def enable_fp8_storage(model: torch.nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """diffusers' layerwise casting: weights stored in float8_e4m3fn, cast to ``compute_dtype`` per layer."""
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    return model


def quantize_transformer(model: torch.nn.Module, name: str | None, dtype: torch.dtype | None = None
                         ) -> torch.nn.Module:
    """``model`` with its weights in ``name`` (``None`` / ``"none"``: unchanged).

    ``dtype``: the compute dtype (and the dtype of everything that is not quantized); default: the
    model's. ``int8`` / ``nf4`` return a new model loaded by diffusers with the quantization config.
    """
    if name in (None, "none"):
        return model
    check_quantization(name)
    dtype = dtype or model.dtype
    if name == "fp8":
        return enable_fp8_storage(model, dtype)
    config = diffusers_quantization_config(name, dtype)
    cls = type(model)
    with tempfile.TemporaryDirectory(prefix="vpg-quantize-") as folder:
        model.save_pretrained(folder)
        quantized = cls.from_pretrained(folder, quantization_config=config, dtype=dtype)
    return quantized.eval()


def apply_quantization(pipe: Any, name: str | None, dtype: torch.dtype | None = None) -> Any:
    """Quantize ``pipe.transformer`` in place of the old one (see :func:`quantize_transformer`); returns ``pipe``."""
    if name in (None, "none"):
        return pipe
    transformer = quantize_transformer(pipe.transformer, name, dtype)
    if transformer is not pipe.transformer:
        pipe.register_modules(transformer=transformer)
    return pipe
