"""The node pack's tests: the shared fixtures, and ComfyUI itself when ``COMFYUI_PATH`` names a checkout.

With ``COMFYUI_PATH`` set, the checkout is put on ``sys.path`` before any test module imports the pack,
so the node classes are built on ComfyUI's real schema API (``comfy_nodes.api.COMFYUI``) and the same
tests run against it; ``test_comfy_nodes.py`` adds the checks that need ComfyUI. It goes at the end of
``sys.path``: ComfyUI's own ``tests`` package must not shadow ours. Without it the pack's stand-in is used.
"""

from __future__ import annotations

import os
import sys

from tests.helpers.comfy_env import start_comfyui

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
COMFYUI_ERROR = start_comfyui(COMFYUI_PATH) if COMFYUI_PATH else None

from tests.helpers.comfy import progress_hook  # noqa: E402,F401 (fixture; imports the pack after ComfyUI)

if COMFYUI_ERROR:
    print(f"COMFYUI_PATH={COMFYUI_PATH}: ComfyUI does not import here ({COMFYUI_ERROR})", file=sys.stderr)
