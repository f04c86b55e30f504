"""The bundled tiny model: it ships inside the package and the main job runs offline (CI smoke test)."""

from __future__ import annotations

import PIL.Image
import torch

from vpg_pipelines import load_demo_pipeline
from vpg_pipelines.cli import main


def test_bundled_model_loads_and_names_work_as_prompts():
    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.num_classes == len(pipe.config.id2label) == 30
    out = pipe("face-happy", guidance_scale=3.0, vpg_scale=1.5, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    assert out.shape == (1, 3, 32, 32) and 0 <= out.min() and out.max() <= 1


def test_vpg_demo_writes_the_labelled_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["demo", "--out", str(out), "--seeds", "1"]) == 0
    grid = PIL.Image.open(out)
    assert grid.width > 2 * 64 and grid.height > 30 * 64  # one row per class


def test_vpg_demo_classes_and_strips(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["demo", "--out", str(out), "--seeds", "3", "--classes", "face-happy,plant"]) == 0
    grid = PIL.Image.open(out)
    assert 2 * 64 < grid.height < 3 * 64 + 80 and grid.width > 6 * 64  # two rows, 3 + 3 images each
    assert main(["demo", "--out", str(tmp_path / "bad.png"), "--classes", "no-such-class"]) == 2
    assert not (tmp_path / "bad.png").exists()
