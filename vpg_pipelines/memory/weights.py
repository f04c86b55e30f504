"""Weight bytes of a component: what its tensors hold now, or what a dtype / quantization would make
them hold, and how much of it sits on the accelerator under each offload mode.

Quantized formats (bytes per ``nn.Linear`` weight of ``out x in``):

* ``int8`` — TorchAO ``Int8WeightOnlyConfig`` (``Int8Tensor``): int8 values, one float32 scale per
  output row (whatever the compute dtype) and one int8 zero point per row: ``out*in + 5*out``.
* ``nf4`` — bitsandbytes 4-bit NF4 (``Params4bit``, blocksize 64, no double quantization, diffusers'
  defaults): two values per byte plus one float32 absmax per block of 64 and the 16-entry float32 code
  table: ``ceil(out*in/2) + 4*ceil(out*in/64) + 64``.
* ``fp8`` — diffusers' layerwise casting (``enable_layerwise_casting``, float8_e4m3fn storage): one byte
  per value of every Linear / Conv / Embedding parameter (bias included) outside diffusers' skip
  patterns (``norm``, ``pos_embed``, ..., the model's ``_keep_in_fp32_modules``).

Quantization applies to ``nn.Linear`` weights outside ``_keep_in_fp32_modules``; everything else keeps
the compute dtype (float32 for ``_keep_in_fp32_modules``). The exact bytes of a loaded (quantized)
module are read off its tensors (:func:`tensor_bytes`), tensor subclasses included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8", "nf4", "fp8")
"""Weight formats the planner and the loaders know (``none`` = the compute dtype)."""

LAYERWISE_SKIP = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$")
"""diffusers' default ``enable_layerwise_casting`` skip patterns (``DEFAULT_SKIP_MODULES_PATTERN``)."""
_LAYERWISE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                     nn.Linear, nn.Embedding)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a parameter or buffer holds (inner tensors of TorchAO / Quanto subclasses, bitsandbytes'
    quantization state included)."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    total = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)
    if state is not None:  # bitsandbytes Params4bit
        for name in ("absmax", "code"):
            inner = getattr(state, name, None)
            if isinstance(inner, torch.Tensor):
                total += tensor_bytes(inner)
        nested = getattr(state, "state2", None)
        if nested is not None:
            total += sum(tensor_bytes(getattr(nested, n)) for n in ("absmax", "code")
                         if isinstance(getattr(nested, n, None), torch.Tensor))
    return total


def quantized_linear_bytes(out_features: int, in_features: int, quantization: str, dtype: torch.dtype) -> int:
    """Bytes of one ``out x in`` Linear weight in ``quantization`` (see the module docstring)."""
    n = out_features * in_features
    if quantization == "int8":
        return n + out_features * 5
    if quantization == "nf4":
        return math.ceil(n / 2) + 4 * math.ceil(n / 64) + 64
    if quantization == "fp8":
        return n
    if quantization == "none":
        return n * _size(dtype)
    raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}")


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


@dataclass(frozen=True)
class WeightLayout:
    """Bytes of one component and their residency on the accelerator per offload mode.

    Attributes:
        total: every parameter and buffer.
        buffers: the buffers alone (sequential offload keeps them on the accelerator).
        unmatched: block-level group offloading's always-loaded group (the top module's own tensors
            and its children that are not ``ModuleList`` / ``Sequential``), loaded for the whole forward.
        groups: bytes of each block group (one child of a top-level ``ModuleList`` / ``Sequential``).
        sequential: the most sequential (leaf) offloading holds at once: the buffers plus the largest
            chain of modules with their own parameters (a module's forward keeps its parameters loaded
            while its children run).
    """

    total: int
    buffers: int
    unmatched: int
    groups: tuple[int, ...]
    sequential: int

    def resident(self, mode: str, stream: bool = True) -> int:
        """Bytes on the accelerator while the component runs under offload ``mode``."""
        if mode in ("none", "model"):
            return self.total
        if mode == "group":
            biggest = max(self.groups, default=0)
            return self.unmatched + biggest * (2 if stream and len(self.groups) > 1 else 1)
        if mode == "sequential":
            return self.sequential
        raise ValueError(f"unknown offload mode {mode!r}")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def _param_bytes(owner: nn.Module, owner_name: str, name: str, tensor: torch.Tensor, dtype: torch.dtype | None,
                 quantization: str, keep_fp32: tuple[str, ...], skip: tuple[str, ...]) -> int:
    if dtype is None:
        return tensor_bytes(tensor)
    in_fp32 = any(part in keep_fp32 for part in owner_name.split("."))
    if not tensor.is_floating_point():
        return tensor.numel() * tensor.element_size()
    if not in_fp32 and not _matches(owner_name, skip):
        if quantization in ("int8", "nf4") and isinstance(owner, nn.Linear) and name == "weight":
            return quantized_linear_bytes(owner.out_features, owner.in_features, quantization, dtype)
        if quantization == "fp8" and isinstance(owner, _LAYERWISE_LAYERS) and not _matches(owner_name, LAYERWISE_SKIP):
            return tensor.numel()
    return tensor.numel() * (4 if in_fp32 else _size(dtype))


def weight_layout(
    module: nn.Module,
    dtype: torch.dtype | None = None,
    quantization: str = "none",
    skip: Iterable[str] = (),
) -> WeightLayout:
    """The :class:`WeightLayout` of ``module``.

    Args:
        module: the component (real, meta or quantized weights).
        dtype: ``None`` to count the bytes its tensors hold now; otherwise the compute dtype to plan for
            (floating tensors cast to it, except ``_keep_in_fp32_modules`` which stay float32).
        quantization: with ``dtype``, the weight format to plan (:data:`QUANTIZATIONS`).
        skip: module-name patterns left unquantized (diffusers' ``modules_to_not_convert``).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}")
    keep_fp32 = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    skip = tuple(skip)
    own: dict[str, int] = {}  # module name -> bytes of its own parameters
    own_buffers: dict[str, int] = {}
    seen: set[int] = set()  # tied tensors (T5's shared embedding) count once, where they first appear

    def first(tensors):
        for name, tensor in tensors:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                yield name, tensor

    for owner_name, owner in module.named_modules():
        own[owner_name] = sum(_param_bytes(owner, owner_name, n, p, dtype, quantization, keep_fp32, skip)
                              for n, p in first(owner.named_parameters(recurse=False)))
        own_buffers[owner_name] = sum(_param_bytes(owner, owner_name, n, b, dtype, "none", keep_fp32, ())
                                      for n, b in first(owner.named_buffers(recurse=False)))
    buffers = sum(own_buffers.values())
    total = sum(own.values()) + buffers

    def subtotal(prefix: str) -> int:
        return sum(own[k] + own_buffers[k] for k in own if k == prefix or k.startswith(prefix + "."))

    groups, grouped = [], 0
    for child_name, child in module.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            for index, _ in enumerate(child):
                size = subtotal(f"{child_name}.{index}")
                groups.append(size)
                grouped += size
    unmatched = total - grouped
    chain = 0
    for owner_name in own:
        parts = owner_name.split(".") if owner_name else []
        ancestors = [".".join(parts[:i]) for i in range(len(parts) + 1)]
        chain = max(chain, sum(own.get(a, 0) for a in ancestors))
    return WeightLayout(total=total, buffers=buffers, unmatched=unmatched, groups=tuple(groups),
                        sequential=buffers + chain)
