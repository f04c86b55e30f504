"""The ``vpg`` command line: ``convert`` of official-format files (the parity fixtures) into pipeline folders,
then ``generate`` from those folders; outputs are read back and compared with the Python API."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityPipeline, VPGInfinityStarPipeline, VPGVARPipeline
from vpg_pipelines.cli import build_parser, main
from vpg_pipelines.guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS
from vpg_pipelines.loading.auto import load_pipeline
from vpg_pipelines.testing import STAR_FAST_ARGS


def loaded(cls, folder):
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- convert -----------------------------------------------------------------------------------------
def test_converted_infinity_folder_holds_the_official_weights_and_the_text_encoder(infinity_folder):
    root = shared_path("parity", "infinity")
    index = json.loads((infinity_folder / "model_index.json").read_text())
    assert index["_class_name"] == "VPGInfinityPipeline"
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert (index["default_height"], index["default_width"]) == (256, 256)  # from the config's template
    assert not [p.name for p in infinity_folder.parent.iterdir() if p.name.endswith(".partial")]
    official = VPGInfinityPipeline.from_official(root / "infinity.safetensors", root / "vae.safetensors",
                                                 config=json.loads((root / "config.json").read_text()))
    pipe = loaded(VPGInfinityPipeline, infinity_folder)
    for name in ("transformer", "vae"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(official, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_converted_infinity_star_folder_holds_the_official_weights_and_settings(star_folder):
    root = shared_path("parity", "infinity_star")
    index = json.loads((star_folder / "model_index.json").read_text())
    assert index["_class_name"] == "VPGInfinityStarPipeline"
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert index["official_args"]["video_scale_repetition"] == [1] * 11
    assert index["official_args"]["pn"] == "0.06M"
    official = VPGInfinityStarPipeline.from_official(root / "infinity_star.safetensors", root / "videovae.safetensors",
                                                     config={"args": STAR_FAST_ARGS})
    pipe = loaded(VPGInfinityStarPipeline, star_folder)
    for name in ("transformer", "vae"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(official, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_folders_dispatch_on_their_class_name(infinity_folder, star_folder, tmp_path):
    root = shared_path("parity", "var")
    var = tmp_path / "var"
    assert main(["convert", "--var", str(root / "var.safetensors"), "--vae", str(root / "vqvae.safetensors"),
                 "--config", str(root / "config.json"), "--out", str(var)]) == 0
    assert type(load_pipeline(str(var))) is VPGVARPipeline
    assert type(load_pipeline(str(infinity_folder))) is VPGInfinityPipeline
    assert type(load_pipeline(str(star_folder))) is VPGInfinityStarPipeline
    half = load_pipeline(str(star_folder), dtype=torch.bfloat16)  # --dtype bf16: the video VAE stays float32
    assert half.transformer.dtype == torch.bfloat16 and half.transformer.head.weight.dtype == torch.float32
    assert next(half.vae.parameters()).dtype == torch.float32
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        load_pipeline(str(tmp_path / "other"))


@pytest.mark.parametrize("flags", [
    [],                                                       # no model flag
    ["--var", "a.pth", "--infinity", "b.pth"],                # two model flags
    ["--infinity", "b.pth", "--infinity-star", "c.pth"],
])
def test_convert_needs_exactly_one_model_flag(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", *flags, "--vae", "v.pth", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--var" in err and "--infinity" in err
    assert not (tmp_path / "out").exists()


def test_convert_errors_name_the_flag_and_leave_nothing_behind(tmp_path, capsys):
    inf, star = shared_path("parity", "infinity"), shared_path("parity", "infinity_star")
    out = tmp_path / "out"
    cases = [
        (["--infinity", str(inf / "infinity.safetensors"), "--vae", str(tmp_path / "missing.pth")], "--vae"),
        (["--infinity-star", str(tmp_path / "missing"), "--vae", str(star / "videovae.safetensors")],
         "--infinity-star"),
        (["--infinity", str(inf / "infinity.safetensors"), "--vae", str(inf / "vae.safetensors"),
          "--text-encoder", str(tmp_path / "no-t5")], "--text-encoder"),
        (["--var", str(inf / "infinity.safetensors"), "--vae", str(inf / "vae.safetensors"),
          "--text-encoder", "google/flan-t5-xl"], "--text-encoder"),
        (["--infinity", str(inf / "infinity.safetensors"), "--vae", str(inf / "vae.safetensors"),
          "--config", str(tmp_path / "none.json")], "--config"),
        (["--infinity", str(inf / "infinity.safetensors"), "--vae", str(inf / "vae.safetensors"),
          "--config", str(inf / "README.md")], "--config"),
        # the InfinityStar VAE is no Infinity VAE: the loader refuses it
        (["--infinity", str(inf / "infinity.safetensors"), "--vae", str(star / "videovae.safetensors")], ""),
    ]
    for flags, named in cases:
        assert main(["convert", *flags, "--out", str(out)]) == 2, flags
        err = capsys.readouterr().err
        assert "vpg convert: error:" in err and named in err, (flags, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == [], flags  # no folder, no staging leftovers


def test_convert_never_overwrites_and_cleans_up_a_failed_save(tmp_path, capsys, monkeypatch):
    inf = shared_path("parity", "infinity")
    files = ["--infinity", str(inf / "infinity.safetensors"), "--vae", str(inf / "vae.safetensors")]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["convert", *files, "--out", str(taken)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert main(["convert", *files, "--out", str(tmp_path / "file")]) == 2
    assert (tmp_path / "file").read_text() == "x"

    def broken_save(self, folder, **kwargs):
        DiffusionPipeline.save_pretrained(self, folder, **kwargs)  # writes the files, then the disk "fills"
        raise OSError("No space left on device")

    monkeypatch.setattr(VPGInfinityPipeline, "save_pretrained", broken_save)
    assert main(["convert", *files, "--out", str(tmp_path / "new")]) == 2
    assert "No space left" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"]
    monkeypatch.undo()
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine: it is replaced by the complete one
    assert main(["convert", *files, "--out", str(empty)]) == 0
    assert (empty / "model_index.json").is_file()
    out = capsys.readouterr().out
    assert "prompt_embeds only" in out  # converted without --text-encoder


# -- generate ----------------------------------------------------------------------------------------
def test_generate_infinity_png_equals_the_pipeline_image(infinity_folder, tmp_path, capsys):
    out = tmp_path / "cat.png"
    assert main(["generate", "--model", str(infinity_folder), "--prompt", "a red cat", "--vpg-scale", "2",
                 "--seed", "3", "--device", "cpu", "--out", str(out)]) == 0
    image = PIL.Image.open(out)
    assert image.size == (256, 256)
    expected = loaded(VPGInfinityPipeline, infinity_folder)(
        "a red cat", vpg_scale=2.0, generator=[torch.Generator().manual_seed(3)]).images[0]
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
    assert main(["generate", "--model", str(infinity_folder), "--prompt", "a", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "InfinityStar" in capsys.readouterr().err
    assert main(["generate", "--model", str(infinity_folder), "--prompt", "a", "--num-frames", "17",
                 "--out", str(out)]) == 2
    assert "--num-frames" in capsys.readouterr().err


def test_generate_infinity_star_png_is_the_first_frame_of_the_pipeline(star_folder, tmp_path):
    out = tmp_path / "frame.png"
    # an image --out without --num-frames generates one frame (an image), at the given schedule size
    assert main(["generate", "--model", str(star_folder), "--prompt", "a red cat", "--height", "192",
                 "--width", "336", "--seed", "5", "--device", "cpu", "--out", str(out)]) == 0
    image = PIL.Image.open(out)
    assert image.size == (336, 192)
    expected = loaded(VPGInfinityStarPipeline, star_folder)(
        "a red cat", num_frames=1, height=192, width=336, generator=[torch.Generator().manual_seed(5)]).frames[0]
    assert len(expected) == 1
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected[0]))
    grid = tmp_path / "grid.png"  # two prompts, with and without VPG: a labelled grid, aspect kept
    assert main(["generate", "--model", str(star_folder), "--prompt", "a cat", "--prompt", "dog",
                 "--height", "192", "--width", "336", "--compare", "--device", "cpu", "--out", str(grid)]) == 0
    assert PIL.Image.open(grid).width > 2 * 336 and PIL.Image.open(grid).height > 2 * 336


def test_generate_infinity_star_compare_mp4_reads_back(star_folder, tmp_path):
    imageio = pytest.importorskip("imageio.v2", reason="the `video` extra (imageio, imageio-ffmpeg) is not installed")
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--model", str(star_folder), "--prompt", "a red cat", "--num-frames", "17",
                 "--height", "192", "--width", "336", "--vpg-scale", "2", "--compare", "--device", "cpu",
                 "--out", str(out)]) == 0
    reader = imageio.get_reader(out, format="FFMPEG")
    assert reader.get_meta_data()["fps"] == 16
    frames = np.stack([frame for frame in reader])  # list(reader) asks len(): inf for ffmpeg streams
    reader.close()
    count, height, width, _ = frames.shape
    assert count == 17
    assert 2 * 336 < width < 2 * 336 + 40 and 192 < height < 192 + 60  # without | with VPG, a title row above
    header = frames[:, :12]
    assert header.mean() > 200 and header.min() < 100  # the title row: white with dark text


def test_generate_infinity_star_bad_flags_fail_before_loading(star_folder, tmp_path, capsys):
    base = ["generate", "--model", str(star_folder), "--prompt", "a cat", "--device", "cpu"]
    for flags, named in [(["--num-frames", "17", "--out", str(tmp_path / "a.png")], "--num-frames"),
                         (["--top-k", "5", "--out", str(tmp_path / "a.mp4")], "--top-k"),
                         (["--out", str(tmp_path / "a.avi")], "--out"),
                         (["--num-frames", "4", "--out", str(tmp_path / "a.mp4")], "num_frames")]:
        assert main(base + flags) == 2, flags
        assert named in capsys.readouterr().err, flags
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_convert_infinity_from_a_shard_folder(infinity_folder, tmp_path):
    """The 8B transformer ships as a folder of shards with a ``*.index.json``; the fixture split in two."""
    from safetensors.torch import load_file, save_file

    root = shared_path("parity", "infinity")
    state = load_file(str(root / "infinity.safetensors"))
    names = sorted(state)
    shards = tmp_path / "weights"
    shards.mkdir()
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(shards / file))
        weight_map |= {k: file for k in part}
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = tmp_path / "from-shards"
    assert main(["convert", "--infinity", str(shards), "--vae", str(root / "vae.safetensors"),
                 "--config", str(root / "config.json"), "--out", str(out)]) == 0
    ours = VPGInfinityPipeline.from_pretrained(out).transformer.state_dict()
    reference = VPGInfinityPipeline.from_pretrained(infinity_folder).transformer.state_dict()
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


def test_entropy_temperature_help_names_the_papers_constants(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, value in ENTROPY_TEMPERATURE_DEFAULTS._asdict().items():
        name = "T0" if key == "t0" else key
        assert f"--entropy-temperature-{key} ENTROPY_TEMPERATURE_{key.upper()} {name} (default {value:g})" in text
