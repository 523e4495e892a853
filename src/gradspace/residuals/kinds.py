"""The residual policies: drop (GaLore), fira (Fira), apollo (APOLLO), sign (FRUGAL), sgd (SUMO), error_feedback."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import options as opt
from ..comm import LOCAL, Comm
from .base import (Group, Record, State, Up, Update, channel_ratio, direction_row_norms, growth_shrink, limit_growth,
                   norm_ratio)

#: options of the two scaled residuals (Fira, APOLLO)
_SCALED = {"residual_scale_type": "channel", "limiter_gamma": 1.01}


def _validate_scaled(group: Group) -> None:
    opt.choice("residual_scale_type", group["residual_scale_type"], ("channel", "tensor"))
    opt.real("limiter_gamma", group["limiter_gamma"], 0.0, None)
    if group["limiter_gamma"] and group["limiter_gamma"] < 1:
        raise opt.OptionError("limiter_gamma", group["limiter_gamma"],
                              f"limiter_gamma={group['limiter_gamma']!r} must be 0 (off) or >= 1.")


def _scaled_and_limited(t: Tensor, d: Tensor, r: Tensor, state: State, group: Group, comm: Comm,
                        record: Record | None) -> Tensor:
    """limit(t ⊙ φ), φ = ‖d‖/‖r‖ per row or per tensor (the Fira/APOLLO scale); ``t`` is scaled in place."""
    phi = channel_ratio(d, r, group["residual_scale_type"], group, comm)
    if record is not None:
        record["resid_scale"] = phi.detach()
    return limit_growth(t.mul_(phi), state, group["limiter_gamma"], comm, record)


class Drop:
    """U = α·up(d): the out-of-subspace gradient is discarded (GaLore, Zhao et al. 2024)."""

    name = "drop"
    options: dict = {}

    @staticmethod
    def validate(group: Group) -> None:
        return None

    def prepare(self, x: Tensor, state: State, group: Group) -> Tensor:
        return x

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group, comm: Comm = LOCAL,
               record: Record | None = None) -> Update:
        return Update(coords=d)


class Fira(Drop):
    """U = α·up(d) + limit(φ ⊙ (G − up(r))), φ = ‖d‖/‖r‖ per row (Chen et al. 2024, "Fira", arXiv:2410.01623).

    ``residual_scale_type``: ``"channel"`` (default, Fira) or ``"tensor"``; ``limiter_gamma`` (default 1.01) bounds
    the residual's norm growth between steps. ``fira_residual``: ``"paper"`` (default; the paper's residual
    ``G − PPᵀG``) or ``"code"`` (the anchor's code, xichen-fy/Fira: its ``project_back`` multiplies by α, so the
    residual is ``G − α·PPᵀG`` and keeps (1 − α)·PPᵀG; use it to reproduce published runs with α ≠ 1).
    """

    name = "fira"
    options = {**_SCALED, "fira_residual": "paper"}

    @staticmethod
    def validate(group: Group) -> None:
        _validate_scaled(group)
        opt.choice("fira_residual", group["fira_residual"], ("paper", "code"))

    @staticmethod
    def grad_rows(group: Group) -> bool:
        """Whether the update reads ‖G_i‖ per row (the one-up-projection form), so the NaN check may measure them."""
        return float(group["scale"]) != 0

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group, comm: Comm = LOCAL,
               record: Record | None = None) -> Update:
        alpha = float(group["scale"])
        beta = alpha if group["fira_residual"] == "code" else 1.0
        if up.orthonormal and not up.whole and alpha != 0:
            return self._one_up_projection(x, r, d, up, alpha, beta, state, group, comm, record)
        t = x - up(r).mul_(alpha) if beta != 1.0 else up.outside(x, r)
        return Update(coords=d, full=_scaled_and_limited(t, d, r, state, group, comm, record))

    @staticmethod
    def _one_up_projection(x: Tensor, r: Tensor, d: Tensor, up: Up, alpha: float, beta: float, state: State,
                           group: Group, comm: Comm, record: Record | None) -> Update:
        """The same U with one up-projection (4·a·b·r FLOPs, not 6): with c = φ / shrink per row,
        α·up(d) + c ⊙ (x − β·up(r)) = α·(up(d − (β/α)·c ⊙ r) + x ⊙ c/α); the limiter's ‖φ ⊙ (x − β·up(r))‖² is
        Σ_i φ_i² (‖x_i‖² − (2β − β²)‖r_i‖²) for an orthonormal basis, so no residual is formed."""
        rows_r = up.row_norms(r)  # |r_i| ≤ ‖x_i‖ for an orthonormal basis: as safe in fp32 as x's own
        phi64 = norm_ratio(direction_row_norms(d, group), rows_r, group["residual_scale_type"], comm)
        phi = phi64.float()
        if record is not None:
            record["resid_scale"] = phi.detach()
        rows_x = up.gradient_row_norms(x)
        outside = torch.addcmul(rows_x * rows_x, rows_r, rows_r, value=-(2 * beta - beta * beta)).clamp_min_(0)
        norm = comm.sum((phi64 * phi64 * outside).sum()).sqrt()
        shrink = growth_shrink(norm, state, group["limiter_gamma"], record)
        c = phi if shrink is None else (phi / shrink.float())
        return Update(coords=torch.addcmul(d, c, r, value=-(beta / alpha)), full_scaled=x,
                      factor=c if alpha == 1 else c / alpha)


class Apollo(Drop):
    """U = α · limit(G ⊙ s), s = ‖d‖/‖r‖ per row (``"channel"``) or per tensor (Zhu et al. 2025, arXiv:2412.05270).

    The update direction is the full raw gradient; the subspace state only sets its per-channel learning rate.
    ``scale`` is applied linearly here (the APOLLO preset passes √α, as the anchor does).
    """

    name = "apollo"
    options = dict(_SCALED)
    validate = staticmethod(_validate_scaled)

    @staticmethod
    def grad_rows(group: Group) -> bool:
        """Whether the update reads ‖G_i‖ per row (the channel scale's limiter), so the NaN check may measure them."""
        return group["residual_scale_type"] == "channel"

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group, comm: Comm = LOCAL,
               record: Record | None = None) -> Update:
        # the scale, the limiter and √α fold into one per-row factor of G, written by one addcmul_ (no G ⊙ s copy);
        # ‖G ⊙ s‖ = √(Σ_i s_i² ‖G_i‖²) exactly
        s = channel_ratio(d, r, group["residual_scale_type"], group, comm)
        if record is not None:
            record["resid_scale"] = s.detach()
        if group["residual_scale_type"] == "channel":  # row norms in fp64: ‖G_i‖² of a finite spike overflows fp32
            norm = comm.sum((up.gradient_row_norms(x) * s.double()).square().sum()).sqrt()
        else:
            norm = s.double() * up.norm(x, comm)
        shrink = growth_shrink(norm, state, group["limiter_gamma"], record)
        return Update(full_scaled=x, factor=s if shrink is None else (s / shrink).float())


