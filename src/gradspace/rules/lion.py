"""Lion: sign of interpolated momentum (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms")."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import options as opt
from .base import Group, State, rotate_linear


class Lion:
    """d = sign(β1 m + (1−β1) r); m ← β2 m + (1−β2) r."""

    name = "lion"
    linear_keys = ("rule.exp_avg",)
    needs_matrix = False
    options = {"betas": (0.9, 0.999)}

    @staticmethod
    def validate(group: Group) -> None:
        opt.pair("betas", group["betas"])

    @staticmethod
    def bounded(group: Group) -> bool:
        """|d| ≤ 1: a sign."""
        return True

    def init(self, coords: Tensor, state: State, group: Group) -> None:
        state["rule.step"] = 0
        state["rule.exp_avg"] = torch.zeros_like(coords)

    def direction(self, r: Tensor, state: State, group: Group) -> tuple[Tensor, float]:
        beta1, beta2 = group["betas"]
        state["rule.step"] += 1
        m = state["rule.exp_avg"]
        d = torch.sign(m.float().lerp(r, 1 - beta1))
        m.lerp_(r.to(m.dtype), 1 - beta2)
        return d, 1.0

    def rotate(self, t: Tensor, state: State, group: Group) -> None:
        rotate_linear(self, t, state)
