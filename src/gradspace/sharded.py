"""FSDP2 row-sharded update: projected weights stay sharded, with sharded moments and a replicated right basis.

With ``fully_shard`` every rank holds rows ``G_i`` of each gradient (``Shard(0)``). When the projected side is the
columns (a *right* basis Q, n × r), ``down(G)_i = G_i Q`` and ``up`` are local, so a step needs no communication:
moments are stored as ``Shard(0)`` DTensors (m × r, this rank's rows), the basis as a replicated tensor. Refreshes
communicate little: the randomized range finder all-reduces n × k products (``Σ_i G_iᵀ G_i Ω``) and a k × k Gram, the
exact SVD gathers the matrix to one owner rank and broadcasts the basis; whole-tensor norms (limiter, tensor-wise
scale) are all-reduced scalars. Weights whose update is not of this form use the gathered path in the optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .functional import effective_rank, matrix_shape, needs_refresh, transposes
from .projectors.base import generator_for, orthonormalize, top_right_singular
from .registry import PROJECTORS, RESIDUALS, RULES
from .residuals.base import SHARD_SUM

_LOCAL_PROJECTORS = ("svd", "randomized", "random")


def shardable(param: Tensor, group: dict[str, Any]) -> bool:
    """Whether this Shard(0) weight can be updated locally: a right basis, an element-wise rule, a fixed schedule."""
    shape = matrix_shape(param.shape)
    return (
        shape is not None
        and group["projector"] in _LOCAL_PROJECTORS
        and not transposes(*shape, group["side"])
        and not RULES[group["rule"]].needs_matrix
        and not group["radial_projection"]
        and group["refresh"] == "every"
    )


def _all_reduce(t: Tensor, pg: Any) -> Tensor:
    dist.all_reduce(t, group=pg)
    return t


def _refresh_basis(x: Tensor, full_grad: Any, rank: int, state: dict[str, Any], group: dict[str, Any], pg: Any,
                   owner: int) -> Tensor | None:
    """The new replicated basis (n × rank) from row shards ``x``; identical on every rank (rank 0's is broadcast)."""
    name = group["projector"]
    n = x.shape[1]
    if name == "random":
        return PROJECTORS["random"].basis(state, n, rank, group, x.device)
    if name == "svd":
        full = full_grad().float()  # an all-gather: every rank takes part; only the owner decomposes
        me = dist.get_rank(pg)
        q = top_right_singular(full, rank) if me == owner else torch.empty(n, rank, device=x.device)
        dist.broadcast(q, src=owner if pg is None else dist.get_global_rank(pg, owner), group=pg)
        return q
    k = min(n, rank + int(group["oversample"]))
    gen = generator_for(state, x.device, salt=1)
    prev = state.get("proj.basis")
    if prev is not None and prev.shape[1] <= k:
        extra = torch.randn(n, k - prev.shape[1], generator=gen, device=x.device)
        omega = torch.cat([prev.float(), extra], dim=1)
    else:
        omega = torch.randn(n, k, generator=gen, device=x.device)
    q = orthonormalize(omega)
    for _ in range(int(group["power_iters"])):
        q = orthonormalize(_all_reduce(x.T @ (x @ q), pg))
    y = x @ q
    _, vecs = torch.linalg.eigh(_all_reduce(y.T @ y, pg).double())
    basis = (q @ vecs[:, -rank:].flip(1).to(x.dtype)).contiguous()
    dist.broadcast(basis, src=0 if pg is None else dist.get_global_rank(pg, 0), group=pg)  # bit-identical replicas
    return basis


def sharded_update(param: Tensor, state: dict[str, Any], group: dict[str, Any], lr: float, pg: Any, owner: int) -> None:
    """One step of ``group``'s projector × rule × residual on this rank's rows of a Shard(0) weight."""
    from torch.distributed.tensor import DTensor, Shard

    mesh = param.device_mesh
    m, n = matrix_shape(param.shape)
    w = param.to_local()
    g = param.grad.to_local()
    g = -g if group["maximize"] else g
    x = g.reshape(-1, n).float()
    rows = x.shape[0]
    local = {k: (v.to_local() if isinstance(v, DTensor) else v) for k, v in state.items()}
    projector, rule, residual = PROJECTORS[group["projector"]], RULES[group["rule"]], RESIDUALS[group["residual"]]
    sdtype = group["state_dtype"] or (torch.float32 if param.dtype == torch.float16 else param.dtype)
    rank = effective_rank(group["rank"], n)
    token = SHARD_SUM.set(lambda t: _all_reduce(t, pg))
    try:
        x = residual.prepare(x, local, group)
        if needs_refresh(local, group):
            has_basis = local["proj.count"] > 0
            old = projector.basis(local, n, rank, group, x.device) if has_basis else None
            local["proj.count"] += 1
            q = _refresh_basis(x, lambda: param.grad.full_tensor().reshape(m, n), rank, local, group, pg, owner)
            if projector.stores_basis:
                local["proj.basis"] = q
            if has_basis and "rule.step" in local:
                if group["on_refresh"] == "reset":
                    rule.init(torch.zeros(rows, rank, dtype=sdtype, device=x.device), local, group)
                elif group["on_refresh"] == "rotate":
                    rule.rotate(q.T @ old, local, group)
        else:
            q = projector.basis(local, n, rank, group, x.device)
        r = x @ q
        if "rule.step" not in local:
            rule.init(torch.zeros(r.shape, dtype=sdtype, device=r.device), local, group)
        d, factor = rule.direction(r, local, group)
        u = residual.update(x, r, d, lambda y: y @ q.T, local, group)
    finally:
        SHARD_SUM.reset(token)
    if group["weight_decay"]:
        w.mul_(1 - lr * group["weight_decay"])
    w.add_(u.reshape(w.shape).to(w.dtype), alpha=-lr * factor)
    local["step"] += 1
    for key, value in local.items():
        if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == rows and key.split(".")[0] in ("rule", "resid"):
            if isinstance(state.get(key), DTensor) and state[key].to_local() is value:
                continue  # updated in place
            shape = (m, *value.shape[1:])
            stride = torch.empty(shape, device="meta").stride()
            state[key] = DTensor.from_local(value, mesh, [Shard(0)], run_check=False, shape=shape, stride=stride)
        else:
            state[key] = value
