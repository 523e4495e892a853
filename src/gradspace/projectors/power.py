"""Warm-started block power iteration projector (LDAdam; Robert et al. 2025, arXiv:2410.16103)."""

from __future__ import annotations

from torch import Tensor

from .. import options as opt
from ..comm import LOCAL, Comm
from .base import Group, State, StoredBasis, exact_basis, orthonormalize


class PowerIteration(StoredBasis):
    """Q ← orth(BᵀB Q_prev): one block power step from the previous basis, with B = (1 − ρ)·G + ρ·up_prev(m̂); the
    first basis is an exact SVD of G.

    As LDAdam's ``power_iteration`` projector: no Rayleigh–Ritz rotation, so the new basis is the QR factor of the
    power iterate (its columns are not singular vectors; a rule that transports its state, ``on_refresh="rotate"``,
    sees exactly LDAdam's change of basis). ``power_blend`` is ρ (LDAdam's ``rho``, default 0: the gradient alone);
    with ρ > 0 the rule's bias-corrected first moment ``rule.exp_avg / (1 − β1ᵏ)`` (an Adam rule: ``betas``,
    ``rule.step``), brought back to full space with the previous basis, is blended in — LDAdam's coupling of its
    subspace to its optimizer state. ``power_method="svd"``: the exact top-r SVD of B instead of the power step
    (LDAdam's ``proj_method="svd"``).
    """

    name = "power"
    options = {"power_blend": 0.0, "power_method": "power_iteration"}

    @staticmethod
    def validate(group: Group) -> None:
        opt.real("power_blend", group["power_blend"], 0.0, 1.0)
        opt.choice("power_method", group["power_method"], ("power_iteration", "svd"))
        if group["projector"] == "power" and group["power_blend"] > 0:
            if "betas" not in group:
                raise opt.OptionError("power_blend", group["power_blend"],
                                      f"power_blend={group['power_blend']!r} > 0 blends in an Adam first moment; the "
                                      f"rule {group['rule']!r} has none (betas). Use rule='adam' or power_blend=0.")
            if isinstance(group["state_dtype"], str) and group["state_dtype"] in ("int8", "int4"):
                raise opt.OptionError("power_blend", group["power_blend"],
                                      f"power_blend > 0 reads the first moment, which state_dtype="
                                      f"{group['state_dtype']!r} stores quantized; use power_blend=0 or a float "
                                      "state_dtype.")

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False,
                comm: Comm = LOCAL) -> None:
        prev = state.get("proj.basis")
        if prev is None or prev.shape[1] != rank:
            state["proj.basis"] = exact_basis(x, rank, transposed, comm)
            return
        prev = prev.float()
        b = x
        rho = float(group["power_blend"])
        k = int(state.get("rule.step", 0))
        if rho > 0 and k > 0 and "rule.exp_avg" in state:
            beta1 = group["betas"][0]
            b = (state["rule.exp_avg"].float() @ prev.T).mul_(rho / (1 - beta1**k)).add_(x, alpha=1 - rho)
        if group["power_method"] == "svd":
            state["proj.basis"] = exact_basis(b, rank, False, comm)
        else:
            state["proj.basis"] = comm.same(orthonormalize(comm.sum(b.T @ (b @ prev))))
