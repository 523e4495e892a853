"""Projections against explicit matrices: FWHT vs Sylvester Hadamard, Fastfood vs H G Π H B, unit-norm columns."""

from __future__ import annotations

import math

import pytest
import torch

from gradspace.intrinsic import DenseProjection, FastfoodProjection, SparseProjection, fwht, make_projection

scipy_linalg = pytest.importorskip("scipy.linalg")


def _hadamard(n: int) -> torch.Tensor:
    return torch.tensor(scipy_linalg.hadamard(n), dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256])
def test_fwht_equals_the_sylvester_hadamard_matrix(n):
    x = torch.randn(3, n, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ _hadamard(n).T, atol=1e-10)
    assert torch.allclose(fwht(fwht(x)), n * x, atol=1e-9)  # H H = L·I


def test_fwht_backward_and_bad_length():
    x = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.zeros(12))


def _fastfood_explicit(p: FastfoodProjection) -> torch.Tensor:
    """s · (H G Π H B)[:D, :d] built from the projection's B, π, G and scipy's Hadamard matrix."""
    L = p.L
    H = _hadamard(L)
    B = torch.diag(p.B.double())
    G = torch.diag(p.G.double())
    Pi = torch.zeros(L, L, dtype=torch.float64)
    Pi[torch.arange(L), p.perm] = 1.0  # (Πx)_i = x_{π(i)}
    return (p.scale * (H @ G @ Pi @ H @ B))[: p.D, : p.d]


@pytest.mark.parametrize("D,d", [(5, 3), (64, 10), (300, 40)])
def test_fastfood_equals_the_explicit_dense_matrix_it_implies(D, d):
    p = FastfoodProjection(D, d, seed=3)
    M = _fastfood_explicit(p)
    assert torch.allclose(p.matrix().double(), M, atol=1e-5)
    z = torch.randn(d, requires_grad=True)
    y = p(z)
    assert torch.allclose(y.double(), M @ z.double(), atol=1e-5)
    g = torch.randn(D)
    (y * g).sum().backward()  # backward is the transposed transform
    assert torch.allclose(z.grad.double(), M.T @ g.double(), atol=1e-5)


def test_fastfood_columns_are_unit_norm_in_expectation():
    p = FastfoodProjection(700, 300, seed=0)
    L = p.L
    # the L×L product's columns have norm exactly √L·‖G‖ (H/√L orthogonal, Π H B e_j a ±1 vector) …
    full = fwht(fwht(torch.eye(L, dtype=torch.float64) * p.B.double())[:, p.perm] * p.G.double())
    assert torch.allclose(full.norm(dim=1), torch.full((L,), math.sqrt(L) * float(p.G.double().norm()),
                                                       dtype=torch.float64))
    # … and keeping D of the L rows, scaled by 1/(‖G‖√D), leaves columns of norm ≈ 1
    norms = p.matrix().norm(dim=0)
    assert float(norms.mean()) == pytest.approx(1.0, abs=0.03)
    assert 0.75 < float(norms.min()) and float(norms.max()) < 1.25
    assert p.state_numel() == 4 * 1024  # O(D), not O(D·d)


def test_dense_projection_columns_are_unit_norm_and_seeded():
    a, b, c = DenseProjection(500, 20, seed=1), DenseProjection(500, 20, seed=1), DenseProjection(500, 20, seed=2)
    assert torch.allclose(a.matrix().norm(dim=0), torch.ones(20), atol=1e-6)
    assert torch.equal(a.matrix(), b.matrix()) and not torch.equal(a.matrix(), c.matrix())
    z = torch.randn(20)
    assert torch.allclose(a(z), a.matrix() @ z)


@pytest.mark.parametrize("D,d", [(400, 30), (2000, 7)])
def test_sparse_projection_structure(D, d):
    p = SparseProjection(D, d, seed=0)
    M = p.matrix()
    k = round(math.sqrt(D))
    assert p.k == k
    assert torch.allclose(M.norm(dim=0), torch.ones(d), atol=1e-6)
    nnz = (M != 0).sum(dim=0)
    assert bool((nnz <= k).all()) and float(nnz.float().mean()) > 0.9 * k  # a few repeated rows merge
    # entries of one column share one magnitude unless a row was drawn twice with the same sign
    col = M[:, 0][M[:, 0] != 0].abs()
    assert float((col == col.min()).float().mean()) > 0.9
    z = torch.randn(d)
    assert torch.allclose(p(z), M @ z, atol=1e-6)
    assert p.state_numel() == 3 * int((M != 0).sum()) < D * d / 4


def test_sparse_projection_regenerated_equals_cached(monkeypatch):
    monkeypatch.setattr(SparseProjection, "_CHUNK_NNZ", 2_000)
    D, d = 2_500, 400
    cached = SparseProjection(D, d, seed=4)
    regen = SparseProjection(D, d, seed=4, cache=False)
    assert regen.chunk < d // 2  # several chunks
    assert regen.state_numel() == 0 and not list(regen.buffers())
    z1 = torch.randn(d, requires_grad=True)
    z2 = z1.detach().clone().requires_grad_(True)
    g = torch.randn(D)
    y1, y2 = cached(z1), regen(z2)
    assert torch.allclose(y1, y2, atol=1e-6)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-5)


def test_sparse_density_option_and_errors():
    p = SparseProjection(1000, 5, seed=0, density=0.1)
    assert p.k == 100
    with pytest.raises(ValueError, match="sparse_density"):
        SparseProjection(1000, 5, seed=0, density=0.0)
    with pytest.raises(ValueError, match="projection='orthogonal'.*'dense', 'sparse', 'fastfood'"):
        make_projection("orthogonal", 10, 2, 0)
