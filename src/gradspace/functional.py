"""The whole update of one weight as plain tensor code — the ground truth every optimizer class calls.

    W ← W − lr·f·( U ) − lr·wd·W,   U = residual(G, down(G), rule(down(G)), up)   (default U = α·up(rule(down(G))))

where ``f`` is the rule's step-size factor (1, or Adam's ``√bc2/bc1`` in the Hugging Face form). Matrices are viewed
in an *oriented* frame ``X`` (a × b) whose b columns are the projected side; conv kernels (≥ 3-D) are viewed as
``(out, in·k…)`` and restored; vectors, scalars and matrices with a side of 1 run the rule in full space.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, MutableMapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .projectors.base import generator_for, orthonormalize
from .registry import PROJECTORS, RESIDUALS, RULES
from .schedule import record_energy, refresh_due

State = MutableMapping[str, Any]
Group = Mapping[str, Any]


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int] | None:
    """The (rows, cols) a weight is treated as, or ``None`` for a non-matrix (fewer than 2 dims, or a side of 1).

    Conv kernels and other ≥ 3-D tensors are reshaped to ``(shape[0], prod(shape[1:]))`` (Muon's policy).
    """
    if len(shape) < 2:
        return None
    m = int(shape[0])
    n = math.prod(int(s) for s in shape[1:])
    if m <= 1 or n <= 1:
        return None
    return m, n


def transposes(m: int, n: int, side: str) -> bool:
    """Whether the oriented frame is ``Gᵀ``: it is when the projected side is the rows (a *left* projection)."""
    if side == "smaller":
        return m < n
    if side == "larger":
        return m >= n
    return side == "left"


def effective_rank(rank: int | float, side: int) -> int:
    """The rank actually used on a projected side of length ``side``: fractions are rounded, ints clamped to the side."""
    if isinstance(rank, float):
        return max(1, min(side, round(rank * side)))
    return max(1, min(side, int(rank)))


def _refresh(
    x: Tensor, rank: int, state: State, group: Group, projector: Any, new_basis: Tensor | None = None,
    transposed: bool = False,
) -> Tensor | None:
    """Refresh the basis (or install ``new_basis`` computed elsewhere, e.g. by the owner rank under DDP); on a
    failed or non-finite decomposition keep the previous basis (or a random one) and count the fallback."""
    old = state.get("proj.basis")
    state["proj.count"] += 1
    if new_basis is not None:
        state["proj.basis"] = new_basis
        return new_basis
    try:
        projector.refresh(x, rank, state, group, transposed)
        q = projector.basis(state, x.shape[1], rank, group, x.device)
        if q is not None and not projector.continuous and not bool(torch.isfinite(q).all()):
            raise FloatingPointError("non-finite basis")
        return q
    except (RuntimeError, FloatingPointError) as err:  # torch.linalg.LinAlgError is a RuntimeError
        state["proj.fallbacks"] = state.get("proj.fallbacks", 0) + 1
        warnings.warn(
            f"gradspace: the {projector.name!r} projector failed to refresh a {tuple(x.shape)} basis ({err}); "
            "kept the previous basis (a random one if none). Counted in state['proj.fallbacks'].",
            RuntimeWarning,
            stacklevel=4,
        )
        if old is None:
            old = orthonormalize(torch.randn(x.shape[1], rank, generator=generator_for(state, x.device, 2), device=x.device))
        state["proj.basis"] = old
        return old


def oriented_grad(param: Tensor, grad: Tensor, state: State, group: Group) -> tuple[Tensor, bool] | None:
    """The fp32 oriented gradient ``X`` (a × b, projected side = columns) that the projector sees, and whether it is
    ``Gᵀ``; ``None`` when the weight runs in full space. Includes ``maximize`` and the residual's ``prepare``."""
    shape = matrix_shape(param.shape)
    if shape is None or group["projector"] == "identity":
        return None
    g = -grad if group["maximize"] else grad
    transpose = transposes(*shape, group["side"])
    x = g.reshape(shape).float()
    if transpose:
        x = x.T
    return RESIDUALS[group["residual"]].prepare(x, state, group), transpose


def needs_refresh(state: State, group: Group) -> bool:
    """Whether the next update of this (projected) weight refreshes its basis."""
    projector = PROJECTORS[group["projector"]]
    return refresh_due(state["step"], state["proj.count"] > 0, projector.continuous, group, state)


def compute_basis(x: Tensor, state: State, group: Group, transposed: bool = False) -> tuple[Tensor, bool]:
    """The basis a refresh of this weight would install, without changing ``state``; returns (basis, failed).

    Used to compute a basis on one rank and broadcast it (``projector_sync="broadcast"``)."""
    scratch = dict(state)
    fallbacks = scratch.get("proj.fallbacks", 0)
    projector = PROJECTORS[group["projector"]]
    q = _refresh(x, effective_rank(group["rank"], x.shape[1]), scratch, group, projector, transposed=transposed)
    return q, scratch.get("proj.fallbacks", 0) != fallbacks


def basis_is_shared(state: State, group: Group) -> bool:
    """Whether a refresh produces a numerical basis that replicas must agree on (seeded random bases do not)."""
    name = group["projector"]
    if name == "random":
        return state["step"] < int(group["svd_warmup_steps"])
    return name != "identity"


def _radial_projection(param: Tensor, grad: Tensor, update: Tensor, delta: float, eps: float) -> tuple[Tensor, bool]:
    """AdamP/SGDP (Heo et al. 2021, arXiv:2006.08217): if the weight looks scale-invariant (|cos(G, W)| < δ/√dim per
    channel, else per layer), remove the update's radial component ``Ŵ (Ŵ·U)``."""
    expand = (-1,) + (1,) * (param.dim() - 1)
    for view in (lambda t: t.reshape(t.shape[0], -1), lambda t: t.reshape(1, -1)):
        p_v, g_v = view(param.float()), view(grad.float())
        cos = F.cosine_similarity(g_v, p_v, dim=1, eps=eps).abs()
        if bool(cos.max() < delta / math.sqrt(p_v.shape[1])):
            p_n = param.float() / p_v.norm(dim=1).view(expand).add(eps)
            return update - p_n * view(p_n * update).sum(dim=1).view(expand), True
    return update, False


def subspace_update(
    param: Tensor, grad: Tensor, state: State, group: Group, lr: float, *, new_basis: Tensor | None = None
) -> None:
    """Apply one step of ``group``'s projector × rule × residual to ``param`` in place, updating ``state``.

    ``state`` must hold the ints ``step`` and ``proj.seed`` (and ``proj.count``); everything else is created lazily.
    The update is computed in fp32 and cast to the parameter's dtype; moments use ``group['state_dtype']`` or the
    parameter's dtype. ``new_basis``, when given at a refresh step, is installed instead of computing one.
    """
    g = -grad if group["maximize"] else grad
    # fp16's range cannot hold Adam's second moment (it underflows with eps 1e-8): its moments default to fp32
    sdtype = group["state_dtype"] or (torch.float32 if param.dtype == torch.float16 else param.dtype)
    projector = PROJECTORS[group["projector"]]
    rule = RULES[group["rule"]]
    framed = oriented_grad(param, grad, state, group)
    if framed is None and rule.needs_matrix and matrix_shape(param.shape) is None:
        rule = RULES[group["fallback_rule"]]

    if framed is None:
        shape = matrix_shape(param.shape)
        x = g.float() if shape is None else g.reshape(shape).float()
        if "rule.step" not in state:
            rule.init(torch.zeros_like(x, dtype=sdtype), state, group)  # zeros_like keeps a DTensor's sharding
        d, factor = rule.direction(x, state, group)
        update = d.reshape(param.shape)
    else:
        x, transpose = framed
        rank = effective_rank(group["rank"], x.shape[1])
        if needs_refresh(state, group):
            has_basis = state["proj.count"] > 0
            old = projector.basis(state, x.shape[1], rank, group, x.device) if has_basis else None
            q = _refresh(x, rank, state, group, projector, new_basis, transpose)
            if has_basis and "rule.step" in state:
                if group["on_refresh"] == "reset":
                    rule.init(torch.zeros((x.shape[0], rank), dtype=sdtype, device=x.device), state, group)
                elif group["on_refresh"] == "rotate":
                    rule.rotate(q.T @ old, state, group)
        else:
            q = projector.basis(state, x.shape[1], rank, group, x.device)
        r = x @ q
        if group["refresh"] == "adaptive":  # the adaptive schedule decides the next refresh from this step's energy
            record_energy(state, x, q, projector.orthonormal or group["random_dist"] == "stiefel")
        if "rule.step" not in state:
            rule.init(torch.zeros(r.shape, dtype=sdtype, device=r.device), state, group)
        d, factor = rule.direction(r, state, group)
        u = RESIDUALS[group["residual"]].update(x, r, d, lambda y: y @ q.T, state, group)
        update = (u.T if transpose else u).reshape(param.shape)

    wd = group["weight_decay"]
    if group["radial_projection"] and param.dim() > 1:
        update, radial = _radial_projection(param, g, update, group["radial_delta"], group["eps"])
        if radial:
            wd = wd * group["radial_wd_ratio"]
    if wd:
        param.mul_(1 - lr * wd)
    param.add_(update.to(param.dtype), alpha=-lr * factor)
    state["step"] += 1
