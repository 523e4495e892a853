"""The training Jacobian J = ∂θ_T/∂θ_0 of a whole training run, by forward-mode AD or finite differences, and the
split of its singular values into chaotic (σ > 1), bulk (σ ≈ 1) and stable (σ < 1) regions (Belrose & Scherlis 2024,
"Understanding Gradient Descent through the Training Jacobian").

``train_fn`` maps a flat initial parameter vector to the flat final one and must be written with ``torch.func``-
compatible operations (e.g. ``torch.func.grad`` + ``functional_call``, no in-place updates of its input, a fixed
batch sequence); then each Jacobian column is one forward-mode pass (jvp), batched with ``vmap``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["training_jacobian", "jacobian_fd", "spectrum_regions"]


def training_jacobian(
    train_fn: Callable[[Tensor], Tensor],
    theta0: Tensor,
    *,
    method: str = "forward",
    chunk: int = 64,
    eps: float = 1e-5,
) -> Tensor:
    """J_{ij} = ∂(θ_T)_i / ∂(θ_0)_j of ``train_fn`` at ``theta0``, column by column (Belrose & Scherlis 2024).

    Args:
        train_fn: flat θ_0 ↦ flat θ_T (deterministic; ``torch.func``-compatible for ``method="forward"``).
        theta0: flat initial parameters (use fp64 for finite differences).
        method: ``"forward"`` (jvp, exact to rounding; ``chunk`` tangents per ``vmap`` call) or ``"fd"`` (central
            differences with step ``eps``; 2P runs).
        chunk: tangents per vmapped forward-mode pass (memory ∝ chunk).
        eps: finite-difference step.

    Examples:
        >>> a = torch.tensor([[0.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> train = lambda th: th - 0.1 * (a @ th)          # one gradient step on ½ θᵀAθ: J = I − 0.1 A
        >>> training_jacobian(train, torch.ones(2, dtype=torch.float64)).diagonal().tolist()
        [0.95, 0.8]
    """
    p = theta0.numel()
    eye = torch.eye(p, dtype=theta0.dtype, device=theta0.device)
    if method == "forward":
        from torch.func import jvp, vmap

        column = lambda v: jvp(train_fn, (theta0,), (v,))[1]  # noqa: E731
        with warnings.catch_warnings():
            # torch's own forward-mode rules call torch.jit.script internally (not actionable here)
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=DeprecationWarning)
            return torch.cat([vmap(column)(eye[i : i + chunk]) for i in range(0, p, chunk)]).T
    if method == "fd":
        return jacobian_fd(train_fn, theta0, eye, eps)
    raise ValueError(f"method={method!r} is not one of 'forward', 'fd'.")


def jacobian_fd(train_fn: Callable[[Tensor], Tensor], theta0: Tensor, directions: Tensor, eps: float = 1e-5) -> Tensor:
    """J V ≈ (train(θ₀ + εv) − train(θ₀ − εv)) / 2ε for each column v of ``directions`` (P × m): central differences,
    error O(ε²) plus rounding O(δ/ε) — the independent check of the forward-mode Jacobian.

    Examples:
        >>> train = lambda th: th ** 2
        >>> jv = jacobian_fd(train, torch.tensor([1.0, 3.0], dtype=torch.float64), torch.eye(2, dtype=torch.float64))
        >>> [round(x, 6) for x in jv.diagonal().tolist()]
        [2.0, 6.0]
    """
    cols = []
    with torch.no_grad():
        for v in directions.T:
            cols.append((train_fn(theta0 + eps * v) - train_fn(theta0 - eps * v)) / (2 * eps))
    return torch.stack(cols, 1)


def spectrum_regions(singular_values: Tensor, tol: float = 0.01) -> dict[str, int]:
    """Counts of singular values in the chaotic (σ > 1 + tol), bulk (|σ − 1| ≤ tol) and stable (σ < 1 − tol) regions.

    Examples:
        >>> spectrum_regions(torch.tensor([3.0, 1.001, 0.999, 0.2]))
        {'chaotic': 1, 'bulk': 2, 'stable': 1}
    """
    s = singular_values
    return {
        "chaotic": int((s > 1 + tol).sum()),
        "bulk": int(((s - 1).abs() <= tol).sum()),
        "stable": int((s < 1 - tol).sum()),
    }