class _Stepped(Drop):
    """Residuals that take a state-free step of size ρ = ``residual_lr_scale`` outside the subspace."""

    options = {"residual_lr_scale": 1.0}

    @staticmethod
    def validate(group: Group) -> None:
        opt.real("residual_lr_scale", group["residual_lr_scale"], 0.0, None)


class Sign(_Stepped):
    """U = α·up(d) + ρ·sign(G − up(r)): state-free signSGD outside the subspace (FRUGAL, Zmushko et al. 2025)."""

    name = "sign"

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group, comm: Comm = LOCAL,
               record: Record | None = None) -> Update:
        return Update(coords=d, full=torch.sign(up.outside(x, r)).mul_(group["residual_lr_scale"]))


class SGD(_Stepped):
    """U = α·up(d) + ρ·(G − up(r)): plain SGD outside the subspace (SUMO; FRUGAL's ``"sgd"`` rule)."""

    name = "sgd"

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group, comm: Comm = LOCAL,
               record: Record | None = None) -> Update:
        return Update(coords=d, full=up.outside(x, r).mul_(group["residual_lr_scale"]))


class ErrorFeedback(Drop):
    """G' = G + e; U = α·up(rule(down(G'))); e ← G' − up(down(G')): the dropped part is carried to the next step.

    Gradient error feedback as in LDAdam (Robert et al. 2025) and PowerSGD (Vogels et al. 2019); costs one
    gradient-sized buffer (``resid.error``, fp32). ``error_feedback_moments=True`` adds LDAdam's optimizer-state
    compression error: when the basis changes from Q_old to Q, the part of the Adam first moment the new basis
    cannot hold, β1/(1 − β1)·(up_old(m) − up(m̃)), m̃ = m Q_oldᵀQ (the transported moment), is fed back too (the
    residual reads the rule's ``rule.exp_avg`` and ``betas``: an Adam rule with float moments).
    """

    name = "error_feedback"
    options = {"error_feedback_moments": False}

    @staticmethod
    def validate(group: Group) -> None:
        opt.flag("error_feedback_moments", group["error_feedback_moments"])
        if group["residual"] == "error_feedback" and group["error_feedback_moments"]:
            if group["rule"] != "adam":
                raise opt.OptionError("error_feedback_moments", True, f"error_feedback_moments=True feeds back an "
                                      f"Adam first moment; rule={group['rule']!r} has none. Use rule='adam'.")
            if isinstance(group["state_dtype"], str) and group["state_dtype"] in ("int8", "int4"):
                raise opt.OptionError("error_feedback_moments", True, "error_feedback_moments=True reads the first "
                                      f"moment, which state_dtype={group['state_dtype']!r} stores quantized; use a "
                                      "float state_dtype.")

    def prepare(self, x: Tensor, state: State, group: Group) -> Tensor:
        if group["error_feedback_moments"] and state.get("rule.step", 0) > 0 and "proj.basis" in state:
            # what the moment's compression error needs from before this step's basis change (popped in update)
            state["resid.prev"] = (state["proj.basis"], state["rule.exp_avg"])
        err = state.get("resid.error")
        return x if err is None else x + err

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group, comm: Comm = LOCAL,
               record: Record | None = None) -> Update:
        err = up.outside(x, r)
        prev = state.pop("resid.prev", None)
        if prev is not None and prev[0] is not state["proj.basis"]:
            q_old, m_old = prev[0].float(), prev[1].float()
            beta1 = group["betas"][0]
            err.addmm_(m_old, (q_old - up.q @ (up.q.T @ q_old)).T, alpha=beta1 / (1 - beta1))
        state["resid.error"] = err
        return Update(coords=d)
