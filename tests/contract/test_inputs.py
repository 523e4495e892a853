"""Issue 11's general input cases, held by every optimizer of the contract table: an all-zero gradient at a refresh,
a refused param group that leaves nothing behind, a hand edit re-read at the next step."""

from __future__ import annotations

import warnings

import pytest
import torch

from gradspace.testing import make_params, optim_db

db = pytest.mark.parametrize("info", optim_db, ids=repr)


def _grads(params, gen, zero=False):
    for p in params:
        p.grad = torch.zeros_like(p) if zero else torch.randn(p.shape, generator=gen).to(p.dtype)


@db
def test_an_all_zero_gradient_at_a_refresh_installs_no_data_free_basis(info):
    p = make_params()
    opt = info.make(p)
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _grads(p, gen, zero=True)
        opt.step()  # step 0 refreshes every projected weight from a zero gradient
    for x in p:
        assert bool(x.isfinite().all())
        state = opt.state[x]
        if state.get("proj.fallbacks"):  # a data-dependent basis could not be computed: no refresh counted
            assert state["proj.count"] == 0
    _grads(p, gen)
    opt.step()  # the first real gradient computes the basis
    for x in p:
        state = opt.state[x]
        assert bool(x.isfinite().all())
        if state.get("proj.fallbacks"):
            assert state["proj.count"] == 1 and "proj.basis" in state


@db
def test_a_refused_param_group_leaves_the_optimizer_as_it_was(info):
    p = make_params()
    opt = info.make(p[:2])
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises((ValueError, TypeError)):
        opt.add_param_group({"params": [p[2]], "rank": -1})
    assert len(opt.param_groups) == len(before)
    opt.add_param_group({"params": [p[2]]})  # the corrected retry is accepted
    assert len(opt.param_groups) == len(before) + 1


@db
def test_a_bad_hand_edit_is_refused_before_any_weight_moves(info):
    p = make_params()
    opt = info.make(p)
    gen = torch.Generator().manual_seed(1)
    _grads(p, gen)
    opt.step()
    weights = [x.detach().clone() for x in p]
    opt.param_groups[0]["weight_decay"] = -1.0
    _grads(p, gen)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, p))
    opt.param_groups[0]["weight_decay"] = 0.0
    opt.step()  # fixed: the step goes through
