"""The compute device: which one to use, what each kind of device can do (one table of data), how much memory
is free on it, and the one explicit way to compute on the host.

* :func:`pick_device` — ``--device`` / ``device=`` or the first available of CUDA (NVIDIA, and AMD through
  ROCm, which answers to ``torch.cuda``), Intel ``xpu``, Apple ``mps``, then the CPU.
* :data:`CONSTRAINTS` — per platform: float64, bf16, fp8 storage, the weight savers (int8, nf4), CUDA-style
  streams for group offload, the SDPA kernels. :func:`constraints` answers for a device; the savers, the
  default dtypes and the float64 reductions consult it.
* :func:`device_memory` — free and total bytes the memory planner plans against: ``torch.accelerator``'s
  figures (plus the blocks this process's allocator holds unused) on CUDA / ROCm / XPU, Metal's recommended
  working-set size on ``mps``, nothing on the CPU.
* :func:`compute_in_float64` — a float64 reduction (APG's projection, SSG's DCT prior) on the tensors' device
  where it has float64, otherwise moved to the CPU inside :func:`host_compute`, the marker that lets the
  device-constraint test mode (``tests/helpers/device_constraints.py``) tell host compute from device compute.

What is verified and what is reasoned: ``docs/usage.md``, "Devices".
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_map

PREFERENCE = ("cuda", "xpu", "mps", "cpu")
"""Device types in the order :func:`pick_device` tries them (ROCm builds answer to ``cuda``)."""
WANTED = {"cuda": "CUDA (NVIDIA) or ROCm (AMD)", "xpu": "XPU (Intel)", "mps": "MPS (Apple Silicon)", "cpu": "CPU"}
"""How :func:`pick_device` names a missing device type."""
SAVERS = ("int8", "nf4", "fp8")
"""Weight formats (``memory.quantization``) a device may lack; ``none`` runs everywhere."""


@dataclass(frozen=True)
class DeviceConstraints:
    """What one platform can do.

    Attributes:
        name: how messages name it.
        float64: float64 tensors exist on it (else float64 reductions run on the host).
        bf16: bfloat16 compute (``mps``: macOS 14 or newer, see ``bf16_min_macos``).
        fp8: float8_e4m3fn storage (``quantization="fp8"``, diffusers' layerwise casting).
        int8: TorchAO int8 weight-only (plain PyTorch ops on the dequantized weight: any device).
        nf4: bitsandbytes NF4 (``quantization="nf4"``) through diffusers.
        streams: a device module with ``Stream`` (group offload prefetches on a side stream).
        sdpa_kernels: the ``scaled_dot_product_attention`` back ends PyTorch has there.
        verified: run on such a device by this project (else the entry is reasoned from the PyTorch,
            diffusers and bitsandbytes documentation; ``docs/usage.md``).
        bf16_min_macos: ``mps`` only: the macOS version bf16 needs.
    """

    name: str
    float64: bool
    bf16: bool
    fp8: bool
    int8: bool
    nf4: bool
    streams: bool
    sdpa_kernels: tuple[str, ...]
    verified: bool
    bf16_min_macos: tuple[int, int] | None = None

    def has_saver(self, saver: str) -> bool:
        """Whether the weight format ``saver`` (``none``, ``int8``, ``nf4``, ``fp8``) runs here."""
        return saver == "none" or bool(getattr(self, saver, False))


CONSTRAINTS: dict[str, DeviceConstraints] = {
    "cuda": DeviceConstraints("CUDA (NVIDIA)", float64=True, bf16=True, fp8=True, int8=True, nf4=True, streams=True,
                              sdpa_kernels=("flash", "efficient", "cudnn", "math"), verified=False),
    "rocm": DeviceConstraints("ROCm (AMD)", float64=True, bf16=True, fp8=True, int8=True, nf4=True, streams=True,
                              sdpa_kernels=("flash", "efficient", "math"), verified=False),
    "xpu": DeviceConstraints("XPU (Intel)", float64=False, bf16=True, fp8=False, int8=True, nf4=True, streams=True,
                             sdpa_kernels=("overrideable", "math"), verified=False),
    "mps": DeviceConstraints("MPS (Apple Silicon)", float64=False, bf16=True, fp8=False, int8=True, nf4=False,
                             streams=False, sdpa_kernels=("mps", "math"), verified=False, bf16_min_macos=(14, 0)),
    "cpu": DeviceConstraints("CPU", float64=True, bf16=True, fp8=True, int8=True, nf4=False, streams=False,
                             sdpa_kernels=("flash", "math"), verified=True),
    "meta": DeviceConstraints("meta (shapes only)", float64=True, bf16=True, fp8=True, int8=True, nf4=True,
                              streams=False, sdpa_kernels=("math",), verified=True),
}
"""Per platform (a ``torch.device`` type, or ``rocm`` for a CUDA device of a HIP build). Reasons per entry:
``docs/usage.md``, "Devices". Conservative where unsure (Intel's consumer GPUs have no float64; float8 and
bitsandbytes on ``mps`` are absent from the releases this package is tested with)."""

OTHER = DeviceConstraints("this device", float64=False, bf16=False, fp8=False, int8=True, nf4=False, streams=False,
                          sdpa_kernels=("math",), verified=False)
"""An unknown device type: only what plain PyTorch ops need."""

_SIMULATED: contextvars.ContextVar[str | None] = contextvars.ContextVar("vpg_simulated_platform", default=None)
_ON_HOST: contextvars.ContextVar[int] = contextvars.ContextVar("vpg_host_compute", default=0)


# -- which device -------------------------------------------------------------------------------------------
def is_available(device_type: str) -> bool:
    """Whether this PyTorch build and machine have a ``device_type`` device."""
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return torch.cuda.is_available()
    if device_type == "xpu":
        return hasattr(torch, "xpu") and torch.xpu.is_available()
    if device_type == "mps":
        return torch.backends.mps.is_available()
    return False


def _device_count(device_type: str) -> int:
    if device_type in ("cpu", "mps"):
        return 1
    return int(getattr(torch, device_type).device_count())


def pick_device(name: str | torch.device | None = None, argument: str = "device") -> torch.device:
    """``name`` (checked: the device must exist here), or the first available of :data:`PREFERENCE`.

    Raises:
        ValueError: naming ``argument`` when ``name`` is no device or that device is not available.
    """
    if name is None:
        return torch.device(next(t for t in PREFERENCE if is_available(t)))
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{argument} {name!r} is not a device: use cpu, cuda, cuda:1, xpu or mps") from None
    if device.type not in PREFERENCE:
        raise ValueError(f"{argument} {name!r}: this package runs on {', '.join(PREFERENCE)}")
    if not is_available(device.type):
        raise ValueError(f"{argument} {name!r} was given but this machine has no {WANTED[device.type]} device; "
                         f"available here: {', '.join(t for t in PREFERENCE if is_available(t))}")
    if device.index is not None and device.index >= _device_count(device.type):
        raise ValueError(f"{argument} {name!r}: there are {_device_count(device.type)} {device.type} device(s), "
                         f"numbered from 0")
    return device


# -- what it can do -----------------------------------------------------------------------------------------
def platform(device: str | torch.device) -> str:
    """The :data:`CONSTRAINTS` key of ``device``: its type, ``rocm`` for CUDA on a HIP build."""
    device = torch.device(device)
    if device.type == "cuda" and getattr(torch.version, "hip", None):
        return "rocm"
    return device.type


def _macos_at_least(version: tuple[int, int]) -> bool:
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    return bool(check(*version)) if check is not None else False


def constraints(device: str | torch.device) -> DeviceConstraints:
    """The :data:`CONSTRAINTS` entry of ``device`` (the CPU answers for the platform
    :func:`simulate_constraints` names, inside that block)."""
    device = torch.device(device)
    simulated = _SIMULATED.get()
    if simulated is not None and device.type == "cpu":
        return CONSTRAINTS[simulated]
    entry = CONSTRAINTS.get(platform(device), OTHER)
    if entry.bf16_min_macos is not None and is_available("mps") and not _macos_at_least(entry.bf16_min_macos):
        entry = dataclasses.replace(entry, bf16=False)
    return entry


def describe(device: str | torch.device) -> str:
    """``device`` for messages, e.g. ``'mps' (MPS (Apple Silicon))``."""
    return f"{str(torch.device(device))!r} ({constraints(device).name})"


@contextlib.contextmanager
def simulate_constraints(name: str) -> Iterator[DeviceConstraints]:
    """Inside this block the CPU answers with the constraints of platform ``name`` (``"mps"``, ``"xpu"``, ...),
    so that a CPU runs the code paths such a device takes (what CI checks; ``tests/helpers/device_constraints``)."""
    if name not in CONSTRAINTS:
        raise ValueError(f"`name` must be one of {tuple(CONSTRAINTS)}, got {name!r}")
    token = _SIMULATED.set(name)
    try:
        yield CONSTRAINTS[name]
    finally:
        _SIMULATED.reset(token)


def savers(device: str | torch.device) -> tuple[str, ...]:
    """The weight formats usable on ``device``: ``none`` and those of :data:`SAVERS` it has."""
    entry = constraints(device)
    return ("none", *(s for s in SAVERS if entry.has_saver(s)))


def check_saver(saver: str | None, device: str | torch.device, argument: str = "`quantization`") -> None:
    """Refuse a weight format ``device`` lacks, naming the device and what it has instead."""
    if saver in (None, "none") or constraints(device).has_saver(saver):
        return
    others = [s for s in savers(device) if s != "none"]
    raise ValueError(f"{argument} {saver!r} is not available on {describe(device)}; use "
                     + (" or ".join(repr(s) for s in others) + " there, or 'none'" if others else "'none'"))


def default_dtype(preferred: torch.dtype, device: str | torch.device) -> torch.dtype | None:
    """The compute dtype a model runs in on ``device`` when none is asked for: ``None`` (float32) on the CPU,
    ``preferred`` (the registry's ``gpu_dtype``) on an accelerator that has it, float32 on one that lacks it
    (bf16 on macOS before 14)."""
    if torch.device(device).type == "cpu":
        return None
    if preferred == torch.bfloat16 and not constraints(device).bf16:
        return torch.float32
    return preferred


def stream_capable(device: str | torch.device) -> bool:
    """Whether group offload may prefetch on a side stream there (CUDA, ROCm, XPU)."""
    return constraints(device).streams


# -- memory ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceMemory:
    """Bytes on a device: ``free`` for this process to plan against, ``total`` of the device (``mps``: the
    recommended working-set size of the unified memory)."""

    free: int
    total: int


def _index(device: torch.device, module: Any) -> int:
    return device.index if device.index is not None else int(module.current_device())


def _accelerator_memory(device: torch.device) -> DeviceMemory:
    """CUDA / ROCm / XPU: ``torch.accelerator.get_memory_info`` (older PyTorch: the device module's
    ``mem_get_info``) plus what this process's caching allocator reserved but does not use (it reuses that
    before asking the driver, and the driver counts it as taken)."""
    module = getattr(torch, device.type)
    index = _index(device, module)
    accelerator = getattr(torch, "accelerator", None)
    current = accelerator.current_accelerator() if accelerator is not None else None
    if hasattr(accelerator, "get_memory_info") and current is not None and current.type == device.type:
        free, total = accelerator.get_memory_info(index)
        cached = accelerator.memory_reserved(index) - accelerator.memory_allocated(index)
    else:
        free, total = module.mem_get_info(index)
        cached = module.memory_reserved(index) - module.memory_allocated(index)
    return DeviceMemory(int(free) + max(int(cached), 0), int(total))


def _mps_memory() -> DeviceMemory:
    """Metal's recommended working-set size (what the GPU may keep resident of the unified memory) less what
    this process's tensors hold; the cache the MPS allocator keeps is reused first, so it counts as free."""
    total = int(torch.mps.recommended_max_memory())
    return DeviceMemory(max(total - int(torch.mps.current_allocated_memory()), 0), total)


def device_memory(device: str | torch.device) -> DeviceMemory | None:
    """Free and total bytes of ``device`` for the memory planner; ``None`` on the CPU (and devices without a
    figure), where nothing is planned."""
    device = torch.device(device)
    if device.type in ("cuda", "xpu"):
        return _accelerator_memory(device)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return _mps_memory()
    return None


# -- the host -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def host_compute() -> Iterator[None]:
    """Marks a block that computes on the CPU on purpose (a float64 reduction a device lacks, host-side
    metrics): the device-constraint test mode allows float64 inside it and nowhere else."""
    token = _ON_HOST.set(_ON_HOST.get() + 1)
    try:
        yield
    finally:
        _ON_HOST.reset(token)


def in_host_compute() -> bool:
    """Whether the caller runs inside :func:`host_compute`."""
    return _ON_HOST.get() > 0


def compute_in_float64(fn: Callable[..., Any], *tensors: torch.Tensor) -> Any:
    """``fn`` on float64 copies of ``tensors``: on their device where it has float64 (as the official samplers
    compute), otherwise on the CPU inside :func:`host_compute` (the same float64 arithmetic, plus two copies).
    Every tensor ``fn`` returns comes back on the first tensor's device in its dtype."""
    device, dtype = tensors[0].device, tensors[0].dtype
    if constraints(device).float64:
        return tree_map(lambda r: r.to(dtype) if isinstance(r, torch.Tensor) else r,
                        fn(*(t.double() for t in tensors)))
    with host_compute():  # move first, then widen: the device never holds a float64 tensor
        results = fn(*(t.to("cpu").double() for t in tensors))
        results = tree_map(lambda r: r.to(dtype) if isinstance(r, torch.Tensor) else r, results)
    return tree_map(lambda r: r.to(device) if isinstance(r, torch.Tensor) else r, results)
