"""Mechanism tests of the components: the properties each projector, rule, residual and refresh policy must have
exactly or to a stated tolerance, independent of any preset.

Projectors are exercised through their protocol (``refresh`` / ``basis`` on a state dict, in the oriented frame
X (a × b) whose b columns are projected), the rest through ``SubspaceOptimizer`` or the public helpers.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import gradspace
from gradspace.projectors import OnlinePCA, Random, RandomizedSVD, SVD
from gradspace.registry import DEFAULTS
from gradspace.residuals.base import limit_growth
from gradspace.rules import Lion, newton_schulz, svd_orthogonalize


def _group(**overrides):
    group = dict(DEFAULTS)
    group.update(overrides)
    return group


def _state(seed: int = 1, count: int = 1, step: int = 0) -> dict:
    return {"step": step, "proj.seed": seed, "proj.count": count}


def _spectral_matrix(a: int, b: int, top, tail: float, seed: int = 0) -> torch.Tensor:
    """U diag(s) Vᵀ with the given leading singular values and the rest equal to ``tail``."""
    gen = torch.Generator().manual_seed(seed)
    k = min(a, b)
    u = torch.linalg.qr(torch.randn(a, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(b, k, generator=gen)).Q
    s = torch.full((k,), float(tail))
    s[: len(top)] = torch.tensor(top, dtype=torch.float32)
    return u @ torch.diag(s) @ v.T


def _cos_principal_angles(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spaces of two orthonormal b × r bases."""
    return torch.linalg.svdvals(q1.T @ q2)


def _top_right(x: torch.Tensor, r: int) -> torch.Tensor:
    return torch.linalg.svd(x, full_matrices=False).Vh[:r].T


