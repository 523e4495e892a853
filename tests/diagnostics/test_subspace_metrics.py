"""Subspace metrics against brute-force references (numpy/scipy SVD, explicit projectors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from gradspace.diagnostics import (
    alignment,
    captured_energy,
    entropy_effective_rank,
    principal_angles,
    random_overlap,
    stable_rank,
    subspace_overlap,
)

GEN = torch.Generator().manual_seed(0)


def _rand(*shape):
    return torch.randn(*shape, generator=GEN, dtype=torch.float64)


@pytest.mark.parametrize("r1,r2", [(3, 3), (2, 5), (6, 4)])
def test_principal_angles_match_scipy_and_brute_force_svd(r1, r2):
    a, b = _rand(20, r1) * 3.0, _rand(20, r2)  # not orthonormal: the metric must orthonormalize
    ours = principal_angles(a, b)
    ref = np.sort(scipy.linalg.subspace_angles(a.numpy(), b.numpy()))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)
    qa, qb = np.linalg.qr(a.numpy())[0], np.linalg.qr(b.numpy())[0]
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)
    np.testing.assert_allclose(np.sort(np.cos(ours.numpy()))[::-1], cos, atol=1e-10)


def test_principal_angles_are_accurate_for_nearly_identical_subspaces():
    a = _rand(30, 4)
    b = a + 1e-9 * _rand(30, 4)
    ref = np.sort(scipy.linalg.subspace_angles(a.numpy(), b.numpy()))
    np.testing.assert_allclose(principal_angles(a, b).numpy(), ref, rtol=1e-4, atol=1e-14)
    assert float(principal_angles(a, b).max()) > 0  # an arccos-only formula would return exactly 0 here


def test_overlap_is_mean_squared_cosine_and_random_baseline():
    a, b = _rand(50, 5), _rand(50, 5)
    angles = principal_angles(a, b)
    assert float(subspace_overlap(a, b)) == pytest.approx(float(torch.cos(angles).square().mean()), rel=1e-12)
    assert float(subspace_overlap(a, 2 * a @ _rand(5, 5))) == pytest.approx(1.0, abs=1e-10)
    e = torch.eye(6, dtype=torch.float64)
    assert float(subspace_overlap(e[:, :3], e[:, 3:])) == pytest.approx(0.0, abs=1e-15)
    trials = [float(subspace_overlap(_rand(400, 8), _rand(400, 8))) for _ in range(40)]
    assert sum(trials) / len(trials) == pytest.approx(random_overlap(8, 400), rel=0.15)


@pytest.mark.parametrize("orthonormal", [True, False])
def test_captured_energy_equals_the_explicit_orthogonal_projector(orthonormal):
    x = _rand(7, 12)
    q = _rand(12, 3)
    if orthonormal:
        q = torch.linalg.qr(q)[0]
    proj = q.numpy() @ np.linalg.pinv(q.numpy())  # orthogonal projector onto span(Q), brute force
    ref = np.linalg.norm(x.numpy() @ proj) ** 2 / np.linalg.norm(x.numpy()) ** 2
    assert float(captured_energy(x, q, orthonormal=orthonormal)) == pytest.approx(ref, rel=1e-5)
    assert float(alignment(x, q, orthonormal=orthonormal)) == pytest.approx(math.sqrt(ref), rel=1e-5)


def test_gaussian_basis_needs_the_projector_not_the_raw_product():
    x = _rand(16, 32)
    q = _rand(32, 4) / 2.0  # Gaussian N(0, 1/r): QᵀQ ≠ I
    naive = float((x @ q).square().sum() / x.square().sum())
    right = float(captured_energy(x, q, orthonormal=False))
    assert abs(naive - right) > 0.05 * right
    assert 0.0 <= right <= 1.0


def test_captured_energy_edge_cases():
    q = torch.eye(4)[:, :2]
    assert float(captured_energy(torch.zeros(3, 4), q)) == 1.0  # nothing outside: counts as captured
    assert float(captured_energy(torch.ones(3, 4), None)) == 1.0
    assert float(captured_energy(torch.tensor([1.0, 0.0, 0.0, 0.0]), q)) == 1.0  # a vector is one row
    assert float(captured_energy(torch.tensor([0.0, 0.0, 3.0, 4.0]), q)) == 0.0


def test_entropy_effective_rank_matches_the_definition():
    x = _rand(9, 6)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum()
    ref = math.exp(-(p * np.log(p)).sum())
    assert float(entropy_effective_rank(x)) == pytest.approx(ref, rel=1e-5)
    assert float(entropy_effective_rank(5 * x)) == pytest.approx(ref, rel=1e-5)  # scale invariant
    assert float(entropy_effective_rank(torch.outer(_rand(5), _rand(7)))) == pytest.approx(1.0, abs=1e-3)
    assert float(entropy_effective_rank(torch.eye(6))) == pytest.approx(6.0, rel=1e-6)
    assert float(entropy_effective_rank(torch.zeros(3, 3))) == 0.0


def test_stable_rank_matches_norms():
    x = _rand(8, 5)
    ref = np.linalg.norm(x.numpy(), "fro") ** 2 / np.linalg.norm(x.numpy(), 2) ** 2
    assert float(stable_rank(x)) == pytest.approx(ref, rel=1e-5)
