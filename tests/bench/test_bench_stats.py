"""Seeds → mean ± spread, best-lr selection, ratios to AdamW, paired t intervals, verdicts and the PASS/FAIL/TIE targets,
on hand-made runs; the intervals against scipy.stats as the reference."""

from __future__ import annotations

import math
import statistics
import sys

import pytest

from gradspace.bench.stats import (TARGETS, Target, add_comparisons, add_ratios, evaluate_target, evaluate_targets,
                                   mean_spread, paired, summarize, t_cdf, t_interval, t_quantile, verdict)


def run(name, lr, seed, val, *, optimizer="gradspace.X", family="gradspace", state=100, ms=2.0, sweep=False,
        rank=16, residual=("drop",), reference=False):
    return {"name": name, "optimizer": optimizer, "family": family, "model": "llama", "lr": lr, "seed": seed,
            "val_loss": val, "diverged": val is None, "state_bytes": state, "step_ms": ms, "tokens_per_s": 10.0,
            "peak_rss_mb": 100.0 + seed, "rank": rank, "residual": list(residual), "sweep": sweep, "reference": reference}


def test_mean_spread_is_sample_sd():
    s = mean_spread([2.0, 2.2, 2.6])
    assert s["mean"] == pytest.approx(2.2666666666)
    assert s["sd"] == pytest.approx(statistics.stdev([2.0, 2.2, 2.6])) == pytest.approx(math.sqrt(0.0933333333))
    assert (s["min"], s["max"], s["n"]) == (2.0, 2.6, 3)
    assert mean_spread([1.5]) == {"mean": 1.5, "sd": 0.0, "min": 1.5, "max": 1.5, "n": 1}
    assert mean_spread([None, float("nan")])["n"] == 0


def adamw(lr, seed, val, sweep, ms=1.0):
    return run("adamw", lr, seed, val, optimizer="torch.optim.AdamW", family="torch", state=400, ms=ms, sweep=sweep,
               rank=None, residual=(), reference=True)


def test_best_lr_from_sweep_then_all_seeds_at_it():
    runs = [adamw(1e-3, 0, 2.10, True), adamw(3e-3, 0, 2.00, True), adamw(1e-2, 0, None, True),
            adamw(3e-3, 1, 2.04, False)]
    (row,) = summarize(runs)
    assert row["lr"] == 3e-3 and row["seeds"] == [0, 1]
    assert row["val_loss"]["mean"] == pytest.approx(2.02) and row["val_loss"]["sd"] == pytest.approx(statistics.stdev([2.0, 2.04]))
    assert row["sweep"] == {"0.001": 2.10, "0.003": 2.00, "0.01": None}
    assert row["best_lr_at_grid_edge"] is False


def test_ratios_use_the_median_of_adamw_runs():
    runs = [adamw(1e-3, 0, 2.1, True, ms=1.0), adamw(3e-3, 0, 2.0, True, ms=3.0), adamw(3e-3, 1, 2.0, False, ms=2.0),
            run("gs", 1e-2, 0, 1.9, ms=4.0)]
    assert add_ratios(runs, {"llama": 400}) == 2.0
    assert runs[-1]["step_ratio_vs_adamw"] == 2.0 and runs[-1]["state_ratio_vs_adamw"] == 0.25


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12, 30, 200])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_scipy(df, p):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-10)
    assert t_quantile(1 - p, df) == pytest.approx(scipy_stats.t.ppf(1 - p, df), rel=1e-9, abs=1e-10)
    assert t_cdf(1.7, df) == pytest.approx(scipy_stats.t.cdf(1.7, df), rel=1e-10)


