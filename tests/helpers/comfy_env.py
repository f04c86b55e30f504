"""Make a ComfyUI checkout importable in the test process (CPU only), before the pack is imported."""

from __future__ import annotations

import sys


def start_comfyui(path: str) -> str | None:
    """Append the checkout to ``sys.path`` and import what the pack needs; the error text when it cannot."""
    if path not in sys.path:
        sys.path.append(path)
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before model_management initialises a device
        import comfy.model_management  # noqa: F401
        import folder_paths  # noqa: F401

        # ComfyUI's `nodes` puts ComfyUI/comfy first on sys.path, where comfy/utils.py would then shadow the
        # top-level `utils` package that `server` needs; main.py avoids this by importing it early.
        import utils.install_util  # noqa: F401
        from comfy_api.latest import io  # noqa: F401
    except ImportError as err:
        return str(err)
    return None
