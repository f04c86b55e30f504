"""ComfyUI entry point: ComfyUI imports this folder as a package when the repository is cloned into
``ComfyUI/custom_nodes/``. The pip package is ``vpg_pipelines``; this file is not part of it.

Importing it anywhere else (pytest collects the repository root as a package) does nothing: the
nodes are only loaded when it is imported as a package and ComfyUI is importable.
"""

import importlib.util
import os
import sys

if __package__ and importlib.util.find_spec("comfy_api") is not None:
    try:
        import vpg_pipelines  # noqa: F401  (pip-installed)
    except ImportError:  # a plain clone: use the package next to this file
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    from .comfy_nodes.extension import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
