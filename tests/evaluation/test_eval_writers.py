"""Each protocol's files read back the way its official evaluator reads them: the ADM ``.npz`` (keys, shape,
dtype, class order), GenEval's folders and metadata lines, DPG-Bench's 2 x 2 grids, VBench's file names.

The benchmark prompt files are not bundled: the tests write small files in the same formats."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import PIL.Image
import pytest

from tests.helpers.cli import save_text_encoder
from tests.helpers.evaluation import DEMO_FLAGS, one_thread, run_here
from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityPipeline
from vpg_pipelines.cli import main
from vpg_pipelines.evaluation.sharding import sample_generators
from vpg_pipelines.testing import STAR_FAST_ARGS, tiny_t5

GENEVAL_LINES = [  # GenEval's evaluation_metadata.jsonl format: one object per line, with its "prompt"
    {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
    {"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "tree", "count": 1,
                                                                    "position": ["left of", 0]}],
     "prompt": "a photo of a tree left of a dog"},
]


@pytest.fixture(scope="module")
def infinity_folder(tmp_path_factory):
    root = shared_path("parity", "infinity")
    tmp = tmp_path_factory.mktemp("eval_infinity")
    t5 = save_text_encoder(*tiny_t5(), tmp / "t5")
    assert main(["convert", "--infinity", str(root / "infinity.safetensors"), "--vae", str(root / "vae.safetensors"),
                 "--text-encoder", t5, "--config", str(root / "config.json"), "--out", str(tmp / "model")]) == 0
    return tmp / "model"


@pytest.fixture(scope="module")
def star_folder(tmp_path_factory):
    root = shared_path("parity", "infinity_star")
    tmp = tmp_path_factory.mktemp("eval_star")
    config = json.loads((root / "config.json").read_text())
    config["args"] = {**config["args"], **STAR_FAST_ARGS}
    (tmp / "config.json").write_text(json.dumps(config))
    t5 = save_text_encoder(*tiny_t5(64), tmp / "t5")
    assert main(["convert", "--infinity-star", str(root / "infinity_star.safetensors"), "--vae",
                 str(root / "videovae.safetensors"), "--text-encoder", t5, "--config", str(tmp / "config.json"),
                 "--out", str(tmp / "model")]) == 0
    return tmp / "model"


def dry_run(capsys, *argv) -> dict:
    capsys.readouterr()
    assert run_here("sample", *argv, "--dry-run") == 0
    return json.loads(capsys.readouterr().out)


def run_call(run) -> dict:
    return json.loads((run / "run.json").read_text())["settings"]["call"]


# -- ImageNet -> ADM .npz --------------------------------------------------------------------------------------
def test_pack_writes_the_adm_batch_in_class_order(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_here("sample", "imagenet", *DEMO_FLAGS, "--classes", "7,2", "--per-class", "2", "--chunk-size", "3",
                    "--out", str(run)) == 0
    npz = tmp_path / "samples.npz"
    assert run_here("pack", str(run), "--out", str(npz)) == 0
    batch = np.load(npz)  # as evaluations/evaluator.py opens it
    assert sorted(batch.keys()) == ["arr_0", "arr_1"]
    images, labels = batch["arr_0"], batch["arr_1"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [2, 2, 7, 7]  # class order, whatever order --classes named them in
    for k, (c, j) in enumerate([(2, 0), (2, 1), (7, 0), (7, 1)]):
        assert np.array_equal(images[k], np.asarray(PIL.Image.open(run / f"images/{c:04d}/{j:04d}.png")))
    (run / "chunks/chunk-000001.json").unlink()  # an unfinished run is not packed
    assert run_here("pack", str(run), "--out", str(tmp_path / "partial.npz")) == 2
    assert "unfinished" in capsys.readouterr().err and not (tmp_path / "partial.npz").exists()


# -- GenEval ----------------------------------------------------------------------------------------------------
def test_geneval_layout_reads_back_as_evaluate_images_reads_it(infinity_folder, tmp_path):
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(line) + "\n" for line in GENEVAL_LINES))
    out = tmp_path / "geneval"
    # chunks of 3 with 2 images per prompt: prompt 1 straddles two chunks
    assert run_here("sample", "geneval", "--model", str(infinity_folder), "--prompts", str(metadata),
                    "--per-prompt", "2", "--chunk-size", "3", "--out", str(out)) == 0
    found = {}
    for sub in os.listdir(out):  # geneval/evaluation/evaluate_images.py: digit folders, metadata, \d+\.png
        folder = out / sub
        if not folder.is_dir() or not sub.isdigit():
            continue
        with open(folder / "metadata.jsonl", encoding="utf-8") as fp:
            meta = json.load(fp)
        names = sorted(n for n in os.listdir(folder / "samples") if re.match(r"\d+\.png", n))
        found[sub] = (meta, names)
    assert sorted(found) == ["00000", "00001", "00002"]
    for k, line in enumerate(GENEVAL_LINES):
        assert found[f"{k:05d}"] == (line, ["0000.png", "0001.png"])
    # chunk 1 = prompt 1 image 1, prompt 2 images 0 and 1: the same batch through the pipeline gives the files
    pipe = VPGInfinityPipeline.from_pretrained(infinity_folder)
    pipe.set_progress_bar_config(disable=True)
    prompts = [GENEVAL_LINES[1]["prompt"], GENEVAL_LINES[2]["prompt"], GENEVAL_LINES[2]["prompt"]]
    with one_thread():
        images = pipe(prompt=prompts, generator=sample_generators(0, range(3, 6)), **run_call(out)).images
    for image, name in zip(images, ["00001/samples/0001.png", "00002/samples/0000.png", "00002/samples/0001.png"]):
        assert np.array_equal(np.asarray(image), np.asarray(PIL.Image.open(out / name).convert("RGB"))), name


def test_geneval_rejects_a_file_that_is_not_evaluation_metadata(infinity_folder, tmp_path, capsys):
    bad = tmp_path / "prompts.txt"
    bad.write_text("a photo of a cat\n")
    assert run_here("sample", "geneval", "--model", str(infinity_folder), "--prompts", str(bad),
                    "--out", str(tmp_path / "g")) == 2
    assert "--prompts" in capsys.readouterr().err


# -- DPG-Bench --------------------------------------------------------------------------------------------------
def test_dpg_grids_read_back_as_compute_dpg_bench_crops_them(infinity_folder, tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    texts = {"partiprompts7": "a red cat on a car", "whoops12": "a blue house by the sea"}
    for item, text in texts.items():
        (prompts / f"{item}.txt").write_text(text + "\n")
    out = tmp_path / "dpg"
    assert run_here("sample", "dpg", "--model", str(infinity_folder), "--prompts", str(prompts), "--limit", "1",
                    "--out", str(out)) == 0
    grids = sorted(os.listdir(out / "images"))  # --image-root-path: every file there is a grid
    assert grids == ["partiprompts7.png"] and grids[0].split(".")[0] in texts
    size = run_call(out)["height"]
    grid = PIL.Image.open(out / "images" / grids[0])
    assert grid.size == (2 * size, 2 * size)
    crops = [(0, 0, size, size), (size, 0, 2 * size, size), (0, size, size, 2 * size), (size, size, 2 * size, 2 * size)]
    pipe = VPGInfinityPipeline.from_pretrained(infinity_folder)
    pipe.set_progress_bar_config(disable=True)
    with one_thread():
        images = pipe(prompt=[texts["partiprompts7"]] * 4, generator=sample_generators(0, range(4)),
                      **run_call(out)).images
    for image, box in zip(images, crops):
        assert np.array_equal(np.asarray(grid.crop(box).convert("RGB")), np.asarray(image)), box
    assert run_here("sample", "dpg", "--model", str(infinity_folder), "--prompts", str(prompts), "--chunk-size", "6",
                    "--out", str(tmp_path / "bad")) == 2
    assert "multiple of 4" in capsys.readouterr().err


# -- VBench -----------------------------------------------------------------------------------------------------
def test_vbench_names_are_found_by_the_standard_lookup(star_folder, tmp_path):
    imageio = pytest.importorskip("imageio.v2", reason="the `video` extra (imageio, imageio-ffmpeg) is not installed")
    model = star_folder
    prompt_list = tmp_path / "all_dimension.txt"  # VBench's format: one prompt per line; this one is listed twice
    prompt_list.write_text("a red cat, frozen in time\na red cat, frozen in time\n")
    out = tmp_path / "vbench"
    assert run_here("sample", "vbench", "--model", str(model), "--prompts", str(prompt_list), "--per-prompt", "1",
                    "--num-frames", "1", "--height", "192", "--width", "336", "--out", str(out)) == 0
    videos = out / "videos"
    names = os.listdir(videos)
    postfix = os.path.splitext(names[0])[1]  # VBench takes the extension from the first file listed
    for prompt in dict.fromkeys(prompt_list.read_text().splitlines()):
        assert f"{prompt}-0{postfix}" in names
    assert names == ["a red cat, frozen in time-0.mp4"] and postfix == ".mp4"
    reader = imageio.get_reader(videos / names[0], format="FFMPEG")
    frames = np.stack([frame for frame in reader])
    reader.close()
    assert frames.shape == (1, 192, 336, 3)
    assert run_call(out)["vpg_scales"] == "semantic" and run_call(out)["guidance"] in ("apg", "cfg")


# -- presets -----------------------------------------------------------------------------------------------------
def test_infinity_paper_preset_is_the_official_evaluation_script(infinity_folder, tmp_path, capsys):
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text(json.dumps(GENEVAL_LINES[0]) + "\n")
    plan = dry_run(capsys, "geneval", "--model", str(infinity_folder), "--prompts", str(metadata), "--preset",
                   "paper", "--call-arg", "cfg_insertion_layer=-1", "--out", str(tmp_path / "g"))
    call = plan["settings"]["call"]
    assert (call["guidance_scale"], call["tau"], call["top_k"], call["top_p"]) == (4.0, 1.0, 900, 0.97)
    assert (call["height"], call["width"], call["cfg_insertion_layer"]) == (1024, 1024, -1)  # --call-arg wins
    assert (call["vpg_scale"], call["vpg_corruption"], call["vpg_scales"]) == (1.5, 0.5, "all")
    assert plan["samples"] == 4 and plan["settings"]["inputs"]["prompts"] == 1


def test_vbench_paper_preset_records_the_released_settings(star_folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\n")
    plan = dry_run(capsys, "vbench", "--model", str(star_folder), "--prompts", str(prompts), "--preset", "paper",
                   "--out", str(tmp_path / "v"))
    call = plan["settings"]["call"]
    assert (call["guidance"], call["guidance_scale"], call["apg_norm_threshold"]) == ("apg", 34.0, 0.05)
    assert (call["tau_image"], call["tau_video"]) == (1.0, 0.4)
    assert (call["vpg_scale"], call["vpg_corruption"], call["vpg_scales"]) == (1.5, 0.1, "semantic")
    assert isinstance(call["num_frames"], int) and isinstance(call["height"], int)  # the model's own, resolved
    assert plan["samples"] == 5  # 5 videos per prompt
