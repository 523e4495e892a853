"""Trajectory PCA against random-walk theory and an exact numpy SVD; the training Jacobian against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradspace.diagnostics import TrajectoryRecorder, cosine_correlation, random_walk_ratios, trajectory_pca
from gradspace.diagnostics.jacobian import jacobian_fd, spectrum_regions, training_jacobian


@pytest.fixture(scope="module")
def walk() -> torch.Tensor:
    return torch.randn(400, 8000, generator=torch.Generator().manual_seed(0)).cumsum(0)


def test_random_walk_pca_matches_theory(walk):
    pca = trajectory_pca(walk, k=5)
    theory = random_walk_ratios(5)
    assert (pca.explained_variance_ratio - theory).abs().max().item() < 0.02
    finite = random_walk_ratios(5, n=400)
    assert (pca.explained_variance_ratio - finite).abs().max().item() < 0.02
    assert bool((cosine_correlation(pca.projections)[:3] > 0.99).all())


def test_randomized_pca_equals_exact_and_numpy(walk):
    fast = trajectory_pca(walk, k=6)
    exact = trajectory_pca(walk, k=6, method="exact")
    torch.testing.assert_close(fast.explained_variance_ratio, exact.explained_variance_ratio, atol=1e-6, rtol=0)
    x = walk[:, :2000].double().numpy()
    xc = x - x.mean(0)
    s = np.linalg.svd(xc, compute_uv=False)
    ref = s[:6] ** 2 / (s**2).sum()
    np.testing.assert_allclose(trajectory_pca(walk[:, :2000], k=6).explained_variance_ratio.numpy(), ref, atol=1e-9)
    # components are orthonormal and reproduce the projections
    comp = fast.components
    torch.testing.assert_close(comp @ comp.T, torch.eye(6, dtype=comp.dtype), atol=1e-6, rtol=0)


def test_random_walk_ratio_formula():
    ks = torch.arange(1, 4, dtype=torch.float64)
    torch.testing.assert_close(random_walk_ratios(3), 6 / (math.pi**2 * ks**2))
    assert float(random_walk_ratios(1, n=800)[0]) == pytest.approx(6 / math.pi**2, abs=2e-3)
    assert float(random_walk_ratios(40, n=200).sum()) < 1.0


def test_recorder_hook_and_limits():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = TrajectoryRecorder(model, max_snapshots=4, every=2).attach(opt)
    for _ in range(6):
        opt.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    assert rec.count == 4 and rec.matrix().shape == (4, 8)
    torch.testing.assert_close(rec.matrix()[-1], torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    with pytest.warns(RuntimeWarning, match="full"):
        for _ in range(2):
            opt.zero_grad()
            model(torch.ones(1, 3)).sum().backward()
            opt.step()
    rec.detach()
    with pytest.raises(ValueError, match="k="):
        trajectory_pca(rec.matrix(), k=4)


def test_training_jacobian_forward_mode_agrees_with_finite_differences():
    from torch.func import functional_call, grad

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (10,))
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def loss(th):
        params = {n: t.view(s) for n, t, s in zip(names, th.split(sizes), shapes)}
        return torch.nn.functional.cross_entropy(functional_call(net, params, (x,)), y)

    step = grad(loss)

    def train(th):
        for _ in range(15):
            th = th - 0.5 * step(th)
        return th

    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    jac = training_jacobian(train, theta0, chunk=8)
    fd = training_jacobian(train, theta0, method="fd", eps=1e-6)
    assert ((jac - fd).norm() / jac.norm()).item() < 1e-7
    v = torch.randn(theta0.numel(), 2, dtype=torch.float64)
    torch.testing.assert_close(jacobian_fd(train, theta0, v), jac @ v, rtol=1e-6, atol=1e-9)


def test_jacobian_of_gradient_descent_on_a_quadratic_is_the_product_of_steps():
    a = torch.diag(torch.tensor([3.0, 1.0, 0.0, -0.5], dtype=torch.float64))  # stable, stable, bulk, chaotic

    def train(th):
        for _ in range(10):
            th = th - 0.2 * (a @ th)
        return th

    jac = training_jacobian(train, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(jac, torch.linalg.matrix_power(torch.eye(4, dtype=torch.float64) - 0.2 * a, 10))
    s = torch.linalg.svdvals(jac)
    assert spectrum_regions(s) == {"chaotic": 1, "bulk": 1, "stable": 2}
