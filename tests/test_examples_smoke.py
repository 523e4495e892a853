"""Smoke tests: ``examples/demo.py --quick`` and ``benchmarks/step_memory.py --quick`` run and report sane numbers.

Both scripts run as subprocesses with this interpreter. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: float = 240.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return proc


def test_demo_quick_runs_and_prints_the_table():
    out = _run(["examples/demo.py", "--quick", "--corpus", "stdlib"]).stdout
    assert "corpus: Python" in out
    for name in ("torch.optim.AdamW", "gradspace.GaLoreAdamW", "gradspace.APOLLOMini"):
        assert f"| {name} |" in out
    assert "validation loss" in out


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "step_memory.json"
    _run(["benchmarks/step_memory.py", "--quick", "--out", str(out)])
    return json.loads(out.read_text())


def test_step_memory_quick_json_has_every_section(bench):
    assert {"meta", "stack", "refresh_cost", "peer_comparison", "targets"} <= set(bench)
    meta = bench["meta"]
    for key in ("torch", "platform", "cpu_count", "loadavg_start", "loadavg_end", "quick"):
        assert key in meta
    assert meta["quick"] is True
    stack = bench["stack"]
    for key in ("shape", "rows", "adamw_state_bytes", "adamw_step_ms_median", "method"):
        assert key in stack
    row_keys = {"name", "kind", "state_bytes", "state_pct_adamw", "projected_pct_adamw", "basis_bytes",
                "step_ms_median", "ratio_vs_adamw", "refresh_step_ms", "first_step_ms"}
    for row in stack["rows"]:
        assert row_keys <= set(row), row["name"]
    refresh = bench["refresh_cost"]
    for key in ("direct_median_ms", "ratio_svd_over_randomized", "step_median_ms", "method"):
        assert key in refresh
    assert {t["target"] for t in bench["targets"]}


def test_step_memory_quick_state_bytes(bench):
    import gradspace

    rows = {r["name"]: r for r in bench["stack"]["rows"]}
    presets = [r for r in rows.values() if r["kind"] in ("preset", "composition")]
    assert {r["name"] for r in presets} >= set(gradspace.PRESETS), "every preset has a row"
    for r in presets:
        assert r["state_bytes"] > 0, r["name"]
    adamw = rows["torch.AdamW(foreach)"]
    assert adamw["state_bytes"] == bench["stack"]["adamw_state_bytes"] > 0
    assert rows["GaLoreAdamW"]["state_bytes"] < adamw["state_bytes"]
    for name in ("FloraAdam", "GoLore", "APOLLO", "APOLLOMini"):
        assert rows[name]["basis_bytes"] == 0, name