@pytest.mark.parametrize("xs", [[0.01, -0.02, 0.005], [1.0, 2.0, 4.0, 8.0], [-0.3, -0.31], [2.5, 2.4, 2.45, 2.6, 2.2]])
def test_t_interval_matches_scipy(xs, monkeypatch):
    scipy_stats = pytest.importorskip("scipy.stats")
    # scipy's array-API layer takes any module named "sparse" for pydata/sparse; our tests/sparse package is one
    if not hasattr(sys.modules.get("sparse"), "SparseArray"):
        monkeypatch.delitem(sys.modules, "sparse", raising=False)
    iv = t_interval(xs)
    low, high = scipy_stats.t.interval(0.95, len(xs) - 1, loc=statistics.fmean(xs), scale=scipy_stats.sem(xs))
    assert (iv["low"], iv["high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert iv["n"] == len(xs) and iv["mean"] == pytest.approx(statistics.fmean(xs))


def test_t_interval_needs_two_values_and_rejects_bad_p():
    assert t_interval([1.0])["low"] is None and t_interval([])["mean"] is None
    with pytest.raises(ValueError, match="p="):
        t_quantile(1.0, 3)


@pytest.mark.parametrize("low,high,threshold,expected", [
    (-0.3, -0.1, 0.0, "better"), (0.1, 0.2, 0.0, "worse"), (-0.1, 0.2, 0.0, "tie"), (0.0, 0.2, 0.0, "tie"),
    (0.95, 1.005, 1.01, "better"), (1.0, 1.02, 1.01, "tie"), (1.02, 1.05, 1.01, "worse")])
def test_verdict_only_when_the_interval_excludes_the_threshold(low, high, threshold, expected):
    assert verdict({"low": low, "high": high}, threshold) == expected


def test_verdict_without_an_interval_is_a_tie():
    assert verdict(None) == "tie" and verdict(t_interval([0.5])) == "tie"


def adamw_row(vals, name="adamw", lr=1e-3):
    return [adamw(lr, s, v, False) | {"name": name} for s, v in enumerate(vals)]


def test_paired_differences_use_common_seeds():
    runs = adamw_row([2.0, 2.1, 2.2]) + [run("gs", 1e-2, s, v) for s, v in enumerate([1.9, 2.05, None])]
    rows = {r["name"]: r for r in summarize(runs)}
    pair = paired(rows["gs"], rows["adamw"])
    assert pair["seeds"] == ["0", "1"] and pair["values"] == pytest.approx([-0.1, -0.05]) and pair["wins"] == 2
    ratio = paired(rows["gs"], rows["adamw"], ratio=True)
    assert ratio["values"] == pytest.approx([0.95, 2.05 / 2.1]) and ratio["kind"] == "ratio"


def _rows(cand_vals, cand_state, galore_vals, adamw_vals=(2.0, 2.1, 2.2), lrsplit_vals=None, name="gs-tiny"):
    runs = adamw_row(adamw_vals)
    if lrsplit_vals:
        runs += adamw_row(lrsplit_vals, name="adamw-lrsplit", lr=1e-2)
    runs += [run("galore", 1e-2, s, v, optimizer="galore_torch.GaLoreAdamW", family="peer", state=140)
             for s, v in enumerate(galore_vals)]
    runs += [run("apollo", 1e-2, s, v + 0.5, optimizer="apollo_torch.APOLLOAdamW", family="peer", state=140)
             for s, v in enumerate(galore_vals)]
    runs += [run(name, 1e-2, s, v, state=cand_state) for s, v in enumerate(cand_vals)]
    add_ratios(runs, {"llama": 400})
    rows = summarize(runs)
    add_comparisons(rows)
    return rows


def test_comparisons_against_tuned_adamw_and_the_best_peer():
    rows = {r["name"]: r for r in _rows([1.90, 2.01, 2.10], 40, [1.95, 2.05, 2.15], lrsplit_vals=[2.2, 2.3, 2.4])}
    gs = rows["gs-tiny"]
    assert gs["vs_tuned_adamw"]["against"] == "adamw" and gs["vs_best_peer"]["against"] == "galore"
    assert gs["vs_tuned_adamw"]["verdict"] == "better"  # −0.10, −0.09, −0.10: the interval is below 0
    assert gs["vs_best_peer"]["verdict"] == "better"
    assert rows["adamw"]["vs_tuned_adamw"] is None and rows["galore"]["vs_best_peer"] is None


def test_t1_pass_fail_tie_from_the_intervals():
    t1 = TARGETS[0]
    assert (t1.max_state_ratio, t1.max_val_ratio, t1.not_worse_than) == (0.125, 1.01, "galore_torch.GaLoreAdamW")
    # clearly within 1.01 × AdamW and not worse than galore-torch
    t = evaluate_target(_rows([1.99, 2.09, 2.19], 40, [2.0, 2.1, 2.2]), t1)
    assert t["status"] == "PASS" and t["best"] == "gs-tiny" and t["detail"]["quality"] == "PASS"
    # clearly beyond 1.01 ×
    t = evaluate_target(_rows([2.1, 2.2, 2.3], 40, [2.2, 2.3, 2.4]), t1)
    assert t["status"] == "FAIL" and t["detail"]["quality"] == "FAIL"
    # within 1.01 × but clearly worse than galore-torch
    t = evaluate_target(_rows([1.99, 2.09, 2.19], 40, [1.90, 2.00, 2.10]), t1)
    assert t["status"] == "FAIL" and t["detail"]["quality"] == "PASS" and t["detail"]["peer_clause"] == "FAIL"
    # the ratio interval straddles 1.01
    t = evaluate_target(_rows([2.05, 2.09, 2.21], 40, [2.3, 2.4, 2.5]), t1)
    assert t["status"] == "TIE" and t["detail"]["quality"] == "TIE"


def test_targets_respect_the_state_budget_and_name_planned_configs():
    rows = _rows([1.9, 2.0, 2.1], 60, [2.0, 2.1, 2.2])  # 15 % of AdamW's state: fits neither target
    t = evaluate_targets(rows)
    assert t["T1"]["status"] == "NOT RUN" and "12.5%" in t["T1"]["reason"] and t["T1"]["planned_missing"] == ["gs-fira-int8"]
    assert t["T2"]["status"] == "NOT RUN"
    # an int8 configuration enters T1 by name once it runs (and no longer counts as missing)
    rows = _rows([1.99, 2.09, 2.19], 48, [2.0, 2.1, 2.2], name="gs-fira-int8")
    t = evaluate_targets(rows)
    assert t["T1"]["best"] == "gs-fira-int8" and "planned_missing" not in t["T1"] and t["T2"]["status"] == "NOT RUN"
    only = Target("TX", 0.5, 1.05, candidates=("other",))
    assert evaluate_target(rows, only)["status"] == "NOT RUN"


def test_t2_has_no_peer_clause():
    t = evaluate_targets(_rows([2.02, 2.12, 2.22], 16, [1.5, 1.6, 1.7]))  # 4 %: worse than galore, within 1.03 ×
    assert t["T2"]["status"] == "PASS" and "peer_clause" not in t["T2"]["detail"]
    assert t["T1"]["status"] == "FAIL"  # the same config, judged against galore-torch


def test_tuned_adamw_is_the_better_of_one_lr_and_per_group_lrs():
    t = evaluate_targets(_rows([1.9, 2.0, 2.1], 16, [2.0, 2.1, 2.2], lrsplit_vals=[1.8, 1.9, 2.0]))
    assert t["tuned_adamw"]["name"] == "adamw-lrsplit" and t["best_peer"]["name"] == "galore"
