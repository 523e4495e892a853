"""Everything about running the one update on several processes: DDP replicas and FSDP2 row shards.

* **DDP** (replicated weights, averaged gradients): only decompositions must agree. With
  ``projector_sync="broadcast"`` the owner of weight i (rank i mod world) computes each basis due this step
  (:func:`~gradspace.functional.compute_basis`) and broadcasts it (:func:`shared_bases`); the update installs it.
* **FSDP2** (``fully_shard``: each rank holds rows of each weight, ``Shard(0)``): a weight projected on its columns
  (a right basis) with an element-wise rule is updated on its own rows by the same
  :func:`~gradspace.functional.subspace_update`, given a :class:`ShardComm` whose ``sum`` all-reduces over the shard
  group (Gram matrices of the randomized range finder, whole-tensor norms, captured energy), ``gather`` assembles the
  matrix for an exact SVD on the owner rank and ``on_owner``/``same`` broadcast the basis. Its moments stay
  ``Shard(0)`` DTensors, the basis is replicated. Any other matrix update runs on the gathered weight on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .comm import Comm, is_dtensor, local
from .frame import Frame
from .moments import quantized
from .functional import compute_basis, needs_refresh, prepared_grad, rule_for, subspace_update
from .registry import PROJECTORS

Work = tuple[dict[str, Any], Tensor, str, int, Frame]


def replicas(pg: Any) -> tuple[Any, int, int] | None:
    """(process group, world size, rank) when running with more than one replica, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size(pg)
    return (pg, world, dist.get_rank(pg)) if world > 1 else None


def _global(pg: Any, rank: int) -> int:
    return rank if pg is None else dist.get_global_rank(pg, rank)


class ShardComm(Comm):
    """Collectives over the shard group of a ``Shard(0)`` weight whose oriented matrix has ``rows`` rows in all."""

    sharded = True

    def __init__(self, pg: Any, owner: int, mesh: Any, rows: int) -> None:
        self.pg, self.owner, self.mesh, self.rows = pg, owner, mesh, rows

    def sum(self, t: Tensor) -> Tensor:
        dist.all_reduce(t, group=self.pg)
        return t

    def gather(self, x: Tensor) -> Tensor:
        from torch.distributed.tensor import DTensor, Shard

        shape = (self.rows, x.shape[1])
        return DTensor.from_local(x.contiguous(), self.mesh, [Shard(0)], run_check=False, shape=shape,
                                  stride=(x.shape[1], 1)).full_tensor()

    def on_owner(self, fn: Callable[[], Tensor], shape: tuple[int, ...], device: torch.device) -> Tensor:
        if dist.get_rank(self.pg) == self.owner:
            try:
                t = fn().float().contiguous()
            except (RuntimeError, FloatingPointError):  # every rank must see the failure: a NaN basis falls back
                t = torch.full(shape, float("nan"), device=device)
        else:
            t = torch.empty(shape, device=device)
        dist.broadcast(t, src=_global(self.pg, self.owner), group=self.pg)
        return t

    def same(self, t: Tensor) -> Tensor:
        t = t.contiguous()
        dist.broadcast(t, src=_global(self.pg, 0), group=self.pg)
        return t


def shardable(p: Tensor, group: dict[str, Any], frame: Frame) -> bool:
    """Whether this ``Shard(0)`` weight is updated on its own rows: projected on its columns, element-wise rule (and
    float moments: quantization blocks span rows, so quantized moments take the gathered path)."""
    return (is_dtensor(p) and frame.projected and not frame.transposed and not rule_for(frame, group).needs_matrix
            and not group["radial_projection"] and quantized(group) is None)


def gathers(p: Tensor, group: dict[str, Any], frame: Frame) -> bool:
    """Whether a ``Shard(0)`` weight is updated from its gathered full tensor: anything but element-wise math on float
    moments (quantized moments are encoded from the whole tensor, replicated)."""
    if not is_dtensor(p) or shardable(p, group, frame):
        return False
    if quantized(group) is not None:
        return True
    if frame.matrix is None:
        return False
    return frame.projected or rule_for(frame, group).needs_matrix or bool(group["radial_projection"])


