"""The projector protocol: how a weight's rank-r subspace is chosen and refreshed.

Every projector works in the *oriented* frame of the functional update: the gradient is viewed as a matrix
``X`` (a × b) whose columns (the b side) are the projected dimension, so a basis is a ``b × r`` matrix ``Q``
and ``down(X) = X Q`` (a × r), ``up(Y) = Y Qᵀ``. Projectors are stateless strategies; their tensors live in the
optimizer's per-parameter state under ``proj.*`` keys (tensors and Python ints only, so checkpoints load with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, MutableMapping, Protocol

import torch
from torch import Tensor

State = MutableMapping[str, Any]
Group = Mapping[str, Any]


class Projector(Protocol):
    """Chooses a subspace of one weight's gradient.

    ``refresh`` computes a new basis from the fp32 oriented gradient ``x`` (``transposed`` says whether ``x = Gᵀ``)
    and stores what it needs in ``state``;
    ``basis`` returns the current ``b × r`` basis (``None`` means the identity: the full space).
    ``continuous`` projectors move their basis a little at every step (online PCA); the others move only when the
    schedule asks. ``orthonormal`` says whether ``QᵀQ = I`` so that ``up(down(X))`` is an orthogonal projection.
    """

    name: ClassVar[str]
    continuous: ClassVar[bool]
    orthonormal: ClassVar[bool]
    stores_basis: ClassVar[bool]

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False) -> None: ...

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None: ...


def generator_for(state: State, device: torch.device, salt: int = 0) -> torch.Generator:
    """A generator seeded from the parameter's seed and refresh counter, so a basis is reproducible from ints."""
    seed = (int(state["proj.seed"]) * 0x9E3779B1 + int(state["proj.count"]) * 0x85EBCA77 + salt) % (2**63 - 1)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def orthonormalize(y: Tensor) -> Tensor:
    """Orthonormal basis of the column space of ``y`` (b × k), the Q of its QR factorization with diag(R) > 0.

    CholeskyQR2 in fp64 (two Cholesky factorizations of k × k Gram matrices and triangular solves): far cheaper than
    a Householder QR of the tall matrix and immune to multi-threaded QR stalls; falls back to Householder QR (signs
    fixed the same way) when ``y`` is too ill-conditioned for Cholesky.
    """
    q = y.double()
    for _ in range(2):
        r, info = torch.linalg.cholesky_ex(q.T @ q, upper=True)
        if bool(info.any()):
            q64, r64 = torch.linalg.qr(y.double(), mode="reduced")
            d = torch.sign(torch.diagonal(r64))
            return (q64 * torch.where(d == 0, torch.ones_like(d), d)).to(y.dtype)
        q = torch.linalg.solve_triangular(r, q, upper=True, left=False)
    return q.to(y.dtype)


def top_right_singular(x: Tensor, rank: int, transposed: bool = False) -> Tensor:
    """Top-``rank`` right singular vectors of ``x`` (a × b) as a b × rank matrix, by an exact fp32 SVD.

    ``transposed=True`` says ``x = Gᵀ``: the SVD is then taken of ``G`` itself and its left vectors used, so the
    singular vectors' signs are exactly those GaLore-style code gets from ``svd(G)`` (signs matter when moments are
    kept across a refresh).
    """
    if transposed:
        u, _, _ = torch.linalg.svd(x.T, full_matrices=False)
        return u[:, :rank].contiguous()
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:rank].T.contiguous()
