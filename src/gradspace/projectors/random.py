"""Seeded random projector (Flora, Hao et al. 2024; GoLore, He et al. 2025; APOLLO, Zhu et al. 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import options as opt
from ..comm import LOCAL, Comm
from .base import Group, State, StoredBasis, exact_basis, generator_for, orthonormalize


class Random(StoredBasis):
    """Q ~ N(0, 1/r) (``random_dist="gaussian"``) or uniform on the Stiefel manifold (``"stiefel"``), re-drawn at refresh.

    Only the seed and the refresh counter are stored (Python ints): the basis is regenerated when needed, so it costs
    no optimizer-state memory. ``cache_random_basis=True`` keeps the drawn basis for the refresh period instead (b × r
    fp32 of state per weight; saves the draw at every step — the same basis either way). ``svd_warmup_steps > 0`` uses an exact SVD basis (stored) while the step count is below
    it, then random bases (GoLore's schedule).
    """

    name = "random"
    stores_basis = False
    options = {"random_dist": "gaussian", "svd_warmup_steps": 0, "cache_random_basis": False}

    @staticmethod
    def validate(group: Group) -> None:
        opt.choice("random_dist", group["random_dist"], ("gaussian", "stiefel"))
        opt.integer("svd_warmup_steps", group["svd_warmup_steps"], 0)
        opt.flag("cache_random_basis", group["cache_random_basis"])

    def is_orthonormal(self, group: Group) -> bool:
        # Gaussian bases are only orthonormal in expectation; Stiefel ones exactly; the SVD warm-up's too
        return group["random_dist"] == "stiefel"

    def shares_basis(self, state: State, group: Group) -> bool:
        return state["step"] < int(group["svd_warmup_steps"])

    def coordinate_gain(self, group: Group, b: int, rank: int) -> float | None:
        if group["random_dist"] == "stiefel":
            return 1.0
        # torch's Box–Muller normals are below √(2·ln 2⁶⁴) ≈ 9.4 in magnitude (from ≤ 64-bit uniforms), so a column
        # of N(0, 1/r) entries has norm < 10·√(b/r); the SVD warm-up's orthonormal columns are below that too
        return 10.0 * (b / rank) ** 0.5

    def refresh(self, x: Tensor, rank: int, state: State, group: Group, transposed: bool = False,
                comm: Comm = LOCAL) -> None:
        if state["step"] < int(group["svd_warmup_steps"]):
            state["proj.basis"] = exact_basis(x, rank, transposed, comm)
        else:
            state.pop("proj.basis", None)
            if group["cache_random_basis"]:  # memory for speed: draw once per refresh, keep it for the period
                state["proj.basis"] = self.basis(state, x.shape[1], rank, group, x.device)

    def basis(self, state: State, b: int, rank: int, group: Group, device: torch.device) -> Tensor | None:
        stored = state.get("proj.basis")
        if stored is not None:
            return stored
        gen = generator_for(state, device)
        z = torch.randn(b, rank, generator=gen, device=device, dtype=torch.float32)
        if group["random_dist"] == "stiefel":
            return orthonormalize(z)
        return z.div_(rank**0.5) if rank > 1 else z
