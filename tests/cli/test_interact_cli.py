"""``vpg generate`` / ``vpg convert`` / ``vpg memory`` with InfinityStar-Interact: one 5 s clip per ``--prompt``
continuing a reference ``--video``, on the tiny interact fixture; outputs compared with the Python API, refusals
before anything loads."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.interact import FIXTURE, fixture_weights, load_config
from vpg_pipelines import VPGInfinityStarInteractPipeline, export_to_video
from vpg_pipelines import cli as vpg_cli
from vpg_pipelines.cli import main

imageio = pytest.importorskip("imageio.v2", reason="the `video` extra (imageio, imageio-ffmpeg) is not installed")

CLIP_FRAMES = 80  # 5 s at 16 fps per prompt


@pytest.fixture(scope="module")
def interact_folder(fast_interact_pipe, tmp_path_factory):
    """The fast interact pipeline (fixture transformer, narrow VAE, tiny T5) saved as a pipeline folder."""
    folder = tmp_path_factory.mktemp("interact") / "story-vpg"
    fast_interact_pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    """The fixture's 81 reference frames (32x56) as a 16 fps MP4 (5.06 s)."""
    frames = load_file(str(FIXTURE / "cases.safetensors"))["reference.video_rgb"].numpy()
    return export_to_video(list(frames), tmp_path_factory.mktemp("reference") / "reference.mp4", fps=16)


def read_video(path) -> tuple[np.ndarray, float]:
    reader = imageio.get_reader(path, format="FFMPEG")
    fps = reader.get_meta_data()["fps"]
    frames = np.stack([frame for frame in reader])  # list(reader) asks len(): inf for ffmpeg streams
    reader.close()
    return frames, fps


def no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded although the flags are refused")


def test_convert_makes_an_interact_checkpoint_an_interact_folder(interact_pipe, tmp_path):
    """The checkpoint's name says Interact (as the released ``InfinityStarInteract_24K_iters``): the folder is the
    Interact pipeline with the interact script's settings and the official weights."""
    transformer, vae = fixture_weights(json.loads((FIXTURE / "config.json").read_text(encoding="utf-8")))
    checkpoint = tmp_path / "InfinityStarInteract_tiny.safetensors"
    shutil.copyfile(transformer, checkpoint)
    config = load_config()
    config.pop("_raw")
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    folder = tmp_path / "converted"
    assert main(["convert", "--infinity-star", str(checkpoint), "--vae", str(vae), "--config",
                 str(tmp_path / "config.json"), "--out", str(folder)]) == 0
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "VPGInfinityStarInteractPipeline" and index["variant"] == "interact"
    assert index["official_args"] == interact_pipe.config.official_args  # the interact script's, the fixture's size
    pipe = VPGInfinityStarInteractPipeline.from_pretrained(folder)
    for name in ("transformer", "vae"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(interact_pipe, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_generate_interact_writes_the_pipelines_story(interact_folder, reference_file, tmp_path, monkeypatch):
    """Two prompts, two clips: the MP4 holds the frames the Python call makes from the same file and seed."""
    written = {}

    def recording_export(frames, path, fps):
        written["frames"] = frames
        return export_to_video(frames, path, fps=fps)

    monkeypatch.setattr(vpg_cli, "export_to_video", recording_export)
    out = tmp_path / "story.mp4"
    prompts = ["a cat sits down", "the cat jumps"]
    assert main(["generate", "--model", str(interact_folder), "--prompt", prompts[0], "--prompt", prompts[1],
                 "--video", str(reference_file), "--seed", "3", "--vpg-scale", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    pipe = VPGInfinityStarInteractPipeline.from_pretrained(interact_folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompts, video=str(reference_file), vpg_scale=2.0,
                    generator=[torch.Generator().manual_seed(3)]).frames[0]
    assert len(written["frames"]) == len(expected) == 2 * CLIP_FRAMES
    # the same computation (the CLI passes the 81 frames the pipeline would choose from the file): bitwise
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(written["frames"], expected))
    frames, fps = read_video(out)
    assert frames.shape == (2 * CLIP_FRAMES, 192, 336, 3) and fps == 16  # the reference's 16:9-ish template


@pytest.mark.parametrize("flags, message", [
    ([], "--video is required for InfinityStar-Interact"),
    (["--video", "{ref}", "--num-frames", "81"], "--num-frames does not apply to InfinityStar-Interact"),
    (["--video", "{ref}", "--out", "{tmp}/story.png"], "InfinityStar-Interact makes a video; write it to a .mp4"),
    (["--video", "{tmp}/missing.mp4"], "--video {tmp}/missing.mp4: no such file"),
    (["--video", "{ref}", "--top-k", "5"], "--top-k and --top-p do not apply"),
    (["--video", "{tmp}/short.mp4"], r"--video {tmp}/short.mp4: has 48 frames at 16 fps \(3.00 s\); the reference "
                                     r"must be at least 5 s long \(80 frames\)$"),
    (["--video", "{tmp}/notes.txt"], "--video {tmp}/notes.txt: not a video file"),
])
def test_generate_interact_refuses_bad_flags_before_loading(interact_folder, reference_file, tmp_path, capsys,
                                                             monkeypatch, flags, message):
    monkeypatch.setattr(vpg_cli, "load_pipeline", no_loading)
    export_to_video([np.zeros((32, 56, 3), np.uint8)] * 48, tmp_path / "short.mp4", fps=16)
    (tmp_path / "notes.txt").write_text("not a video", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    flags = [f.format(ref=reference_file, tmp=tmp_path) for f in flags]
    out = [] if "--out" in flags else ["--out", str(tmp_path / "story.mp4")]
    assert main(["generate", "--model", str(interact_folder), "--prompt", "a cat", "--device", "cpu", *flags,
                 *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert re.search(message.format(tmp=re.escape(str(tmp_path))), err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_video_is_refused_for_models_that_take_no_video(reference_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vpg_cli, "load_pipeline", no_loading)
    assert main(["generate", "--model", "demo", "--prompt", "plant", "--video", str(reference_file),
                 "--out", str(tmp_path / "a.png")]) == 2
    # --video is InfinityStar's: a 480p continuation's input or an Interact model's reference
    assert "--video and --variant apply to InfinityStar only" in capsys.readouterr().err


def test_memory_plans_one_interact_clip(interact_folder, reference_file, tmp_path, capsys):
    """``vpg memory``: the released Interact model (a story from its context) and a folder with its reference."""
    assert main(["memory", "--model", "infinity-star-8b-interact", "--prompt", "a", "--prompt", "b",
                 "--text-tokens", "16"]) == 0
    text = capsys.readouterr().out
    assert "size 480x848" in text and "clips 2" in text and "frames_per_clip 80" in text
    plan = tmp_path / "plan.json"
    assert main(["memory", "--model", str(interact_folder), "--prompt", "a cat", "--video", str(reference_file),
                 "--json", str(plan)]) == 0
    settings = json.loads(plan.read_text(encoding="utf-8"))["settings"]
    assert (settings["size"], settings["clips"]) == ("192x336", 1)
    assert main(["memory", "--model", "infinity-star-8b-interact", "--num-frames", "81"]) == 2
    assert "--num-frames does not apply to InfinityStar-Interact" in capsys.readouterr().err
