"""Reliability contract: NaN/Inf policy, decomposition failures, construction errors, rank and shape extremes,
state memory."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import gradspace
from gradspace import PRESETS, SubspaceOptimizer
from gradspace.testing import check_nonfinite_skip, make_params, optim_db, run_steps, set_grads
from gradspace.testing.contract import assert_state_unchanged, clone_params

db = pytest.mark.parametrize("info", optim_db, ids=lambda i: i.name)


def _recorded(fn):
    """Run ``fn`` and return the warnings it emitted (every one, not deduplicated)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return caught


# --- NaN / Inf gradients ---------------------------------------------------------------------------------------------


@db
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_gradient_skips_the_step(info, bad):
    # after 3 steps the next step is a refresh (refresh_every=3): a NaN must not reach the decomposition either
    check_nonfinite_skip(info.make, make_params(), bad=bad, steps_before=3, index=0)


@db
def test_nonfinite_gradient_in_a_vector_skips_every_parameter(info):
    check_nonfinite_skip(info.make, make_params(), bad=math.nan, steps_before=2, index=2)


@db
@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_nonfinite_raise_names_the_parameter(info, named):
    p = make_params()
    opt = info.make([(f"w{i}", x) for i, x in enumerate(p)] if named else p, nonfinite="raise")
    run_steps(opt, p, 2)
    before = clone_params(p)
    set_grads(p, 2)
    p[1].grad[0, 0] = math.inf
    with pytest.raises(FloatingPointError, match=r"'w1'" if named else r"#1 of shape \(6, 12\)"):
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(p, before))


# --- decomposition failure -------------------------------------------------------------------------------------------


