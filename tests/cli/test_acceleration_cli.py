"""``--acceleration`` of ``vpg generate`` / ``vpg memory``: the preset names and config mappings of the pipelines'
``acceleration=`` keyword, and refusals that name the flag and the presets the model kind takes."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from tests.helpers.cli import infinity_folder, star_folder  # noqa: F401 (fixtures: converted pipeline folders)
from vpg_pipelines import VPGInfinityPipeline
from vpg_pipelines.acceleration import FastVAR
from vpg_pipelines.cli import main

BIG = ["--height", "1024", "--width", "1024"]  # the 13-scale template, where the accelerators act


def test_generate_with_a_config_equals_the_pipeline_with_that_accelerator(infinity_folder, tmp_path):  # noqa: F811
    out = tmp_path / "fast.png"
    config = '{"method": "fastvar", "blocks": [0, 2]}'  # the tiny model's 2 blocks prune
    assert main(["generate", "--model", str(infinity_folder), "--prompt", "a red cat", *BIG, "--seed", "3",
                 "--acceleration", config, "--device", "cpu", "--out", str(out)]) == 0
    pipe = VPGInfinityPipeline.from_pretrained(infinity_folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red cat", height=1024, width=1024, acceleration=FastVAR(blocks=(0, 2)),
                    generator=[torch.Generator().manual_seed(3)]).images[0]
    image = PIL.Image.open(out)
    assert image.size == (1024, 1024)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))  # the same computation
    # the same setting from a JSON file
    file = tmp_path / "fastvar.json"
    file.write_text(config, encoding="utf-8")
    again = tmp_path / "again.png"
    assert main(["generate", "--model", str(infinity_folder), "--prompt", "a red cat", *BIG, "--seed", "3",
                 "--acceleration", str(file), "--device", "cpu", "--out", str(again)]) == 0
    assert PIL.Image.open(again).tobytes() == image.tobytes()


def test_memory_plans_a_preset_on_the_released_model(tmp_path):
    plans = {}
    for name in ("none", "scalekv"):
        out = tmp_path / f"{name}.json"
        assert main(["memory", "--model", "infinity-2b", "--text-tokens", "16", "--acceleration", name,
                     "--json", str(out)]) == 0
        plans[name] = json.loads(out.read_text(encoding="utf-8"))
    assert plans["scalekv"]["settings"]["acceleration"] == "scalekv"
    assert plans["none"]["settings"]["acceleration"] == "none"
    # the released 10 % budget: at most a fifth of the full cache at its peak (ScaleKV reports 10x smaller)
    assert plans["scalekv"]["kv_peak"] < plans["none"]["kv_peak"] / 5


@pytest.mark.parametrize(("model", "value", "named"), [
    ("demo", "fastvar", "no accelerator applies to var models"),
    ("star", "scalekv", "--acceleration scalekv applies to infinity models, not infinity_star; use one of ['none', "
                        "'fastervar', 'fastervar-cfg0']"),
    ("infinity", "fast", "'fast'"),
    ("infinity", '{"method": "fastvar", "ratio": 2}', "takes the settings ['prune_ratios', 'skip_scales'"),
    ("infinity", "scalekv", "--acceleration 'scalekv' has budget tables for Infinity-2B (32 blocks)"),
    ("infinity", "fastvar", "--acceleration 'fastvar' does nothing on this schedule"),
])
def test_refusals_name_the_flag_and_write_nothing(model, value, named, infinity_folder, star_folder,  # noqa: F811
                                                  tmp_path, capsys):
    source = {"demo": "demo", "star": str(star_folder), "infinity": str(infinity_folder)}[model]
    out = tmp_path / "x.png"
    assert main(["generate", "--model", source, "--prompt", "a", "--acceleration", value, "--device", "cpu",
                 "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--acceleration" in err and named in err, err
    if model != "infinity" or value.startswith("{") or value == "fast":  # refused before loading, naming the choice
        allowed = "['none', 'fastvar', 'scalekv', 'scalekv-2b', 'scalekv-8b', 'fastervar', 'fastervar-cfg0']"
        assert "leave it out" in err or "use one of" in err or allowed in err
    assert not out.exists()


def test_bad_json_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--model", "demo", "--prompt", "a", "--acceleration", "{'method': 1}"])
    assert "--acceleration" in capsys.readouterr().err
