"""The math of one prune/regrow event as plain functions of tensors and integers (the ground truth the controller calls).

Every choice is deterministic given its inputs: ties are broken by flat index (stable sorts), budgets are integers
that sum exactly to their targets, so every rank of a data-parallel job that sees the same tensors picks the same
positions, and tests can recompute any selection by brute force.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: initial per-layer budget distributions
DISTRIBUTIONS = ("uniform", "erk")


#: how a layer's prune count p·nnz is rounded to an integer
ROUNDINGS = ("ceil", "floor")

#: sparse_learning's floor of the cosine prune-rate schedule (``CosineDecay(eta_min=0.005)``)
SPARSE_LEARNING_PRUNE_RATE_MIN = 0.005


def cosine_prune_rate(step: int, end_step: int, initial: float = 0.5, minimum: float = SPARSE_LEARNING_PRUNE_RATE_MIN
                      ) -> float:
    """p(t) = p_min + (p₀ − p_min)·(1 + cos(π·t/T))/2, t clamped to [0, T] (Dettmers & Zettlemoyer 2019, cosine decay).

    sparse_learning anneals the rate with ``CosineAnnealingLR(T_max=T, eta_min=0.005)`` stepped once per optimizer
    step, so its rate ends at the floor p_min = 0.005 (the default here), not at 0. ``minimum=0`` gives RigL's
    ``α/2·(1 + cos(π t/T))`` (Evci et al. 2020). The floor never exceeds p₀ (p_min := min(minimum, p₀)), so p₀ = 0
    means no pruning at all.

    Args:
        step: t, the optimizer step at which the event happens (≥ 0).
        end_step: T ≥ 1, the step at which the rate reaches the floor.
        initial: p₀ ∈ [0, 1), the rate at t = 0 (default 0.5).
        minimum: p_min ∈ [0, 1), the rate at t ≥ T (default 0.005, sparse_learning's ``eta_min``).

    Examples:
        >>> cosine_prune_rate(0, 100), cosine_prune_rate(50, 100), cosine_prune_rate(100, 100)
        (0.5, 0.2525, 0.005)
        >>> cosine_prune_rate(100, 100, minimum=0.0)
        0.0
    """
    t = min(max(int(step), 0), int(end_step))
    floor = min(float(minimum), float(initial))
    return floor + (initial - floor) * (1.0 + math.cos(math.pi * t / max(int(end_step), 1))) / 2.0


def prune_count(rate: float, active: int, rounding: str = "ceil") -> int:
    """k = ⌈p·nnz⌉ (``"ceil"``, sparse_learning's ``magnitude_prune``) or ⌊p·nnz⌋ (``"floor"``, RigL), at most nnz.

    Examples:
        >>> prune_count(0.25, 10), prune_count(0.25, 10, "floor"), prune_count(0.005, 3)
        (3, 2, 1)
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} must be one of {ROUNDINGS}.")
    x = float(rate) * int(active)
    k = math.ceil(x) if rounding == "ceil" else math.floor(x)
    return max(0, min(int(k), int(active)))


def layer_prune_rates(rate: float, actives: Sequence[int], numels: Sequence[int], scores: Sequence[float] | None,
                      dense_below: float = 0.2) -> list[float]:
    """p_l = min(sparsity_l, p) for a nearly dense layer that is growing, else p (Dettmers & Zettlemoyer 2019).

    sparse_learning's ``adjust_prune_rate``: a layer whose sparsity s_l = zeros_l/numel_l is below ``dense_below``
    (0.2: more than 80 % dense) and whose redistribution share π_l = score_l/Σ score exceeds the uniform share 1/L
    ("relatively dense but still growing") prunes at most the fraction s_l of its active weights, so it cannot shed
    more than it has room to regrow. ``scores=None`` (no redistribution) or Σ score = 0 leaves every rate at p.

    Args:
        rate: p, the schedule's rate at this event.
        actives: nnz_l, active weights per layer (before pruning).
        numels: numel_l per layer.
        scores: redistribution scores per layer (non-finite or negative count as 0), or ``None``.
        dense_below: the sparsity under which a layer counts as nearly dense (default 0.2, sparse_learning's).

    Examples:
        >>> layer_prune_rates(0.5, [95, 10], [100, 100], [3.0, 1.0])   # layer 0: 95 % dense and growing
        [0.05, 0.5]
        >>> layer_prune_rates(0.5, [95, 10], [100, 100], [1.0, 3.0])   # layer 0 dense but not growing
        [0.5, 0.5]
    """
    rates = [float(rate)] * len(actives)
    if scores is None or not actives:
        return rates
    s = [float(v) if math.isfinite(float(v)) and float(v) > 0 else 0.0 for v in scores]
    total = sum(s)
    if total <= 0:
        return rates
    uniform = 1.0 / len(s)
    for i, (active, numel) in enumerate(zip(actives, numels)):
        sparsity = (int(numel) - int(active)) / int(numel)
        if sparsity < dense_below and s[i] / total > uniform:
            rates[i] = min(sparsity, rates[i])
    return rates


def round_to_total(targets: Sequence[float], total: int, caps: Sequence[int]) -> list[int]:
    """Integers n_l ≤ cap_l with Σ n_l = total, closest to real ``targets`` (largest-remainder rounding, ties → lower l).

    ``targets`` must already satisfy 0 ≤ target_l ≤ cap_l and Σ target_l = total (up to float error).

    Examples:
        >>> round_to_total([1.5, 1.5, 1.0], 4, [10, 10, 10])
        [2, 1, 1]
    """
    floors = [min(int(math.floor(x + 1e-9)), c) for x, c in zip(targets, caps)]
    need = int(total) - sum(floors)
    order = sorted(range(len(targets)), key=lambda i: (-(targets[i] - floors[i]), i))
    out = list(floors)
    while need > 0:
        progressed = False
        for i in order:
            if need == 0:
                break
            if out[i] < caps[i]:
                out[i] += 1
                need -= 1
                progressed = True
        if not progressed:
            raise ValueError(f"cannot place {total} items under caps {list(caps)}")
    while need < 0:  # only reachable through float error in targets
        for i in reversed(order):
            if need == 0:
                break
            if out[i] > 0:
                out[i] -= 1
                need += 1
    return out


def allocate(total: int, scores: Sequence[float], caps: Sequence[int]) -> list[int]:
    """r_l ∝ s_l with r_l ≤ cap_l and Σ r_l = total (water-filling, then largest-remainder rounding).

    The redistribution of Dettmers & Zettlemoyer 2019: the freed budget goes to layers in proportion to their score; a
    layer that would receive more than its free positions is filled to its cap and the rest is re-shared among the
    others. Non-finite or negative scores count as 0; if every uncapped layer scores 0 the rest is shared ∝ caps.

    Args:
        total: the number of positions to place, 0 ≤ total ≤ Σ caps.
        scores: one score per layer (e.g. mean |momentum| over its active weights).
        caps: free positions per layer (≥ 0).

    Examples:
        >>> allocate(10, [1.0, 1.0, 2.0], [100, 1, 100])
        [3, 1, 6]
    """
    total = int(total)
    if total < 0 or total > sum(caps):
        raise ValueError(f"allocate: total={total} must be in [0, {sum(caps)}] (the free positions).")
    s = [float(v) if math.isfinite(float(v)) and float(v) > 0 else 0.0 for v in scores]
    out = [0.0] * len(s)
    free = [i for i in range(len(s)) if caps[i] > 0]
    remaining = float(total)
    while free and remaining > 0:
        weights = [s[i] for i in free]
        if sum(weights) <= 0:
            weights = [float(caps[i]) for i in free]
        lam = remaining / sum(weights)
        full = [i for i, w in zip(free, weights) if lam * w >= caps[i]]
        if not full:
            for i, w in zip(free, weights):
                out[i] = lam * w
            break
        for i in full:
            out[i] = float(caps[i])
            remaining -= caps[i]
        free = [i for i in free if i not in full]
    return round_to_total(out, total, caps)


def layer_counts(shapes: Sequence[Sequence[int]], density: float, distribution: str = "uniform") -> list[int]:
    """Active weights per layer, n_l, with Σ n_l = round(density·Σ numel_l) exactly.

    ``"uniform"``: n_l ≈ density·numel_l. ``"erk"`` (Erdős–Rényi-kernel, Evci et al. 2020, "Rigging the Lottery"):
    density_l = ε·(Σ dims_l)/(Π dims_l), ε solved so the total matches; a layer that would exceed density 1 is made
    dense and ε re-solved.

    Args:
        shapes: weight shapes (a conv kernel's spatial dims count in ERK).
        density: overall density in (0, 1].
        distribution: ``"uniform"`` or ``"erk"``.

    Examples:
        >>> layer_counts([(256, 64), (256, 256), (10, 256)], 0.1, "erk")
        [2462, 3939, 2047]
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r} must be one of {DISTRIBUTIONS}.")
    numels = [math.prod(int(s) for s in shape) for shape in shapes]
    total = int(round(density * sum(numels)))
    if distribution == "uniform":
        targets = [density * n for n in numels]
        return round_to_total(targets, total, numels)
    raw = [sum(int(s) for s in shape) / n for shape, n in zip(shapes, numels)]
    dense: set[int] = set()
    while True:
        budget = total - sum(numels[i] for i in dense)
        mass = sum(raw[i] * numels[i] for i in range(len(numels)) if i not in dense)
        eps = budget / mass if mass > 0 else 0.0
        over = {i for i in range(len(numels)) if i not in dense and eps * raw[i] >= 1.0}
        if not over:
            break
        dense |= over
    targets = [float(numels[i]) if i in dense else eps * raw[i] * numels[i] for i in range(len(numels))]
    return round_to_total(targets, total, numels)


def smallest_active(magnitude: Tensor, mask: Tensor, k: int) -> Tensor:
    """Flat indices of the ``k`` active positions (``mask`` True) with the smallest ``magnitude`` (ties → lower index).

    NaN magnitudes are treated as +∞ (never chosen before a finite one).

    Examples:
        >>> smallest_active(torch.tensor([0.1, 0.5, 0.1, 0.0]), torch.tensor([True, True, True, False]), 2)
        tensor([0, 2])
    """
    score = torch.nan_to_num(magnitude.detach().reshape(-1).float(), nan=math.inf)
    score = score.masked_fill(~mask.reshape(-1), math.inf)
    order = torch.sort(score, stable=True).indices
    return order[: int(k)]


def largest_inactive(score: Tensor, mask: Tensor, k: int) -> Tensor:
    """Flat indices of the ``k`` inactive positions (``mask`` False) with the largest ``score`` (ties → lower index).

    Active positions are never chosen (the defect of sparse_learning#22); NaN scores count as −∞.

    Examples:
        >>> largest_inactive(torch.tensor([3.0, 0.2, 0.2, 9.0]), torch.tensor([True, False, False, False]), 2)
        tensor([3, 1])
    """
    flat_mask = mask.reshape(-1)
    if int(k) > int((~flat_mask).sum()):
        raise ValueError(f"cannot grow {k} positions: only {int((~flat_mask).sum())} are inactive.")
    s = torch.nan_to_num(score.detach().reshape(-1).float(), nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    # Inactive positions with -inf scores must still rank above every active one: rank in two keys.
    key = torch.where(flat_mask, torch.zeros_like(s), torch.ones_like(s))
    order = torch.sort(s, descending=True, stable=True).indices
    order = order[torch.sort(key[order], descending=True, stable=True).indices]
    return order[: int(k)]
