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
    assert main(["bench", "--task", "lm", "--out", str(out), "--config", str(config), "--corpus", "stdlib",
                 "--lr-grid", "0.01", "0.02", "--max-extensions", "0", "--optimizers", "gs-galore", *MICRO]) == 0
    data = json.loads((out / "stdlib" / "results.json").read_text())
    assert {"config", "machine", "runs", "summary", "targets"} <= set(data) and data["mode"] == "standard"
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["versions"]["torch"]
    runs = data["runs"]
    assert all(RUN_KEYS <= set(r) for r in runs)
    # every method sweeps on seed 0 (adamw its own grid, the others --lr-grid), then seed 1 at its best lr
    by = {n: sorted((r["lr"], r["seed"]) for r in runs if r["name"] == n) for n in ("adamw", "gs-galore", "gs-mine")}
    assert {lr for lr, s in by["adamw"] if s == 0} == {0.001, 0.003} and len(by["adamw"]) == 3
    assert {lr for lr, s in by["gs-mine"] if s == 0} == {0.01, 0.02} and len(by["gs-galore"]) == 3
    for r in runs:
        assert r["curve"][-1][0] == 6 and len(r["curve"]) == 2 and all(len(p) == 3 for p in r["curve"])
        assert r["state_bytes"] > 0 and r["peak_rss_mb"] > 0 and r["tokens_per_s"] > 0
        if r["family"] == "gradspace":
            assert r["state_bytes"] == r["state_bytes_self_reported"]
    assert next(r for r in runs if r["name"] == "adamw")["state_ratio_vs_adamw"] == pytest.approx(1.0)
    assert data["corpus"]["source"] == "stdlib" and data["corpus"]["key"] == "stdlib"
    gs = next(r for r in data["summary"] if r["name"] == "gs-galore")
    assert gs["vs_tuned_adamw"]["against"] == "adamw" and gs["vs_tuned_adamw"]["verdict"] in ("better", "worse", "tie")
    md = (out / "stdlib" / "results.md").read_text()
    assert md.split("## Configurations")[0].count("| gs-") == 2 and "## Targets" in md and "95% CI" in md
    assert {"val_loss.png", "state_memory.png", "step_time.png", "summary.json", "runs.csv"} <= {
        p.name for p in (out / "stdlib").iterdir()}
    assert "runs" not in json.loads((out / "stdlib" / "summary.json").read_text())
    lrs = json.loads((out / "lrs.json").read_text())
    assert set(lrs["corpora"]["stdlib"]) == {"adamw", "gs-galore", "gs-mine"} and "T1" in lrs["targets"]["stdlib"]
    assert data["targets"]["T1"]["status"] in ("PASS", "FAIL", "TIE", "NOT RUN")
    printed = capsys.readouterr().out
    assert "T1" in printed and "targets on stdlib" in printed

    # quick mode: no sweep, the lrs that file chose, the same verdict lines
    quick = tmp_path / "quick"
    assert main(["bench", "--quick", "--out", str(quick), "--corpus", "stdlib", "--lrs-from", str(out / "lrs.json"),
                 "--optimizers", "adamw", "gs-galore", "--jobs", "1", *MICRO]) == 0
    q = json.loads((quick / "stdlib" / "results.json").read_text())
    assert all(not r["sweep"] for r in q["runs"]) and len(q["runs"]) == 4
    assert {r["name"]: r["lr"] for r in q["runs"]} == {k: lrs["corpora"]["stdlib"][k] for k in ("adamw", "gs-galore")}
    assert "standard run" in q["lr_source"] and "standard run on stdlib" in capsys.readouterr().out


def test_shipped_lrs_file_is_read_by_quick_mode():
    from gradspace.bench.cli import LRS_FILE, load_lrs, lrs_for
    from gradspace.bench.model import named_configs

    assert all(name.startswith("llama-") for name in named_configs())  # the lrs file is not a model config
    data = load_lrs(LRS_FILE)
    if data is None:
        pytest.skip("no committed standard run yet")
    chosen, where = lrs_for(data, "stdlib")
    assert chosen and all(lr > 0 for lr in chosen.values()) and "standard run" in where


@pytest.mark.parametrize("argv,message", [
    (["--steps", "-3"], "--steps: must be > 0"),
    (["--seeds", "0"], "--seeds: must be > 0"),
    (["--batch", "two"], "expected a int"),
    (["--rank-fraction", "1.5"], "(0, 1]"),
    (["--lr-grid", "0.01", "-1"], "--lr-grid: must be > 0"),
    (["--quick", "--scaling"], "not allowed with"),
    (["--optimizers", "adamq"], "unknown optimizer 'adamq'"),
    (["--data", "/no/such/file.txt"], "is not a file"),
    (["--config", "/no/such/bench.yaml"], "is not a file"),
    (["--hidden", "30", "--heads", "4"], "must divide"),
    (["--task", "digits", "--scaling"], "--scaling needs --task lm"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_failed_runs_exit_non_zero(tmp_path, capsys):
    bad = 'boom={"optimizer": "torch.optim.AdamW", "lr": 0.001, "kwargs": {"no_such_option": 1}}'
    assert main(["bench", "--out", str(tmp_path), "--corpus", "stdlib", "--no-lr-sweep", "--optimizers", bad,
                 "--inline", "--no-plots", *MICRO]) == 1
    assert "FAILED: boom" in capsys.readouterr().out


def test_every_bench_option_has_help_and_a_shown_default(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    from gradspace.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["bench"]
    for action in sub._actions:
        if action.dest in ("help",):
            continue
        assert action.help, f"{action.option_strings} has no help"
        shown = "default" in (action.help or "") or action.default in (None, False)
        assert shown or "%(default)" in sub.formatter_class("x")._get_help_string(action), action.option_strings
    assert "(default: bench_out)" in text and "(default: 3)" in text


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
