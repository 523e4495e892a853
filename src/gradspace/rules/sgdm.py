"""SGD with heavy-ball or Nesterov momentum, inside the subspace (Polyak 1964; Sutskever et al. 2013)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import options as opt
from .base import Group, State, rotate_linear


class SGDM:
    """b ← μ b + (1−τ) r (b₁ = r); d = r + μ b (Nesterov) or d = b — exactly ``torch.optim.SGD``'s buffer."""

    name = "sgdm"
    linear_keys = ("rule.momentum_buffer",)
    needs_matrix = False
    options = {"momentum": 0.9, "dampening": 0.0, "nesterov": False}

    @staticmethod
    def validate(group: Group) -> None:
        opt.real("momentum", group["momentum"], 0.0, 1.0)
        opt.real("dampening", group["dampening"], 0.0, 1.0, hi_open=False)
        if group["rule"] == "sgdm" and group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise opt.OptionError("nesterov", group["nesterov"], "nesterov=True with rule='sgdm' requires momentum > 0 "
                                  "and dampening = 0 (as torch.optim.SGD).")

    def init(self, coords: Tensor, state: State, group: Group) -> None:
        state["rule.step"] = 0
        if group["momentum"] > 0:
            state["rule.momentum_buffer"] = torch.zeros_like(coords)

    def direction(self, r: Tensor, state: State, group: Group) -> tuple[Tensor, float]:
        mu = group["momentum"]
        state["rule.step"] += 1
        if mu == 0:
            return r, 1.0
        buf = state.get("rule.momentum_buffer")
        if buf is None:  # momentum switched on by a hand edit: start the buffer as torch.optim.SGD does
            buf = state["rule.momentum_buffer"] = r.detach().clone()
        elif state["rule.step"] == 1:
            buf.copy_(r)
        else:
            buf.mul_(mu).add_(r.to(buf.dtype), alpha=1 - group["dampening"])
        if group["nesterov"]:
            return r.add(buf.float(), alpha=mu), 1.0
        return buf.float(), 1.0

    @staticmethod
    def stored_direction(group: Group) -> str | None:
        """The state key whose tensor *is* the direction (heavy-ball momentum): a change the outer step makes to the
        direction (SGDP's radial projection) is made to it too, as ``torch.optim.SGD``-style code does in place."""
        return "rule.momentum_buffer" if group["momentum"] > 0 and not group["nesterov"] else None

    def rotate(self, t: Tensor, state: State, group: Group) -> None:
        if "rule.momentum_buffer" in state:
            rotate_linear(self, t, state)
