"""A weight's frame: how its gradient is seen by the update, computed once per weight and step.

Matrices are viewed in an *oriented* frame ``X`` (a × b) whose b columns are the projected side (``X = G`` for a
right basis, ``X = Gᵀ`` for a left one); conv kernels (≥ 3-D) are viewed as ``(out, in·k…)``; vectors, scalars and
matrices with a side of 1 run the rule in full space, as do all weights of a full-space projector (the identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import torch
from torch import Tensor


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


@dataclass(frozen=True)
class Frame:
    """``matrix``: (rows, cols) or ``None``; ``projected``: whether the weight has a subspace; ``transposed``: X = Gᵀ;
    ``a × b``: the oriented shape (b the projected side); ``rank``: the effective rank, at most ``min(a, b)`` (``b``
    in full space)."""

    shape: tuple[int, ...]
    matrix: tuple[int, int] | None
    projected: bool
    transposed: bool
    a: int
    b: int
    rank: int

    def orient(self, g: Tensor, maximize: bool = False) -> Tensor:
        """The fp32 oriented view of a gradient (or of this rank's rows of it: ``Shard(0)`` never transposes)."""
        g = -g if maximize else g
        if self.matrix is None:
            return g.float()
        x = g.reshape(-1, self.matrix[1]).float()
        return x.T if self.transposed else x

    def restore(self, u: Tensor, like: Tensor) -> Tensor:
        """An oriented (a × b) update back in ``like``'s shape."""
        return (u.T if self.transposed else u).reshape(like.shape)


@lru_cache(maxsize=4096)
def _frame(shape: tuple[int, ...], full_space: bool, side: str, rank: int | float) -> Frame:
    matrix = matrix_shape(shape)
    if matrix is None or full_space:
        a, b = matrix if matrix is not None else (1, math.prod(shape))
        return Frame(shape, matrix, False, False, a, b, b)
    transposed = transposes(*matrix, side)
    a, b = (matrix[1], matrix[0]) if transposed else matrix
    # a rank above the other side a adds only null-space directions (an SVD of an a × b matrix has min(a, b))
    return Frame(shape, matrix, True, transposed, a, b, min(effective_rank(rank, b), a))


def frame_of(shape: torch.Size | tuple[int, ...], group: Mapping[str, Any]) -> Frame:
    """The frame of a weight of this (global) shape under ``group``'s options."""
    from .registry import PROJECTORS

    return _frame(tuple(int(s) for s in shape), bool(PROJECTORS[group["projector"]].full_space), group["side"],
                  group["rank"])
