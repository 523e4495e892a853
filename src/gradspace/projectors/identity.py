"""Identity projector: the subspace is the full space (used for 1-D params and as a test oracle)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Group, State


class Identity:
    """``down(X) = X``, ``up(Y) = Y``: the rule runs in full space and nothing falls outside."""

    name = "identity"
    continuous = False
    orthonormal = True
    stores_basis = False

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False) -> None:
        return None

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None:
        return None
