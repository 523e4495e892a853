"""The residual policies: drop (GaLore), fira (Fira), apollo (APOLLO), sign (FRUGAL), sgd (SUMO)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Group, State, Up, channel_ratio, limit_growth


def _scaled(u: Tensor, scale: float) -> Tensor:
    """``scale · u`` in place (``u`` is a fresh tensor owned by the caller)."""
    return u if scale == 1 else u.mul_(scale)


class Drop:
    """U = α·up(d): the out-of-subspace gradient is discarded (GaLore, Zhao et al. 2024)."""

    name = "drop"

    def prepare(self, x: Tensor, state: State, group: Group) -> Tensor:
        return x

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group) -> Tensor:
        return _scaled(up(d), group["scale"])


class Fira(Drop):
    """U = α·up(d) + limit(φ ⊙ (G − up(r))), φ = ‖d‖/‖r‖ per row (Chen et al. 2024, "Fira", arXiv:2410.01623).

    ``residual_scale_type``: ``"channel"`` (default, Fira) or ``"tensor"``; ``limiter_gamma`` (default 1.01) bounds
    the residual's norm growth between steps. Follows the paper's equation (residual ``G − PPᵀG``); the anchor's code
    subtracts ``α·PPᵀG`` instead.
    """

    name = "fira"

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group) -> Tensor:
        phi = channel_ratio(d, r, group["residual_scale_type"])
        s = limit_growth((x - up(r)) * phi, state, group["limiter_gamma"])
        return _scaled(up(d), group["scale"]).add_(s)


class Apollo(Drop):
    """U = α · limit(G ⊙ s), s = ‖d‖/‖r‖ per row (``"channel"``) or per tensor (Zhu et al. 2025, arXiv:2412.05270).

    The update direction is the full raw gradient; the subspace state only sets its per-channel learning rate.
    ``scale`` is applied linearly here (the APOLLO preset passes √α, as the anchor does).
    """

    name = "apollo"

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group) -> Tensor:
        s = channel_ratio(d, r, group["residual_scale_type"])
        return _scaled(limit_growth(x * s, state, group["limiter_gamma"]), group["scale"])


class Sign(Drop):
    """U = α·up(d) + ρ·sign(G − up(r)): state-free signSGD outside the subspace (FRUGAL, Zmushko et al. 2025)."""

    name = "sign"

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group) -> Tensor:
        return _scaled(up(d), group["scale"]).add_(torch.sign(x - up(r)), alpha=group["residual_lr_scale"])


class SGD(Drop):
    """U = α·up(d) + ρ·(G − up(r)): plain SGD outside the subspace (SUMO; FRUGAL's ``"sgd"`` rule)."""

    name = "sgd"

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group) -> Tensor:
        return _scaled(up(d), group["scale"]).add_(x - up(r), alpha=group["residual_lr_scale"])


class ErrorFeedback(Drop):
    """G' = G + e; U = α·up(rule(down(G'))); e ← G' − up(down(G')): the dropped part is carried to the next step.

    Gradient error feedback as in LDAdam (Robert et al. 2025) and PowerSGD (Vogels et al. 2019); costs one
    gradient-sized buffer (``resid.error``, fp32). LDAdam's extra optimizer-state compression term is not included.
    """

    name = "error_feedback"

    def prepare(self, x: Tensor, state: State, group: Group) -> Tensor:
        err = state.get("resid.error")
        return x if err is None else x + err

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group) -> Tensor:
        state["resid.error"] = x - up(r)
        return _scaled(up(d), group["scale"])
