"""The residual protocol: what happens to the part of the gradient outside the subspace.

A residual combines, in the oriented frame (a × b), the raw gradient ``x``, the subspace coordinates ``r = down(x)``
and the rule's direction ``d`` into an :class:`Update`; the core applies GaLore's α (``scale``) once, to the
subspace part, and up-projects its coordinates (``U = α·(up(coords) + full_scaled) + full``). State lives under
``resid.*`` keys. Whole-tensor reductions go through ``comm.sum`` so the same code runs on row shards.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol

import torch
from torch import Tensor

from ..comm import LOCAL, Comm

State = MutableMapping[str, Any]
Group = Mapping[str, Any]
Record = MutableMapping[str, Any]


#: a gradient whose ‖G‖ is below this has fp32 sums of squares that cannot overflow (row norms may then run in fp32)
SAFE_NORM = 1e18


class Up:
    """The up-projection ``up(y) = y Qᵀ`` and the out-of-subspace part ``outside(x, r) = x − up(r)``, which is exactly
    zero when an orthonormal basis spans the whole projected side (rank clamped to it): computing it would leave only
    rounding noise, which a sign residual would turn into a full-size step.

    ``orthonormal``: QᵀQ = I (fp32 SVD-type bases), so ‖x_i − β·up(r)_i‖² = ‖x_i‖² − (2β − β²)‖r_i‖² needs no
    up-projection. ``grad_norm``: ‖x‖ as the step's NaN check measured it (``None``: unknown, or a row shard);
    ``grad_rows``: likewise its row norms ‖x_i‖ (a × 1, fp32), or ``None``."""

    def __init__(self, q: Tensor, whole: bool = False, orthonormal: bool = False,
                 grad_norm: float | None = None, grad_rows: Tensor | None = None) -> None:
        self.q = q
        self.whole = whole
        self.orthonormal = orthonormal
        self.grad_norm = grad_norm
        self.grad_rows = grad_rows

    def __call__(self, y: Tensor) -> Tensor:
        return y @ self.q.T

    def outside(self, x: Tensor, r: Tensor) -> Tensor:
        return torch.zeros_like(x) if self.whole else x - self(r)

    def norm(self, x: Tensor, comm: Comm = LOCAL) -> Tensor:
        """‖x‖_F, 0-d fp64: the NaN check's measurement when known, else :func:`tensor_norm`."""
        if self.grad_norm is not None and not comm.sharded:
            return torch.scalar_tensor(self.grad_norm, dtype=torch.float64, device=x.device)
        return tensor_norm(x, comm)

    def row_norms(self, x: Tensor) -> Tensor:
        """‖x_i‖ per row (a × 1, fp64); summed in fp32 when ‖x‖ is known to be small enough not to overflow (the
        cheaper kernel), else in fp64."""
        if self.grad_norm is not None and self.grad_norm < SAFE_NORM:
            return row_norms_fp32(x).double()
        return torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float64)

    def gradient_row_norms(self, x: Tensor) -> Tensor:
        """:meth:`row_norms` of the gradient ``x`` itself: the NaN check's measurement when it made one."""
        if self.grad_rows is not None and self.grad_rows.shape[0] == x.shape[0]:
            return self.grad_rows.double()
        return self.row_norms(x)


@dataclass
class Update:
    """``U = α·(up(coords) + full_scaled ⊙ factor) + full`` (each part optional; ``coords`` is a × r, the others
    a × b; ``factor``, when given, a per-row a × 1 or 0-d multiplier folded into the write: one pass, no temporary)."""

    coords: Tensor | None = None
    full_scaled: Tensor | None = None
    full: Tensor | None = None
    factor: Tensor | None = None


class Residual(Protocol):
    """Decides what happens outside the subspace; returns the parts of the full update ``U`` (``W ← W − lr·U``).

    ``options`` declares the residual's options with their defaults (picked up by ``register_residual``);
    ``validate(group)`` may check them. ``record``, when given, receives what the residual measured this step
    (``resid_scale``: the per-row scale φ; ``resid_limiter``: the norm-growth limiter's shrink factor).
    """

    name: ClassVar[str]
    options: ClassVar[dict[str, Any]]

    def prepare(self, x: Tensor, state: State, group: Group) -> Tensor:
        """Adjust the oriented gradient before projection (error feedback adds its stored error); default: as is."""
        ...

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group, comm: Comm = LOCAL,
               record: Record | None = None) -> Update: ...


