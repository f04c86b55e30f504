"""CPU stand-ins for the CUDA-only packages the official Infinity / InfinityStar code imports.

The official code is imported at run time from a local checkout (``--reference-repo``); it imports
``flash_attn`` (attention kernels), ``timm`` (a decorator, ``DropPath`` and a loss class) and
``torchvision`` (training transforms) at module level. :func:`install` puts small modules in
``sys.modules`` for the ones that are not installed, before the official code is imported:

- ``flash_attn``: exact float32 attention through ``scaled_dot_product_attention`` (the dense and
  the variable-length packed-KV entry points the samplers call). The official code casts float32
  inputs to bfloat16 in front of flash-attn only because flash-attn has no float32 kernel;
  :func:`exact_attention_casts` removes those casts so the comparison is float32 throughout (the
  parity fixtures were made the same way).
- ``timm``: ``register_model`` (identity), ``DropPath`` (identity at eval; the benchmarks run eval),
  ``SoftTargetCrossEntropy`` (a placeholder; training only).
- ``torchvision``: empty modules (only the training data path and losses use them).
- ``tap`` (InfinityStar's ``Args`` base class): a plain class, so that ``Args()`` is an object whose
  attributes are the class defaults (the official inference scripts then set attributes on it).
- ``infinity.models.fused_op``: the released fused-norm functions without ``torch.compile`` (same
  math, eager; the fused path is the one the released models run and the one that applies the
  RoPE offset of the current scale during cached sampling).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


# -- flash_attn ------------------------------------------------------------------------------------
def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                    softmax_scale: float | None = None, causal: bool = False, **_: Any) -> torch.Tensor:
    """``(B, L, H, c)`` inputs and output, exact attention in float32 (output in ``v``'s dtype)."""
    if dropout_p:
        raise ValueError("the stand-in flash_attn_func supports dropout_p=0 only")
    out = F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                         v.transpose(1, 2).float(), scale=softmax_scale, is_causal=causal)
    return out.transpose(1, 2).to(v.dtype)


def flash_attn_qkvpacked_func(qkv: torch.Tensor, dropout_p: float = 0.0, softmax_scale: float | None = None,
                              causal: bool = False, **kw: Any) -> torch.Tensor:
    """``qkv`` ``(B, L, 3, H, c)`` (imported next to ``flash_attn_func`` by InfinityStar; unused there)."""
    q, k, v = qkv.unbind(2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, **kw)


def _pad_varlen(x: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``(N, ...)`` rows -> ``(B, max_len, ...)`` zero-padded and the validity mask ``(B, max_len)``."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    mask = torch.arange(max_len, device=x.device)[None, :] < lens[:, None].to(x.device)
    padded = x.new_zeros(lens.numel(), max_len, *x.shape[1:])
    padded[mask] = x
    return padded, mask


def flash_attn_varlen_kvpacked_func(q: torch.Tensor, kv: torch.Tensor, cu_seqlens_q: torch.Tensor,
                                    cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                                    dropout_p: float = 0.0, softmax_scale: float | None = None,
                                    causal: bool = False, **_: Any) -> torch.Tensor:
    """Packed ``q`` ``(Nq, H, c)``, ``kv`` ``(Nk, 2, H, c)``: every sequence attends to its own keys."""
    if dropout_p or causal:
        raise ValueError("the stand-in flash_attn_varlen_kvpacked_func supports dropout_p=0, causal=False only")
    qp, qmask = _pad_varlen(q.float(), cu_seqlens_q, int(max_seqlen_q))
    kvp, kmask = _pad_varlen(kv.float(), cu_seqlens_k, int(max_seqlen_k))
    k, v = kvp.unbind(2)
    out = F.scaled_dot_product_attention(qp.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=kmask[:, None, None, :], scale=softmax_scale)
    return out.transpose(1, 2)[qmask].to(kv.dtype)


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                           dropout_p: float = 0.0, softmax_scale: float | None = None, causal: bool = False,
                           **kw: Any) -> torch.Tensor:
    return flash_attn_varlen_kvpacked_func(q, torch.stack([k, v], dim=1), cu_seqlens_q, cu_seqlens_k,
                                           max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, **kw)


# -- timm ------------------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Identity at eval (the benchmarks never train)."""

    def __init__(self, drop_prob: float = 0.0, *_: Any, **__: Any) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_prob > 0:
            raise RuntimeError("the stand-in DropPath runs at eval only")
        return x


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, *_: Any) -> torch.Tensor:
    if training and drop_prob > 0:
        raise RuntimeError("the stand-in drop_path runs at eval only")
    return x


class SoftTargetCrossEntropy(nn.Module):
    """Placeholder (the official code imports it for training)."""


def register_model(fn: Any) -> Any:
    return fn