def _fail_next(monkeypatch, name: str, result=None):
    """Make ``torch.linalg.<name>`` raise LinAlgError (or return ``result(*args)``) until undone; count the calls."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if result is not None:
            return result(*args, **kwargs)
        raise torch.linalg.LinAlgError(f"injected failure of torch.linalg.{name}")

    monkeypatch.setattr(torch.linalg, name, broken)
    return calls


@pytest.mark.parametrize("projector", ["svd", "randomized"])
@pytest.mark.parametrize("how", ["raise", "nan"])
def test_failed_refresh_keeps_the_previous_basis(monkeypatch, projector, how):
    p = make_params([(16, 8), (8,)])
    opt = SubspaceOptimizer(p, lr=1e-2, projector=projector, rank=4, refresh_every=3)
    run_steps(opt, p, 3)  # first refresh at step 0
    basis = opt.state[p[0]]["proj.basis"].clone()
    # the exact projector decomposes with svd, the randomized one (Rayleigh–Ritz) with a small eigh
    name = "svd" if projector == "svd" else "eigh"
    decompose = getattr(torch.linalg, name)
    nan_result = lambda *a, **k: tuple(t * math.nan for t in decompose(*a, **k))  # noqa: E731  (silently NaN)
    calls = _fail_next(monkeypatch, name, nan_result if how == "nan" else None)
    with pytest.warns(RuntimeWarning, match="kept the previous basis"):
        run_steps(opt, p, 1, start=3)  # the second refresh fails
    monkeypatch.undo()
    assert calls
    state = opt.state[p[0]]
    assert torch.equal(state["proj.basis"], basis)
    assert state["proj.fallbacks"] == 1 and state["proj.count"] == 2
    assert all(bool(t.isfinite().all()) for t in state.values() if isinstance(t, torch.Tensor))
    run_steps(opt, p, 2, start=4)
    assert torch.equal(state["proj.basis"], basis)
    run_steps(opt, p, 1, start=6)  # the third refresh succeeds
    assert not torch.equal(state["proj.basis"], basis) and state["proj.fallbacks"] == 1
    assert all(bool(x.isfinite().all()) for x in p)


def test_failed_first_refresh_uses_a_random_orthonormal_basis(monkeypatch):
    p = make_params([(16, 8)])
    opt = SubspaceOptimizer(p, lr=1e-2, projector="online_pca", rank=3)
    _fail_next(monkeypatch, "svd")
    with pytest.warns(RuntimeWarning, match="a seeded random one"):
        run_steps(opt, p, 1)
    monkeypatch.undo()
    q = opt.state[p[0]]["proj.basis"]
    assert q.shape == (8, 3) and opt.state[p[0]]["proj.fallbacks"] == 1
    torch.testing.assert_close(q.T @ q, torch.eye(3), atol=1e-5, rtol=0)
    run_steps(opt, p, 3, start=1)  # online PCA then moves it (by QR), finitely
    assert bool(opt.state[p[0]]["proj.basis"].isfinite().all()) and bool(p[0].isfinite().all())


def test_failed_rule_decomposition_falls_back_without_half_updating(monkeypatch):
    """A LinAlgError in the orthogonal rule's exact SVD falls back to Newton–Schulz for that step, is counted and
    warned about, and the step is otherwise complete (step counters advance together, everything finite)."""
    p = make_params([(16, 8)])
    opt = SubspaceOptimizer(p, lr=1e-2, rule="orthogonal", ortho_method="svd", rank=4, refresh_every=3)
    run_steps(opt, p, 2)
    params_before = clone_params(p)
    _fail_next(monkeypatch, "svd")  # step 2 is not a refresh: only the rule decomposes
    with pytest.warns(RuntimeWarning, match="Newton–Schulz"):
        run_steps(opt, p, 1, start=2)
    monkeypatch.undo()
    state = opt.state[p[0]]
    assert state["rule.fallbacks"] == 1
    assert state["rule.step"] == state["step"] == 3
    assert not torch.equal(p[0], params_before[0])
    assert all(bool(t.isfinite().all()) for t in state.values() if isinstance(t, torch.Tensor))


# --- construction errors ---------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"projector": "pca"}, ValueError, r"projector='pca' is not one of the allowed values \[.*'svd'"),
    ({"rule": "adamw"}, ValueError, r"rule='adamw' is not one of the allowed values \[.*'adam'"),
    ({"residual": "keep"}, ValueError, r"residual='keep' is not one of the allowed values \[.*'fira'"),
    ({"on_refresh": "project"}, ValueError, r"on_refresh='project' is not one of the allowed values \[.*'rotate'"),
    ({"side": "top"}, ValueError, r"side='top'"),
    ({"nonfinite": "ignore"}, ValueError, r"nonfinite='ignore'"),
    ({"rank": 0}, ValueError, r"rank=0 must be an int >= 1"),
    ({"rank": -1}, ValueError, r"rank=-1 must be an int >= 1"),
    ({"rank": 1.5}, ValueError, r"rank=1.5.*\(0, 1\)"),
    ({"rank": 0.0}, ValueError, r"rank=0.0"),
    ({"rank": "a"}, TypeError, r"rank must be an int >= 1 or a float"),
    ({"rank": True}, TypeError, r"rank must be"),
    ({"refresh_every": 0}, ValueError, r"refresh_every=0 must be an int >= 1"),
    ({"refresh_every": 2.5}, TypeError, r"refresh_every must be an int"),
    ({"betas": (1.0, 0.9)}, ValueError, r"betas\[0\]=1.0 is outside the allowed range \[0.0, 1.0\)"),
    ({"betas": (-0.1, 0.9)}, ValueError, r"betas\[0\]=-0.1 is outside"),
    ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\]=1.0"),
    ({"betas": (0.9,)}, ValueError, r"betas must be a pair"),
    ({"lr": -1e-3}, ValueError, r"lr=-0.001"),
    ({"weight_decay": -0.1}, ValueError, r"weight_decay=-0.1"),
    ({"eps": -1.0}, ValueError, r"eps=-1.0"),
    ({"momentum": 1.0}, ValueError, r"momentum=1.0"),
    ({"rule": "sgdm", "nesterov": True, "dampening": 0.5}, ValueError, r"nesterov=True"),
    ({"state_dtype": torch.int32}, TypeError, r"state_dtype"),
    ({"rnak": 4}, TypeError, r"SubspaceOptimizer: unknown option\(s\) \['rnak'\]\. Allowed options: \[.*'rank'"),
]


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_bad_option_fails_at_construction(options, error, message):
    with pytest.raises(error, match=message):
        SubspaceOptimizer(make_params([(8, 6)]), **options)


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_bad_option_in_a_param_group_fails(options, error, message):
    message = message.replace("SubspaceOptimizer", "param group")
    p = make_params([(8, 6), (4,)])
    with pytest.raises(error, match=message):
        SubspaceOptimizer([{"params": [p[0]], **options}, {"params": [p[1]]}])
    opt = SubspaceOptimizer([{"params": [p[1]]}])
    with pytest.raises(error, match=message):
        opt.add_param_group({"params": [p[0]], **options})


def test_complex_params_are_rejected():
    with pytest.raises(ValueError, match=r"complex parameters \(parameter 'z'\).*view_as_real"):
        SubspaceOptimizer([("z", nn.Parameter(torch.randn(4, 4, dtype=torch.complex64)))])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_rejects_an_unknown_keyword(name):
    with pytest.raises(TypeError, match="update_proj_gapp"):
        PRESETS[name](make_params([(8, 6)]), rank=2, update_proj_gapp=3)


# --- rank and shape extremes -----------------------------------------------------------------------------------------


def _step(opt, params, steps=1):
    run_steps(opt, params, steps)
    return opt


def test_rank_at_least_the_side_warns_once_and_clamps():
    p = make_params([(8, 6), (12, 6), (8,)])
    caught = _recorded(lambda: _step(SubspaceOptimizer(p, rank=10), p, 2))
    user = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(user) == 1 and "rank=10" in str(user[0].message) and "(projected side 6)" in str(user[0].message)
    assert len([w for w in _recorded(lambda: SubspaceOptimizer(p, rank=6)) if issubclass(w.category, UserWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = _step(SubspaceOptimizer(p, rank=10), p, 2)
    assert opt.state[p[0]]["rule.exp_avg"].shape == (8, 6) and opt.state[p[0]]["proj.basis"].shape == (6, 6)
    assert opt.state[p[1]]["rule.exp_avg"].shape == (12, 6)
    assert opt.state[p[2]]["rule.exp_avg"].shape == (8,)


def test_no_warning_below_the_side_or_with_fractional_rank():
    p = make_params([(64, 32), (8,)])
    caught = _recorded(lambda: _step(SubspaceOptimizer(p, rank=0.25), p))
    assert not [w for w in caught if issubclass(w.category, UserWarning)]
    opt = _step(SubspaceOptimizer(p, rank=0.25), p)
    assert opt.state[p[0]]["rule.exp_avg"].shape == (64, 8) and opt.state[p[0]]["proj.basis"].shape == (32, 8)


@pytest.mark.parametrize(
    "side, coords, basis",
    [("smaller", (12, 3), (6, 3)), ("left", (12, 3), (6, 3)), ("larger", (6, 3), (12, 3)), ("right", (6, 3), (12, 3))],
)
def test_side_sets_the_projected_dimension(side, coords, basis):
    p = make_params([(6, 12)])
    opt = _step(SubspaceOptimizer(p, rank=3, side=side), p)
    assert opt.state[p[0]]["rule.exp_avg"].shape == coords and opt.state[p[0]]["proj.basis"].shape == basis


@pytest.mark.parametrize("side, coords, basis", [("smaller", (27, 4), (8, 4)), ("larger", (8, 4), (27, 4))])
def test_conv_kernel_is_viewed_out_by_rest(side, coords, basis):
    conv = nn.Conv2d(3, 8, 3)
    opt = SubspaceOptimizer([conv.weight], lr=1e-2, rank=4, side=side, refresh_every=3)
    before = conv.weight.detach().clone()
    for _ in range(4):
        opt.zero_grad()
        conv(torch.randn(2, 3, 5, 5)).square().mean().backward()
        opt.step()
    state = opt.state[conv.weight]
    assert state["rule.exp_avg"].shape == coords and state["proj.basis"].shape == basis
    assert conv.weight.shape == (8, 3, 3, 3) and not torch.equal(conv.weight, before)


def test_degenerate_shapes_run_in_full_space():
    p = make_params([(1, 8), (8, 1), (), (0, 4), (4, 0, 2)])
    before = clone_params(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = _step(SubspaceOptimizer(p, lr=1e-2, rank=2), p, 3)
    assert not [w for w in caught if issubclass(w.category, UserWarning)]
    for i in range(3):
        assert "proj.basis" not in opt.state[p[i]] and opt.state[p[i]]["rule.exp_avg"].shape == p[i].shape
        assert not torch.equal(p[i], before[i])
    assert p[3] not in opt.state and p[4] not in opt.state  # zero-size parameters are skipped


def test_noncontiguous_param_matches_contiguous():
    base = make_params([(12, 16)])[0]
    a = nn.Parameter(base.detach().T.clone())  # contiguous 16 × 12
    b = nn.Parameter(base.detach().clone().T)  # the same values, non-contiguous
    assert not b.is_contiguous()
    oa = SubspaceOptimizer([a], lr=1e-2, rank=3, refresh_every=2)
    ob = SubspaceOptimizer([b], lr=1e-2, rank=3, refresh_every=2)
    for i in range(5):
        set_grads([a], i)
        b.grad = a.grad.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# --- state memory ----------------------------------------------------------------------------------------------------

COUNTERS = 5 * 8  # step, proj.seed, proj.count, proj.fallbacks, rule.step: 8 bytes each


@pytest.mark.parametrize(
    "options, dtype, expected",
    [
        ({"projector": "svd"}, torch.float32, 8 * 4 * 4 + 2 * 16 * 4 * 4 + COUNTERS),  # basis n·r + moments 2·m·r
        ({"projector": "randomized"}, torch.float32, 8 * 4 * 4 + 2 * 16 * 4 * 4 + COUNTERS),
        ({"projector": "random"}, torch.float32, 2 * 16 * 4 * 4 + COUNTERS),  # no basis: a seed and a counter
        ({"projector": "svd"}, torch.bfloat16, 8 * 4 * 4 + 2 * 16 * 4 * 2 + COUNTERS),  # fp32 basis, bf16 moments
        ({"projector": "svd", "state_dtype": torch.float32}, torch.bfloat16, 8 * 4 * 4 + 2 * 16 * 4 * 4 + COUNTERS),
        ({"projector": "svd", "rule": "sgdm"}, torch.float32, 8 * 4 * 4 + 16 * 4 * 4 + COUNTERS),
        ({"projector": "svd", "rule": "sgdm", "momentum": 0.0}, torch.float32, 8 * 4 * 4 + COUNTERS),
        ({"projector": "svd", "residual": "fira"}, torch.float32, 8 * 4 * 4 + 2 * 16 * 4 * 4 + 4 + COUNTERS),
        ({"projector": "svd", "residual": "error_feedback"}, torch.float32,
         8 * 4 * 4 + 2 * 16 * 4 * 4 + 16 * 8 * 4 + COUNTERS),  # + the fp32 m × n error buffer
        ({"projector": "identity"}, torch.float32, 2 * 16 * 8 * 4 + COUNTERS),
    ],
    ids=lambda x: str(x) if isinstance(x, (dict, int)) else str(x).replace("torch.", ""),
)
def test_state_bytes_matches_a_hand_count(options, dtype, expected):
    p = make_params([(16, 8)], dtype=dtype)
    opt = _step(SubspaceOptimizer(p, lr=1e-2, rank=4, refresh_every=3, **options), p, 4)
    assert opt.state_bytes() == expected


def test_state_bytes_per_param_uses_names():
    p = make_params([(16, 8), (8,)])
    opt = _step(SubspaceOptimizer([("w", p[0]), ("b", p[1])], lr=1e-2, rank=4), p)
    per = opt.state_bytes(per_param=True)
    assert per == {"w": 8 * 4 * 4 + 2 * 16 * 4 * 4 + COUNTERS, "b": 2 * 8 * 4 + COUNTERS}
    assert opt.state_bytes() == sum(per.values())
    unnamed = _step(SubspaceOptimizer(clone_params(p), lr=1e-2, rank=4), p)
    assert set(unnamed.state_bytes(per_param=True)) == {"param0", "param1"}
    assert SubspaceOptimizer(p, rank=4).state_bytes() == 0  # lazy: nothing before the first step


def test_random_projector_stores_no_basis_and_regenerates_it():
    p = make_params([(16, 8)])
    opt = _step(SubspaceOptimizer(p, lr=1e-2, projector="random", rank=4, refresh_every=3), p, 5)
    state = opt.state[p[0]]
    assert "proj.basis" not in state and isinstance(state["proj.seed"], int) and state["proj.count"] == 2
    twin = copy.deepcopy(state)
    group = opt.param_groups[0]
    q1 = gradspace.registry.PROJECTORS["random"].basis(state, 8, 4, group, torch.device("cpu"))
    q2 = gradspace.registry.PROJECTORS["random"].basis(twin, 8, 4, group, torch.device("cpu"))
    assert torch.equal(q1, q2) and q1.shape == (8, 4)
    twin["proj.count"] += 1
    assert not torch.equal(q1, gradspace.registry.PROJECTORS["random"].basis(twin, 8, 4, group, torch.device("cpu")))
