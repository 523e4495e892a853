"""The integration examples run as a user would run them (subprocesses with a timeout) and print what they claim."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def run_example(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run in its own session so that on timeout the launcher *and* its rank processes are killed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(args)} did not finish within {timeout} s\nstdout:\n{out}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


RANK_LINE = re.compile(r"\[rank (\d)\] [^\[]*? sha256 ([0-9a-f]{16}) \(uninterrupted\) ([0-9a-f]{16}) \(resumed")


@pytest.mark.dist
def test_ddp_cpu_example_replicas_agree():
    # the documented command; `python examples/ddp_cpu.py --quick` (self-spawned ranks) runs the same worker code
    script = str(ROOT / "examples" / "ddp_cpu.py")
    res = run_example([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                       "--quick"])
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-3000:]}"
    ranks = {int(m[1]): (m[2], m[3]) for m in RANK_LINE.finditer(res.stdout)}
    assert set(ranks) == {0, 1}, res.stdout
    # both replicas hold the same weights, and resuming from rank 0's mid-period checkpoint reproduces them
    assert ranks[0][0] == ranks[1][0] == ranks[0][1] == ranks[1][1], res.stdout
    assert "replicas agree and resume is exact: True" in res.stdout
    assert "get a subspace, rank=8" in res.stdout  # param_groups' printout (rank 0 only)
    assert res.stdout.count("get a subspace, rank=8") == 1


def test_lightning_example_resumes_exactly():
    pytest.importorskip("lightning", reason="Lightning is not installed (optional): pip install lightning")
    res = run_example([sys.executable, str(ROOT / "examples" / "lightning_example.py"), "--quick"])
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-3000:]}"
    assert "optimizer: Fira" in res.stdout and "'proj.basis'" in res.stdout
    first, last = map(float, re.search(r"step 8: loss ([\d.]+) -> ([\d.]+)", res.stdout).groups())
    assert last < first and "refreshes 3" in res.stdout  # refreshes at steps 0, 3, 6
    assert "optimizer state loads with weights_only=True" in res.stdout
    assert "weights equal the uninterrupted run bitwise: True" in res.stdout


def test_hf_trainer_example_trains_and_resumes_exactly():
    pytest.importorskip("transformers", reason='transformers is not installed: pip install -e ".[hf]"')
    pytest.importorskip("accelerate", reason='transformers.Trainer needs accelerate: pip install -e ".[hf]"')
    res = run_example([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--quick"])
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-3000:]}"
    assert "GaLoreAdamW(lr=0.003" in res.stdout and "14 nn.Linear weight(s) get a rank-8 subspace" in res.stdout
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+) in 12 steps", res.stdout).groups())
    assert last < first - 0.3
    state, adamw = map(float, re.search(r"optimizer state ([\d.]+) MiB \(AdamW: ([\d.]+) MiB\)", res.stdout).groups())
    assert state < adamw / 2
    assert "weights equal the uninterrupted run bitwise: True" in res.stdout
