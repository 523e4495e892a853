"""The standard mode's lr sweep: the grid first, then one ladder step beyond an edge while the best lr sits there."""

from __future__ import annotations

import pytest

from gradspace.bench.sweep import MAX_EXTENSIONS, STANDARD_GRID, at_edge, best_lr, next_lr, step_beyond
from gradspace.bench.train import run_job


def sweep(losses, grid=STANDARD_GRID, max_extensions=MAX_EXTENSIONS):
    """Drive next_lr with a loss function of the lr; returns the lrs in the order tried."""
    tried, order = {}, []
    lr = next_lr(tried, grid, max_extensions)
    while lr is not None:
        order.append(lr)
        tried[lr] = losses(lr)
        lr = next_lr(tried, grid, max_extensions)
    return order, tried


def test_grid_is_four_points_on_the_one_three_ladder():
    assert STANDARD_GRID == (1e-3, 3e-3, 1e-2, 3e-2) and MAX_EXTENSIONS >= 1


@pytest.mark.parametrize("lrs,up,expected", [
    ([1e-3, 3e-2], False, 3e-4), ([1e-3, 3e-2], True, 0.1), ([3e-4, 1e-3], False, 1e-4), ([0.1, 0.3], True, 1.0),
    ([2e-3, 4e-3], True, 8e-3), ([2e-3, 4e-3], False, 1e-3)])
def test_step_beyond_an_edge(lrs, up, expected):
    assert step_beyond(lrs, up) == pytest.approx(expected)


def test_interior_best_stops_after_the_grid():
    order, tried = sweep(lambda lr: {1e-3: 2.3, 3e-3: 2.1, 1e-2: 2.2, 3e-2: 2.5}[lr])
    assert order == list(STANDARD_GRID) and best_lr(tried) == 3e-3 and not at_edge(tried)


def test_best_at_the_low_edge_extends_down_until_bracketed():
    order, tried = sweep(lambda lr: abs(lr - 3e-4) * 100 + 2.0)  # best at 3e-4, below the grid
    assert order == [*STANDARD_GRID, 3e-4, 1e-4] and best_lr(tried) == 3e-4 and not at_edge(tried)


def test_best_at_the_high_edge_extends_up_and_divergence_counts_as_worse():
    order, tried = sweep(lambda lr: None if lr > 0.05 else 3.0 - lr)
    assert order == [*STANDARD_GRID, 0.1] and best_lr(tried) == 3e-2 and not at_edge(tried)


def test_extensions_are_capped_and_the_edge_is_reported():
    order, tried = sweep(lambda lr: lr, max_extensions=2)  # keeps improving downwards
    assert order == [*STANDARD_GRID, 3e-4, 1e-4] and at_edge(tried)
    assert sweep(lambda lr: lr, max_extensions=0)[0] == list(STANDARD_GRID)


def test_all_diverged_stops():
    order, tried = sweep(lambda lr: None)
    assert order == list(STANDARD_GRID) and best_lr(tried) is None


def test_run_job_sweeps_first_seed_then_runs_other_seeds_at_the_best(monkeypatch):
    from gradspace.bench import train

    calls = []

    def fake_run_one(cfg, spec, lr, seed, **kw):
        calls.append((lr, seed))
        return {"lr": lr, "seed": seed, "val_loss": abs(lr - 0.1) + 1.0}

    monkeypatch.setattr(train, "run_one", fake_run_one)
    job = {"config": {"task": "digits"}, "spec": {"name": "x"}, "lrs": list(STANDARD_GRID), "seeds": [0, 1, 2],
           "model": "mlp", "max_extensions": 3}
    results = run_job(job)
    assert calls == [(lr, 0) for lr in STANDARD_GRID] + [(0.1, 0), (0.3, 0), (0.1, 1), (0.1, 2)]
    assert [r["extension"] for r in results if r["sweep"]] == [False] * 4 + [True, True]
