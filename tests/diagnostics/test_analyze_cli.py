"""`gradspace analyze NAME --quick --out DIR` smoke tests (two analyses), the JSON contract, and missing extras."""

from __future__ import annotations

import json
import sys

import pytest

from gradspace.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["analyze", "tiny-subspace", "--quick", "--out", str(out)]) == 0
    return out


def test_tiny_subspace_quick_writes_the_overlap_contract(tiny, capsys):
    res = json.loads((tiny / "results.json").read_text())
    overlap = res["overlap"]
    assert all(len(pair) == 2 for pair in overlap) and [s for s, _ in overlap] == sorted(s for s, _ in overlap)
    after = [f for s, f in overlap if s >= res["setup"]["warmup_steps"]]
    assert after and min(after) > 0.9  # Gur-Ari et al.: the gradient lives in the top-10 eigenspace after warm-up
    assert res["eigengap_after_warmup_min"] > 1.8
    assert res["negative_control"]["fraction_after_warmup_mean"] < 0.5
    for name in ("overlap.png", "hessian_spectrum.png", "ablation.png"):
        assert (tiny / name).stat().st_size > 1000


def test_trajectory_pca_quick_writes_ratios(tmp_path, capsys):
    assert main(["analyze", "trajectory-pca", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["explained_variance_ratio"]) == len(res["random_walk_explained_variance_ratio"]) == 10
    theory = res["random_walk_prediction"]
    assert max(abs(a - b) for a, b in zip(res["random_walk_explained_variance_ratio"][:5], theory[:5])) < 0.02
    assert sum(res["explained_variance_ratio"]) <= 1.0 + 1e-9
    for name in ("explained_variance.png", "lissajous.png", "projections.png"):
        assert (tmp_path / name).exists()
    assert "trajectory-pca" in capsys.readouterr().out


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["analyze", "training-jacobian", "--quick", "--out", str(tmp_path)]) == 1
    assert 'pip install -e ".[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()  # failed before computing


def test_unknown_analysis_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "no-such-analysis"])
    assert "invalid choice" in capsys.readouterr().err
