"""The digits task for intrinsic-dimension search: an MLP on scikit-learn's 8×8 digits (imported lazily)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .wrapper import IntrinsicDimension


def digits_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardized digits, stratified 80/20 split: ``(x_train, y_train, x_val, y_val)`` (needs scikit-learn).

    Args:
        seed: the split's random state.

    Examples:
        >>> [tuple(t.shape) for t in digits_data()]  # doctest: +SKIP
        [(1437, 64), (1437,), (360, 64), (360,)]
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    f = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return f(x_tr), torch.tensor(y_tr), f(x_va), torch.tensor(y_va)


def digits_mlp(hidden: Sequence[int] = (200, 200), seed: int = 0) -> nn.Sequential:
    """64-h₁-…-10 ReLU MLP (default 64-200-200-10, D = 55 210: the paper's MNIST FC 784-200-200-10 on 8×8 inputs).

    Args:
        hidden: hidden widths, each ≥ 1.
        seed: seeds the initialization.

    Examples:
        >>> sum(p.numel() for p in digits_mlp().parameters())
        55210
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = 64
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def train_and_score(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Train with Adam on cross-entropy and return validation accuracy.

    Args:
        model: a module (or an :class:`IntrinsicDimension` wrapper) mapping (n, 64) inputs to 10 logits.
        data: ``(x_train, y_train, x_val, y_val)``.
        epochs: ≥ 1.
        lr: Adam learning rate.
        batch_size: ≥ 1 (default 64).
        seed: seeds the batch order.

    Examples:
        >>> acc = train_and_score(digits_mlp((16,)), digits_data(), epochs=1, lr=1e-2)  # doctest: +SKIP
    """
    x_tr, y_tr, x_va, y_va = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x_va).argmax(1) == y_va).float().mean())


def digits_score_fn(
    hidden: Sequence[int] = (200, 200),
    projection: str = "fastfood",
    *,
    epochs: int = 20,
    seeds: Sequence[int] = (0, 1),
    lr_subspace: float = 1e-2,
    lr_direct: float = 1e-3,
    batch_size: int = 64,
) -> tuple[Callable[[int | None], float], int]:
    """``(score, D)`` for :func:`find_dint90`: ``score(d)`` is the mean validation accuracy over ``seeds`` of the MLP
    trained in a d-dim random subspace (``score(None)``: trained directly).

    Each seed fixes θ₀, P and the batch order. Adam at ``lr_subspace`` for z, ``lr_direct`` for direct training.

    Examples:
        >>> score, D = digits_score_fn(hidden=(16,), epochs=1, seeds=(0,))  # doctest: +SKIP
        >>> 0.0 <= score(32) <= 1.0  # doctest: +SKIP
        True
    """
    _check_hidden(hidden)
    data = digits_data(0)
    D = sum(p.numel() for p in digits_mlp(hidden).parameters())

    def score(d: int | None) -> float:
        accs = []
        for s in seeds:
            model = digits_mlp(hidden, seed=s)
            if d is None:
                accs.append(train_and_score(model, data, epochs=epochs, lr=lr_direct, batch_size=batch_size, seed=s))
            else:
                wrapped = IntrinsicDimension(model, d=d, projection=projection, seed=s)
                accs.append(train_and_score(wrapped, data, epochs=epochs, lr=lr_subspace, batch_size=batch_size,
                                            seed=s))
        return statistics.fmean(accs)

    return score, D


def _check_hidden(hidden: Sequence[int]) -> None:
    if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden={list(hidden)} must be a non-empty list of positive ints.")
