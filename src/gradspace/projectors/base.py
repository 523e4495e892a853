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

from ..comm import LOCAL, Comm

State = MutableMapping[str, Any]
Group = Mapping[str, Any]


class Projector(Protocol):
    """Chooses a subspace of one weight's gradient.

    ``refresh`` computes a new basis from the fp32 oriented gradient ``x`` (``transposed`` says whether ``x = Gᵀ``)
    and stores what it needs in ``state``; ``x`` may be this rank's rows of the matrix, and every reduction over
    rows goes through ``comm`` (:class:`gradspace.comm.Comm`: the identity in a single process);
    ``basis`` returns the current ``b × r`` basis (``None`` means the identity: the full space).
    ``continuous`` projectors move their basis a little at every step (online PCA); the others move only when the
    schedule asks. ``is_orthonormal(group)`` says whether ``QᵀQ = I`` for this group, so that ``up(down(X))`` is an
    orthogonal projection; ``coordinate_gain(group, b, rank)`` bounds max|XQ| / ‖X‖ (optional: without it, 1 for
    orthonormal bases, else unknown); ``shares_basis(state, group)`` whether a refresh produces a numerical basis
    that replicas must agree on (seeded random bases need no communication); ``full_space`` projectors (the
    identity) leave the weight in full space. ``options``/``validate`` declare and check the projector's options.
    """

    name: ClassVar[str]
    continuous: ClassVar[bool]
    stores_basis: ClassVar[bool]
    full_space: ClassVar[bool]
    options: ClassVar[dict[str, Any]]

    @staticmethod
    def validate(group: Group) -> None: ...

    def is_orthonormal(self, group: Group) -> bool: ...

    def shares_basis(self, state: State, group: Group) -> bool: ...

    def coordinate_gain(self, group: Group, b: int, rank: int) -> float | None:
        """A bound on max|X Q| / ‖X‖ for this group's bases (``None``: unknown), so the core knows from ‖G‖ alone
        that the coordinates' squares cannot overflow."""
        ...

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False,
                comm: Comm = LOCAL) -> None: ...

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None: ...


class StoredBasis:
    """Defaults for projectors that store an orthonormal basis computed from the gradient."""

    continuous = False
    stores_basis = True
    full_space = False
    options: dict[str, Any] = {}

    @staticmethod
    def validate(group: Group) -> None:
        return None

    def is_orthonormal(self, group: Group) -> bool:
        return True

    def coordinate_gain(self, group: Group, b: int, rank: int) -> float | None:
        return 1.0 if self.is_orthonormal(group) else None  # |x_i · q_j| ≤ ‖x_i‖ for unit columns

    def shares_basis(self, state: State, group: Group) -> bool:
        return True

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None:
        return state["proj.basis"]


def exact_basis(x: Tensor, rank: int, transposed: bool, comm: Comm) -> Tensor:
    """Top-``rank`` right singular vectors of the whole (possibly row-sharded) ``x``: gathered to one rank, decomposed
    there, the same basis on every rank."""
    full = comm.gather(x)
    return comm.on_owner(lambda: top_right_singular(full, rank, transposed), (x.shape[1], rank), x.device)


def generator_for(state: State, device: torch.device, salt: int = 0) -> torch.Generator | None:
    """A generator seeded from the parameter's seed and refresh counter, so a basis is reproducible from ints
    (``None`` on the meta device, where nothing is drawn)."""
    if torch.device(device).type == "meta":
        return None
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
    if y.is_meta:
        return y.clone()
    q = y.double()
    failed = torch.zeros((), dtype=torch.bool, device=y.device)
    for _ in range(2):
        r, info = torch.linalg.cholesky_ex(q.T @ q, upper=True)
        failed |= info.ne(0)
        q = torch.linalg.solve_triangular(r, q, upper=True, left=False)
    if bool(failed | ~torch.isfinite(q).all()):  # one host sync for both passes
        q64, r64 = torch.linalg.qr(y.double(), mode="reduced")
        d = torch.sign(torch.diagonal(r64))
        return (q64 * torch.where(d == 0, torch.ones_like(d), d)).to(y.dtype).contiguous()
    return q.to(y.dtype).contiguous()  # row-major, like every stored basis: a GEMM's rounding follows its layout


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