def _assert_orthonormal(q: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(q.T @ q, torch.eye(q.shape[1]), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# projectors
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_svd_randomized_online_pca_bases_are_orthonormal(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    r = 5
    b = x.shape[1]
    for projector, group in [
        (SVD(), _group()),
        (RandomizedSVD(), _group()),
        (RandomizedSVD(), _group(power_iters=0, oversample=0)),
        (RandomizedSVD(), _group(power_iters=3, oversample=2)),
        (OnlinePCA(), _group(refresh_every=4, pca_method="oja")),  # the AdamW step keeps P unconstrained
    ]:
        state = _state()
        for step in range(4):  # first refresh (cold), then warm-started / online steps
            state["step"] = step
            state["proj.count"] = step + 1
            projector.refresh(x + 0.1 * step, r, state, group)
            q = projector.basis(state, b, r, group, x.device)
            assert q.shape == (b, r)
            _assert_orthonormal(q)


def test_svd_basis_is_the_exact_top_subspace():
    x = _spectral_matrix(30, 20, [9.0, 7.0, 5.0], 0.5)
    state = _state()
    SVD().refresh(x, 3, state, _group())
    cos = _cos_principal_angles(state["proj.basis"], _top_right(x.double(), 3).float())
    torch.testing.assert_close(cos, torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("power_iters", [1, 2])
def test_randomized_basis_spans_the_svd_subspace_given_a_spectral_gap(power_iters):
    x = _spectral_matrix(60, 40, [10.0, 8.0, 6.0, 5.0], 0.05)
    exact = _top_right(x.double(), 4).float()
    state = _state(seed=3)
    group = _group(power_iters=power_iters, oversample=4)
    RandomizedSVD().refresh(x, 4, state, group)
    cos = _cos_principal_angles(state["proj.basis"], exact)
    assert cos.min() > 1 - 1e-6, cos  # gap 5/0.05 → angles ~ (0.01)^(2q+1)
    # Rayleigh–Ritz orders the directions like the SVD: each column is the matching singular vector (up to sign)
    torch.testing.assert_close((state["proj.basis"].T @ exact).abs().diagonal(), torch.ones(4), atol=1e-4, rtol=0)


def test_randomized_warm_start_improves_a_poor_basis():
    """Subspace iteration from the previous basis: with no oversampling and one power step per refresh, the
    principal angles to the top subspace shrink refresh after refresh on a fixed matrix."""
    x = _spectral_matrix(50, 30, [4.0, 3.5, 3.0], 1.0)
    exact = _top_right(x.double(), 3).float()
    state = _state(seed=9)
    group = _group(power_iters=1, oversample=0)
    worst = []
    for c in range(1, 12):
        state["proj.count"] = c
        RandomizedSVD().refresh(x, 3, state, group)
        worst.append(float(_cos_principal_angles(state["proj.basis"], exact).min()))
    assert worst[-1] > 1 - 1e-4
    assert all(b >= a - 1e-6 for a, b in zip(worst, worst[1:])), worst


def test_online_pca_first_refresh_is_the_exact_svd_then_converges_to_top_subspace():
    noise = torch.randn(30, 20, generator=torch.Generator().manual_seed(1))
    x = _spectral_matrix(30, 20, [5.0, 4.0, 3.0], 0.0) + 0.01 * noise
    exact = _top_right(x.double(), 3).float()
    pca, group = OnlinePCA(), _group(pca_lr=0.5, pca_method="oja")
    state = _state()
    pca.refresh(x, 3, state, group)
    assert _cos_principal_angles(state["proj.basis"], exact).min() > 1 - 1e-6
    # start from a random orthonormal basis and run the online (Oja) step on the fixed gradient
    state["proj.basis"] = torch.linalg.qr(torch.randn(20, 3, generator=torch.Generator().manual_seed(2))).Q
    start = float(_cos_principal_angles(state["proj.basis"], exact).min())
    for _ in range(300):
        pca.refresh(x, 3, state, group)
        _assert_orthonormal(state["proj.basis"])
    end = float(_cos_principal_angles(state["proj.basis"], exact).min())
    assert start < 0.9 and end > 1 - 1e-5, (start, end)


def test_online_pca_step_size_defaults_to_inverse_refresh_period():
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(4))
    q0 = torch.linalg.qr(torch.randn(10, 2, generator=torch.Generator().manual_seed(5))).Q
    out = {}
    for name, group in [("default", _group(refresh_every=8, pca_method="oja")),
                        ("explicit", _group(pca_lr=1 / 8, pca_method="oja"))]:
        state = _state()
        state["proj.basis"] = q0.clone()
        OnlinePCA().refresh(x, 2, state, group)
        out[name] = state["proj.basis"]
    torch.testing.assert_close(out["default"], out["explicit"])


def test_random_projector_is_a_pure_function_of_seed_and_counter():
    rnd, group, b, r = Random(), _group(random_dist="gaussian"), 16, 4
    q = rnd.basis(_state(seed=5, count=1), b, r, group, torch.device("cpu"))
    assert torch.equal(q, rnd.basis(_state(seed=5, count=1), b, r, group, torch.device("cpu")))
    assert not torch.allclose(q, rnd.basis(_state(seed=5, count=2), b, r, group, torch.device("cpu")))
    assert not torch.allclose(q, rnd.basis(_state(seed=6, count=1), b, r, group, torch.device("cpu")))
    # the documented seed rule (gradspace.projectors.base.generator_for)
    gen = torch.Generator().manual_seed((5 * 0x9E3779B1 + 1 * 0x85EBCA77) % (2**63 - 1))
    torch.testing.assert_close(q, torch.randn(b, r, generator=gen) / math.sqrt(r), rtol=0, atol=0)
    # refresh stores nothing once past the SVD warm-up
    state = _state(seed=5, count=1, step=3)
    rnd.refresh(torch.randn(8, b), r, state, _group(svd_warmup_steps=2))
    assert "proj.basis" not in state


def _state_run(projector, seed=0, steps=4, shape=(12, 8), rank=2):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(shape, generator=gen))
    opt = gradspace.SubspaceOptimizer([w], lr=0.01, projector=projector, rank=rank, refresh_every=2, seed=seed)
    for _ in range(steps):
        w.grad = torch.randn(shape, generator=gen)
        opt.step()
    return opt, w


def test_random_projector_stores_no_basis_and_state_bytes_excludes_it():
    opt_rand, w_rand = _state_run("random")
    opt_svd, w_svd = _state_run("svd")
    st_rand, st_svd = opt_rand.state[w_rand], opt_svd.state[w_svd]
    assert "proj.basis" not in st_rand
    assert set(st_svd) - set(st_rand) == {"proj.basis"}
    expected = sum(v.untyped_storage().nbytes() if isinstance(v, torch.Tensor) else 8 for v in st_rand.values())
    assert opt_rand.state_bytes() == expected
    assert opt_svd.state_bytes() - opt_rand.state_bytes() == st_svd["proj.basis"].numel() * 4  # 8 × 2 fp32
    # same seed → same trajectory; another seed → another one
    _, w_again = _state_run("random")
    assert torch.equal(w_again, w_rand)
    _, w_other = _state_run("random", seed=1)
    assert not torch.allclose(w_other, w_rand)


def test_stiefel_basis_is_orthonormal():
    rnd = Random()
    for b, r in [(16, 4), (8, 8), (64, 3)]:
        for count in (1, 2, 3):
            q = rnd.basis(_state(seed=2, count=count), b, r, _group(random_dist="stiefel"), torch.device("cpu"))
            _assert_orthonormal(q)


def test_gaussian_basis_is_an_unbiased_projection():
    """P ~ N(0, 1/r) (Flora, APOLLO): E[P Pᵀ] = I_b, so up(down(X)) = X P Pᵀ is unbiased. Each row has norm ~ 1;
    each column has norm ~ √(b/r) (the basis is *not* orthonormal)."""
    rnd, group = Random(), _group(random_dist="gaussian")
    b, r = 4096, 16
    q = rnd.basis(_state(seed=1, count=1), b, r, group, torch.device("cpu"))
    rows = q.pow(2).sum(dim=1)
    assert abs(float(rows.mean()) - 1.0) < 0.02
    cols = q.norm(dim=0) / math.sqrt(b / r)
    assert float((cols - 1).abs().max()) < 0.05
    b, r, draws = 6, 2, 2000
    draws_ = [rnd.basis(_state(seed=7, count=c), b, r, group, torch.device("cpu")) for c in range(1, draws + 1)]
    assert (sum(draws_) / draws).abs().max() < 0.1  # E[P] = 0
    gram = sum(p @ p.T for p in draws_) / draws
    torch.testing.assert_close(gram, torch.eye(b), atol=0.1, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 12), (12, 20), (16, 16)])
