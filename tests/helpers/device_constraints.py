"""The device-constraint test mode: run code on the CPU as if it ran on a device that lacks float64 and float8
(Apple's ``mps``, Intel's ``xpu``), and fail on the first tensor op that would not run there.

``with device_constraints("mps"):`` makes :func:`vpg_pipelines.devices.constraints` answer for ``mps`` when
asked about the CPU (so the code takes the paths a Mac takes, e.g. APG's projection on the host) and installs a
``TorchDispatchMode`` that sees every aten op: an op with a float64 / complex128 or float8 tensor among its
inputs or outputs (or such a ``dtype=`` argument) raises :class:`DeviceConstraintError` naming the op, the
dtype and the innermost package frame, unless it runs inside :func:`vpg_pipelines.devices.host_compute` (the
explicit host helper). Python numbers are not tensors here: ``x * 0.5`` on a float32 tensor is a float32 op.
Tensors on the ``meta`` device (the memory planner's shape-only runs) compute nothing and are not checked.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vpg_pipelines import devices

FLOAT64 = (torch.float64, torch.complex128)
FLOAT8 = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
               if hasattr(torch, name))


class DeviceConstraintError(AssertionError):
    """A tensor op the simulated device cannot run."""


def lacking_dtypes(entry: devices.DeviceConstraints) -> frozenset[torch.dtype]:
    """The dtypes a platform's constraints rule out."""
    lacking: set[torch.dtype] = set()
    if not entry.float64:
        lacking.update(FLOAT64)
    if not entry.fp8:
        lacking.update(FLOAT8)
    if not entry.bf16:
        lacking.add(torch.bfloat16)
    return frozenset(lacking)


def _package_frame() -> str:
    frames = [f for f in traceback.extract_stack() if "vpg_pipelines" in f.filename or "comfy_nodes" in f.filename]
    frames = [f for f in frames if not f.filename.endswith("devices.py")]
    if not frames:
        return "outside the package"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} ({frame.line})"


class DeviceConstraintMode(TorchDispatchMode):
    """Raises on an op with a dtype in ``lacking`` outside :func:`~vpg_pipelines.devices.host_compute`.

    Attributes:
        ops: aten ops seen (so a test can check that the mode saw the run at all).
        host_ops: ops with a lacking dtype that ran inside ``host_compute`` (allowed).
    """

    def __init__(self, platform: str, lacking: frozenset[torch.dtype]) -> None:
        super().__init__()
        self.platform = platform
        self.lacking = lacking
        self.ops = 0
        self.host_ops = 0

    def _offending(self, args, kwargs, out) -> torch.dtype | None:
        if kwargs.get("dtype") in self.lacking:
            return kwargs["dtype"]
        for leaf in tree_leaves((args, kwargs, out)):
            if isinstance(leaf, torch.Tensor) and leaf.dtype in self.lacking and leaf.device.type != "meta":
                return leaf.dtype
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        offending = self._offending(args, kwargs, None)
        out = func(*args, **kwargs)
        offending = offending or self._offending((), {}, out)
        if offending is not None:
            if not devices.in_host_compute():
                raise DeviceConstraintError(
                    f"{func} on {offending} would run on the {self.platform} device, which has no {offending}; "
                    f"at {_package_frame()}. Compute it on the host (vpg_pipelines.devices.compute_in_float64 / "
                    "host_compute) or in a dtype the device has.")
            self.host_ops += 1
        return out


@contextlib.contextmanager
def device_constraints(platform: str = "mps") -> Iterator[DeviceConstraintMode]:
    """Inside: the CPU takes ``platform``'s code paths and any op in a dtype it lacks fails (module docstring)."""
    with devices.simulate_constraints(platform) as entry:
        mode = DeviceConstraintMode(platform, lacking_dtypes(entry))
        with mode:
            yield mode
