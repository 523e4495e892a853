"""Online-PCA projector (Online Subspace Descent; Liang et al. 2024, arXiv:2408.12857)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Group, State, orthonormalize, top_right_singular


class OnlinePCA:
    """Q ← orth(Q − η ∇_Q ‖Ĝ − Ĝ Q Qᵀ‖²_F) every step, Ĝ = G/‖G‖_F; the first basis is an exact SVD.

    With orthonormal Q the gradient is −2 (I − QQᵀ) ĜᵀĜ Q (Oja's rule); ``pca_lr`` is η (default
    ``1/refresh_every``, so the basis turns over on the schedule's time scale, as in OSD where the gap is an
    inverse step size). Re-orthonormalized by QR after each step.
    """

    name = "online_pca"
    continuous = True
    orthonormal = True
    stores_basis = True

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False) -> None:
        q = state.get("proj.basis")
        if q is None:
            state["proj.basis"] = top_right_singular(x, rank, transposed)
            return
        lr = group["pca_lr"]
        lr = 1.0 / group["refresh_every"] if lr is None else float(lr)
        sq = x.square().sum().clamp_min(torch.finfo(x.dtype).tiny)  # ĜᵀĜ = XᵀX / ‖X‖², without forming Ĝ
        aq = (x.T @ (x @ q)).div_(sq)
        riemannian = aq - q @ (q.T @ aq)
        state["proj.basis"] = orthonormalize(q + 2.0 * lr * riemannian)

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None:
        return state["proj.basis"]
