"""The selection math against brute-force recomputations: schedules, budgets, ERK, top-k with ties, and the
rate schedule, rounding and dense-layer adjustment against sparse_learning's equations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gradspace.sparse import allocate, cosine_prune_rate, largest_inactive, layer_counts, smallest_active
from gradspace.sparse.selection import layer_prune_rates, prune_count


def test_cosine_prune_rate_matches_sparse_learning_cosine_decay():
    """Reference: sparse_learning's CosineDecay is a dummy SGD whose lr follows CosineAnnealingLR(T, eta_min=0.005),
    stepped once per optimizer step; its lr after t scheduler steps is the rate of an event at step t. Before the
    fix the rate decayed to 0 (0.0 at t = T instead of 0.005)."""
    for p0, T in ((0.5, 100), (0.3, 37), (0.2, 1)):
        sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=p0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=T, eta_min=0.005)
        for t in range(T + 1):
            assert cosine_prune_rate(t, T, p0) == pytest.approx(sgd.param_groups[0]["lr"], rel=1e-9, abs=1e-12), (p0, t)
            sgd.step()
            sched.step()
    assert cosine_prune_rate(100, 100, 0.5) == 0.005
    assert cosine_prune_rate(250, 100, 0.5) == 0.005  # clamped after the end (sparse_learning stops events there)
    assert cosine_prune_rate(0, 100, 0.5) == 0.5
    rates = [cosine_prune_rate(t, 50) for t in range(51)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_cosine_prune_rate_rigl_form_and_floor_never_above_p0():
    for t in range(0, 101, 7):  # minimum=0: RigL's α/2·(1 + cos(πt/T))
        assert cosine_prune_rate(t, 100, 0.3, minimum=0.0) == pytest.approx(
            0.3 * (1 + math.cos(math.pi * t / 100)) / 2, abs=1e-15)
    assert cosine_prune_rate(100, 100, 0.3, minimum=0.0) == 0.0
    assert cosine_prune_rate(40, 100, 0.0) == 0.0  # p0 = 0 means no pruning, whatever the floor
    assert cosine_prune_rate(40, 100, 0.002) == 0.002


def test_prune_count_ceil_matches_sparse_learning_and_floor_rigl():
    for rate, nnz in ((0.25, 10), (0.005, 3), (0.5, 7), (0.0, 9), (0.999, 4), (0.1, 0)):
        assert prune_count(rate, nnz) == math.ceil(rate * nnz)  # sparse_learning: math.ceil(prune_rate*nonzeros)
        assert prune_count(rate, nnz, "floor") == math.floor(rate * nnz)
    with pytest.raises(ValueError, match="rounding='round'.*'ceil', 'floor'"):
        prune_count(0.5, 4, "round")


def _adjust_reference(rate, actives, numels, scores):
    """sparse_learning's adjust_prune_rate, re-derived: π_l = s_l/Σs; if zeros_l/numel_l < 0.2 and (1/L)/π_l < 1
    the layer's rate is min(zeros_l/numel_l, p)."""
    pis = [v / sum(scores) for v in scores]
    out = []
    for a, n, pi in zip(actives, numels, pis):
        sparsity = (n - a) / n
        growing = pi > 0 and (1.0 / len(scores)) / pi < 1.0
        out.append(min(sparsity, rate) if sparsity < 0.2 and growing else rate)
    return out


def test_layer_prune_rates_match_sparse_learning_adjustment():
    rng = random.Random(0)
    for _ in range(300):
        n_layers = rng.randint(1, 5)
        numels = [rng.randint(5, 200) for _ in range(n_layers)]
        actives = [rng.choice([n, n - 1, rng.randint(int(0.7 * n), n), rng.randint(1, n)]) for n in numels]
        scores = [rng.choice([0.0, rng.random(), 10 * rng.random()]) for _ in numels]
        if sum(scores) == 0:
            scores[0] = 1.0
        rate = rng.choice([0.5, 0.2, 0.005, rng.random() * 0.9])
        assert layer_prune_rates(rate, actives, numels, scores) == pytest.approx(
            _adjust_reference(rate, actives, numels, scores), abs=0), (rate, actives, numels, scores)
    assert layer_prune_rates(0.5, [95, 10], [100, 100], None) == [0.5, 0.5]  # no redistribution: no adjustment
    assert layer_prune_rates(0.5, [95, 10], [100, 100], [0.0, 0.0]) == [0.5, 0.5]


def _water_fill_reference(total, scores, caps):
    """Independent statement of the spec: real shares λ·s_l capped at cap_l with Σ = total (λ found by bisection);
    what positive-score layers cannot hold goes to the others in proportion to their free positions."""
    s = [v if math.isfinite(v) and v > 0 else 0.0 for v in scores]

    def fill(amount, weights):
        if amount <= 0 or sum(w for w, c in zip(weights, caps) if c > 0) == 0:
            return [0.0] * len(caps)
        lo, hi = 0.0, 1.0
        while sum(min(c, hi * w) for c, w in zip(caps, weights)) < amount:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sum(min(c, mid * w) for c, w in zip(caps, weights)) < amount else (lo, mid)
        return [min(c, hi * w) for c, w in zip(caps, weights)]

    room = sum(c for c, v in zip(caps, s) if v > 0)
    if room >= total:
        return fill(total, s)
    rest = fill(total - room, [float(c) if v == 0 else 0.0 for c, v in zip(caps, s)])
    return [float(c) if v > 0 else r for c, v, r in zip(caps, s, rest)]


