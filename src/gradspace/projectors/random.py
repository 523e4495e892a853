"""Seeded random projector (Flora, Hao et al. 2024; GoLore, He et al. 2025; APOLLO, Zhu et al. 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Group, State, generator_for, orthonormalize, top_right_singular


class Random:
    """Q ~ N(0, 1/r) (``random_dist="gaussian"``) or uniform on the Stiefel manifold (``"stiefel"``), re-drawn at refresh.

    Only the seed and the refresh counter are stored (Python ints): the basis is regenerated when needed, so it costs
    no optimizer-state memory. ``svd_warmup_steps > 0`` uses an exact SVD basis (stored) while the step count is below
    it, then random bases (GoLore's schedule).
    """

    name = "random"
    continuous = False
    orthonormal = False  # Gaussian bases are only orthonormal in expectation; "stiefel" ones are exactly
    stores_basis = False

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False) -> None:
        if state["step"] < int(group["svd_warmup_steps"]):
            state["proj.basis"] = top_right_singular(x, rank, transposed)
        else:
            state.pop("proj.basis", None)

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None:
        stored = state.get("proj.basis")
        if stored is not None:
            return stored
        gen = generator_for(state, device)
        z = torch.randn(b, rank, generator=gen, device=device, dtype=torch.float32)
        if group["random_dist"] == "stiefel":
            return orthonormalize(z)
        return z / rank**0.5
