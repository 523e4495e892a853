"""Smoke test of the digits benchmark: every method runs, files are written, budgets are exact (not the full run)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from gradspace.sparse.bench import METHODS, run_sparse_benchmark  # noqa: E402


def test_benchmark_smoke(tmp_path):
    result = run_sparse_benchmark(tmp_path, seeds=2, epochs=2, densities=(0.05, 0.1), verbose=False)
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md", "accuracy_vs_density.png"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"].keys() == set(METHODS)
    assert len(saved["runs"]) == 2 * (1 + 4 * 2)
    total = 64 * 256 + 256 * 256 + 256 * 10
    for run in saved["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0
        if run["method"] != "dense":
            assert run["active"] == round(run["density"] * total) >= run["nonzero"]
            assert run["events"] == (0 if run["method"] == "static" else 1)  # one event per epoch, none after the last
    assert saved["summary"]["sparse momentum"]["0.05"]["std"] >= 0.0
    md = (tmp_path / "results.md").read_text()
    assert "| 5% |" in md and "estimate" in md and "measured" in md
    assert len(result["checks"]) == 4


def test_benchmark_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="densities"):
        run_sparse_benchmark(tmp_path, densities=(0.0,))
    with pytest.raises(ValueError, match="methods"):
        run_sparse_benchmark(tmp_path, methods=("magic",))
    with pytest.raises(ValueError, match="seeds=0"):
        run_sparse_benchmark(tmp_path, seeds=0)
