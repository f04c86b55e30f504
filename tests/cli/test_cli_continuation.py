"""``vpg generate --video`` (InfinityStar 480p continuation), ``--variant``, and ``vpg memory`` of the 480p model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers.shared import REPO, shared_path
from vpg_pipelines import VPGInfinityStarPipeline
from vpg_pipelines.cli import main

VIDEO = REPO / "tests" / "fixtures" / "infinity_star_480p" / "input_video.mp4"


def test_generate_continues_a_video_to_10_seconds(star480_folder, tmp_path):
    imageio = pytest.importorskip("imageio.v2", reason="the `video` extra (imageio, imageio-ffmpeg) is not installed")
    out = tmp_path / "continued.mp4"
    assert main(["generate", "--model", str(star480_folder), "--prompt", "a red cat", "--video", str(VIDEO),
                 "--seed", "3", "--device", "cpu", "--out", str(out)]) == 0
    reader = imageio.get_reader(out, format="FFMPEG")
    assert reader.get_meta_data()["fps"] == 16
    frames = np.stack([frame for frame in reader])
    reader.close()
    assert frames.shape == (161, 192, 336, 3)
    pipe = VPGInfinityStarPipeline.from_pretrained(star480_folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.variant == "480p"
    expected = pipe("a red cat", video=str(VIDEO), generator=[torch.Generator().manual_seed(3)],
                    output_type="np").frames[0]
    # H.264 at imageio's default quality: compare the mean error, not values
    assert np.abs(frames.astype(np.float32) / 255 - expected).mean() < 0.05


def test_generate_continuation_flags_are_checked(star480_folder, star_folder, tmp_path, capsys):
    base = ["generate", "--prompt", "a cat", "--device", "cpu"]
    cases = [
        (["--model", str(star480_folder), "--video", str(VIDEO), "--out", str(tmp_path / "a.png")], "--video"),
        (["--model", str(star480_folder), "--video", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "a.mp4")],
         "--video"),
        (["--model", str(star480_folder), "--video", str(VIDEO), "--num-frames", "81",
          "--out", str(tmp_path / "a.mp4")], "`num_frames` must be 161 (10 s) with `video`"),
        (["--model", str(star_folder), "--video", str(VIDEO), "--out", str(tmp_path / "a.mp4")],
         "`video` (continuation) makes 10 s videos"),
        (["--model", "demo", "--video", str(VIDEO), "--out", str(tmp_path / "a.png")], "--video and --variant"),
        (["--model", str(star480_folder), "--variant", "480p", "--out", str(tmp_path / "a.mp4")], "--variant"),
    ]
    for flags, named in cases:
        assert main(base + flags) == 2, flags
        lines = capsys.readouterr().err.strip().splitlines()  # loading progress bars may come first
        assert lines[-1].startswith("vpg generate: error: ") and named in lines[-1], (flags, lines)
        assert sum("error:" in line for line in lines) == 1, (flags, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_convert_takes_the_variant(tmp_path):
    root = REPO / "tests" / "fixtures" / "infinity_star_480p"
    config = json.loads((root / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({k: config[k] for k in ("args", "model", "text_maxlen")}))
    out = tmp_path / "as_720p"
    assert main(["convert", "--infinity-star", str(root / "infinity_star_480p.safetensors"),
                 "--vae", str(shared_path("parity", "infinity_star", "videovae.safetensors")),
                 "--config", str(tmp_path / "config.json"), "--variant", "720p", "--out", str(out)]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["variant"] == "720p" and index["official_args"]["durations"] is None


@pytest.mark.parametrize("frames", [81, 161])
def test_memory_plans_the_480p_model(frames, capsys, tmp_path):
    plan = tmp_path / "plan.json"
    assert main(["memory", "--model", "infinity-star-8b-480p", "--num-frames", str(frames), "--text-tokens", "16",
                 "--json", str(plan)]) == 0
    assert "size 480x848" in capsys.readouterr().out
    settings = json.loads(plan.read_text())["settings"]
    assert settings["num_frames"] == frames and settings["size"] == "480x848"


def test_memory_knows_the_three_variants_and_refuses_other_lengths(capsys):
    for name, size in (("infinity-star-8b-720p", "720x1280"), ("infinity-star-8b-interact", "480x848")):
        assert main(["memory", "--model", name, "--text-tokens", "16"]) == 0
        assert f"size {size}" in capsys.readouterr().out, name
    assert main(["memory", "--model", "infinity-star-8b-480p", "--num-frames", "97"]) == 2
    err = capsys.readouterr().err
    assert "`num_frames` must be 81 (5 s) or 161 (10 s)" in err and err.count("\n") == 1


def test_memory_plans_the_10s_video_with_the_cache_in_host_memory(capsys, tmp_path):
    """``--kv-cache-offload``: the 10 s cache (the largest part of that plan) leaves the accelerator."""
    plans = {}
    for flag in ([], ["--kv-cache-offload"]):
        out = tmp_path / f"plan{len(flag)}.json"
        assert main(["memory", "--model", "infinity-star-8b-480p", "--num-frames", "161", "--text-tokens", "16",
                     "--vpg-scale", "1.5", "--json", str(out), *flag]) == 0
        plans[bool(flag)] = json.loads(out.read_text())
    assert "in host memory (offloaded)" in capsys.readouterr().out
    on, off = plans[False], plans[True]
    assert off["settings"]["kv_cache"] == "host (offloaded)" and off["kv_peak"] == on["kv_peak"]
    assert off["plans"]["none"]["kv"] == 0 and on["plans"]["none"]["kv"] > 0
    assert off["plans"]["none"]["peak"] < on["plans"]["none"]["peak"] - on["kv_peak"] // 2