@pytest.mark.parametrize("case", range(200))
def test_allocate_is_exact_capped_and_within_one_of_water_filling(case):
    rng = random.Random(case)
    n = rng.randint(1, 6)
    caps = [rng.randint(0, 40) for _ in range(n)]
    scores = [rng.choice([0.0, rng.random(), rng.random() * 100]) for _ in range(n)]
    total = rng.randint(0, sum(caps))
    out = allocate(total, scores, caps)
    assert sum(out) == total
    assert all(0 <= r <= c for r, c in zip(out, caps))
    if total:
        ref = _water_fill_reference(total, scores, caps)
        assert all(abs(r - x) < 1 + 1e-6 for r, x in zip(out, ref)), (out, ref)


def test_allocate_known_cases_and_errors():
    assert allocate(10, [1.0, 1.0, 2.0], [100, 1, 100]) == [3, 1, 6]  # layer 1 capped, the rest re-shared 1:2
    assert allocate(6, [0.0, 0.0], [3, 9]) == [2, 4]  # no signal: shared ∝ free positions
    assert allocate(5, [float("nan"), 1.0], [10, 10]) == [0, 5]  # a NaN score counts as 0
    assert allocate(0, [1.0, 2.0], [5, 5]) == [0, 0]
    with pytest.raises(ValueError, match="total"):
        allocate(11, [1.0, 1.0], [5, 5])


SHAPES = [(256, 64), (256, 256), (10, 256), (16, 3, 3, 3)]


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("density", [0.001, 0.02, 0.1, 0.37, 0.9, 1.0])
def test_layer_counts_sum_exactly_to_the_target(distribution, density):
    counts = layer_counts(SHAPES, density, distribution)
    numels = [math.prod(s) for s in SHAPES]
    assert sum(counts) == round(density * sum(numels))
    assert all(0 <= c <= n for c, n in zip(counts, numels))
    if distribution == "uniform":
        assert all(abs(c - density * n) < 1 + 1e-9 for c, n in zip(counts, numels))


def test_erk_densities_follow_the_kernel_formula_and_cap_dense_layers():
    numels = [math.prod(s) for s in SHAPES]
    raw = [sum(s) / math.prod(s) for s in SHAPES]
    counts = layer_counts(SHAPES, 0.1, "erk")
    eps = [c / n / r for c, n, r in zip(counts, numels, raw)]  # density_l / raw_l is one common ε
    assert max(eps) / min(eps) == pytest.approx(1.0, abs=0.02)
    # at 30 % the small conv and the output layer would exceed 1: they are made dense, ε re-solved for the rest
    counts = layer_counts(SHAPES, 0.3, "erk")
    assert counts[2] == numels[2] and counts[3] == numels[3]
    d0, d1 = counts[0] / numels[0], counts[1] / numels[1]
    assert d0 / d1 == pytest.approx(raw[0] / raw[1], rel=1e-3)


def _brute_smallest(mag, mask, k):
    items = sorted((float("inf") if math.isnan(m) else m, i) for i, (m, a) in enumerate(zip(mag, mask)) if a)
    return [i for _, i in items[:k]]


def _brute_largest(score, mask, k):
    items = sorted((-(float("-inf") if math.isnan(s) else s), i) for i, (s, a) in enumerate(zip(score, mask)) if not a)
    return [i for _, i in items[:k]]


@pytest.mark.parametrize("seed", range(30))
def test_top_k_selection_matches_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n = 97
    values = torch.randint(0, 6, (n,), generator=g).float()  # many ties
    values[torch.randint(0, n, (3,), generator=g)] = float("nan")
    mask = torch.rand(n, generator=g) < 0.5
    k_prune = int(torch.randint(0, int(mask.sum()) + 1, (1,), generator=g))
    k_grow = int(torch.randint(0, int((~mask).sum()) + 1, (1,), generator=g))
    assert smallest_active(values, mask, k_prune).tolist() == _brute_smallest(values.tolist(), mask.tolist(), k_prune)
    assert largest_inactive(values, mask, k_grow).tolist() == _brute_largest(values.tolist(), mask.tolist(), k_grow)


def test_largest_inactive_never_picks_an_active_position_even_when_scores_are_minus_inf():
    score = torch.tensor([5.0, -math.inf, -math.inf, 7.0])
    mask = torch.tensor([True, False, False, True])
    assert sorted(largest_inactive(score, mask, 2).tolist()) == [1, 2]
    with pytest.raises(ValueError, match="inactive"):
        largest_inactive(score, mask, 3)
