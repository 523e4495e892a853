"""The remaining examples run with ``--quick`` (smaller settings where needed) and print their key line.

Each runs as a subprocess with this interpreter and a timeout; outputs go to a temporary folder. About 20 s in all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: float = 120.0) -> str:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def test_plain_loop_quick():
    out = _run(["examples/plain_loop.py", "--quick"])
    assert "torch.optim.AdamW" in out and "gradspace.GaLoreAdamW" in out
    assert out.count("optimizer state") == 2


def test_sparse_digits_quick(tmp_path):
    out = _run(["examples/sparse_digits.py", "--quick", "--seeds", "1", "--out", str(tmp_path)])
    assert "| sparse momentum |" in out
    assert (tmp_path / "results.md").exists()


def test_intrinsic_digits_quick(tmp_path):
    out = _run(["examples/intrinsic_digits.py", "--quick", "--out", str(tmp_path)])
    assert "d_int90 =" in out
    assert (tmp_path / "dint.json").exists()


@pytest.mark.filterwarnings("ignore")
def test_instruments_quick(tmp_path):
    out = _run(["examples/instruments.py", "--quick", "--out", str(tmp_path)])
    assert "trajectory PCA" in out
    assert "fraction of the full-batch gradient in the top-10 Hessian eigenspace" in out
