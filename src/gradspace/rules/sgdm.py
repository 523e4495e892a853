"""SGD with heavy-ball or Nesterov momentum, inside the subspace (Polyak 1964; Sutskever et al. 2013)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Group, State, rotate_linear


class SGDM:
    """b ← μ b + (1−τ) r (b₁ = r); d = r + μ b (Nesterov) or d = b — exactly ``torch.optim.SGD``'s buffer."""

    name = "sgdm"
    linear_keys = ("rule.momentum_buffer",)
    needs_matrix = False

    def init(self, coords: Tensor, state: State, group: Group) -> None:
        state["rule.step"] = 0
        if group["momentum"] > 0:
            state["rule.momentum_buffer"] = torch.zeros_like(coords)

    def direction(self, r: Tensor, state: State, group: Group) -> tuple[Tensor, float]:
        mu = group["momentum"]
        state["rule.step"] += 1
        if mu == 0:
            return r, 1.0
        buf = state["rule.momentum_buffer"]
        if state["rule.step"] == 1:
            buf.copy_(r)
        else:
            buf.mul_(mu).add_(r.to(buf.dtype), alpha=1 - group["dampening"])
        if group["nesterov"]:
            return r.add(buf.float(), alpha=mu), 1.0
        return buf.float(), 1.0

    def rotate(self, t: Tensor, state: State, group: Group) -> None:
        if "rule.momentum_buffer" in state:
            rotate_linear(self, t, state)
