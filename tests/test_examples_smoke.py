"""Smoke test: ``examples/demo.py --quick`` runs and reports sane numbers (the step benchmark: test_benchmarks_step.py).

The script runs as a subprocess with this interpreter. Nothing here asserts a timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
