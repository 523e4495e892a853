"""The torch.optim contract, run on every entry of gradspace.testing.optim_db (ported from torch's TestOptimRenewed)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from gradspace import SubspaceOptimizer
from gradspace.registry import ON_REFRESH, PROJECTORS, RESIDUALS, RULES, component_options, resolve_basis_dtype

#: the options every param group carried before components declared their own (gradspace ≤ 0.1.0 checkpoints)
OLD_DEFAULTS = {
    "betas": (0.9, 0.999), "eps": 1e-8, "bias_correction": "torch", "rotate_second_moment": False, "momentum": 0.9,
    "dampening": 0.0, "nesterov": False, "ortho_method": "auto", "ns_steps": 5, "power_iters": 1, "oversample": 8,
    "pca_lr": None, "random_dist": "gaussian", "residual_scale_type": "channel", "limiter_gamma": 1.01,
    "residual_lr_scale": 1.0,
}
from gradspace.testing import (
    check_deepcopy,
    check_matches_reference,
    check_state_dict_resume,
    check_state_types,
    check_zero_grad_noop,
    make_params,
    optim_db,
    run_steps,
    set_grads,
)
from gradspace.testing.contract import assert_params_equal, clone_params, iter_state_tensors

db = pytest.mark.parametrize("info", optim_db, ids=lambda i: i.name)
references = pytest.mark.parametrize("info", [i for i in optim_db if i.reference], ids=lambda i: i.name)


def test_db_covers_every_component():
    seen: dict[str, set] = {"projector": set(), "rule": set(), "residual": set(), "on_refresh": set()}
    for info in optim_db:
        for group in info.make(make_params()).param_groups:
            for key in seen:
                seen[key].add(group[key])
    assert seen["projector"] >= set(PROJECTORS)
    assert seen["rule"] >= set(RULES)
    assert seen["residual"] >= set(RESIDUALS)
    assert seen["on_refresh"] >= set(ON_REFRESH)


# --- degenerate cases: identity projector ≡ torch.optim -------------------------------------------------------------


@references
@pytest.mark.parametrize("maximize", [False, True])
def test_identity_matches_torch(info, maximize):
    check_matches_reference(
        lambda p: info.make(p, maximize=maximize),
        lambda p: info.reference(p, maximize=maximize),
        make_params(),
        steps=50,
        grad_scale=-1.0 if maximize else 1.0,
    )


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize(
    "momentum, nesterov, dampening", [(0.9, False, 0.0), (0.9, True, 0.0), (0.9, False, 0.5), (0.0, False, 0.0)]
)
def test_identity_sgdm_matches_sgd(momentum, nesterov, dampening, maximize):
    options = dict(lr=0.05, momentum=momentum, nesterov=nesterov, dampening=dampening, maximize=maximize)
    check_matches_reference(
        lambda p: SubspaceOptimizer(p, projector="identity", rule="sgdm", **options),
        lambda p: torch.optim.SGD(p, **options),
        make_params(),
        steps=50,
        grad_scale=-1.0 if maximize else 1.0,
    )


def test_identity_adam_on_a_real_conv_net_matches_adamw():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    ref = copy.deepcopy(net)
    opt = SubspaceOptimizer(net.parameters(), lr=1e-2, projector="identity", rule="adam", weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(4, 3, 6, 6)
    for _ in range(50):
        for model, o in ((net, opt), (ref, ref_opt)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for p, q in zip(net.parameters(), ref.parameters()):
        assert p.shape == q.shape
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


# --- state_dict -------------------------------------------------------------------------------------------------------


@db
@pytest.mark.parametrize("k", [4, 7])
def test_state_dict_resume_is_bitwise_exact(info, k):
    check_state_dict_resume(info.make, make_params(), steps_before=k, steps_after=6)


@db
def test_state_dict_resume_with_named_params(info):
    check_state_dict_resume(lambda p: info.make([(f"w{i}", x) for i, x in enumerate(p)]), make_params(), 5, 4)


@db
def test_can_load_an_older_state_dict(info):
    p = make_params()
    opt = info.make(p)
    run_steps(opt, p, 4)
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:  # a checkpoint written before these options existed ...
        for key in ("ortho_svd_max", "svd_warmup_steps", "radial_eps"):
            group.pop(key, None)
        for key, value in OLD_DEFAULTS.items():  # ... and when every group carried every component's options
            group.setdefault(key, value)
    q = clone_params(p)
    fresh = info.make(q)
    fresh.load_state_dict(old)
    for g in fresh.param_groups:  # the missing options are back, at their defaults
        assert set(component_options(g)) <= set(g) and g["radial_eps"] == 1e-8
        if g["rule"] == "orthogonal":
            assert g["ortho_svd_max"] == 64
    run_steps(fresh, q, 2, start=4)
    assert all(bool(x.isfinite().all()) for x in q)


@db
def test_resume_keeps_seeds_and_counters(info):
    p = make_params()
    opt = info.make(p)
    run_steps(opt, p, 5)
    fresh = info.make(clone_params(p))
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    loaded = [x for group in fresh.param_groups for x in group["params"]]
    for i, (a, b) in enumerate(zip(p, loaded)):
        for key in ("step", "proj.seed", "proj.count"):
            assert type(fresh.state[b][key]) is int and fresh.state[b][key] == opt.state[a][key], (i, key)
    if info.refresh_every:
        assert opt.state[p[0]]["proj.count"] >= 2  # the first matrix was refreshed during the run


@db
def test_state_holds_only_tensors_and_numbers(info):
    p = make_params()
    opt = info.make(p)
    run_steps(opt, p, 4)
    check_state_types(opt)


@db
@pytest.mark.parametrize(
    "dtype, state_dtype",
    [(torch.bfloat16, None), (torch.bfloat16, torch.float32), (torch.float16, torch.float32)],
    ids=str,
)
def test_low_precision(info, dtype, state_dtype):
    # fp16 moments underflow (v → 0, a step of m/eps), as with torch.optim.AdamW; fp16 runs keep fp32 state
    make = lambda p: info.make(p, state_dtype=state_dtype)  # noqa: E731
    p = make_params(dtype=dtype)
    opt = make(p)
    run_steps(opt, p, 5)
    assert all(x.dtype == dtype and bool(x.isfinite().all()) for x in p)
    assert not any("nonfinite_skips" in st for st in opt.state.values())
    for index, key, t in iter_state_tensors(opt):
        if key.startswith("rule."):
            assert t.dtype == (state_dtype or dtype), (index, key, t.dtype)
        elif key == "proj.basis":  # fp32 unless the entry stores bases in bf16 (basis_dtype)
            assert t.dtype == resolve_basis_dtype(info.kwargs.get("basis_dtype")), (index, key, t.dtype)
        else:  # limiter norms and error buffers are always fp32
            assert t.dtype == torch.float32, (index, key, t.dtype)
    check_state_dict_resume(make, make_params(dtype=dtype), steps_before=4, steps_after=5)


# --- param groups, learning rates ------------------------------------------------------------------------------------


def test_param_groups_with_different_components():
    p = make_params()
    q = clone_params(p)
    groups = [
        {"params": [p[0]], "projector": "random", "rule": "sgdm", "rank": 3, "momentum": 0.9},
        {"params": [p[1]], "projector": "svd", "rule": "adam", "rank": 2, "weight_decay": 0.1},
        {"params": [p[3]], "projector": "randomized", "rule": "lion", "rank": 5, "residual": "sign", "lr": 1e-3},
        {"params": [p[2], p[4]], "projector": "identity", "rule": "adam"},
    ]
    opt = SubspaceOptimizer(groups, lr=1e-2, refresh_every=3)
    run_steps(opt, p, 7)
    assert opt.state[p[0]]["rule.momentum_buffer"].shape == (16, 3) and "proj.basis" not in opt.state[p[0]]
    assert opt.state[p[1]]["rule.exp_avg"].shape == (12, 2) and opt.state[p[1]]["proj.basis"].shape == (6, 2)
    assert opt.state[p[3]]["rule.exp_avg"].shape == (27, 5) and opt.state[p[3]]["proj.basis"].shape == (8, 5)
    assert opt.state[p[2]]["rule.exp_avg"].shape == (8,) and "proj.basis" not in opt.state[p[2]]
    # each group behaves as an optimizer of its own (parameter index 0 keeps the random seed equal)
    for group, i in ((groups[0], [0]), (groups[1], [1]), (groups[3], [2, 4])):
        alone = [q[j] for j in i]
        solo = SubspaceOptimizer([{**group, "params": alone}], lr=1e-2, refresh_every=3)
        for step in range(7):
            set_grads(q, step)
            solo.step()
        assert_params_equal([p[j] for j in i], alone, f"group with params {i}")
    assert not torch.equal(p[3], q[3])  # the lion group was trained (q[3] never was)


@db
def test_param_group_with_zero_lr_is_unchanged(info):
    p = make_params()
    before = clone_params(p)
    opt = info.make([{"params": [p[0], p[2]], "lr": 0.0}, {"params": [p[1], p[3], p[4]]}])
    run_steps(opt, p, 5)
    assert torch.equal(p[0], before[0]) and torch.equal(p[2], before[2])
    assert not torch.equal(p[1], before[1]) and not torch.equal(p[3], before[3])


@db
def test_lr_scheduler_changes_the_step_size(info):
    p = make_params()
    opt = info.make(p)
    scheduler = StepLR(opt, step_size=1, gamma=0.1)
    run_steps(opt, p, 2)
    p_same, opt_same = copy.deepcopy((p, opt))
    scheduler.step()
    before = clone_params(p)
    set_grads(p, 2)
    set_grads(p_same, 2)
    opt.step()
    opt_same.step()
    for x, y, b in zip(p, p_same, before):
        scheduled, unscheduled = (x - b).detach(), (y - b).detach()
        assert unscheduled.abs().max() > 1e-4
        torch.testing.assert_close(scheduled, 0.1 * unscheduled, rtol=1e-3, atol=2e-6)


@db
def test_tensor_lr_equals_float_lr(info):
    p, q = make_params(), make_params()
    a = info.make(p, lr=0.01)
    b = info.make(q, lr=torch.tensor(0.01, dtype=torch.float64))
    for i in range(5):
        set_grads(p, i)
        set_grads(q, i)
        a.step()
        b.step()
    assert_params_equal(p, q, "tensor lr")


# --- step, grads, hooks, copies --------------------------------------------------------------------------------------


@db
def test_step_with_closure_returns_the_loss(info):
    p = make_params()
    before = clone_params(p)
    opt = info.make(p)

    def closure():
        opt.zero_grad()
        loss = sum((x.float() - 1).square().sum() for x in p)
        loss.backward()
        return loss

    losses = [opt.step(closure) for _ in range(3)]
    assert all(isinstance(loss, torch.Tensor) for loss in losses)
    assert losses[0].item() == pytest.approx(sum((x.float() - 1).square().sum().item() for x in before))
    assert opt.step() is None
    assert not torch.equal(p[0], before[0])


@db
def test_zero_grad(info):
    p = make_params()
    opt = info.make(p)
    set_grads(p, 0)
    opt.step()
    opt.zero_grad(set_to_none=False)
    assert all(x.grad is not None and not x.grad.any() for x in p)
    opt.zero_grad()
    assert all(x.grad is None for x in p)


@db
def test_params_without_grad_are_skipped(info):
    p = make_params()
    before = clone_params(p)
    opt = info.make(p)
    for i in range(4):
        set_grads(p, i)
        p[1].grad = None
        p[2].grad = None
        opt.step()
    assert torch.equal(p[1], before[1]) and torch.equal(p[2], before[2])
    assert p[1] not in opt.state and p[2] not in opt.state
    assert not torch.equal(p[0], before[0]) and not torch.equal(p[3], before[3])
    set_grads(p, 4)
    opt.step()  # a late-joining parameter gets state then
    assert opt.state[p[1]]["step"] == 1 and opt.state[p[0]]["step"] == 5


@db
def test_zero_grads_are_a_noop(info):
    check_zero_grad_noop(lambda p: info.make(p, weight_decay=0.0), make_params(), steps=4)


@db
def test_deepcopy(info):
    check_deepcopy(info.make, make_params())


@db
def test_repr(info):
    text = repr(info.make(make_params()))
    assert text.startswith(type(info.make(make_params())).__name__) and "projector" in text and "lr" in text


@db
def test_no_state_after_init(info):
    opt = info.make(make_params())
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}


@db
def test_step_hooks_fire_in_order(info):
    p = make_params()
    opt = info.make(p)
    calls: list[int] = []
    handles = [
        register_optimizer_step_pre_hook(lambda *_: calls.append(0)),
        opt.register_step_pre_hook(lambda *_: calls.append(1)),
        opt.register_step_post_hook(lambda *_: calls.append(2)),
        register_optimizer_step_post_hook(lambda *_: calls.append(5)),
    ]
    try:
        set_grads(p, 0)
        opt.step()
        assert calls == [0, 1, 2, 5]
    finally:
        for handle in handles:
            handle.remove()
    opt.step()
    assert calls == [0, 1, 2, 5]
