"""The selection math against brute-force recomputations: schedules, budgets, ERK, top-k with ties."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gradspace.sparse import allocate, cosine_prune_rate, largest_inactive, layer_counts, smallest_active


def test_cosine_prune_rate_matches_formula_and_ends_at_zero():
    for t in range(0, 101, 7):
        assert cosine_prune_rate(t, 100, 0.3) == pytest.approx(0.3 * (1 + math.cos(math.pi * t / 100)) / 2, abs=1e-15)
    assert cosine_prune_rate(100, 100, 0.5) == 0.0
    assert cosine_prune_rate(250, 100, 0.5) == 0.0  # clamped after the end
    assert cosine_prune_rate(0, 100, 0.5) == 0.5
    rates = [cosine_prune_rate(t, 50) for t in range(51)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


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
