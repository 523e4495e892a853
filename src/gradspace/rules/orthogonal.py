"""Orthogonalized momentum (Muon, Jordan et al. 2024; exact SVD variant as in SUMO, Refael et al. 2025, arXiv:2505.24749)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .. import options as opt
from .base import Group, State, rotate_linear

_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: Tensor, steps: int) -> Tensor:
    """Approximate U Vᵀ of g = U Σ Vᵀ by the quintic Newton–Schulz iteration of Muon (fp32 here, any shape)."""
    a, b, c = _NS_COEFFS
    x = g.float()
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if transposed else x


def svd_orthogonalize(g: Tensor) -> Tensor:
    """Exact U Vᵀ of g = U Σ Vᵀ (SUMO) over its numerical range: directions whose singular value is below
    ``max(m, n)·eps·σ_max`` (the numerical null space, where U and V are arbitrary) map to zero, as does the zero
    matrix."""
    u, s, vh = torch.linalg.svd(g.float(), full_matrices=False)
    keep = (s > s.max() * max(g.shape) * torch.finfo(torch.float32).eps).to(u.dtype)
    return (u * keep) @ vh


class Orthogonal:
    """b ← μ b + (1−μ) r; u = (1−μ) r + μ b (Nesterov) or b; d = orth(u) · √max(1, rows/cols).

    ``ortho_method``: ``"newton_schulz"`` (``ns_steps`` quintic steps, Muon), ``"svd"`` (exact, SUMO), or ``"auto"``
    (exact SVD when the smaller side of the coordinates is ≤ ``ortho_svd_max``, else Newton–Schulz).
    """

    name = "orthogonal"
    linear_keys = ("rule.momentum_buffer",)
    needs_matrix = True
    options = {"momentum": 0.9, "nesterov": False, "ortho_method": "auto", "ns_steps": 5, "ortho_svd_max": 64}

    @staticmethod
    def validate(group: Group) -> None:
        opt.real("momentum", group["momentum"], 0.0, 1.0)
        opt.choice("ortho_method", group["ortho_method"], ("newton_schulz", "svd", "auto"))
        opt.integer("ns_steps", group["ns_steps"], 1)
        opt.integer("ortho_svd_max", group["ortho_svd_max"], 1)
        if group["rule"] == "orthogonal" and group["momentum"] <= 0 and group["nesterov"]:
            raise opt.OptionError("nesterov", group["nesterov"], "nesterov=True with rule='orthogonal' requires momentum > 0.")

    @staticmethod
    def bounded(group: Group) -> bool:
        """‖d‖₂ ≈ 1: an (approximately) orthogonalized momentum."""
        return True

    def init(self, coords: Tensor, state: State, group: Group) -> None:
        state["rule.step"] = 0
        state["rule.momentum_buffer"] = torch.zeros_like(coords)

    def direction(self, r: Tensor, state: State, group: Group) -> tuple[Tensor, float]:
        mu = group["momentum"]
        buf = state["rule.momentum_buffer"]
        new_buf = buf.float().lerp(r, 1 - mu)
        u = r.lerp(new_buf, mu) if group["nesterov"] else new_buf
        method = group["ortho_method"]
        if method == "auto":
            method = "svd" if min(u.shape) <= group["ortho_svd_max"] else "newton_schulz"
        if method == "svd":
            try:
                o = svd_orthogonalize(u)
            except RuntimeError as err:  # torch.linalg.LinAlgError: fall back, never leave the state half-updated
                state["rule.fallbacks"] = state.get("rule.fallbacks", 0) + 1
                warnings.warn(f"gradspace: exact orthogonalization failed ({err}); used Newton–Schulz for this step. "
                              "Counted in state['rule.fallbacks'].", RuntimeWarning, stacklevel=4)
                o = newton_schulz(u, int(group["ns_steps"]))
        else:
            o = newton_schulz(u, int(group["ns_steps"]))
        buf.copy_(new_buf)
        state["rule.step"] += 1
        return o * max(1.0, u.shape[0] / u.shape[1]) ** 0.5, 1.0

    def rotate(self, t: Tensor, state: State, group: Group) -> None:
        rotate_linear(self, t, state)
