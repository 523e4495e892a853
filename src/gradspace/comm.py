"""The communication a weight's update needs, as a small object: the identity in a single process.

:func:`gradspace.functional.subspace_update` is written once against this interface; under FSDP2 row sharding
(``Shard(0)``) it is given :class:`gradspace.distributed.ShardComm`, whose collectives run over the shard group, so
the sharded update is the same function as the single-process one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class Comm:
    """Single process: every collective is the identity.

    ``sum(t)``: the sum of ``t`` over shards (whole-tensor norms, Gram matrices of row-sharded gradients);
    ``gather(x)``: the full oriented matrix from this rank's rows; ``on_owner(fn, shape, device)``: ``fn()`` computed by
    one rank and the same result on every rank (an exception on the owner arrives everywhere as a NaN tensor, so every
    rank takes the same fallback); ``same(t)``: rank 0's ``t`` on every rank (bit-identical replicas).
    """

    sharded = False

    def sum(self, t: Tensor) -> Tensor:
        return t

    def gather(self, x: Tensor) -> Tensor:
        return x

    def on_owner(self, fn: Callable[[], Tensor], shape: tuple[int, ...], device: torch.device) -> Tensor:
        return fn()

    def same(self, t: Tensor) -> Tensor:
        return t


LOCAL = Comm()


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``."""
    return type(t).__name__ == "DTensor"


def local(t: Tensor) -> Tensor:
    """This rank's part of a DTensor, or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t
