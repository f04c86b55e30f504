"""``vpg eval sample``: chunks and seeds, 2 Accelerate processes = 1 process, kill + resume = uninterrupted,
settings clashes refused, presets. Runs the bundled demo model (32 x 32) on tiny sample counts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

from tests.helpers.evaluation import (
    DEMO_FLAGS,
    accelerate_command,
    output_files,
    run_here,
    run_subprocess,
    subprocess_env,
)
from vpg_pipelines.evaluation import run_folder
from vpg_pipelines.evaluation.protocols import ImageNetProtocol
from vpg_pipelines.evaluation.sharding import ChunkPlan, batches, deal, sample_seed

SMALL = [*DEMO_FLAGS, "--classes", "0-4", "--per-class", "3", "--chunk-size", "4"]
"""15 samples in chunks of 4: three full chunks and a short last one."""


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """``SMALL`` sampled by one process, uninterrupted."""
    out = tmp_path_factory.mktemp("eval") / "one"
    assert run_here("sample", "imagenet", *SMALL, "--out", str(out)) == 0
    return out


# -- chunks and seeds ----------------------------------------------------------------------------------------
def test_every_sample_lies_in_one_chunk_and_every_chunk_goes_to_one_process():
    plan = ChunkPlan(total=15, chunk_size=4)
    assert plan.num_chunks == 4 and list(plan.indices(3)) == [12, 13, 14]
    assert all(plan.chunk_of(i) == c for c in range(4) for i in plan.indices(c))
    for world in (1, 2, 3, 5):
        dealt = [deal(list(range(plan.num_chunks)), r, world) for r in range(world)]
        assert sorted(c for share in dealt for c in share) == list(range(plan.num_chunks))
    assert [list(b) for b in batches(plan.indices(0), 3)] == [[0, 1, 2], [3]]  # fixed by the chunk, not the world
    with pytest.raises(ValueError, match="--chunk-size"):
        ChunkPlan(total=3, chunk_size=0)


def test_sample_seeds_depend_on_both_numbers_and_collide_nowhere():
    seeds = {sample_seed(s, i) for s in range(20) for i in range(200)}
    assert len(seeds) == 20 * 200  # seed + index would give seed 0 / sample 1 = seed 1 / sample 0
    assert sample_seed(7, 3) == sample_seed(7, 3)
    with pytest.raises(ValueError):
        sample_seed(-1, 0)


# -- scale-out -------------------------------------------------------------------------------------------------
def test_two_accelerate_processes_write_exactly_the_files_and_pixels_of_one(reference_run, tmp_path):
    out = tmp_path / "two"
    result = run_subprocess(accelerate_command(2, "sample", "imagenet", *SMALL, "--out", str(out)), tmp_path)
    assert "[process 1/2" in result.stderr and "[process 0/2" in result.stderr
    one, two = output_files(reference_run), output_files(out)
    assert sorted(two) == sorted(one) and len(one) == 15
    for name in one:
        assert two[name] == one[name], name  # the PNG bytes, hence the pixels
    run = json.loads((out / "run.json").read_text())
    invocation = run["invocations"][-1]
    assert invocation["world_size"] == 2
    assert sorted(c["process"] for c in invocation["chunks"]) == [0, 0, 1, 1]  # chunks 0, 2 and 1, 3
    assert run["settings"] == json.loads((reference_run / "run.json").read_text())["settings"]


def test_kill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    flags = [*DEMO_FLAGS, "--classes", "0-9", "--per-class", "3", "--chunk-size", "1"]  # 30 chunks
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert run_here("sample", "imagenet", *flags, "--out", str(reference)) == 0
    command = [sys.executable, "-m", "vpg_pipelines.cli", "eval", "sample", "imagenet", *flags, "--out", str(out)]
    process = subprocess.Popen(command, env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list((out / "chunks").glob("chunk-*.json"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.02)
    process.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no handler runs either way
    process.wait()
    done_before = len(run_folder.RunFolder(out).finished_chunks())
    assert 3 <= done_before < 30, f"killed after {done_before} chunks"
    assert run_here("sample", "imagenet", *flags, "--out", str(out)) == 0
    expected, resumed = output_files(reference), output_files(out)
    assert sorted(resumed) == sorted(expected) and len(resumed) == 30  # no sample missing, none extra
    assert all(resumed[name] == expected[name] for name in expected)
    run = json.loads((out / "run.json").read_text())
    redone = [c["chunk"] for c in run["invocations"][-1]["chunks"]]
    assert len(redone) == 30 - done_before and len(set(redone)) == len(redone)  # finished chunks were skipped
    assert not (out / ".partial").exists()


def test_a_process_dying_mid_commit_leaves_its_chunk_undone(reference_run, tmp_path, monkeypatch):
    """Images already moved into place but no record: the chunk is not done, and the rerun redoes it."""
    out = tmp_path / "crash"
    real_replace, calls = run_folder.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if str(dst).endswith("chunk-000001.json"):
            raise KeyboardInterrupt("killed while committing chunk 1")
        return real_replace(src, dst)

    monkeypatch.setattr(run_folder.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run_here("sample", "imagenet", *SMALL, "--out", str(out))
    monkeypatch.setattr(run_folder.os, "replace", real_replace)
    assert (out / "images/0001/0001.png").is_file()  # chunk 1's images were moved
    assert sorted(run_folder.RunFolder(out).finished_chunks()) == [0]
    assert run_here("sample", "imagenet", *SMALL, "--out", str(out)) == 0
    assert output_files(out) == output_files(reference_run)


# -- settings ---------------------------------------------------------------------------------------------------
def test_a_run_with_other_settings_is_refused_naming_the_setting(reference_run, capsys):
    before = {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()}
    assert run_here("sample", "imagenet", *SMALL, "--vpg-scale", "2.5", "--out", str(reference_run)) == 2
    err = capsys.readouterr().err
    assert "call.vpg_scale (--vpg-scale): the run there used 1.5, this command asks 2.5" in err
    assert run_here("sample", "imagenet", *SMALL, "--seed", "1", "--out", str(reference_run)) == 2
    assert "seed (--seed)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()} == before  # untouched
    assert run_here("sample", "imagenet", *SMALL, "--out", str(reference_run)) == 0  # same settings: resumes
    assert "0 chunks (0 samples) to do" in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert run_here("sample", "imagenet", *SMALL, "--out", str(tmp_path)) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("flags, named", [
    (["--prompts", "x.jsonl"], "--prompts"),
    (["--classes", "0-99"], "--classes"),
    (["--tau", "1"], "--tau"),
    (["--chunk-size", "2", "--batch-size", "3"], "--batch-size"),
])
def test_bad_flags_are_refused_by_name(flags, named, tmp_path, capsys):
    argv = ["sample", "imagenet", *DEMO_FLAGS, "--per-class", "1", "--out", str(tmp_path / "run"), *flags]
    assert run_here(*argv) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_demo_model_is_not_a_text_to_image_model(tmp_path, capsys):
    assert run_here("sample", "geneval", "--model", "demo", "--out", str(tmp_path / "g")) == 2
    assert "VPGVARPipeline" in capsys.readouterr().err


def test_paper_preset_for_var_uses_the_official_settings_and_the_paper_w(capsys, tmp_path):
    fake = SimpleNamespace(transformer=SimpleNamespace(config=SimpleNamespace(depth=16)))
    preset = ImageNetProtocol([0], 1).preset("paper", fake)
    assert preset["vpg_scale"] == 3.0 and preset["vpg_corruption"] == 0.5
    assert (preset["guidance_scale"], preset["top_k"], preset["top_p"]) == (1.5, 900, 0.96)
    # the demo model has no paper depth: w must be given; then everything else is the preset's
    assert run_here("sample", "imagenet", "--model", "demo", "--preset", "paper", "--out", str(tmp_path / "a"),
                    "--dry-run") == 2
    assert "--vpg-scale" in capsys.readouterr().err
    assert run_here("sample", "imagenet", "--model", "demo", "--preset", "paper", "--vpg-scale", "2",
                    "--top-k", "5", "--out", str(tmp_path / "a"), "--dry-run") == 0
    plan = json.loads(capsys.readouterr().out)
    call = plan["settings"]["call"]
    assert call == {"guidance_scale": 1.5, "top_k": 5, "top_p": 0.96, "more_smooth": False, "vpg_scale": 2.0,
                    "vpg_corruption": 0.5, "vpg_mode": "full", "vpg_refresh": "persistent", "vpg_scales": "all"}
    assert plan["samples"] == 30 * 50 and plan["chunks"] == 30 * 50 // 25  # all classes, 50 each by default
    assert not (tmp_path / "a").exists()  # a dry run writes nothing


def test_images_decode_to_the_model_size(reference_run):
    image = PIL.Image.open(reference_run / "images/0004/0002.png")
    assert image.size == (32, 32) and np.asarray(image.convert("RGB")).std() > 1
