"""The ComfyUI node pack (see docs/comfyui.md). Nothing is imported here: ComfyUI loads the nodes through
the repository's root ``__init__.py`` (``comfy_nodes.extension``), and importing a single module (in tests,
without ComfyUI) should not load them all."""
