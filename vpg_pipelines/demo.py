"""``vpg demo``: the bundled tiny model (a class-conditional VAR trained here on rendered emoji) draws a labelled
grid without | with VPG, offline. The model itself loads with :func:`~vpg_pipelines.loading.auto.load_demo_pipeline`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .loading.auto import load_demo_pipeline
from .visual import comparison_grid

DEMO_SETTINGS = {"guidance_scale": 3.0, "top_k": 0, "top_p": 0.95, "vpg_scale": 1.5}
"""Sampling settings of the demo (nucleus sampling and the best-scoring CFG in train_tiny.py's evaluation)."""


def run_demo(
    out: str | Path,
    num_seeds: int = 4,
    vpg_scale: float | None = None,
    classes: list[str] | None = None,
    device: str = "cpu",
) -> Path:
    """Write a labelled grid: one row per class (all 30, or the ``classes`` named), ``num_seeds``
    seeds without VPG | the same seeds with VPG."""
    pipe = load_demo_pipeline(device)
    pipe.set_progress_bar_config(desc="demo")
    settings = dict(DEMO_SETTINGS)
    if vpg_scale is not None:
        settings["vpg_scale"] = vpg_scale
    w = settings.pop("vpg_scale")
    ids = pipe.get_label_ids(classes) if classes else sorted(int(k) for k in pipe.config.id2label)
    names = [pipe.config.id2label[str(c)].split(",")[0] for c in ids]
    labels = [c for c in ids for _ in range(num_seeds)]

    def sample(scale: float) -> list[list]:
        generators = [torch.Generator().manual_seed(s) for _ in ids for s in range(num_seeds)]
        images = pipe(class_labels=labels, vpg_scale=scale, generator=generators, **settings).images
        return [images[i * num_seeds:(i + 1) * num_seeds] for i in range(len(ids))]

    grid = comparison_grid([sample(1.0), sample(w)], ["without VPG", f"with VPG (w={w:g})"], names, cell=64)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
