"""Randomized SVD projector: warm-started subspace iteration with Rayleigh–Ritz (Halko, Martinsson, Tropp 2011)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import options as opt
from ..comm import LOCAL, Comm
from .base import Group, State, StoredBasis, generator_for, orthonormalize


class RandomizedSVD(StoredBasis):
    """Q ≈ top-r right singular vectors of G from q power steps on Ω = [Q_prev, p Gaussian columns], then Rayleigh–Ritz.

    Cost O(a·b·(r+p)·(2q+1)) instead of a full SVD's O(a·b·min(a, b)). Options: ``power_iters`` (q, default 1),
    ``oversample`` (p, default 8). The first refresh starts from a seeded Gaussian Ω. On row shards the n × k products
    ``XᵀXQ`` and the k × k Gram are summed over ranks (``comm.sum``) and rank 0's basis is used everywhere.
    """

    name = "randomized"
    options = {"power_iters": 1, "oversample": 8}

    @staticmethod
    def validate(group: Group) -> None:
        opt.integer("power_iters", group["power_iters"], 0)
        opt.integer("oversample", group["oversample"], 0)

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False,
                comm: Comm = LOCAL) -> None:
        b = x.shape[1]
        k = min(b, rank + int(group["oversample"]))
        gen = generator_for(state, x.device, salt=1)
        prev = state.get("proj.basis")
        if prev is not None and prev.shape[1] <= k:
            extra = torch.randn(b, k - prev.shape[1], generator=gen, device=x.device, dtype=x.dtype)
            omega = torch.cat([prev.to(x.dtype), extra], dim=1)
        else:
            omega = torch.randn(b, k, generator=gen, device=x.device, dtype=x.dtype)
        q = orthonormalize(omega)
        for _ in range(int(group["power_iters"])):
            q = orthonormalize(comm.sum(x.T @ (x @ q)))
        # Rayleigh–Ritz: eigenvectors of the k × k Gram (XQ)ᵀ(XQ) = right singular vectors of XQ, ordered by captured
        # energy; the tiny eigh runs in fp64 (cheaper than an SVD of the a × k matrix, and accurate for the top ones).
        y = x @ q
        _, vecs = torch.linalg.eigh(comm.sum(y.T @ y).double())
        top = vecs[:, -rank:].flip(1).to(x.dtype)
        state["proj.basis"] = comm.same((q @ top).contiguous())