def test_newton_schulz_approximates_the_exact_polar_factor(shape):
    """Muon's quintic iteration yields U f(Σ) Vᵀ with f(σ) near 1 (not exactly 1: the coefficients trade accuracy
    for speed); the exact SVD variant gives U Vᵀ."""
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(shape[1], k, generator=gen)).Q
    g = u @ torch.diag(torch.linspace(0.2, 3.0, k)) @ v.T
    polar = u @ v.T
    ns = newton_schulz(g, 5)
    core = u.T @ ns @ v  # = f(Σ) if NS preserves the singular vectors
    off = core - torch.diag(core.diagonal())
    assert off.abs().max() < 1e-3
    assert core.diagonal().min() > 0.6 and core.diagonal().max() < 1.25, core.diagonal()
    assert torch.linalg.matrix_norm(ns - polar, ord=2) < 0.4
    exact = svd_orthogonalize(g)
    torch.testing.assert_close(exact, polar, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.svdvals(exact), torch.ones(k), atol=1e-5, rtol=0)
    assert torch.equal(svd_orthogonalize(torch.zeros(shape)), torch.zeros(shape))


def test_lion_direction_is_plus_minus_one():
    gen = torch.Generator().manual_seed(0)
    state, group = {}, _group(betas=(0.9, 0.99))
    rule = Lion()
    rule.init(torch.zeros(7, 5), state, group)
    for _ in range(5):
        d, factor = rule.direction(torch.randn(7, 5, generator=gen), state, group)
        assert factor == 1.0
        assert torch.equal(d.abs(), torch.ones(7, 5))
    # in full space the parameter moves by exactly ±lr per coordinate
    w = torch.nn.Parameter(torch.randn(6, 4, generator=gen))
    w0 = w.detach().clone()
    opt = gradspace.SubspaceOptimizer([w], lr=0.01, projector="identity", rule="lion")
    w.grad = torch.randn(6, 4, generator=gen)
    opt.step()
    torch.testing.assert_close((w.detach() - w0).abs(), torch.full((6, 4), 0.01), atol=1e-7, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# on_refresh = "rotate"
# --------------------------------------------------------------------------------------------------------------


def _new_opt_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="rank=", category=UserWarning)  # rank == side: clamped, on purpose
        return gradspace.SubspaceOptimizer(*args, **kwargs)


