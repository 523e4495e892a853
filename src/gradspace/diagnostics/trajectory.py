"""Trajectory PCA: the principal components of the path θ_1 … θ_n, compared with what a pure random walk produces.

Antognini & Sohl-Dickstein (2018, arXiv:1806.08805): the PCA of a high-dimensional random walk puts a fraction
ρ_k → 6/(π²k²) of the variance in component k (ρ₁ ≈ 0.61, ρ₂ ≈ 0.15) and its projections are cosines
cos(πk(t+½)/n), so pairs of components trace Lissajous curves. A "training lives in two dimensions" plot must
therefore be read against that baseline. Snapshots cost n × P floats (kept on the CPU, any dtype); the PCA is a
randomized SVD of the centred snapshot matrix applied implicitly (never formed), O((n + P)·q) extra memory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["TrajectoryRecorder", "TrajectoryPCA", "trajectory_pca", "random_walk_ratios", "cosine_correlation"]


class TrajectoryRecorder:
    """Keeps θ_t (all parameters, flattened) every ``every`` optimizer steps in a preallocated n × P buffer.

    Args:
        params: a module or tensors.
        max_snapshots: n, the buffer's rows (memory n · P · itemsize, allocated once).
        every: record every k-th step (when attached with :meth:`attach`).
        dtype: storage dtype (fp16/bf16 halve memory; the PCA runs in fp32/fp64).
        device: storage device (default CPU, off the accelerator).

    Examples:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rec = TrajectoryRecorder(model, max_snapshots=11).attach(opt)   # also records θ_0
        >>> for _ in range(10):
        ...     opt.zero_grad(); model(torch.randn(8, 4)).square().mean().backward(); opt.step()
        >>> rec.matrix().shape
        torch.Size([11, 10])
    """

    def __init__(
        self,
        params: nn.Module | Iterable[Tensor],
        max_snapshots: int,
        *,
        every: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.params = [p for p in (params.parameters() if isinstance(params, nn.Module) else params)]
        if not self.params:
            raise ValueError("TrajectoryRecorder got no parameters.")
        if max_snapshots < 2 or every < 1:
            raise ValueError(f"need max_snapshots >= 2 and every >= 1, got {max_snapshots} and {every}.")
        self.every = every
        self.dim = sum(p.numel() for p in self.params)
        self.buffer = torch.empty(max_snapshots, self.dim, dtype=dtype, device=device)
        self.count = 0
        self.dropped = 0
        self._steps = 0
        self._handle = None

    @torch.no_grad()
    def snapshot(self) -> None:
        """Record the current parameters (ignored, with one warning, once the buffer is full)."""
        if self.count == self.buffer.shape[0]:
            if self.dropped == 0:
                warnings.warn(
                    f"TrajectoryRecorder is full ({self.count} snapshots); later ones are dropped. Raise max_snapshots "
                    "or every.", RuntimeWarning, stacklevel=2,
                )
            self.dropped += 1
            return
        offset = 0
        row = self.buffer[self.count]
        for p in self.params:
            row[offset : offset + p.numel()].copy_(p.detach().reshape(-1))
            offset += p.numel()
        self.count += 1

    def attach(self, optimizer: Optimizer, initial: bool = True) -> TrajectoryRecorder:
        """Record after every ``every``-th step via ``register_step_post_hook`` (and θ_0 now if ``initial``)."""
        if initial and self.count == 0:
            self.snapshot()

        def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
            self._steps += 1
            if self._steps % self.every == 0:
                self.snapshot()

        self._handle = optimizer.register_step_post_hook(hook)
        return self

    def detach(self) -> None:
        """Remove the hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def matrix(self) -> Tensor:
        """The n × P snapshot matrix recorded so far (a view, no copy)."""
        return self.buffer[: self.count]


class TrajectoryPCA(NamedTuple):
    """Result of :func:`trajectory_pca`: explained-variance ratios (k,), singular values (k,), projections of the
    centred snapshots on the components (n × k), the components (k × P) and the total variance ‖X − X̄‖²_F."""

    explained_variance_ratio: Tensor
    singular_values: Tensor
    projections: Tensor
    components: Tensor
    total_variance: float


def _centred_products(x: Tensor, mean: Tensor, chunk: int):
    """X̃ R and X̃ᵀ Q for the centred X̃ = X − 1 μᵀ without forming it (row chunks of X, cast to mean's dtype)."""

    def right(r: Tensor) -> Tensor:  # (n × P)(P × q)
        out = torch.cat([x[i : i + chunk].to(mean.dtype) @ r for i in range(0, x.shape[0], chunk)])
        return out - (mean @ r)[None, :]

    def left(q: Tensor) -> Tensor:  # (P × n)(n × q)
        out = torch.zeros(x.shape[1], q.shape[1], dtype=mean.dtype, device=mean.device)
        for i in range(0, x.shape[0], chunk):
            out += x[i : i + chunk].to(mean.dtype).T @ q[i : i + chunk]
        return out - mean[:, None] * q.sum(0)[None, :]

    return right, left


