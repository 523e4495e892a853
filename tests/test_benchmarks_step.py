"""``benchmarks/step.py --quick`` and ``benchmarks/step_gpu.py --device cpu --quick`` run and report every row and target.

Both run at once as subprocesses with this interpreter (most of their time is importing torch and the peers). Nothing
here asserts a timing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("galore_vs_galore_torch", "galore_vs_gemm_bound", "fira_vs_galore", "apollomini_vs_adamw_fused",
           "identity_vs_adamw_fused")
ROW_KEYS = {"name", "family", "kind", "config", "step_ms", "step_ms_median", "first_step_ms", "state_bytes",
            "x_adamw_fused", "x_adamw_foreach", "x_peer", "x_bound", "state_pct_adamw"}
GRADSPACE_ROWS = {"torch.AdamW(foreach)", "torch.AdamW(fused)", "GaLoreAdamW", "Fira", "APOLLO", "APOLLOMini",
                  "SubspaceOptimizer(identity)", "SubspaceOptimizer(random)"}
PEER_ROWS = {"galore_torch": {"galore_torch.GaLoreAdamW"}, "fira": {"fira.FiraAdamW"},
             "apollo_torch": {"apollo_torch.APOLLOAdamW", "apollo_torch.APOLLOAdamW(mini)"}}


def _peer_available(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[dict, str]]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmds = {"step": ["benchmarks/step.py", "--quick", "--compile", "aot_eager", "--json", "-"],
            "gpu": ["benchmarks/step_gpu.py", "--device", "cpu", "--quick", "--no-peers", "--json", "-"]}
    procs = {k: subprocess.Popen([sys.executable, *c], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, c in cmds.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, f"{cmds[k]} exited {p.returncode}\nstderr:\n{stderr[-4000:]}"
        out[k] = (json.loads(stdout), stderr)
    return out


def _check_size(size: dict, peers: bool, compiled: bool = False) -> None:
    rows = {r["name"]: r for r in size["rows"]}
    for r in rows.values():
        assert ROW_KEYS <= set(r), r["name"]
        assert len(r["step_ms"]) == size["timed_rounds"], r["name"]
    expected = set(GRADSPACE_ROWS)
    import gradspace

    if "cache_random_basis" in gradspace.DEFAULTS:
        expected |= {"SubspaceOptimizer(random, cache_random_basis)", "APOLLO(cache_random_basis)"}
    if compiled:
        expected |= {f"{n}(compile=aot_eager)" for n in ("GaLoreAdamW", "Fira", "APOLLOMini")}
    if peers:
        expected |= {n for mod, names in PEER_ROWS.items() if _peer_available(mod) for n in names}
    assert expected <= set(rows), expected - set(rows)
    assert not size["errors"], size["errors"]
    assert not size["grads_modified_by_a_contender"]
    bound = rows[size["bound"]]
    assert bound["kind"] == "bound" and bound["gflop"] > 0 and bound["state_bytes"] == 0
    assert rows["GaLoreAdamW"]["bound"] == size["bound"] and rows["GaLoreAdamW"]["x_bound"] > 0
    adamw = rows["torch.AdamW(foreach)"]
    assert adamw["state_bytes"] == rows["torch.AdamW(fused)"]["state_bytes"] > 0
    assert 0 < rows["GaLoreAdamW"]["state_bytes"] < adamw["state_bytes"]
    assert rows["APOLLOMini"]["state_bytes"] < rows["APOLLO"]["state_bytes"]
    for r in rows.values():
        assert not r.get("nonfinite_params"), r["name"]


def _check_targets(data: dict, sizes: list[str]) -> None:
    by_id = {t["id"]: t for t in data["targets"]}
    for s in sizes:
        for t in TARGETS:
            assert f"{t}[{s}]" in by_id
    assert any(k.startswith("stagger_worst_over_median[") for k in by_id)
    for t in data["targets"]:
        assert t["result"] in ("PASS", "FAIL", "SKIP") and t["threshold"] > 0
        assert (t["ratio"] is None) == (t["result"] == "SKIP"), t


def test_step_quick_json(runs):
    data, stderr = runs["step"]
    assert {"meta", "sizes", "refresh_spikes", "targets"} <= set(data)
    meta = data["meta"]
    assert meta["quick"] is True and meta["malloc"]["glibc"] in (True, False)
    for key in ("torch", "started_utc", "loadavg_start", "loadavg_end", "peers", "command", "device"):
        assert key in meta
    assert set(data["sizes"]) == {"i", "ii"}
    for size in data["sizes"].values():
        _check_size(size, peers=True, compiled=True)
    _check_targets(data, ["i", "ii"])
    peer_target = next(t for t in data["targets"] if t["id"] == "galore_vs_galore_torch[i]")
    assert (peer_target["result"] != "SKIP") == _peer_available("galore_torch")
    spikes = data["refresh_spikes"]
    import gradspace

    if "refresh_stagger" in gradspace.DEFAULTS:
        for key in ("unstaggered", "staggered"):
            assert len(spikes[key]["step_ms"]) == spikes["steps"]
            assert spikes[key]["worst_over_median"] >= 1
        assert spikes["unstaggered"]["max_refreshes_in_one_step"] > spikes["staggered"]["max_refreshes_in_one_step"]
    else:
        assert spikes["skipped"]
    assert "| contender | step ms (median) |" in stderr and "## Targets (issue 13)" in stderr


def test_step_gpu_cpu_quick_json(runs):
    data, stderr = runs["gpu"]
    assert data["meta"]["device"] == "cpu" and data["meta"]["quick"] is True
    assert set(data["sizes"]) == {"quick"}
    size = data["sizes"]["quick"]
    assert size["dtype"] == "torch.bfloat16" and size["size"]["vocab"] > 0
    _check_size(size, peers=False)
    names = {r["name"] for r in size["rows"]}
    assert {"GEMMs alone (rank 16, float32)", "GEMMs alone (rank 16, bfloat16)"} <= names
    _check_targets(data, ["quick"])
    assert set(data["galore_over_adamw"]) == {"torch.AdamW(fused)", "torch.AdamW(foreach)"}
    assert "| contender | step ms (median) |" in stderr
