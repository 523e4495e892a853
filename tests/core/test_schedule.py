"""When to refresh: the fixed period, staggering across weights, and the random-basis cache (same bases, stored)."""

from __future__ import annotations

import torch

import gradspace
from gradspace.schedule import refresh_due, stagger_offset


def _run(opt, params, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    counts = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        counts.append([opt.state[p]["proj.count"] for p in params])
    return counts


def test_every_period_refreshes_at_multiples_of_t():
    group = dict(gradspace.DEFAULTS, refresh_every=5)
    assert [s for s in range(16) if refresh_due(s, True, False, group, {"proj.seed": 3})] == [0, 5, 10, 15]


def test_stagger_spreads_refreshes_and_keeps_the_period():
    params = [torch.nn.Parameter(torch.randn(16, 12)) for _ in range(12)]
    opt = gradspace.SubspaceOptimizer(params, lr=1e-3, rank=2, refresh_every=8, refresh_stagger=True)
    counts = _run(opt, params, 24)
    refresh_steps = [[t for t in range(1, 24) if counts[t][i] != counts[t - 1][i]] for i in range(len(params))]
    for steps in refresh_steps:  # after the first basis at step 0, one refresh every 8 steps
        assert len(steps) >= 2 and all(b - a == 8 for a, b in zip(steps, steps[1:])), steps
    phases = {steps[0] % 8 for steps in refresh_steps}
    assert len(phases) >= 4, phases  # 12 weights spread over at least half the period's phases
    per_step = [sum(1 for s in refresh_steps if t in s) for t in range(8, 16)]
    assert max(per_step) < len(params)  # no step pays every decomposition
    assert all(counts[0][i] == 1 for i in range(len(params)))  # everyone starts with a basis at step 0


def test_stagger_offset_is_a_function_of_the_seed_only():
    group = dict(gradspace.DEFAULTS, refresh_stagger=True)
    assert stagger_offset({"proj.seed": 7}, 50, group) == stagger_offset({"proj.seed": 7}, 50, group)
    assert 0 <= stagger_offset({"proj.seed": 7}, 50, group) < 50
    assert stagger_offset({"proj.seed": 7}, 50, dict(gradspace.DEFAULTS)) == 0


def test_cached_random_basis_is_the_same_basis_stored():
    def make(cache):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(16, 12)), torch.nn.Parameter(torch.randn(12))]
        return params, gradspace.SubspaceOptimizer(params, lr=1e-2, projector="random", rank=3, refresh_every=3,
                                                   on_refresh="rotate", cache_random_basis=cache)
    p1, o1 = make(False)
    p2, o2 = make(True)
    _run(o1, p1, 7)
    _run(o2, p2, 7)
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
    assert "proj.basis" not in o1.state[p1[0]] and o2.state[p2[0]]["proj.basis"].shape == (12, 3)
    assert o2.state_bytes() - o1.state_bytes() == 12 * 3 * 4