def shared_bases(work: list[Work], states: Any, grads: dict[Tensor, Tensor], pg: Any) -> dict[Tensor, tuple[Tensor, bool]]:
    """Under DDP with ``projector_sync="broadcast"``: owners compute the bases due this step, then broadcast them.

    Every rank walks the same parameters in the same order, so the collective sequence is identical on all ranks;
    the owner of parameter i is rank i mod world size. A row of flags rides along to report fallbacks.
    """
    found = replicas(pg)
    if found is None:
        return {}
    pg, world, me = found
    todo = []
    for group, p, _, index, frame in work:
        state = states[p]
        if (not frame.projected or group["projector_sync"] != "broadcast"
                or not PROJECTORS[group["projector"]].shares_basis(state, group) or not needs_refresh(state, group)):
            continue
        if is_dtensor(p) and p not in grads:  # row-sharded weights refresh inside their sharded update
            continue
        x = prepared_grad(frame, grads.get(p, p.grad), state, group)
        owner = index % world
        if me == owner:
            q, failed = compute_basis(x, frame, state, group)
            packed = torch.cat([q.float(), torch.full((1, frame.rank), float(failed), device=q.device)]).contiguous()
        else:
            packed = torch.empty(frame.b + 1, frame.rank, device=x.device, dtype=torch.float32)
        todo.append((p, packed, _global(pg, owner)))
    handles = [dist.broadcast(packed, src=src, group=pg, async_op=True) for _, packed, src in todo]
    for handle in handles:
        handle.wait()
    return {p: (packed[:-1].clone(), bool(packed[-1, 0] > 0)) for p, packed, _ in todo}


def verify_sync(refreshed: list[tuple[Tensor, str]], states: Any, pg: Any) -> None:
    """Raise if any refreshed basis or its weight differs across replicas (``verify_sync=True``)."""
    found = replicas(pg)
    if found is None or not refreshed:
        return
    pg, world, _ = found
    sums = []
    for p, _ in refreshed:
        weight = p.detach().full_tensor() if is_dtensor(p) else p.detach()
        basis = states[p].get("proj.basis")
        zero = torch.zeros((), dtype=torch.float64, device=weight.device)
        sums.append(torch.stack([weight.double().sum(), basis.double().sum() if basis is not None else zero]))
    mine = torch.stack(sums)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=pg)
    for other in gathered[1:]:
        bad = (other != gathered[0]).any(dim=1).nonzero().flatten().tolist()
        if bad:
            names = [refreshed[i][1] for i in bad]
            raise RuntimeError(
                f"gradspace verify_sync: replicas disagree on the basis or weight of {names[:3]} after a refresh. "
                "Use projector_sync='broadcast' (the default), or identical hardware and thread counts."
            )


def all_finite(finite: Tensor, pg: Any) -> Tensor:
    """The per-parameter finiteness flags agreed by every rank (a shard's NaN stops every rank's step)."""
    flags = finite.to(torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=pg)
    return flags.bool()


def all_sum(values: Tensor, pg: Any) -> Tensor:
    """``values`` summed over the ranks (the squared norms of a sharded weight's gradient: its global ‖G‖²)."""
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=pg)
    return values


def update_sharded(p: Tensor, state: dict[str, Any], group: dict[str, Any], lr: float, frame: Frame, pg: Any,
                   owner: int, record: dict[str, Any] | None = None, grad_norm: float | None = None) -> None:
    """:func:`~gradspace.functional.subspace_update` on this rank's rows of a ``Shard(0)`` weight (``grad_norm``:
    the whole gradient's ‖G‖, a bound for this rank's rows)."""
    from torch.distributed.tensor import DTensor, Shard

    w, g = p.to_local(), p.grad.to_local()
    rows = w.reshape(-1, frame.matrix[1]).shape[0]
    view = {k: (v.to_local() if isinstance(v, DTensor) else v) for k, v in state.items()}
    comm = ShardComm(pg, owner, p.device_mesh, frame.matrix[0])
    subspace_update(w, g, view, group, lr, frame=frame, comm=comm, record=record, grad_norm=grad_norm)
    for key, value in view.items():
        rowwise = isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == rows
        if rowwise and key.split(".")[0] in ("rule", "resid"):
            if isinstance(state.get(key), DTensor) and state[key].to_local() is value:
                continue  # updated in place
            shape = (frame.matrix[0], *value.shape[1:])
            stride = torch.empty(shape, device="meta").stride()
            state[key] = DTensor.from_local(value, p.device_mesh, [Shard(0)], run_check=False, shape=shape,
                                            stride=stride)
        else:
            state[key] = value
    for key in [k for k in state if k not in view]:
        del state[key]


def update_gathered(p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any], lr: float, frame: Frame,
                    basis: tuple[Tensor, bool] | None, record: dict[str, Any] | None = None,
                    grad_norm: float | None = None) -> None:
    """:func:`~gradspace.functional.subspace_update` on the gathered matrix of a ``Shard(0)`` weight (every rank, the
    same replicated state), then each rank keeps its own rows."""
    from torch.distributed.tensor import DTensor, Replicate

    weight = p.detach().full_tensor()
    subspace_update(weight, grad, state, group, lr, frame=frame, new_basis=basis, record=record, grad_norm=grad_norm)
    full = DTensor.from_local(weight, p.device_mesh, [Replicate()], run_check=False)
    p.to_local().copy_(full.redistribute(p.device_mesh, p.placements).to_local())
