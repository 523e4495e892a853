"""refresh="adaptive": the decision rule with controlled gradients, its validation, and exact checkpoint resume."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import gradspace
from gradspace.diagnostics import captured_energy
from gradspace.schedule import refresh_due


def _weight_opt(**options):
    w = torch.nn.Parameter(torch.zeros(4, 6))  # smaller side 4 = rows: X = Gᵀ (6 × 4), basis 4 × r
    opt = gradspace.SubspaceOptimizer([w], lr=1e-3, projector="svd", rank=1, **options)
    return w, opt


def _step(w, opt, g):
    w.grad = g.clone()
    opt.step()


def _rank_one(i: int) -> torch.Tensor:
    u = torch.zeros(4)
    u[i] = 1.0
    return torch.outer(u, torch.ones(6))


def test_refreshes_when_energy_drops_respecting_min_gap():
    w, opt = _weight_opt(refresh="adaptive", refresh_threshold=0.5, refresh_min_gap=3, refresh_every=100)
    counts = []
    for t in range(12):
        _step(w, opt, _rank_one(0) if t < 6 else _rank_one(1))  # the gradient turns by 90° at step 6
        counts.append(opt.state[w]["proj.count"])
    # step 0: first basis; energy stays 1 until step 6's gradient, measured after step 6 -> refresh at step 7
    assert counts == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert opt.state[w]["sched.last_refresh"] == 7
    assert float(opt.state[w]["sched.energy"]) == pytest.approx(1.0)

    w, opt = _weight_opt(refresh="adaptive", refresh_threshold=0.5, refresh_min_gap=3, refresh_every=100)
    counts = []
    for t in range(6):
        _step(w, opt, _rank_one(0) if t < 1 else _rank_one(1))  # turns at step 1, but the gap must reach 3
        counts.append(opt.state[w]["proj.count"])
    assert counts == [1, 1, 1, 2, 2, 2]


def test_refresh_every_is_the_longest_gap_and_every_mode_is_unchanged():
    w, opt = _weight_opt(refresh="adaptive", refresh_threshold=0.5, refresh_min_gap=2, refresh_every=5)
    for _ in range(11):
        _step(w, opt, _rank_one(0))  # energy stays 1: only the maximum gap refreshes (steps 0, 5, 10)
    assert opt.state[w]["proj.count"] == 3

    w, opt = _weight_opt(refresh_every=5)
    for _ in range(11):
        _step(w, opt, _rank_one(0))
    assert opt.state[w]["proj.count"] == 3
    assert not any(k.startswith("sched.") for k in opt.state[w])  # the default schedule stores nothing new


def test_stored_energy_uses_the_orthogonal_projector_for_gaussian_bases():
    w = torch.nn.Parameter(torch.zeros(8, 10))
    opt = gradspace.SubspaceOptimizer([w], lr=1e-3, projector="random", rank=3, refresh="adaptive",
                                      refresh_min_gap=1, refresh_every=50, refresh_threshold=0.01)
    g = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    _step(w, opt, g)
    state = opt.state[w]
    q = gradspace.registry.PROJECTORS["random"].basis(state, 8, 3, opt.param_groups[0], w.device)
    ref = torch.linalg.norm(torch.linalg.pinv(q.T.double()) @ (q.T.double() @ g.double())) ** 2 / g.double().norm() ** 2
    assert float(state["sched.energy"]) == pytest.approx(float(ref), rel=1e-4)
    assert float(state["sched.energy"]) == pytest.approx(float(captured_energy(g.T, q, orthonormal=False)), rel=1e-6)


def test_the_update_feeds_the_schedule_without_any_hook():
    w, opt = _weight_opt(refresh="adaptive", refresh_threshold=0.5, refresh_min_gap=3, refresh_every=100)
    counts = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "missing measurement" warning: the update records the energy itself
        for t in range(12):
            _step(w, opt, _rank_one(0) if t < 6 else _rank_one(1))
            counts.append(opt.state[w]["proj.count"])
    assert counts[:7] == [1] * 7 and counts[7] == 2  # energy measured at step 6 → refresh at step 7
    assert float(opt.state[w]["sched.energy"]) == pytest.approx(1.0)


def test_decision_is_idempotent_within_a_step():
    group = dict(gradspace.DEFAULTS, refresh="adaptive", refresh_min_gap=2, refresh_every=10, refresh_threshold=0.5)
    state = {"sched.last_refresh": 3, "sched.energy": torch.tensor(0.2)}
    first = refresh_due(6, True, False, group, state)
    assert first and state["sched.last_refresh"] == 6
    assert refresh_due(6, True, False, group, state)  # asked again in the same step (DDP asks first)
    assert not refresh_due(7, True, False, group, state)  # min gap


def test_validation_errors_name_the_option():
    p = [torch.nn.Parameter(torch.zeros(4, 6))]
    with pytest.raises(ValueError, match="refresh="):
        gradspace.SubspaceOptimizer(p, refresh="sometimes")
    with pytest.raises(ValueError, match="refresh_threshold"):
        gradspace.SubspaceOptimizer(p, refresh="adaptive", refresh_threshold=1.5)
    with pytest.raises(ValueError, match="refresh_min_gap"):
        gradspace.SubspaceOptimizer(p, refresh="adaptive", refresh_min_gap=0)
    with pytest.raises(ValueError, match="refresh_min_gap=20 must be <= refresh_every=10"):
        gradspace.SubspaceOptimizer(p, refresh="adaptive", refresh_min_gap=20, refresh_every=10)
    with pytest.raises(ValueError, match="online_pca"):
        gradspace.SubspaceOptimizer(p, refresh="adaptive", projector="online_pca")


def _run(model, opt, xs):
    for x in xs:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def test_checkpoint_resume_is_exact():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, 12, generator=gen) for _ in range(30)]
    options = dict(lr=1e-2, projector="svd", rank=2, refresh="adaptive", refresh_threshold=0.6, refresh_min_gap=2,
                   refresh_every=12, on_refresh="rotate")

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        opt = gradspace.SubspaceOptimizer(model.parameters(), **options)
        return model, opt

    model, opt = fresh()
    _run(model, opt, xs)
    straight = [p.detach().clone() for p in model.parameters()]
    counts = [opt.state[p]["proj.count"] for p in model.parameters() if p.dim() == 2]
    assert max(counts) > 3, counts  # the run exercised adaptive refreshes

    model, opt = fresh()
    _run(model, opt, xs[:13])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt = fresh()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(model, opt, xs[13:])
    for a, b in zip(straight, model.parameters()):
        assert torch.equal(a, b.detach())
    assert counts == [opt.state[p]["proj.count"] for p in model.parameters() if p.dim() == 2]
