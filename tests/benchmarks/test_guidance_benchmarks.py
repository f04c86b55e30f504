"""The issue-14 parts of the benchmarks: the guidance suite of quality.py (on the synthetic stand-in dataset)
and the per-term costs of vpg_overhead.py."""

from __future__ import annotations

import json

import pytest

from benchmarks import quality, vpg_overhead


def test_guidance_suite_writes_the_fair_table_and_resumes(fake_dataset, tmp_path):  # noqa: F811
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (extra `eval`)")
    data, classifier = fake_dataset
    out = tmp_path / "out"
    argv = ["--data", str(data), "--classifier", str(classifier), "--seeds", "0", "--max-samples", "4",
            "--threads", "1", "--suite", "guidance", "--configs", "T=0.9", "ssg 0.5", "igg 1", "entropy-T base=0.8",
            "vpg", "vpg + ssg 0.5", "--out-json", str(out / "g.json"), "--out-md", str(out / "g.md"),
            "--out-png", str(out / "g.png")]
    result = quality.main(argv)
    assert list(result["configs"]) == ["cfg", "T=0.9", "ssg 0.5", "igg 1", "entropy-T base=0.8", "vpg",
                                       "vpg + ssg 0.5"]
    table = (out / "g.md").read_text()
    assert "Fair comparison" in table and "Stacked with VPG" in table and "`vpg + ssg 0.5`" in table
    assert (out / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    partial = json.loads((out / "g.json.partial").read_text())
    assert set(partial["done"]) == {f"{name}|0" for name in result["configs"]}
    # a resumed run recomputes nothing: every (configuration, seed) comes from the partial file
    partial["done"]["ssg 0.5|0"][0] = 123.0
    (out / "g.json.partial").write_text(json.dumps(partial))
    resumed = quality.main([*argv, "--resume"])
    assert resumed["configs"]["ssg 0.5"]["fd"] == [123.0]
    with pytest.raises(SystemExit):
        quality.main([*argv[:-6], "--guidance-scale", "1.5", "--resume", "--out-json", str(out / "g.json")])


def test_pipeline_settings_turn_temperatures_into_guiders():
    settings = quality.pipeline_settings({"vpg_scale": 1.0, "temperature": 0.9})
    (term,) = settings.pop("guiders")
    assert settings == {"vpg_scale": 1.0} and (term.base, term.t0, term.theta) == (0.9, 0.0, 1.0)
    settings = quality.pipeline_settings({"entropy_temperature": True, "entropy_base": 0.6,
                                          "entropy_temperature_alpha": 1.7})
    (term,) = settings.pop("guiders")
    assert settings == {} and (term.base, term.alpha, term.t0) == (0.6, 1.7, 2.5)


def test_term_costs_time_each_term_within_the_work_budget():
    args = vpg_overhead.parse_args(["--repeats", "1", "--max-term-gflop", "0.2"])
    rows = vpg_overhead.term_costs(args)
    assert {(r["shape"], r["term"]) for r in rows} == {
        (s, t) for s in vpg_overhead.TERM_SHAPES for t in ("igg", "ssg", "entropy-temperature")}
    for r in rows:
        assert (r["seconds"] is None) == (r["gflop"] > 0.2)
    assert any(r["seconds"] is not None for r in rows)
    igg = {r["shape"]: r["gflop"] for r in rows if r["term"] == "igg"}
    assert igg["InfinityStar 720p, clip scale 20x45x80"] > 1000  # O(n² V): why IGG is chunked
    assert "not timed" in vpg_overhead.term_costs_markdown(rows, "cpu")