# -- tap -------------------------------------------------------------------------------------------
class Tap:
    """Stand-in base class: no argument parsing; attributes fall back to the subclass's defaults."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass


# -- fused_op --------------------------------------------------------------------------------------
def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def fused_ada_layer_norm(C: int, eps: float, x: torch.Tensor, scale: torch.Tensor,  # noqa: N803 (official names)
                         shift: torch.Tensor) -> torch.Tensor:
    x = F.layer_norm(x.float(), (C,), eps=eps)
    return x.mul(scale.add(1)).add_(shift)


def fused_ada_rms_norm(C: int, eps: float, x: torch.Tensor, scale: torch.Tensor,  # noqa: N803
                       shift: torch.Tensor) -> torch.Tensor:
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x.mul(scale.add(1)).add_(shift)


# -- installation ----------------------------------------------------------------------------------
def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__dict__["__vpg_stub__"] = True
    return module


def _missing(name: str) -> bool:
    if name in sys.modules:
        return False
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def install() -> list[str]:
    """Put the stand-ins in ``sys.modules`` (only for packages that are not installed); returns their names.

    ``flash_attn`` is always replaced (even when installed: its kernels need CUDA and bfloat16), and so
    is ``infinity.models.fused_op`` (its ``torch.compile`` would compile on the first call).
    """
    stubs: dict[str, types.ModuleType] = {}
    ops = _module("flash_attn.ops")
    stubs["flash_attn"] = _module("flash_attn", flash_attn_func=flash_attn_func,
                                  flash_attn_qkvpacked_func=flash_attn_qkvpacked_func,
                                  flash_attn_varlen_kvpacked_func=flash_attn_varlen_kvpacked_func,
                                  flash_attn_varlen_func=flash_attn_varlen_func, ops=ops)
    stubs["flash_attn.ops"] = ops  # no fused ops: the official code falls back to plain PyTorch
    stubs["infinity.models.fused_op"] = _module(
        "infinity.models.fused_op", fused_rms_norm=fused_rms_norm, fused_ada_layer_norm=fused_ada_layer_norm,
        fused_ada_rms_norm=fused_ada_rms_norm)
    if _missing("timm"):
        layers = _module("timm.models.layers", DropPath=DropPath, drop_path=drop_path)
        models = _module("timm.models", register_model=register_model, layers=layers)
        loss = _module("timm.loss", SoftTargetCrossEntropy=SoftTargetCrossEntropy)
        stubs.update({"timm": _module("timm", models=models, loss=loss), "timm.models": models,
                      "timm.models.layers": layers, "timm.loss": loss})
    if _missing("torchvision"):
        transforms, models = _module("torchvision.transforms"), _module("torchvision.models")
        stubs.update({"torchvision": _module("torchvision", transforms=transforms, models=models),
                      "torchvision.transforms": transforms, "torchvision.models": models})
    if _missing("tap"):
        stubs["tap"] = _module("tap", Tap=Tap)
    if _missing("cv2"):  # imported at the top of FastVAR's infinity.py, used only to write images
        stubs["cv2"] = _module("cv2")
    sys.modules.update(stubs)
    return sorted(stubs)


class _Float32Torch(types.ModuleType):
    """``torch`` as one official module sees it, with ``torch.bfloat16`` meaning float32."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return torch.float32 if name == "bfloat16" else getattr(torch, name)


def exact_attention_casts(module: types.ModuleType) -> None:
    """Remove the bfloat16 casts in front of flash-attn in an official module (``infinity.models.basic``).

    In the official ``basic.py`` files ``torch.bfloat16`` appears only in those casts (Infinity's
    cross-attention, InfinityStar's attention), so reading it as float32 leaves every other operation
    as written.
    """
    module.torch = _Float32Torch()


STUBBED_TOP_LEVEL = ("flash_attn", "timm", "torchvision", "tap", "cv2")
"""Top-level names :func:`install` may put in ``sys.modules`` (besides ``infinity.models.fused_op``)."""


def missing_packages(names: tuple[str, ...]) -> list[str]:
    """The names among ``names`` that cannot be imported (for a clear error before the official import)."""
    return [n for n in names if _missing(n)]


def import_infinity_checkout(repo: Any, what: str, required: tuple[str, ...], modules: tuple[str, ...],
                             needed: tuple[str, ...] = ("einops", "pytz")) -> dict[str, types.ModuleType]:
    """Import ``modules`` from the official checkout at ``repo`` (Infinity and InfinityStar both ship a
    top-level ``infinity`` package) with the stand-ins installed; ``required`` files prove the checkout."""

    repo = Path(repo).expanduser().resolve()
    if not all((repo / path).exists() for path in required):
        raise ValueError(f"`--reference-repo` {repo} is not a checkout of the official {what} code "
                         f"(expected {' and '.join(required)})")
    module = sys.modules.get("infinity")
    origin = str(next(iter(getattr(module, "__path__", [])), ""))
    if module is not None and not origin.startswith(str(repo)):
        raise RuntimeError(f"a different top-level module 'infinity' ({origin}) is already imported; "
                           "run the benchmark in a fresh process")
    missing = missing_packages(needed)
    if missing:
        raise RuntimeError(f"the official code needs {missing}: pip install {' '.join(missing)}")
    install()
    sys.path.insert(0, str(repo))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            imported = {name: importlib.import_module(name) for name in ("infinity.models.basic", *modules)}
    finally:
        sys.path.remove(str(repo))
    exact_attention_casts(imported["infinity.models.basic"])
    return imported
