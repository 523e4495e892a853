"""Shared fixtures: a model small enough to form its Hessian exactly (independent reference)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call


class SmallProblem:
    """MLP 5-8-6-3 (tanh) on 40 fixed samples with cross-entropy; P = 123."""

    def __init__(self, dtype: torch.dtype) -> None:
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
        ).to(dtype)
        self.x = torch.randn(40, 5, generator=gen, dtype=dtype)
        self.y = torch.randint(0, 3, (40,), generator=gen)
        self.params = list(self.net.parameters())
        self.P = sum(p.numel() for p in self.params)

    def loss(self) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.net(self.x), self.y)

    def dense_hessian(self) -> torch.Tensor:
        """torch.autograd.functional.hessian of the flattened loss, in float64 (the reference)."""
        names = [n for n, _ in self.net.named_parameters()]
        shapes = [p.shape for p in self.params]
        sizes = [p.numel() for p in self.params]
        x = self.x.double()

        def f(flat: torch.Tensor) -> torch.Tensor:
            tensors = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
            return torch.nn.functional.cross_entropy(functional_call(self.net, tensors, (x,)), self.y)

        flat = torch.cat([p.detach().double().reshape(-1) for p in self.params])
        h = torch.autograd.functional.hessian(f, flat)
        return (h + h.T) / 2


@pytest.fixture(scope="module")
def problem64() -> SmallProblem:
    return SmallProblem(torch.float64)


@pytest.fixture(scope="module")
def problem32() -> SmallProblem:
    return SmallProblem(torch.float32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster and immune to other jobs on a shared CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