@pytest.mark.parametrize("projector", ["svd", "randomized", "random"])
@pytest.mark.parametrize("shape", [(12, 8), (8, 12)], ids=["tall", "wide"])
def test_rotate_with_full_rank_basis_is_exact_transport(projector, shape):
    """With rank = the full side every basis is orthogonal, transport M ← M (Q_newᵀ Q_old)ᵀ preserves up(M) exactly,
    so heavy-ball SGD with a basis refreshed at every step equals torch.optim.SGD to rounding."""
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) for _ in range(8)]
    side = min(shape)

    def run(opt_factory):
        w = torch.nn.Parameter(init.clone())
        opt = opt_factory([w])
        for g in grads:
            w.grad = g.clone()
            opt.step()
        return w.detach()

    ref = run(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9))
    kw = dict(lr=0.05, projector=projector, random_dist="stiefel", rank=side, refresh_every=1, rule="sgdm",
              momentum=0.9)
    got = run(lambda ps: _new_opt_quiet(ps, on_refresh="rotate", **kw))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    stale = run(lambda ps: _new_opt_quiet(ps, on_refresh="keep", **kw))
    assert not torch.allclose(stale, ref, atol=1e-3)  # keeping stale coordinates is not a transport


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)], ids=["tall", "wide"])
def test_rotate_preserves_up_of_the_first_moment(shape):
    """Adam with rank = side: after the rotation at a refresh, up_new(M_rotated) = up_old(M_old)."""
    gen = torch.Generator().manual_seed(2)
    w = torch.nn.Parameter(torch.randn(shape, generator=gen))
    side = min(shape)
    opt = _new_opt_quiet([w], lr=0.01, projector="svd", rank=side, refresh_every=1, on_refresh="rotate")
    st = opt.state
    beta1 = opt.param_groups[0]["betas"][0]
    wide = shape[0] < shape[1]
    frame = (lambda g: g.T) if wide else (lambda g: g)  # oriented frame: the projected side is the columns
    w.grad = torch.randn(shape, generator=gen)
    opt.step()
    for _ in range(4):
        m_old, q_old = st[w]["rule.exp_avg"].clone(), st[w]["proj.basis"].clone()
        g = torch.randn(shape, generator=gen)
        w.grad = g
        opt.step()
        q_new = st[w]["proj.basis"]
        r_new = frame(g) @ q_new
        m_rotated = (st[w]["rule.exp_avg"] - (1 - beta1) * r_new) / beta1
        torch.testing.assert_close(m_rotated @ q_new.T, m_old @ q_old.T, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# residuals
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)], ids=["tall", "wide"])
def test_error_feedback_conserves_the_gradient_sum(shape):
    """G' = G + e, U = up(down(G')), e ← G' − U: Σ U_t + e_T = Σ G_t (momentum-free SGD in the subspace)."""
    gen = torch.Generator().manual_seed(3)
    w = torch.nn.Parameter(torch.randn(shape, generator=gen))
    w0 = w.detach().clone()
    lr = 0.1
    opt = gradspace.SubspaceOptimizer([w], lr=lr, projector="svd", rank=2, refresh_every=3, rule="sgdm", momentum=0.0,
                                      residual="error_feedback")
    total = torch.zeros(shape)
    for _ in range(10):
        g = torch.randn(shape, generator=gen)
        total += g
        w.grad = g
        opt.step()
    err = opt.state[w]["resid.error"]
    assert err.dtype == torch.float32
    err = err.T if shape[0] < shape[1] else err
    applied = (w0 - w.detach()) / lr
    torch.testing.assert_close(applied + err, total, atol=1e-4, rtol=1e-5)
    assert err.norm() > 0.1 * total.norm()  # the buffer really holds the dropped part


def test_norm_growth_limiter_bounds_growth():
    gen = torch.Generator().manual_seed(4)
    gamma = 1.01
    state: dict = {}
    prev = None
    scales = [1.0, 5.0, 0.1, 10.0, 10.0, 3.0, 0.5, 50.0, 1.0, 1.0, 100.0, 0.0, 2.0]
    for s in scales:
        u = s * torch.randn(9, 7, generator=gen)
        out = limit_growth(u.clone(), state, gamma)
        n = out.norm()
        if prev is not None and prev > 0:
            assert n <= gamma * prev * (1 + 1e-6), (float(n), float(prev))
            if u.norm() <= gamma * prev:
                torch.testing.assert_close(out, u)  # inactive when growth is below γ
        else:
            torch.testing.assert_close(out, u)  # first step / after a zero update: unchanged
        if u.norm() > 0:  # direction is preserved
            cos = (out * u).sum() / (out.norm() * u.norm())
            assert cos > 1 - 1e-6
        torch.testing.assert_close(state["resid.prev_norm"], n)
        prev = n
    u = torch.randn(3, 3, generator=gen)
    assert torch.equal(limit_growth(u, {"resid.prev_norm": torch.tensor(1e-9)}, 0.0), u)  # γ = 0: off
