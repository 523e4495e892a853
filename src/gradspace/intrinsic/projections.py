"""Seeded random projections P ∈ R^{D×d} with columns of (about) unit norm, applied as δ = P z without storing P.

Every projection is a deterministic function of ``(D, d, seed)``: its tensors are generated on the CPU from a
``torch.Generator`` (so any device gives the same P) and are never saved in checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PROJECTIONS = ("dense", "sparse", "fastfood")


def _generator(seed: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt * 7919) % (2**63 - 1))


def _fwht(x: Tensor) -> Tensor:
    """Unnormalized Walsh–Hadamard transform along the last dim, without autograd (two ping-pong buffers)."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht: the last dimension ({n}) must be a power of two.")
    shape = x.shape
    src = x.detach().reshape(-1, n).clone()
    dst = torch.empty_like(src)
    h = 1
    while h < n:
        a = src.view(-1, n // (2 * h), 2, h)
        b = dst.view(-1, n // (2 * h), 2, h)
        torch.add(a[:, :, 0], a[:, :, 1], out=b[:, :, 0])
        torch.sub(a[:, :, 0], a[:, :, 1], out=b[:, :, 1])
        src, dst = dst, src
        h *= 2
    return src.view(shape)


class _FWHT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return _fwht(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        return _fwht(g)  # H is symmetric


def fwht(x: Tensor) -> Tensor:
    """H x along the last dimension: the unnormalized fast Walsh–Hadamard transform (Sylvester order), O(L log L).

    ``x.shape[-1]`` must be a power of two. ``H`` is symmetric with ``H H = L·I``, so the backward is ``fwht`` of the
    incoming gradient (no intermediate is saved).

    Args:
        x: tensor whose last dimension L is a power of two.

    Examples:
        >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0])), fwht(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        (tensor([1., 1., 1., 1.]), tensor([10., -2., -4.,  0.]))
    """
    return _FWHT.apply(x)


class DenseProjection(nn.Module):
    """P_ij ~ N(0, 1), each column scaled to unit norm (Li et al. 2018); stores P: memory O(D·d).

    Examples:
        >>> p = DenseProjection(100, 5, seed=0)
        >>> p.matrix().norm(dim=0)
        tensor([1.0000, 1.0000, 1.0000, 1.0000, 1.0000])
    """

    kind = "dense"

    def __init__(self, D: int, d: int, seed: int) -> None:
        super().__init__()
        self.D, self.d, self.seed = int(D), int(d), int(seed)
        p = torch.randn(self.D, self.d, generator=_generator(seed))
        self.register_buffer("P", p / p.norm(dim=0, keepdim=True), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.P @ z

    def matrix(self) -> Tensor:
        """P as a dense D × d matrix."""
        return self.P.clone()

    def state_numel(self) -> int:
        """Numbers stored for P."""
        return self.P.numel()


class SparseProjection(nn.Module):
    """P with k ≈ density·D nonzeros ±1 per column at random rows, columns scaled to unit norm (Li et al. 2018; Achlioptas 2003).

    Each column gets ``k = max(1, round(density·D))`` entries (default density 1/√D, as the intrinsic-dimension code's
    sparse projection) of random sign at rows drawn uniformly with replacement (a repeated row sums its entries),
    then the column is divided by its norm. Columns are generated in chunks, each from its own seeded generator.

    ``cache=True`` (default) keeps the nonzeros: memory O(d·k) = O(d·√D), never O(D·d). ``cache=False`` regenerates
    them chunk by chunk in every forward and backward: memory O(D + d + chunk), at the price of recomputing them.

    Examples:
        >>> p = SparseProjection(400, 6, seed=0)
        >>> p.k, [round(float(v), 4) for v in p.matrix().norm(dim=0)]
        (20, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    """

    kind = "sparse"
    _CHUNK_NNZ = 1 << 18  # nonzeros generated per chunk (P depends on it: fixed)

    def __init__(self, D: int, d: int, seed: int, density: float | None = None, cache: bool = True) -> None:
        super().__init__()
        self.D, self.d, self.seed, self.cache = int(D), int(d), int(seed), bool(cache)
        density = 1.0 / math.sqrt(self.D) if density is None else float(density)
        if not 0.0 < density <= 1.0:
            raise ValueError(f"sparse_density={density!r} must be in (0, 1] (nonzeros per column / D).")
        self.k = max(1, int(round(density * self.D)))
        self.chunk = max(1, self._CHUNK_NNZ // self.k)  # columns per chunk
        if self.cache:
            rows, cols, vals = zip(*(self._chunk(i) for i in range(self._n_chunks())))
            self.register_buffer("rows", torch.cat(rows), persistent=False)
            self.register_buffer("cols", torch.cat(cols), persistent=False)
            self.register_buffer("vals", torch.cat(vals), persistent=False)

    def _n_chunks(self) -> int:
        return -(-self.d // self.chunk)

    def _chunk(self, i: int, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, cols, values) of the coalesced, column-normalized nonzeros of columns [i·chunk, (i+1)·chunk)."""
        c0 = i * self.chunk
        c1 = min(self.d, c0 + self.chunk)
        g = _generator(self.seed, salt=1 + i)
        n = c1 - c0
        rows = torch.randint(0, self.D, (n, self.k), generator=g)
        signs = torch.randint(0, 2, (n, self.k), generator=g).float().mul_(2).sub_(1)
        key = (torch.arange(n).unsqueeze(1) * self.D + rows).reshape(-1)
        uniq, inverse = torch.unique(key, return_inverse=True)
        vals = torch.zeros(uniq.numel()).index_add_(0, inverse, signs.reshape(-1))
        cols = torch.div(uniq, self.D, rounding_mode="floor")
        norms = torch.zeros(n).index_add_(0, cols, vals * vals).sqrt_().clamp_min_(1e-30)
        vals = vals / norms[cols]
        keep = vals != 0
        out = uniq[keep] % self.D, cols[keep] + c0, vals[keep]
        if device is not None:
            out = tuple(t.to(device) for t in out)
        return out

    def forward(self, z: Tensor) -> Tensor:
        if self.cache:
            return torch.zeros(self.D, dtype=z.dtype, device=z.device).index_add(0, self.rows, self.vals.to(z.dtype) * z[self.cols])
        return _RegeneratedSparse.apply(z, self)

    def matrix(self) -> Tensor:
        """P as a dense D × d matrix (for checks on small cases)."""
        out = torch.zeros(self.D, self.d)
        for i in range(self._n_chunks()):
            rows, cols, vals = self._chunk(i)
            out[rows, cols] = vals
        return out

    def state_numel(self) -> int:
        """Numbers stored for P (0 when regenerated)."""
        return 3 * self.rows.numel() if self.cache else 0


class _RegeneratedSparse(torch.autograd.Function):
    """δ = P z and ∂/∂z = Pᵀ g with P's nonzeros regenerated chunk by chunk (nothing of P is kept)."""

    @staticmethod
    def forward(ctx, z: Tensor, proj: SparseProjection) -> Tensor:  # type: ignore[override]
        ctx.proj = proj
        out = torch.zeros(proj.D, dtype=z.dtype, device=z.device)
        for i in range(proj._n_chunks()):
            rows, cols, vals = proj._chunk(i, z.device)
            out.index_add_(0, rows, vals.to(z.dtype) * z[cols])
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        proj = ctx.proj
        grad = torch.zeros(proj.d, dtype=g.dtype, device=g.device)
        for i in range(proj._n_chunks()):
            rows, cols, vals = proj._chunk(i, g.device)
            grad.index_add_(0, cols, vals.to(g.dtype) * g[rows])
        return grad, None


class FastfoodProjection(nn.Module):
    """δ = [H G Π H B pad_L(z)]_{:D} / (‖G‖·√D), L = 2^⌈log₂D⌉ (Fastfood, Le et al. 2013, as in Li et al. 2018).

    B: random ±1 diagonal, H: Walsh–Hadamard (:func:`fwht`), Π: random permutation ((Πx)_i = x_{π(i)}), G: Gaussian
    diagonal. Columns of the L × L product have norm exactly √L·‖G‖; keeping D of L rows leaves ≈ √D·‖G‖, so the
    scale makes columns unit norm in expectation. Time O(L log L) per product, memory O(L) = O(D); P is never formed.

    Examples:
        >>> p = FastfoodProjection(1000, 10, seed=0)
        >>> p.L, bool((p.matrix().norm(dim=0) - 1).abs().max() < 0.2)
        (1024, True)
    """

    kind = "fastfood"

    def __init__(self, D: int, d: int, seed: int) -> None:
        super().__init__()
        self.D, self.d, self.seed = int(D), int(d), int(seed)
        self.L = 1 << max(0, math.ceil(math.log2(self.D)))
        g = _generator(seed, salt=2)
        self.register_buffer("B", torch.randint(0, 2, (self.L,), generator=g).float().mul_(2).sub_(1), persistent=False)
        perm = torch.randperm(self.L, generator=g)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(perm), persistent=False)
        gauss = torch.randn(self.L, generator=g)
        self.register_buffer("G", gauss, persistent=False)
        self.scale = 1.0 / (float(gauss.norm()) * math.sqrt(self.D))

    def forward(self, z: Tensor) -> Tensor:
        """P z for z of shape (..., d); returns (..., D)."""
        return _Fastfood.apply(z, self)

    def _apply_p(self, z: Tensor) -> Tensor:
        x = torch.nn.functional.pad(z, (0, self.L - self.d)) * self.B.to(z.dtype)
        x = _fwht(x)[..., self.perm] * self.G.to(z.dtype)
        return _fwht(x)[..., : self.D] * self.scale

    def _apply_pt(self, g: Tensor) -> Tensor:
        x = _fwht(torch.nn.functional.pad(g, (0, self.L - self.D))) * self.G.to(g.dtype)
        x = _fwht(x[..., self.inv_perm]) * self.B.to(g.dtype)
        return x[..., : self.d] * self.scale

    def matrix(self) -> Tensor:
        """P as a dense D × d matrix, by applying the transform to the unit vectors (for checks on small cases)."""
        return self.forward(torch.eye(self.d)).T.contiguous()

    def state_numel(self) -> int:
        """Numbers stored for P (B, Π, Π⁻¹, G)."""
        return 4 * self.L


class _Fastfood(torch.autograd.Function):
    """δ = P z with the transposed transform Pᵀ g as the backward (nothing but z's shape is saved)."""

    @staticmethod
    def forward(ctx, z: Tensor, proj: FastfoodProjection) -> Tensor:  # type: ignore[override]
        ctx.proj = proj
        return proj._apply_p(z)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.proj._apply_pt(g), None


def make_projection(kind: str, D: int, d: int, seed: int, **options: object) -> nn.Module:
    """Build a projection by name (``"dense"``, ``"sparse"``, ``"fastfood"``).

    Examples:
        >>> make_projection("fastfood", 50, 3, seed=1)(torch.zeros(3)).shape
        torch.Size([50])
    """
    if kind == "dense":
        return DenseProjection(D, d, seed)
    if kind == "sparse":
        return SparseProjection(D, d, seed, **options)  # type: ignore[arg-type]
    if kind == "fastfood":
        return FastfoodProjection(D, d, seed)
    raise ValueError(f"projection={kind!r} is not supported; allowed values: {', '.join(map(repr, PROJECTIONS))}.")
