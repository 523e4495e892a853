"""Curvature instruments against independent references: the dense Hessian from torch.autograd.functional.hessian
and its torch.linalg.eigh decomposition, exact traces, and Gauss-quadrature identities."""

from __future__ import annotations

import math

import pytest
import torch

from gradspace.diagnostics import (
    HessianOperator,
    hessian_density,
    hessian_eigs,
    hessian_trace,
    hutchinson_trace,
    hutchpp_trace,
    hvp,
    lanczos,
    per_layer,
    power_iteration,
    spectral_density,
    unflatten,
)


@pytest.fixture(scope="module")
def ref64(problem64):
    h = problem64.dense_hessian()
    evals, evecs = torch.linalg.eigh(h)
    return h, evals.flip(0), evecs.flip(1)


def test_hvp_equals_dense_hessian_times_vector(problem64, ref64):
    h, _, _ = ref64
    v = torch.randn(problem64.P, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hvp(problem64.loss, problem64.params, v), h @ v, rtol=1e-10, atol=1e-12)
    pieces = unflatten(v, problem64.params)  # tensors shaped like the parameters are accepted too
    torch.testing.assert_close(hvp(problem64.loss, problem64.net, pieces), h @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_top10_eigenvalues_match_eigh(dtype, problem64, problem32, ref64):
    problem = problem64 if dtype == torch.float64 else problem32
    evals = torch.linalg.eigvalsh(problem.dense_hessian()).flip(0) if dtype == torch.float32 else ref64[1]
    vals, vecs = hessian_eigs(problem.loss, problem.net, k=10)
    assert vals.dtype == torch.float64 and vals.shape == (10,) and vecs.shape == (problem.P, 10)
    assert bool((vals[:-1] >= vals[1:]).all()), "eigenvalues must be sorted descending"
    rel = ((vals - evals[:10]).abs() / evals[:10].abs()).max().item()
    assert rel < 1e-4, rel


def test_eigenvectors_match_eigh_and_are_orthonormal(problem64, ref64):
    h, evals, evecs = ref64
    vals, vecs = hessian_eigs(problem64.loss, problem64.params, k=10)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(10, dtype=torch.float64), atol=1e-8, rtol=0)
    residual = (h @ vecs - vecs * vals).norm(dim=0) / vals.abs()
    assert residual.max().item() < 1e-4
    below = (evals[:10] - evals[1:11]).abs()
    above = torch.cat([torch.tensor([math.inf], dtype=torch.float64), (evals[:9] - evals[1:10]).abs()])
    gaps = torch.minimum(below, above)
    for i in range(10):
        if gaps[i] > 1e-3 * evals[0]:
            assert abs(float(vecs[:, i] @ evecs[:, i])) > 1 - 1e-6


def test_no_ghost_eigenvalues_when_iterating_to_full_dimension(problem64, ref64):
    # Plain Lanczos run far past convergence produces spurious copies of converged eigenvalues; with full
    # reorthogonalization every Ritz value is a distinct true eigenvalue.
    _, evals, _ = ref64
    op = HessianOperator(problem64.loss, problem64.params)
    res = lanczos(op.matvec, op.dim, k=30, max_iter=op.dim, tol=0.0, dtype=torch.float64)
    assert res.num_iters >= 100
    torch.testing.assert_close(res.eigenvalues, evals[:30], rtol=1e-9, atol=1e-12)
    smallest = lanczos(op.matvec, op.dim, k=5, which="smallest", dtype=torch.float64, max_iter=op.dim)
    torch.testing.assert_close(smallest.eigenvalues, evals.flip(0)[:5], rtol=1e-8, atol=1e-10)


