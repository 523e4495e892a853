"""Exact truncated-SVD projector (GaLore; Zhao et al. 2024, arXiv:2403.03507)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Group, State, top_right_singular


class SVD:
    """Q = top-r right singular vectors of G (fp32 decomposition even for bf16/fp16 weights), refreshed on schedule."""

    name = "svd"
    continuous = False
    orthonormal = True
    stores_basis = True

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False) -> None:
        state["proj.basis"] = top_right_singular(x, rank, transposed)

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None:
        return state["proj.basis"]
