"""gradspace fit: a real run on llama-60m shapes (2 layers) in a fresh process; measured peak ≤ planned × 1.1."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from gradspace.cli import build_parser


def _fit(tmp_path, *extra):
    out = tmp_path / "fit.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gradspace", "fit", "--model", "llama-60m", "--layers", "2", "--seq", "32",
           "--steps", "2", "--quiet", "--max-rss-gib", "4", "--json", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def test_fit_is_registered():
    args = build_parser().parse_args(["fit", "--model", "llama-60m", "--layerwise"])
    assert args.func.__module__ == "gradspace.bench.fit" and args.layerwise


@pytest.mark.parametrize("extra", [("--optimizer", "GaLoreAdamW", "--layerwise"), ("--optimizer", "adamw", "--dtype", "bf16")])
def test_fit_measured_within_plan(tmp_path, extra):
    proc, report = _fit(tmp_path, *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for key in ("measured_peak_bytes", "planned_peak_bytes", "seconds_per_step", "losses"):
        assert key in report
    assert report["layers"] == 2 and len(report["losses"]) == 2 and report["refresh_steps"] == [1]
    assert all(math.isfinite(x) for x in report["losses"])
    assert report["measured_peak_bytes"] <= 1.1 * report["planned_peak_bytes"], report["planned_parts"]
    assert report["measured_peak_bytes"] > report["planned_parts"]["baseline"] + report["planned_parts"]["weights"]
    if "--layerwise" in extra:
        assert report["spec"]["group"]["projector"] == "randomized"  # no full SVD at fit sizes
        assert report["planned_parts"]["state"] == report["measured_state_bytes"]  # the planner is exact for state


def test_fit_quantized_state_error_is_clear(tmp_path):
    proc, report = _fit(tmp_path, "--optimizer", "GaLoreAdamW", "--layerwise", "--state-dtype", "int8")
    if proc.returncode == 0:  # the optimizer accepts int8 moments: the run must then be within plan
        assert report["measured_peak_bytes"] <= 1.1 * report["planned_peak_bytes"]
        return
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--state-dtype int8" in proc.stderr and "Traceback" not in proc.stderr
