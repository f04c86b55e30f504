"""The benchmark scripts still run: one repetition each on the tiny parity model (CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import vpg_overhead, vs_official
from tests.helpers.shared import REPO, shared_path

REFERENCE_REPO = Path(os.environ.get("VAR_REFERENCE_REPO", REPO.parent / "ref" / "VAR"))


@pytest.fixture(autouse=True)
def _parity_model():
    shared_path("parity", "var", "var.safetensors")


def test_vpg_overhead_runs_every_configuration(tmp_path):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    result = vpg_overhead.main(["--model", "parity", "--repeats", "1", "--warmup", "0", "--no-memory",
                                "--threads", "1", "--out-json", str(out_json), "--out-md", str(out_md)])
    configs = result["batches"][0]["configs"]
    assert set(configs) == set(vpg_overhead.CONFIGS)
    assert configs["cfg"]["ratio"] == [1.0]
    assert all(c["times"][0] > 0 for c in configs.values())
    assert json.loads(out_json.read_text())["batches"][0]["batch"] == 1
    table = out_md.read_text()
    assert "`vpg-all-resample`" in table and "Targets:" in table


def test_vpg_overhead_measures_memory_in_fresh_processes():
    result = vpg_overhead.main(["--model", "parity", "--repeats", "1", "--warmup", "0", "--threads", "1",
                                "--configs", "vpg-semantic"])
    configs = result["batches"][0]["configs"]
    assert list(configs) == ["cfg", "vpg-semantic"]
    for c in configs.values():
        mem = c["memory"]
        assert 0 < mem["base"] <= mem["sampler_peak"]
        assert mem["decode_peak"] > 0


def test_vs_official_rejects_a_wrong_checkout(tmp_path):
    with pytest.raises(ValueError, match="--reference-repo"):
        vs_official.import_official(tmp_path)


@pytest.fixture
def official_modules_removed_afterwards():
    """The official code is imported as top-level modules (`dist`, `models`, ...): drop them after the test."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in vs_official.OFFICIAL_MODULES:
            del sys.modules[name]


def test_vs_official_agrees_with_the_official_sampler(tmp_path, official_modules_removed_afterwards):
    if not (REFERENCE_REPO / "models" / "var.py").is_file():
        pytest.skip(f"no official VAR checkout at {REFERENCE_REPO} (set VAR_REFERENCE_REPO)")
    out_md = tmp_path / "r.md"
    result = vs_official.main(["--reference-repo", str(REFERENCE_REPO), "--model", "tiny", "--repeats", "1",
                               "--warmup", "0", "--threads", "1", "--out-md", str(out_md)])
    batch = result["batches"][0]
    for name in vs_official.OURS:
        assert batch["max_abs_image_diff"][name] < 1e-4
        assert batch["speedup"][name][0] > 0
    assert "official `autoregressive_infer_cfg`" in out_md.read_text()


INFINITY_REFERENCE_REPO = Path(os.environ.get("INFINITY_REFERENCE_REPO", REPO.parent / "ref" / "Infinity"))


@pytest.fixture
def official_infinity_removed_afterwards():
    """The official code and the stand-ins live in `sys.modules` (`infinity`, `flash_attn`, ...): drop them after."""
    from benchmarks import official_stubs

    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("infinity", *official_stubs.STUBBED_TOP_LEVEL):
            del sys.modules[name]


def test_vs_official_infinity_rejects_a_wrong_checkout(tmp_path):
    from benchmarks import vs_official_infinity

    with pytest.raises(ValueError, match="--reference-repo"):
        vs_official_infinity.import_official(tmp_path)


