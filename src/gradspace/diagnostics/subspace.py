"""Subspace metrics: captured energy, principal angles, overlaps and effective ranks (torch only, any device)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedule import captured_energy

__all__ = [
    "captured_energy",
    "alignment",
    "orthonormal_basis",
    "principal_angles",
    "subspace_overlap",
    "entropy_effective_rank",
    "stable_rank",
    "random_overlap",
]


def orthonormal_basis(q: Tensor) -> Tensor:
    """Q̃ with orthonormal columns and span(Q̃) = span(Q) (reduced QR in fp32 or fp64).

    Args:
        q: a b × r matrix of full column rank (r ≤ b).

    Examples:
        >>> q = orthonormal_basis(torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]))
        >>> torch.allclose(q.T @ q, torch.eye(2))
        True
    """
    if q.dim() != 2:
        raise ValueError(f"a basis must be a b × r matrix, got shape {tuple(q.shape)}.")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.linalg.qr(q.to(dtype), mode="reduced")[0]


def alignment(g: Tensor, basis: Tensor, orthonormal: bool = True) -> Tensor:
    """χ = ‖P g‖ / ‖g‖, the *norm* (not squared) fraction of Song, Ahn & Yun 2024 (arXiv:2405.16002).

    The squared fraction f = χ² (Gur-Ari et al. 2018's overlap, Schneider et al. 2024's S_frac) is
    :func:`captured_energy`; the two conventions differ (χ = 0.9 is f = 0.81), so they have different names.

    Args:
        g: a vector (P,) or an a × b matrix whose rows are projected.
        basis: P × k (or b × k) spanning the subspace.
        orthonormal: whether ``basis`` has orthonormal columns; otherwise the orthogonal projector onto its span is used.

    Examples:
        >>> round(float(alignment(torch.tensor([3.0, 4.0]), torch.tensor([[1.0], [0.0]]))), 4)
        0.6
    """
    return captured_energy(g, basis, orthonormal).sqrt()


def principal_angles(q1: Tensor, q2: Tensor) -> Tensor:
    """θ_i = arccos σ_i(Q̃₁ᵀ Q̃₂), the principal angles between span(Q₁) and span(Q₂) (Björck & Golub 1973), ascending.

    Both bases are orthonormalized first, so Gaussian (non-orthonormal) projections are handled. Returns
    ``min(r₁, r₂)`` angles in radians. Small angles are computed from the sine (‖(I − Q̃₂Q̃₂ᵀ)Q̃₁‖ singular values)
    for accuracy, as in :func:`scipy.linalg.subspace_angles`.

    Args:
        q1: b × r₁ basis.
        q2: b × r₂ basis (same b).

    Examples:
        >>> e = torch.eye(3)
        >>> [round(a, 4) for a in principal_angles(e[:, :2], e[:, 1:]).tolist()]
        [0.0, 1.5708]
    """
    if q1.shape[0] != q2.shape[0]:
        raise ValueError(f"bases live in different spaces: {tuple(q1.shape)} vs {tuple(q2.shape)}.")
    a, b = orthonormal_basis(q1), orthonormal_basis(q2.to(q1.device))
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    cos = torch.linalg.svdvals(b.T @ a).clamp(max=1.0).flip(0)  # ascending cosines → descending angles
    sin = torch.linalg.svdvals(b - a @ (a.T @ b)).clamp(max=1.0)  # descending sines
    angles_cos = torch.arccos(cos)
    angles_sin = torch.arcsin(sin)
    angles = torch.where(cos.square() < 0.5, angles_cos, angles_sin)
    return angles.flip(0)


def subspace_overlap(q1: Tensor, q2: Tensor) -> Tensor:
    """O = ‖Q̃₁ᵀ Q̃₂‖²_F / min(r₁, r₂) = mean cos² of the principal angles (Gur-Ari et al. 2018, arXiv:1812.04754).

    1 for identical subspaces, 0 for orthogonal ones; two random r-dimensional subspaces of ℝᵇ overlap by ≈ r/b.

    Args:
        q1: b × r₁ basis (orthonormalized internally).
        q2: b × r₂ basis.

    Examples:
        >>> e = torch.eye(4)
        >>> float(subspace_overlap(e[:, :2], e[:, 1:3]))
        0.5
    """
    a, b = orthonormal_basis(q1), orthonormal_basis(q2.to(q1.device))
    dtype = torch.promote_types(a.dtype, b.dtype)
    return (a.to(dtype).T @ b.to(dtype)).square().sum() / min(a.shape[1], b.shape[1])


def entropy_effective_rank(x: Tensor, singular_values: bool = False) -> Tensor:
    """erank(X) = exp(−Σ p_k log p_k), p_k = σ_k / Σσ (Roy & Vetterli 2007, "The effective rank").

    Between 1 (rank one) and min(a, b) (all singular values equal); 0 for the zero matrix.

    Args:
        x: an a × b matrix (conv kernels: reshape first), or its singular values when ``singular_values=True``.
        singular_values: treat ``x`` as a vector of singular values.

    Examples:
        >>> round(float(entropy_effective_rank(torch.eye(5))), 4), round(float(entropy_effective_rank(torch.ones(3, 4))), 4)
        (5.0, 1.0)
    """
    s = x.float() if singular_values else torch.linalg.svdvals(x.float())
    total = s.sum()
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(s.dtype).tiny))).sum()
    return torch.where(total > 0, torch.exp(entropy), torch.zeros_like(entropy))


def stable_rank(x: Tensor) -> Tensor:
    """srank(X) = ‖X‖²_F / ‖X‖²₂ (Rudelson & Vershynin 2007); 0 for the zero matrix.

    Args:
        x: an a × b matrix.

    Examples:
        >>> float(stable_rank(torch.eye(3)))
        3.0
    """
    s = torch.linalg.svdvals(x.float())
    top = s[0].square() if s.numel() else torch.zeros(())
    return torch.where(top > 0, s.square().sum() / top.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(top))


def random_overlap(r: int, b: int) -> float:
    """Expected :func:`subspace_overlap` of two independent uniformly random r-dimensional subspaces of ℝᵇ: r / b.

    Examples:
        >>> random_overlap(10, 1000)
        0.01
    """
    if not 0 < r <= b:
        raise ValueError(f"need 0 < r <= b, got r={r}, b={b}.")
    return r / b