def test_lanczos_finds_exactly_repeated_eigenvalues():
    d = torch.tensor([5.0, 5.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    res = lanczos(lambda v: d * v, 8, k=4, dtype=torch.float64)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([5.0, 5.0, 5.0, 3.0], dtype=torch.float64))
    assert res.converged
    torch.testing.assert_close(res.eigenvectors.T @ res.eigenvectors, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)


def test_lanczos_warns_when_not_converged():
    d = torch.linspace(1.0, 1.001, 400, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="not converged"):
        res = lanczos(lambda v: d * v, 400, k=5, max_iter=6, tol=1e-12, dtype=torch.float64)
    assert not res.converged


def test_power_iteration_top3_by_magnitude(problem64, ref64):
    _, evals, _ = ref64
    by_magnitude = evals[evals.abs().argsort(descending=True)][:3]  # this Hessian's third is negative: λ_min
    assert float(by_magnitude[2]) < 0
    vals, vecs = hessian_eigs(problem64.loss, problem64.params, k=3, method="power", max_iter=3000, tol=1e-10)
    assert ((vals - by_magnitude).abs() / by_magnitude.abs()).max().item() < 1e-3
    vals2, _ = power_iteration(lambda v: torch.tensor([3.0, -5.0, 1.0], dtype=torch.float64) * v, 3, k=3, dtype=torch.float64,
                               max_iter=500, tol=1e-12)
    torch.testing.assert_close(vals2, torch.tensor([-5.0, 3.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-8)


def test_hutchinson_is_exact_on_diagonal_and_within_three_standard_errors(problem64, ref64):
    d = torch.arange(1.0, 51.0, dtype=torch.float64)
    assert hutchinson_trace(lambda v: d * v, 50, num_samples=3, dtype=torch.float64).estimate == pytest.approx(float(d.sum()))
    h = ref64[0]
    exact = float(h.trace())
    for seed in range(3):
        est = hessian_trace(problem64.loss, problem64.params, method="hutchinson", num_matvecs=200, seed=seed)
        assert abs(est.estimate - exact) < 3 * est.stderr, (est, exact)


def test_hutchpp_is_exact_with_a_full_sketch_and_beats_hutchinson_on_decaying_spectra(problem64, ref64):
    h = ref64[0]
    est = hessian_trace(problem64.loss, problem64.params, method="hutch++", num_matvecs=3 * problem64.P)
    assert est.estimate == pytest.approx(float(h.trace()), rel=1e-10)
    q = torch.linalg.qr(torch.randn(300, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    a = (q * (1.0 / torch.arange(1, 301, dtype=torch.float64) ** 2)) @ q.T
    exact = float(a.trace())
    err_h = [hutchinson_trace(lambda v: a @ v, 300, 60, seed=s, dtype=torch.float64).estimate - exact for s in range(20)]
    err_pp = [hutchpp_trace(lambda v: a @ v, 300, 60, seed=s, dtype=torch.float64).estimate - exact for s in range(20)]
    rms = lambda e: math.sqrt(sum(x * x for x in e) / len(e))  # noqa: E731
    assert rms(err_pp) < 0.2 * rms(err_h), (rms(err_pp), rms(err_h))


def test_slq_density_integrates_to_one_and_matches_moments(problem64, ref64):
    h = ref64[0]
    P = problem64.P
    sd = hessian_density(problem64.loss, problem64.params, num_iters=30, num_vectors=5, seed=3)
    assert float(sd.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    grid, dens = sd.density()
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-6)
    # the first moment is exactly the Hutchinson estimate with the same probes ...
    hutch = hutchinson_trace(lambda v: h @ v, P, num_samples=5, seed=3, dtype=torch.float64)
    assert sd.moment(1) == pytest.approx(hutch.estimate / P, rel=1e-9)
    # ... and with many probes it matches tr(H)/P
    many = spectral_density(lambda v: h @ v, P, num_iters=10, num_vectors=400, seed=0, dtype=torch.float64)
    stderr = hutchinson_trace(lambda v: h @ v, P, num_samples=400, seed=0, dtype=torch.float64).stderr / P
    assert abs(many.moment(1) - float(h.trace()) / P) < 3 * stderr


def test_slq_gauss_quadrature_is_exact_up_to_degree_2m_minus_1(ref64):
    h = ref64[0]
    P = h.shape[0]
    m = 3
    sd = spectral_density(lambda v: h @ v, P, num_iters=m, num_vectors=1, seed=7, dtype=torch.float64)
    z = (torch.randint(0, 2, (1, P), generator=torch.Generator().manual_seed(7), dtype=torch.int8) * 2 - 1).double()[0]
    z = z / z.norm()
    for p in range(1, 2 * m):
        exact = float(z @ torch.linalg.matrix_power(h, p) @ z)
        assert sd.moment(p) == pytest.approx(exact, rel=1e-8, abs=1e-14), p


def test_per_layer_equals_eigh_of_the_diagonal_blocks(problem64, ref64):
    h = ref64[0]
    out = per_layer(hessian_eigs, problem64.loss, problem64.net, k=3)
    assert sorted(out) == ["0", "2", "4"]
    offset = 0
    for name in ("0", "2", "4"):
        layer = problem64.net[int(name)]
        n = layer.weight.numel() + layer.bias.numel()
        block = h[offset : offset + n, offset : offset + n]
        ref = torch.linalg.eigvalsh(block).flip(0)[:3]
        torch.testing.assert_close(out[name][0], ref, rtol=1e-6, atol=1e-10)
        offset += n
    traces = per_layer(hessian_trace, problem64.loss, problem64.net, by="parameter", num_matvecs=3 * 48)
    assert traces["2.weight"].estimate == pytest.approx(float(h[48:96, 48:96].trace()), rel=1e-9)


def test_bad_inputs_have_clear_errors(problem64):
    with pytest.raises(ValueError, match=r"k=124 .* P=123"):
        hessian_eigs(problem64.loss, problem64.net, k=124)
    with pytest.raises(ValueError, match="positive int"):
        hessian_eigs(problem64.loss, problem64.net, k=0)
    frozen = torch.nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_eigs(lambda: frozen(torch.ones(1, 3)).sum(), frozen, k=1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_eigs(problem64.loss, [], k=1)
    with pytest.raises(ValueError, match="requires_grad=False"):
        hessian_eigs(problem64.loss, [torch.zeros(3)], k=1)
    with pytest.raises(ValueError, match="scalar"):
        hessian_eigs(lambda: problem64.net(problem64.x), problem64.net, k=1)
    with pytest.raises(TypeError, match="scalar tensor"):
        hessian_eigs(lambda: 1.0, problem64.net, k=1)
    other = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend"):
        hessian_eigs(lambda: torch.ones((), requires_grad=False), [other], k=1)
    with pytest.raises(ValueError, match="which="):
        hessian_eigs(problem64.loss, problem64.net, k=2, which="biggest")


def test_parameters_the_loss_ignores_get_zero_curvature(problem64):
    unused = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    op = HessianOperator(problem64.loss, problem64.params + [unused])
    v = torch.zeros(op.dim, dtype=torch.float64)
    v[-4:] = 1.0
    assert float(op.matvec(v).abs().max()) == 0.0
    assert float(op.grad[-4:].abs().max()) == 0.0


# ------------------------------------------------------------------ issue 11: repeated eigenvalues, honest `converged`
def _prescribed(spectrum: list[float], seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """A dense symmetric Q diag(λ) Qᵀ with a random orthogonal Q: the spectrum is known, the basis is not the axes."""
    lam = torch.tensor(spectrum, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), generator=torch.Generator().manual_seed(seed),
                                    dtype=torch.float64))[0]
    return ((q * lam) @ q.T).to(dtype)


_ISSUE_SPECTRUM = [5.0, 5.0, 5.0, 4.0, 4.0, 3.0] + torch.linspace(2.97, 0.1, 74).tolist()


def test_lanczos_finds_every_copy_of_a_repeated_eigenvalue_of_a_dense_matrix():
    """The issue's case: on {5,5,5,4,4,3,2.97,…} the single-run Lanczos returned [5,5,4,4,3,2.97] with
    converged=True. Reference: torch.linalg.eigvalsh of the same matrix."""
    a = _prescribed(_ISSUE_SPECTRUM)
    res = lanczos(lambda v: a @ v, 80, k=6, dtype=torch.float64)
    reference = torch.linalg.eigvalsh(a).flip(0)[:6]
    torch.testing.assert_close(res.eigenvalues, reference, rtol=0, atol=1e-8)
    assert res.converged
    y = res.eigenvectors
    torch.testing.assert_close(y.T @ y, torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0)
    true_residuals = (a @ y - y * res.eigenvalues).norm(dim=0)
    assert float(true_residuals.max()) <= 1e-5 * 5 * 1.01
    assert bool((res.residuals >= true_residuals - 1e-9).all())  # reported residuals are not optimistic
    # the three returned 5-vectors span the whole 5-eigenspace (compare orthogonal projectors)
    evals, evecs = torch.linalg.eigh(a)
    v5 = evecs[:, evals > 4.5]
    torch.testing.assert_close(y[:, :3] @ y[:, :3].T, v5 @ v5.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spectrum,k,which", [
    ([7.0] * 4 + [3.0] * 3 + torch.linspace(2.5, -1.0, 40).tolist(), 7, "largest"),
    ([7.0] * 4 + [3.0] * 3 + torch.linspace(2.5, -1.0, 40).tolist(), 2, "largest"),  # k cuts inside the cluster
    ([-6.0, -6.0, -6.0] + torch.linspace(-5.0, 4.0, 50).tolist() + [5.5, 5.5], 5, "magnitude"),
    ([-2.0] * 3 + [-1.5] * 2 + torch.linspace(-1.0, 3.0, 45).tolist(), 6, "smallest"),
    ([1.0] * 30, 4, "largest"),  # the identity in disguise: every run is invariant after one product
])
def test_lanczos_multiplicities_match_eigvalsh(spectrum, k, which):
    a = _prescribed(spectrum, seed=len(spectrum))
    res = lanczos(lambda v: a @ v, len(spectrum), k=k, which=which, dtype=torch.float64)
    evals = torch.linalg.eigvalsh(a)
    order = {"largest": evals.argsort(descending=True), "smallest": evals.argsort(),
             "magnitude": evals.abs().argsort(descending=True)}[which]
    expected = evals[order][:k]
    if which == "magnitude":  # ties between ±λ may come in either order: compare as sorted lists
        torch.testing.assert_close(res.eigenvalues.sort().values, expected.sort().values, rtol=0, atol=1e-8)
    else:
        torch.testing.assert_close(res.eigenvalues, expected, rtol=0, atol=1e-8)
    assert res.converged


def test_lanczos_fp32_operator_finds_the_copies():
    a = _prescribed(_ISSUE_SPECTRUM, seed=3, dtype=torch.float32)
    res = lanczos(lambda v: a @ v, 80, k=6, tol=1e-5)
    reference = torch.linalg.eigvalsh(a.double()).flip(0)[:6]
    torch.testing.assert_close(res.eigenvalues, reference, rtol=0, atol=1e-4)
    assert res.converged


def test_converged_is_false_when_the_budget_ends_before_the_copies_are_ruled_out():
    a = _prescribed(_ISSUE_SPECTRUM)
    full = lanczos(lambda v: a @ v, 80, k=6, dtype=torch.float64)
    assert full.converged
    with pytest.warns(RuntimeWarning, match="not converged"):
        short = lanczos(lambda v: a @ v, 80, k=6, dtype=torch.float64, max_iter=full.num_iters - 1)
    assert not short.converged and short.num_iters == full.num_iters - 1
    assert short.eigenvalues.shape == (6,)
    with pytest.raises(ValueError, match="max_iter=3 must be an int >= k=6"):
        lanczos(lambda v: a @ v, 80, k=6, max_iter=3)
