"""``scripts/gpu_check.sh --dry-run``: the prepared GPU check lists its parts and runs their tiny versions on
the CPU (the GPU run itself needs a CUDA machine; see docs/memory.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu_check import PARTS, TIMEOUTS

REPO = Path(__file__).resolve().parents[2]


def test_timeouts_fit_eight_minutes():
    assert set(TIMEOUTS) == set(PARTS) and sum(TIMEOUTS.values()) <= 8 * 60
    script = (REPO / "scripts/gpu_check.sh").read_text()
    assert " ".join(f"{p}:{TIMEOUTS[p]}" for p in PARTS) in script  # the shell script uses the same limits


def test_dry_run_lists_every_part_and_runs_the_tiny_versions(tmp_path):
    env_python = Path(sys.executable).parent
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": f"{env_python}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for part in PARTS:
        assert f"--part {part}" in proc.stdout
        result = json.loads((tmp_path / f"gpu_{part}.json").read_text())
        assert result["complete"] and result["records"], part
        errors = [r for r in result["records"] if "error" in r]
        assert not errors, errors
    planner = json.loads((tmp_path / "gpu_planner.json").read_text())["records"][0]
    # on the CPU the measured peak is the tensor meter's (weights + everything the call allocated)
    assert 0.9 <= planner["ratio"] <= 1.1
    cuda = json.loads((tmp_path / "gpu_cuda_tests.json").read_text())["records"][0]
    assert cuda["returncode"] == 0 and any("cuda" in line for line in cuda["summary"])
