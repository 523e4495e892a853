"""End to end: ``gradspace bench`` on a micro configuration writes the documented files and keys."""

from __future__ import annotations

import json
import sys

import pytest

from gradspace.bench import optimizers as bench_optimizers
from gradspace.cli import main

MICRO = ["--steps", "6", "--seq", "16", "--batch", "2", "--hidden", "32", "--intermediate", "64", "--layers", "1",
         "--heads", "2", "--val-batches", "2", "--eval-every", "3", "--seeds", "2", "--quiet", "--offline"]
RUN_KEYS = {"name", "optimizer", "lr", "seed", "val_loss", "state_bytes", "step_ms", "step_ratio_vs_adamw",
            "tokens_per_s", "peak_rss_mb", "curve"}


def test_bench_lm_micro_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "bench.yaml"
    config.write_text(
        "optimizers:\n"
        "  - {base: adamw, lr_grid: [0.001, 0.003]}\n"
        "  - {name: gs-mine, optimizer: gradspace.SubspaceOptimizer, lr: 0.01,\n"
        "     group: {rank: auto, projector: random, residual: apollo, refresh_every: auto}}\n"
    )
    assert main(["bench", "--task", "lm", "--out", str(out), "--config", str(config), "--lr-sweep",
                 "--optimizers", "gs-galore", *MICRO]) == 0
    data = json.loads((out / "results.json").read_text())
    assert {"config", "machine", "runs"} <= set(data)
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["versions"]["torch"]
    runs = data["runs"]
    assert all(RUN_KEYS <= set(r) for r in runs)
    # adamw: two lrs on seed 0, then seed 1 at the better one; the others: seeds 0 and 1
    adamw = [(r["lr"], r["seed"]) for r in runs if r["name"] == "adamw"]
    assert len(adamw) == 3 and {lr for lr, s in adamw if s == 0} == {0.001, 0.003}
    assert sorted((r["name"], r["seed"]) for r in runs if r["name"] != "adamw") == [
        ("gs-galore", 0), ("gs-galore", 1), ("gs-mine", 0), ("gs-mine", 1)]
    for r in runs:
        assert r["curve"][-1][0] == 6 and len(r["curve"]) == 2 and all(len(p) == 3 for p in r["curve"])
        assert r["state_bytes"] > 0 and r["peak_rss_mb"] > 0 and r["tokens_per_s"] > 0
        if r["family"] == "gradspace":
            assert r["state_bytes"] == r["state_bytes_self_reported"]
    ref = [r["step_ratio_vs_adamw"] for r in runs if r["name"] == "adamw"]
    assert sorted(ref)[1] == pytest.approx(1.0)  # the median AdamW run is the reference
    assert next(r for r in runs if r["name"] == "adamw")["state_ratio_vs_adamw"] == pytest.approx(1.0)
    assert data["corpus"]["source"] in ("shared", "cache", "stdlib")
    md = (out / "results.md").read_text()
    assert md.split("## Configurations")[0].count("| gs-") == 2 and "## Targets" in md
    assert {"val_loss.png", "state_memory.png", "step_time.png"} <= {p.name for p in out.iterdir()}
    assert data["targets"]["T1"]["status"] in ("PASS", "FAIL")
    assert "T1" in capsys.readouterr().out


def test_bench_digits_inline(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "digits"
    assert main(["bench", "--task", "digits", "--out", str(out), "--optimizers", "adamw", "gs-galore", "--steps", "4",
                 "--batch", "16", "--seeds", "1", "--inline", "--no-plots", "--quiet"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert {(r["name"], r["model"]) for r in data["runs"]} == {(n, m) for n in ("adamw", "gs-galore") for m in ("mlp", "cnn")}
    cnn = next(r for r in data["runs"] if r["name"] == "gs-galore" and r["model"] == "cnn")
    assert cnn["routed_tensors"] == 3  # both conv kernels (as matrices) and the hidden linear layer
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in data["runs"])


def test_sparse_task_without_the_module_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradspace.sparse.bench", None)  # importing it raises ImportError
    assert main(["bench", "--task", "sparse", "--out", str(tmp_path)]) == 2
    assert "sparse benchmark is not available" in capsys.readouterr().err


def test_sparse_task_calls_the_sparse_benchmark(tmp_path, monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("gradspace.sparse.bench")
    fake.run_sparse_benchmark = lambda out_dir, quick=False, seeds=3: calls.append((out_dir, quick, seeds)) or {"ok": 1}
    monkeypatch.setitem(sys.modules, "gradspace.sparse.bench", fake)
    assert main(["bench", "--task", "sparse", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == [(tmp_path, True, 2)]


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(KeyError, match="built-in names"):
        bench_optimizers.parse_optimizer_arg("adamq")
