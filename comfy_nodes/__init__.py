"""The ComfyUI node pack. The plain modules (``registry``, ``core``, ``guidance_map``, ``specs``,
``workflow``) import without ComfyUI; only ``nodes`` needs it, so it is not imported here."""