def tensor_norm(t: Tensor, comm: Comm = LOCAL) -> Tensor:
    """‖t‖_F of the whole (possibly row-sharded) tensor, accumulated in fp64 (an fp32 tensor's ‖t‖² overflows from
    entries of ~1e19: a finite spike must not become an inf norm); a 0-d fp64 tensor."""
    if t.numel() <= 1 << 16:  # small (subspace coordinates): one kernel, its fp64 copy costs nothing
        total = torch.linalg.vector_norm(t, dtype=torch.float64).square()
    else:  # row norms first: the fp64 kernel then needs no gradient-sized fp64 copy of t
        rows = torch.linalg.vector_norm(t.reshape(t.shape[0] if t.dim() > 1 else 1, -1), dim=1, dtype=torch.float64)
        total = rows.square().sum()
    if not comm.sharded:
        return total.sqrt()
    return comm.sum(total).sqrt()


def row_norms_fp32(x: Tensor) -> Tensor:
    """‖x_i‖ per row (a × 1) summed in fp32. A transposed frame (a column-major view) is squared in its storage order
    and summed along its columns there: torch's strided norm kernel takes 3–8× longer on such a view."""
    if x.dim() == 2 and x.stride(0) == 1 and x.stride(1) != 1:
        t = x.T  # row-major storage
        return (t * t).sum(dim=0).unsqueeze_(1).sqrt_()
    return torch.linalg.vector_norm(x, dim=1, keepdim=True)


def direction_row_norms(d: Tensor, group: Mapping[str, Any]) -> Tensor:
    """‖d_i‖ per row (a × 1, fp64): summed in fp32 when the rule's direction is bounded (``bounded(group)``: its
    squares cannot overflow), else in fp64."""
    from ..registry import RULES

    bounded = getattr(RULES[group["rule"]], "bounded", None)
    if bounded is not None and bounded(group):
        return row_norms_fp32(d).double()
    return torch.linalg.vector_norm(d, dim=1, keepdim=True, dtype=torch.float64)


def norm_ratio(rows_d: Tensor, rows_r: Tensor, per: str, comm: Comm = LOCAL) -> Tensor:
    """‖d‖/‖r‖ from fp64 row norms: per row (``"channel"``, shape a × 1) or for the whole tensor (``"tensor"``,
    0-d, summed over row shards); 0/0 → 0; fp64."""
    if per == "channel":
        return rows_d / (rows_r + 1e-8)
    total_d, total_r = rows_d.square().sum(), rows_r.square().sum()
    if comm.sharded:
        total_d, total_r = comm.sum(total_d), comm.sum(total_r)
    return total_d.sqrt() / (total_r.sqrt() + 1e-8)


def channel_ratio(d: Tensor, r: Tensor, per: str, group: Mapping[str, Any], comm: Comm = LOCAL) -> Tensor:
    """:func:`norm_ratio` of the direction ``d`` and the coordinates ``r`` (fp64 norms; d's rows in fp32 when
    ``group``'s rule bounds it), as fp32."""
    if per == "tensor":  # whole-tensor norms directly: no row norms needed
        norm_d, norm_r = (torch.linalg.vector_norm(t, dtype=torch.float64) for t in (d, r))
        if comm.sharded:
            norm_d, norm_r = comm.sum(norm_d.square()).sqrt(), comm.sum(norm_r.square()).sqrt()
        return (norm_d / (norm_r + 1e-8)).float()
    rows_r = torch.linalg.vector_norm(r, dim=1, keepdim=True, dtype=torch.float64)
    return norm_ratio(direction_row_norms(d, group), rows_r, per, comm).float()


def growth_shrink(norm: Tensor, state: State, gamma: float, record: Record | None = None) -> Tensor | None:
    """The norm-growth limiter's divisor for an update of norm ``‖U_t‖`` (Fira/APOLLO): max(1, ‖U_t‖ / (γ‖U_{t−1}‖));
    remembers the limited norm. ``None`` when disabled (``gamma`` 0); the first step (and any step after a zero
    update) passes unchanged."""
    if not gamma:
        return None
    prev = state.get("resid.prev_norm")
    if prev is None:
        shrink = torch.ones((), device=norm.device)
    else:
        prev = prev.to(norm.device)
        shrink = (norm / prev.clamp_min(1e-30)).div_(gamma).clamp_min_(1.0).masked_fill_(prev <= 0, 1.0)
    if record is not None:
        record["resid_limiter"] = shrink.detach().float()
    state["resid.prev_norm"] = (norm.detach() / shrink).clamp_(max=torch.finfo(torch.float32).max).float()
    return shrink


def limit_growth(u: Tensor, state: State, gamma: float, comm: Comm = LOCAL, record: Record | None = None) -> Tensor:
    """U_t rescaled to at most γ‖U_{t−1}‖ (:func:`growth_shrink`); disabled when ``gamma`` is 0."""
    if not gamma:
        return u
    shrink = growth_shrink(tensor_norm(u, comm), state, gamma, record)
    return u / shrink.float()
