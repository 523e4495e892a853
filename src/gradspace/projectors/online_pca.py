"""Online-PCA projector (Online Subspace Descent; Liang et al. 2024, arXiv:2408.12857)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import options as opt
from ..comm import LOCAL, Comm
from .base import Group, State, StoredBasis, exact_basis, orthonormalize


class OnlinePCA(StoredBasis):
    """Q ← orth(Q − η ∇_Q ‖Ĝ − Ĝ Q Qᵀ‖²_F) every step, Ĝ = G/‖G‖_F; the first basis is an exact SVD.

    With orthonormal Q the gradient is −2 (I − QQᵀ) ĜᵀĜ Q (Oja's rule); ``pca_lr`` is η (default
    ``1/refresh_every``, so the basis turns over on the schedule's time scale, as in OSD where the gap is an
    inverse step size). Re-orthonormalized by QR after each step.
    """

    name = "online_pca"
    continuous = True
    options = {"pca_lr": None}

    @staticmethod
    def validate(group: Group) -> None:
        if group["pca_lr"] is not None:
            opt.real("pca_lr", group["pca_lr"], 0.0, None, lo_open=True)

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False,
                comm: Comm = LOCAL) -> None:
        q = state.get("proj.basis")
        if q is None:
            state["proj.basis"] = exact_basis(x, rank, transposed, comm)
            return
        lr = group["pca_lr"]
        lr = 1.0 / group["refresh_every"] if lr is None else float(lr)
        sq = comm.sum(x.square().sum()).clamp_min(torch.finfo(x.dtype).tiny)  # ĜᵀĜ = XᵀX / ‖X‖², without forming Ĝ
        aq = comm.sum(x.T @ (x @ q)).div_(sq)
        riemannian = aq - q @ (q.T @ aq)
        state["proj.basis"] = comm.same(orthonormalize(q + 2.0 * lr * riemannian))
