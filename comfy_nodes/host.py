"""What the nodes use of the ComfyUI that hosts them, in one place: model folders, devices and model
management, the progress bar, Cancel, and the ``VIDEO`` type.

Inside ComfyUI these are ComfyUI's own (``folder_paths``, ``comfy.model_management``, ``comfy.utils``,
``comfy_api.latest.InputImpl``). Without ComfyUI (CI, plain Python) each has a small stand-in with the
same name and meaning: folders registered with :func:`add_model_folder_path`, the CPU, no model
management, a progress bar that calls the hook set with :func:`set_progress_bar_global_hook`, a Cancel
flag set with :func:`interrupt_current_processing`, and a plain video object.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from .api import COMFYUI

MODELS = "vpg"
"""The pack's model folder, ``ComfyUI/models/vpg``."""
TEXT_ENCODERS = "text_encoders"
"""ComfyUI's own folder for text encoders (the T5 folders)."""

if COMFYUI:
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils
    import folder_paths
    from comfy.model_management import InterruptProcessingException, interrupt_current_processing
    from comfy.model_management import throw_exception_if_processing_interrupted as check_interrupt
    from comfy.utils import ProgressBar, set_progress_bar_global_hook
    from comfy_api.latest import InputImpl, Types

    folder_paths.add_model_folder_path(MODELS, os.path.join(folder_paths.models_dir, MODELS))

    def folder_list(folder: str) -> list[Path]:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(folder)]
        except KeyError:  # a ComfyUI without that folder name
            return []

    def filenames(folder: str) -> list[str]:
        """The files ComfyUI lists under a model folder (relative, ``/``-separated)."""
        try:
            return [name.replace("\\", "/") for name in folder_paths.get_filename_list(folder)]
        except KeyError:
            return []

    def add_model_folder_path(folder: str, path: str | os.PathLike) -> None:
        folder_paths.add_model_folder_path(folder, str(path))

    def torch_device() -> torch.device:
        return comfy.model_management.get_torch_device()

    def intermediate_device() -> torch.device:
        return comfy.model_management.intermediate_device()

    def free_memory(wanted: int) -> None:
        """Let ComfyUI unload other models until ``wanted`` bytes are free on the compute device."""
        comfy.model_management.free_memory(wanted, torch_device())

    def device_free_bytes() -> int:
        return int(comfy.model_management.get_free_memory(torch_device()))

    def management_handle(modules: dict[str, torch.nn.Module]) -> Any:
        """A ``ModelPatcher`` over the modules, so ComfyUI loads, offloads and frees them like its own.

        They are wrapped in a fresh ``ModuleDict``: the patcher writes bookkeeping attributes such as
        ``device`` onto the module it manages, which diffusers models define as properties.
        """
        container = torch.nn.ModuleDict(modules)
        return comfy.model_patcher.ModelPatcher(
            container, load_device=torch_device(), offload_device=comfy.model_management.unet_offload_device(),
            size=comfy.model_management.module_size(container))

    def load_models(handle: Any, memory_required: int = 0) -> None:
        """Place the weights with ComfyUI's model management (``force_full_load``: our layers are plain
        torch layers, not ComfyUI's cast-on-the-fly ops, so partial lowvram loading cannot apply)."""
        comfy.model_management.load_models_gpu([handle], memory_required=memory_required, force_full_load=True)

    def loaded_bytes(handle: Any) -> int:
        return int(handle.loaded_size())

    def video(frames: torch.Tensor, fps: int) -> Any:
        """A ``VIDEO`` built as ComfyUI's Create Video node builds one."""
        return InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=None,
                                                                   frame_rate=Fraction(fps)))

else:
    _FOLDERS: dict[str, list[Path]] = {}
    _HOOK: list[Callable[..., None] | None] = [None]
    _INTERRUPTED = [False]

    class InterruptProcessingException(Exception):  # noqa: N818 (ComfyUI's name)
        """Raised by :func:`check_interrupt` after Cancel, as ComfyUI's exception of the same name."""

    def interrupt_current_processing(value: bool = True) -> None:
        _INTERRUPTED[0] = value

    def check_interrupt() -> None:
        if _INTERRUPTED[0]:
            _INTERRUPTED[0] = False
            raise InterruptProcessingException()

    def set_progress_bar_global_hook(hook: Callable[..., None] | None) -> None:
        _HOOK[0] = hook

    class ProgressBar:
        """ComfyUI's progress bar: ``hook`` is the global hook (``None`` when nobody watches)."""

        def __init__(self, total: int) -> None:
            self.total, self.current, self.hook = total, 0, _HOOK[0]

        def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
            self.total = total if total is not None else self.total
            self.current = min(value, self.total)
            if self.hook is not None:
                self.hook(self.current, self.total, preview, node_id=None)

    def folder_list(folder: str) -> list[Path]:
        return list(_FOLDERS.get(folder, []))

    def filenames(folder: str) -> list[str]:
        """Every file under the folder's registered paths (relative, ``/``-separated), as ComfyUI lists them."""
        names = set()
        for base in folder_list(folder):
            names |= {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
        return sorted(names)

    def add_model_folder_path(folder: str, path: str | os.PathLike) -> None:
        _FOLDERS.setdefault(folder, []).append(Path(path))

    def torch_device() -> torch.device:
        return torch.device("cpu")

    def intermediate_device() -> torch.device:
        return torch.device("cpu")

    def free_memory(wanted: int) -> None:
        return None

    def device_free_bytes() -> int:
        return 0

    def management_handle(modules: dict[str, torch.nn.Module]) -> Any:
        return None

    def load_models(handle: Any, memory_required: int = 0) -> None:
        return None

    def loaded_bytes(handle: Any) -> int:
        return 0

    @dataclass
    class _VideoComponents:
        images: torch.Tensor
        frame_rate: Fraction

    @dataclass
    class _Video:
        """The frames and their rate (ComfyUI's ``VideoFromComponents`` writes files; this only holds them)."""

        components: _VideoComponents

        def get_components(self) -> _VideoComponents:
            return self.components

    def video(frames: torch.Tensor, fps: int) -> Any:
        return _Video(_VideoComponents(frames, Fraction(fps)))


def find(name: str, folders: tuple[str, ...]) -> Path:
    """A listed file *or folder* (shard folders, T5 folders) under the named model folders."""
    for folder in folders:
        for base in folder_list(folder):
            if (base / name).exists():
                return base / name
    raise FileNotFoundError(f"{name!r} is in none of the folders {list(folders)}")


def on_accelerator() -> bool:
    """Whether ComfyUI computes on an accelerator (CUDA / ROCm, XPU, MPS, ...), where runs are planned."""
    return torch_device().type != "cpu"


def free_bytes() -> int | None:
    """ComfyUI's figure of the compute device's free memory (``None`` on the CPU: nothing is planned there)."""
    return device_free_bytes() if on_accelerator() else None
