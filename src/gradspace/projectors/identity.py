"""Identity projector: the subspace is the full space (used for 1-D params and as a test oracle)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..comm import LOCAL, Comm
from .base import Group, State, StoredBasis


class Identity(StoredBasis):
    """``down(X) = X``, ``up(Y) = Y``: the rule runs in full space and nothing falls outside."""

    name = "identity"
    stores_basis = False
    full_space = True

    def shares_basis(self, state: State, group: Group) -> bool:
        return False

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False,
                comm: Comm = LOCAL) -> None:
        return None

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None:
        return None
