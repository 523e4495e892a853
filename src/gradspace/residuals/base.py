"""The residual protocol: what happens to the part of the gradient outside the subspace.

A residual combines, in the oriented frame (a × b), the raw gradient ``x``, the subspace coordinates ``r = down(x)``,
the rule's direction ``d`` and the back-projected direction ``up(d)`` into the full update (before ``lr``).
``scale`` is the subspace update's multiplier (GaLore's α). State lives under ``resid.*`` keys.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable, ClassVar, Mapping, MutableMapping, Protocol

import torch
from torch import Tensor

State = MutableMapping[str, Any]
Group = Mapping[str, Any]
Up = Callable[[Tensor], Tensor]


class Residual(Protocol):
    """Decides what happens outside the subspace; returns the full update ``U`` so that ``W ← W − lr·U``."""

    name: ClassVar[str]

    def prepare(self, x: Tensor, state: State, group: Group) -> Tensor:
        """Adjust the oriented gradient before projection (error feedback adds its stored error); default: as is."""
        ...

    def update(self, x: Tensor, r: Tensor, d: Tensor, up: Up, state: State, group: Group) -> Tensor: ...


#: Sum across shards for whole-tensor norms. Rows are local under FSDP2 row sharding, so per-row norms need nothing;
#: the sharded update sets this to an all-reduce while it runs (``None``: a single process, nothing to add).
SHARD_SUM: ContextVar[Callable[[Tensor], Tensor] | None] = ContextVar("gradspace_shard_sum", default=None)


def tensor_norm(t: Tensor) -> Tensor:
    """‖t‖_F of the whole (possibly row-sharded) tensor."""
    reduce = SHARD_SUM.get()
    return t.norm() if reduce is None else reduce(t.float().square().sum()).sqrt()


def channel_ratio(d: Tensor, r: Tensor, per: str) -> Tensor:
    """‖d‖/‖r‖ per row (``"channel"``, shape a × 1) or for the whole tensor (``"tensor"``, 0-d); 0/0 → 0."""
    if per == "channel":
        return d.norm(dim=1, keepdim=True) / (r.norm(dim=1, keepdim=True) + 1e-8)
    return tensor_norm(d) / (tensor_norm(r) + 1e-8)


def limit_growth(u: Tensor, state: State, gamma: float) -> Tensor:
    """Norm-growth limiter (Fira/APOLLO): if ‖U_t‖ > γ‖U_{t−1}‖, rescale U_t to γ‖U_{t−1}‖; remembers the result's norm.

    Disabled when ``gamma`` is 0. The first step (and any step after a zero update) passes unchanged.
    """
    if not gamma:
        return u
    norm = tensor_norm(u)
    prev = state.get("resid.prev_norm")
    if prev is not None:
        prev = prev.to(norm.device)
        ratio = torch.where(prev > 0, norm / prev.clamp_min(1e-30), torch.zeros_like(norm))
        shrink = torch.clamp(ratio / gamma, min=1.0)
        u = u / shrink
        norm = norm / shrink
    state["resid.prev_norm"] = norm.detach().float().clone()
    return u