def trajectory_pca(
    snapshots: Tensor,
    k: int = 10,
    *,
    method: str = "randomized",
    oversample: int = 10,
    niter: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    chunk: int = 256,
) -> TrajectoryPCA:
    """PCA of a parameter trajectory: ρ_k = σ_k² / ‖X − X̄‖²_F for the centred n × P snapshot matrix (Antognini &
    Sohl-Dickstein 2018, arXiv:1806.08805), by randomized SVD (Halko, Martinsson, Tropp 2011) or exactly.

    ``"randomized"`` (default) runs ``niter`` power iterations on q = k + ``oversample`` seeded Gaussian directions,
    applying the centring implicitly; memory beyond the snapshots is O((n + P) q). ``"exact"`` eigendecomposes the
    n × n Gram matrix (O(n²) memory). The total variance is always exact, so the ratios are comparable.

    Args:
        snapshots: n × P (rows are θ_t; any float dtype, any device).
        k: number of components (≤ min(n − 1, P)).
        method: ``"randomized"`` or ``"exact"``.
        oversample: extra random directions of the randomized SVD (default 10; CPU generator, deterministic).
        niter: power iterations of the randomized SVD (default 4).
        seed: seed of the randomized SVD (default 0).
        dtype: compute dtype (default fp64).
        chunk: rows processed at a time when casting snapshots.

    Returns:
        :class:`TrajectoryPCA`.

    Examples:
        >>> walk = torch.randn(200, 5000, generator=torch.Generator().manual_seed(0)).cumsum(0)
        >>> pca = trajectory_pca(walk, k=3)
        >>> [round(r, 2) for r in pca.explained_variance_ratio.tolist()]   # 6/(π²k²) = 0.61, 0.15, 0.07
        [0.61, 0.15, 0.07]
    """
    if snapshots.dim() != 2:
        raise ValueError(f"snapshots must be an n × P matrix, got shape {tuple(snapshots.shape)}.")
    n, p = snapshots.shape
    if not 1 <= k <= min(n - 1, p):
        raise ValueError(f"k={k} must be between 1 and min(n - 1, P) = {min(n - 1, p)} for {n} snapshots of {p} values.")
    device = snapshots.device
    mean = torch.zeros(p, dtype=dtype, device=device)
    for i in range(0, n, chunk):
        mean += snapshots[i : i + chunk].to(dtype).sum(0)
    mean /= n
    total = sum(float((snapshots[i : i + chunk].to(dtype) - mean).square().sum()) for i in range(0, n, chunk))
    right, left = _centred_products(snapshots, mean, chunk)
    if method == "exact":
        gram = torch.zeros(n, n, dtype=dtype, device=device)
        for i in range(0, p, chunk * 16):
            block = snapshots[:, i : i + chunk * 16].to(dtype) - mean[i : i + chunk * 16]
            gram += block @ block.T
        evals, evecs = torch.linalg.eigh(gram)
        evals, evecs = evals.flip(0)[:k].clamp_min(0), evecs.flip(1)[:, :k]
        s = evals.sqrt()
        u = evecs
    elif method == "randomized":
        q = min(k + oversample, n, p)
        gen = torch.Generator().manual_seed(int(seed))
        basis = torch.linalg.qr(right(torch.randn(p, q, generator=gen, dtype=dtype).to(device)))[0]
        for _ in range(niter):
            basis = torch.linalg.qr(left(basis))[0]
            basis = torch.linalg.qr(right(basis))[0]
        small = left(basis).T  # q × P = Qᵀ X̃
        uu, s, _ = torch.linalg.svd(small @ small.T)  # eigen-decomposition of the q × q Gram
        s = s[:k].sqrt()
        u = basis @ uu[:, :k]
    else:
        raise ValueError(f"method={method!r} is not one of 'randomized', 'exact'.")
    # Fix signs so that each projection starts negative→positive consistently (PCA signs are arbitrary).
    proj = u * s
    sign = torch.where(proj[-1] - proj[0] >= 0, 1.0, -1.0).to(dtype)
    u, proj = u * sign, proj * sign
    components = (left(u) / s.clamp_min(torch.finfo(dtype).tiny)).T
    ratio = s.square() / max(total, torch.finfo(torch.float64).tiny)
    return TrajectoryPCA(ratio.cpu(), s.cpu(), proj.cpu(), components, total)


def random_walk_ratios(k: int, n: int | None = None) -> Tensor:
    """Explained-variance ratios of the PCA of a high-dimensional random walk: 6/(π²k²) for n → ∞ (Antognini &
    Sohl-Dickstein 2018), or, for n steps, the exact d → ∞ limit: the eigenvalues of C L Lᵀ C (L the n × n
    lower-triangular ones matrix that sums the steps, C the centring projector), normalized.

    Args:
        k: number of components.
        n: number of snapshots (None: the n → ∞ formula).

    Examples:
        >>> [round(r, 4) for r in random_walk_ratios(3).tolist()]
        [0.6079, 0.152, 0.0675]
        >>> round(float(random_walk_ratios(1, n=1000)[0]), 4)
        0.6079
    """
    if n is None:
        ks = torch.arange(1, k + 1, dtype=torch.float64)
        return 6.0 / (math.pi**2 * ks.square())
    lower = torch.tril(torch.ones(n, n, dtype=torch.float64))
    centred = lower - lower.mean(0, keepdim=True)
    evals = torch.linalg.eigvalsh(centred @ centred.T).flip(0)
    return evals[:k] / evals.sum()


def cosine_correlation(projections: Tensor) -> Tensor:
    """|corr(PC_k(t), cos(πk(t + ½)/n))| for each column k of an n × K projection matrix: 1 for a random walk,
    whose principal components are exactly these cosines (the DCT-II basis) in the high-dimensional limit.

    Examples:
        >>> t = torch.arange(100, dtype=torch.float64)
        >>> round(float(cosine_correlation(torch.cos(torch.pi * (t[:, None] + 0.5) / 100))[0]), 6)
        1.0
    """
    n, kk = projections.shape
    t = torch.arange(n, dtype=torch.float64)
    out = []
    for k in range(1, kk + 1):
        c = torch.cos(math.pi * k * (t + 0.5) / n)
        x = projections[:, k - 1].double()
        xc, cc = x - x.mean(), c - c.mean()
        out.append((xc @ cc).abs() / (xc.norm() * cc.norm()).clamp_min(1e-300))
    return torch.stack(out)
