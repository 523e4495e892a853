"""Exact truncated-SVD projector (GaLore; Zhao et al. 2024, arXiv:2403.03507)."""

from __future__ import annotations

from torch import Tensor

from ..comm import LOCAL, Comm
from .base import Group, State, StoredBasis, exact_basis


class SVD(StoredBasis):
    """Q = top-r right singular vectors of G (fp32 decomposition even for bf16/fp16 weights), refreshed on schedule."""

    name = "svd"

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False,
                comm: Comm = LOCAL) -> None:
        state["proj.basis"] = exact_basis(x, rank, transposed, comm)
