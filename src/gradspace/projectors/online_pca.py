"""Online-PCA projector (Online Subspace Descent; Liang et al. 2024, arXiv:2408.12857)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import options as opt
from ..comm import LOCAL, Comm
from .base import Group, State, StoredBasis, exact_basis, orthonormalize

#: the ``torch.optim.AdamW`` defaults the anchor's basis optimizer runs with
_PCA_BETAS, _PCA_EPS, _PCA_WD = (0.9, 0.999), 1e-8, 0.01


def _normalized_products(x: Tensor, q: Tensor, comm: Comm) -> Tensor:
    """``ĜᵀĜ Q`` with ``Ĝ = X/‖X‖_F``, finite for every finite ``X`` (no overflow of ‖X‖² or of ``X Q``).

    ``X`` is first divided by ``s`` = the sum over row shards of each shard's max |X| (so |X/s| ≤ 1), then normalized;
    a zero ``X`` gives zero."""
    s = comm.sum(x.abs().amax().double())
    xs = x * (1.0 / s).clamp(max=2.0**100).to(x.dtype)  # 2¹⁰⁰: an all-subnormal X is still scaled into range
    n2 = comm.sum(xs.square().sum()).clamp_min(torch.finfo(x.dtype).tiny)
    return comm.sum(xs.T @ (xs @ q)).div_(n2)


class OnlinePCA(StoredBasis):
    """The basis follows the gradient by one step on the PCA loss ‖Ĝ − Ĝ Q Qᵀ‖²_F every iteration, Ĝ = G/‖G‖_F;
    the first basis is an exact SVD.

    ``pca_method="adamw"`` (default; Online Subspace Descent, as the anchor's code): Q is a parameter of its own
    ``AdamW`` (``torch.optim.AdamW`` defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01), stepped with the
    loss's gradient ∇ = 2(ĜᵀĜQ QᵀQ + Q QᵀĜᵀĜQ − 2 ĜᵀĜQ) at learning rate ``pca_lr`` × (the group's current lr / its
    ``initial_lr``, so an lr schedule scales it as in OSD); the gradient of step t is projected with Q_t *before* Q is
    stepped (Q_{t+1} is kept in ``proj.next``), and Q is never re-orthonormalized (so it is not orthonormal). The
    basis optimizer's state is ``proj.exp_avg``/``proj.exp_avg_sq``/``proj.step``. A basis that spans the whole
    projected side (rank = side) is kept as is: its loss is exactly zero, and AdamW would turn the rounding noise of
    its gradient into ±lr steps (the anchor does; a run would then depend on summation order). Under DDP only the
    first (SVD) basis is broadcast; the AdamW steps run on every replica from the same all-reduced gradient.

    ``pca_method="oja"``: Q ← orth(Q + 2η(I − QQᵀ)ĜᵀĜQ) (Oja's rule: the Riemannian gradient step with orthonormal
    Q), re-orthonormalized by QR, with the current gradient before it is projected.

    ``pca_lr`` is η (default ``1/refresh_every``: OSD's basis step size is the inverse of the GaLore gap).
    """

    name = "online_pca"
    continuous = True
    options = {"pca_lr": None, "pca_method": "adamw"}

    @staticmethod
    def validate(group: Group) -> None:
        if group["pca_lr"] is not None:
            opt.real("pca_lr", group["pca_lr"], 0.0, None, lo_open=True)
        opt.choice("pca_method", group["pca_method"], ("adamw", "oja"))

    def is_orthonormal(self, group: Group) -> bool:
        return group["pca_method"] == "oja"

    def shares_basis(self, state: State, group: Group) -> bool:
        # the first basis is an SVD to broadcast; AdamW steps need their own state on every replica (computed from
        # the same gradient), so they are not broadcast
        return group["pca_method"] == "oja" or "proj.basis" not in state

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False,
                comm: Comm = LOCAL) -> None:
        q = state.get("proj.basis")
        if q is None or q.shape[1] != rank:
            if not x.is_meta and not bool(comm.sum(x.square().sum()) > 0):
                raise FloatingPointError("all-zero gradient: its singular vectors are arbitrary")
            for key in ("proj.next", "proj.exp_avg", "proj.exp_avg_sq", "proj.step"):
                state.pop(key, None)
            state["proj.basis"] = exact_basis(x, rank, transposed, comm)
            return
        eta = group["pca_lr"]
        eta = 1.0 / group["refresh_every"] if eta is None else float(eta)
        if rank >= x.shape[1]:  # the basis spans the whole side: the PCA loss is 0 (its gradient mere rounding noise)
            return
        if group["pca_method"] == "oja":
            aq = _normalized_products(x, q, comm)
            riemannian = aq - q @ (q.T @ aq)
            state["proj.basis"] = comm.same(orthonormalize(q + 2.0 * eta * riemannian))
            return
        nxt = state.pop("proj.next", None)
        if nxt is not None:  # Q_t, stepped at the previous iteration from G_{t−1}
            q = state["proj.basis"] = nxt
        lr0 = group.get("initial_lr", group.get("lr", 1.0))
        lr0 = float(lr0)
        ratio = float(group.get("lr", 1.0)) / lr0 if lr0 else 1.0
        state["proj.next"] = comm.same(self._adamw_step(q, x, state, eta * ratio, comm))

    @staticmethod
    def _adamw_step(q: Tensor, x: Tensor, state: State, lr: float, comm: Comm) -> Tensor:
        """One ``torch.optim.AdamW`` step on Q for the PCA loss of ``x``; returns the stepped Q (``q`` unchanged)."""
        aq = _normalized_products(x, q, comm)
        qtq, qaq = q.T @ q, q.T @ aq
        grad = (aq @ qtq).add_(q @ qaq).sub_(aq, alpha=2.0).mul_(2.0)
        if "proj.step" not in state:
            state["proj.step"] = 0
            state["proj.exp_avg"] = torch.zeros_like(q)
            state["proj.exp_avg_sq"] = torch.zeros_like(q)
        (b1, b2), eps = _PCA_BETAS, _PCA_EPS
        state["proj.step"] += 1
        k = state["proj.step"]
        m, v = state["proj.exp_avg"], state["proj.exp_avg_sq"]
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2**k)).add_(eps)
        return (q * (1 - lr * _PCA_WD)).addcdiv_(m, denom, value=-lr / (1 - b1**k))
