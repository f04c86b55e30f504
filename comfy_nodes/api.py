"""ComfyUI's schema API (``comfy_api.latest``) when ComfyUI is importable, else the pack's stand-in.

The node modules import ``io`` from here, so each node is one class in both cases: inside ComfyUI it is
a real ``io.ComfyNode``; in CI (no ComfyUI) the same class is built on :mod:`comfy_nodes.standin_io`,
which records its schema as data. ``COMFYUI`` says which one was found.
"""

from __future__ import annotations

try:
    from comfy_api.latest import ComfyExtension, io

    COMFYUI = True
except ImportError:  # CI and plain Python: the stand-in reports the same schemas
    from . import standin_io as io
    from .standin_io import ComfyExtension

    COMFYUI = False

__all__ = ["COMFYUI", "ComfyExtension", "io"]