def test_vs_official_infinity_agrees_with_the_official_sampler(tmp_path, official_infinity_removed_afterwards):
    from benchmarks import vs_official_infinity

    if not (INFINITY_REFERENCE_REPO / "infinity" / "models" / "infinity.py").is_file():
        pytest.skip(f"no official Infinity checkout at {INFINITY_REFERENCE_REPO} (set INFINITY_REFERENCE_REPO)")
    missing = [m for m in vs_official_infinity.NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the official Infinity code needs {missing}")
    out_md = tmp_path / "r.md"
    result = vs_official_infinity.main([
        "--reference-repo", str(INFINITY_REFERENCE_REPO), "--depth", "2", "--width", "256", "--vae-ch-mult",
        "1,1,1,1,1", "--text-len", "5", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-decode",
        "--out-md", str(out_md)])
    agree = result["agreement"]
    assert agree["agree"] and agree["bits_total"] > 0
    assert agree["max_abs_codes_diff"] <= 1e-6  # equal bits: sums of the same +-1/sqrt(d) codes (0 seen)
    for name in vs_official_infinity.OURS:
        # float32 decoders of the same codes: differently ordered convolutions, ~5e-5 seen
        assert agree["max_abs_image_diff"][name] < 1e-3
        assert result["speedup"][name][0] > 0
    assert "official `autoregressive_infer_cfg`" in out_md.read_text()


INFINITY_STAR_REFERENCE_REPO = Path(os.environ.get("INFINITY_STAR_REFERENCE_REPO",
                                                   REPO.parent / "ref" / "InfinityStar"))


def test_vs_official_infinity_star_rejects_a_wrong_checkout(tmp_path):
    from benchmarks import vs_official_infinity_star

    with pytest.raises(ValueError, match="--reference-repo"):
        vs_official_infinity_star.import_official(tmp_path)


def test_vs_official_infinity_star_settings_pick_the_released_480p_call():
    from benchmarks import vs_official_infinity_star as voist

    released = voist.parse_args(["--reference-repo", "x", "--settings", "480p"])
    assert (released.frames, released.guidance, released.guidance_scale) == (81, "apg", 34.0)  # infer_video_480p.py
    assert voist.SETTINGS["480p"]["pn"] == "0.40M" and voist.SETTINGS["480p"]["video_scale_repetition"][-2:] == [2, 1]
    reduced = voist.parse_args(["--reference-repo", "x"])
    assert (reduced.frames, reduced.guidance, reduced.guidance_scale) == (17, "cfg", 1.5)
    for bad in (["--frames", "81"], ["--guidance-scale", "34"], ["--settings", "480p", "--guidance-scale", "0.5"]):
        with pytest.raises(SystemExit):  # argparse's error names the argument and the allowed values
            voist.parse_args(["--reference-repo", "x", *bad])


@pytest.mark.parametrize("settings", ["reduced", "480p"])
def test_vs_official_infinity_star_agrees_with_the_official_sampler(tmp_path, official_infinity_removed_afterwards,
                                                                    settings):
    from benchmarks import vs_official_infinity_star

    if not (INFINITY_STAR_REFERENCE_REPO / "infinity" / "schedules" / "infinity_elegant.py").is_file():
        pytest.skip(f"no official InfinityStar checkout at {INFINITY_STAR_REFERENCE_REPO} "
                    "(set INFINITY_STAR_REFERENCE_REPO)")
    missing = [m for m in vs_official_infinity_star.NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the official InfinityStar code needs {missing}")
    out_md = tmp_path / "r.md"
    result = vs_official_infinity_star.main([
        "--reference-repo", str(INFINITY_STAR_REFERENCE_REPO), "--depth", "2", "--width", "512", "--frames", "1",
        "--settings", settings, "--vae-channels", "32,32,32,32,32", "--text-len", "5", "--repeats", "1",
        "--warmup", "0", "--threads", "1",
        "--no-decode", "--out-md", str(out_md)])
    agree = result["agreement"]
    assert agree["agree"] and agree["bits_total"] > 0  # the same seeded draws from the same logits
    assert agree["max_abs_codes_diff"] <= 1e-6  # equal bits: sums of the same codes (0 seen)
    for name in vs_official_infinity_star.OURS:
        # float32 decoders of the same codes: differently ordered convolutions, ~1e-6 seen
        assert agree["max_abs_video_diff"][name] < 1e-3
        assert result["speedup"][name][0] > 0
    for name, per_scale in result["per_scale"].items():  # every scale stamped once per call, in both code bases
        assert sorted(per_scale) == list(range(len(result["scales"]))), name
        assert sum(per_scale.values()) <= result["times"][name][0] + 1e-6
    assert "official `autoregressive_infer`" in out_md.read_text()


FASTVAR_REFERENCE_REPO = Path(os.environ.get("FASTVAR_REFERENCE_REPO", REPO.parent / "ref" / "FastVAR" / "Infinity"))


def test_vs_authors_acceleration_checks_its_arguments(tmp_path):
    from benchmarks import vs_authors_acceleration

    with pytest.raises(ValueError, match="--reference-repo"):
        vs_authors_acceleration.import_authors(vs_authors_acceleration.parse_args(
            ["--method", "fastvar", "--reference-repo", str(tmp_path)]))
    with pytest.raises(SystemExit):  # ScaleKV's code is hard-wired to the 1M schedule
        vs_authors_acceleration.parse_args(["--method", "scalekv", "--reference-repo", str(tmp_path), "--pn", "0.25M"])


def test_vs_authors_acceleration_fastvar_agrees_with_theirs(tmp_path, official_infinity_removed_afterwards):
    from benchmarks import vs_authors_acceleration

    if not (FASTVAR_REFERENCE_REPO / "infinity" / "models" / "fastvar_basic.py").is_file():
        pytest.skip(f"no FastVAR checkout at {FASTVAR_REFERENCE_REPO} (set FASTVAR_REFERENCE_REPO)")
    result = vs_authors_acceleration.main([
        "--method", "fastvar", "--reference-repo", str(FASTVAR_REFERENCE_REPO), "--depth", "4", "--width", "128",
        "--text-len", "5", "--repeats", "1", "--threads", "1"])
    agree = result["agreement"]
    assert agree["agree"] and agree["scales_run"]["theirs"] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40]  # 48, 64 skipped
    assert sorted(result["per_scale"]["ours"]) == sorted(result["per_scale"]["theirs"]) == agree["scales_run"]["ours"]
    assert result["speedup"][0] > 0


def test_vs_official_infinity_star_counts_cpu_attention_and_projects_by_width():
    import torch.nn.functional as F

    from benchmarks import vs_official_infinity_star as voist

    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 10, 8)
    w = torch.randn(16, 8)
    calls = {"official": lambda: F.linear(q, w),
             "ours": lambda: F.scaled_dot_product_attention(q, k, k, enable_gqa=True)}
    counts = voist.count_flops(calls)
    assert counts["official"] == {"attention": 0.0, "matmul": 2.0 * 2 * 4 * 6 * 8 * 16}
    assert counts["ours"] == {"attention": 4.0 * 2 * 4 * 6 * 10 * 8, "matmul": 0.0}  # query heads count (GQA)
    ratios = voist.projected_ratios({"official": {"matmul": 4.0, "attention": 4.0},
                                     "ours": {"matmul": 2.0, "attention": 1.0}}, 512, [512, 1024])
    assert ratios["ours"][512] == 3 / 8 and ratios["ours"][1024] == (8 + 2) / (16 + 8)  # matmuls x4, attention x2
