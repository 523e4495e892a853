"""Seeds → mean ± spread, best-lr selection, ratios to AdamW and the PASS/FAIL targets, on hand-made runs."""

from __future__ import annotations

import math
import statistics

import pytest

from gradspace.bench.stats import add_ratios, evaluate_targets, mean_spread, summarize


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


def _rows(gs_val, gs_state, free_val, free_state, galore_val=2.0, galore_state=140):
    runs = [adamw(1e-3, s, 2.00, False) for s in (0, 1)]
    runs += [run("galore", 1e-2, s, galore_val, optimizer="galore_torch.GaLoreAdamW", family="peer", state=galore_state)
             for s in (0, 1)]
    runs += [run("gs-best", 1e-2, s, gs_val, state=gs_state) for s in (0, 1)]
    runs += [run("gs-free", 1e-2, s, free_val, state=free_state, rank=1, residual=("apollo",)) for s in (0, 1)]
    add_ratios(runs, {"llama": 400})
    return summarize(runs)


def test_targets_pass_when_the_numbers_meet_them():
    rows = _rows(gs_val=1.99, gs_state=100, free_val=2.05, free_state=40)
    t = evaluate_targets(rows, hidden=64)
    assert t["T1"]["status"] == "PASS" and t["T1"]["best"] == "gs-best"
    assert t["T2"]["status"] == "PASS" and t["T2"]["best"] == "gs-free"
    assert t["tuned_adamw"]["val_loss"] == 2.0
    paired = t["T1"]["vs_galore_torch"]
    assert paired["seeds"] == ["0", "1"] and paired["diff"] == pytest.approx([-0.01, -0.01]) and paired["wins"] == 2


@pytest.mark.parametrize("gs_val,gs_state,why", [
    (2.05, 100, "1.02×AdamW"),          # too much quality lost
    (1.99, 104, "> 25%"),               # too much state (26 %)
    (2.001, 100, "galore-torch"),       # within 2 % of AdamW but not below galore-torch
])
def test_t1_fails_with_the_reason(gs_val, gs_state, why):
    t = evaluate_targets(_rows(gs_val, gs_state, 2.0, 40), hidden=64)
    assert t["T1"]["status"] == "FAIL" and why in t["T1"]["detail"]


def test_t1_needs_galore_to_hold_at_least_as_much_state():
    t = evaluate_targets(_rows(1.9, 100, 2.0, 40, galore_val=2.0, galore_state=90), hidden=64)
    assert t["T1"]["status"] == "FAIL" and "less state" in t["T1"]["detail"]


def test_t2_fails_on_state_or_quality():
    t = evaluate_targets(_rows(1.9, 100, 2.05, 44), hidden=64)
    assert t["T2"]["status"] == "FAIL"
    assert "> 10%" in t["T2"]["detail"] and "1.03×AdamW" not in t["T2"]["detail"]
    t = evaluate_targets(_rows(1.9, 100, 2.07, 40), hidden=64)
    assert "1.03×AdamW" in t["T2"]["detail"]
