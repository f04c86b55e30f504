"""benchmarks/quality.py runs end to end on a synthetic stand-in dataset (a few samples, one seed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import quality

NUM_CLASSES = 30  # the bundled demo model's classes


def test_quality_benchmark_writes_table_json_and_plot(fake_dataset, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (extra `eval`)")
    data, classifier = fake_dataset
    out = tmp_path / "out"
    result = quality.main(["--data", str(data), "--classifier", str(classifier), "--seeds", "0", "1",
                           "--max-samples", "6", "--threads", "1", "--configs", "vpg w=2 p=0.5",
                           "--out-json", str(out / "q.json"), "--out-md", str(out / "q.md"),
                           "--out-png", str(out / "q.png")])
    assert result["samples_per_seed"] == 6
    assert list(result["configs"]) == ["cfg", "vpg w=2 p=0.5"]
    for c in result["configs"].values():
        assert len(c["fd"]) == 2 and all(np.isfinite(c["fd"])) and min(c["fd"]) >= 0
        assert all(0 <= a <= 1 for a in c["accuracy"])
    assert result["configs"]["cfg"]["fd_delta"]["mean"] == 0
    table = (out / "q.md").read_text()
    assert "CFG only (VPG off)" in table and "`vpg w=2 p=0.5`" in table and "real-vs-real FD floor" in table
    assert json.loads((out / "q.json").read_text())["heldout_images"] == NUM_CLASSES
    assert (out / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_benchmark_rejects_a_single_sample():
    with pytest.raises(SystemExit):
        quality.parse_args(["--max-samples", "1"])


def test_eval_labels_keep_the_class_mix_when_capped():
    labels = np.repeat(np.arange(5), [10, 10, 10, 10, 20])
    picked = quality.eval_labels(labels, 12)
    assert len(picked) == 12 and set(picked) == set(range(5))
    assert np.sum(picked == 4) >= 4
