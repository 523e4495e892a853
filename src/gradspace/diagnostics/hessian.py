"""Curvature instruments: Hessian-vector products, top-k eigenpairs, traces and spectral densities, per layer too.

Everything runs on Hessian-vector products ``v ↦ H v`` computed by double backprop (Pearlmutter 1994), so the
Hessian is never formed. The estimators take any symmetric ``matvec`` on flat vectors (a Hessian, a GGN, a dense
matrix in a test); the ``hessian_*`` functions build the matvec from a ``loss_fn`` and parameters.

Conventions: parameters are flattened in the order given (for a module: ``model.parameters()`` order, as
``torch.nn.utils.parameters_to_vector``); eigenvectors are the *columns* of a P × k matrix (as ``torch.linalg.eigh``);
:func:`unflatten` turns a column back into tensors shaped like the parameters. Eigenvalues are fp64 on the CPU (they
come from the fp64 tridiagonal matrix). Whatever mode the model is in when ``loss_fn`` runs (train/eval: dropout,
batch norm) is the mode the Hessian is taken in: set it before calling.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

MatVec = Callable[[Tensor], Tensor]
ParamsLike = nn.Module | Mapping[str, Tensor] | Iterable[Tensor] | Tensor

__all__ = [
    "HessianOperator",
    "hvp",
    "dense_hessian",
    "lanczos",
    "power_iteration",
    "hutchinson_trace",
    "hutchpp_trace",
    "spectral_density",
    "SpectralDensity",
    "TraceEstimate",
    "LanczosResult",
    "hessian_eigs",
    "hessian_trace",
    "hessian_density",
    "per_layer",
    "parameter_blocks",
    "flatten",
    "unflatten",
]


# ----------------------------------------------------------------------------------------------------------- params
def resolve_params(params: ParamsLike) -> list[Tensor]:
    """The trainable tensors of ``params`` (a module, a ``{name: tensor}`` mapping, a tensor or an iterable of tensors).

    Raises ``ValueError`` when there are none, or when an explicitly listed tensor does not require grad.
    """
    if isinstance(params, nn.Module):
        found = [p for p in params.parameters() if p.requires_grad]
        if not found:
            raise ValueError(
                f"the {type(params).__name__} has no trainable parameters (none with requires_grad=True); "
                "there is no Hessian to analyse."
            )
        return found
    if isinstance(params, Tensor):
        found = [params]
    elif isinstance(params, Mapping):
        found = list(params.values())
    else:
        found = list(params)
    if not found:
        raise ValueError("no trainable parameters were given (an empty list); there is no Hessian to analyse.")
    for i, p in enumerate(found):
        if not isinstance(p, Tensor):
            raise TypeError(f"parameter {i} is a {type(p).__name__}, not a tensor.")
        if not p.requires_grad:
            raise ValueError(
                f"parameter {i} of shape {tuple(p.shape)} has requires_grad=False; pass only trainable tensors "
                "(e.g. [p for p in model.parameters() if p.requires_grad])."
            )
        if p.is_complex():
            raise ValueError(f"parameter {i} is complex; Hessian instruments support real parameters only.")
    dtypes = {p.dtype for p in found}
    if len(dtypes) > 1:
        raise ValueError(f"parameters have mixed dtypes {sorted(map(str, dtypes))}; analyse each dtype separately.")
    return found


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (``parameters_to_vector`` without the device check).

    Examples:
        >>> flatten([torch.ones(2, 2), torch.zeros(3)]).tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: Iterable[Tensor]) -> list[Tensor]:
    """Split a flat vector (e.g. one eigenvector column) into tensors shaped like ``like``.

    Examples:
        >>> [t.shape for t in unflatten(torch.arange(7.0), [torch.ones(2, 2), torch.zeros(3)])]
        [torch.Size([2, 2]), torch.Size([3])]
    """
    out, offset = [], 0
    for t in like:
        out.append(vec[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    if offset != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries but the tensors hold {offset}.")
    return out


def _scalar_loss(loss_fn: Callable[[], Tensor]) -> Tensor:
    with torch.enable_grad():
        loss = loss_fn()
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn() must return a scalar tensor, got a {type(loss).__name__}.")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn() must return a scalar (one-element) tensor, got shape {tuple(loss.shape)}; reduce it first "
            "(e.g. loss.mean() or loss.sum())."
        )
    if loss.is_complex() or not loss.is_floating_point():
        raise ValueError(f"loss_fn() must return a real floating-point loss, got dtype {loss.dtype}.")
    return loss.reshape(())


# --------------------------------------------------------------------------------------------------------- operator
class HessianOperator:
    """v ↦ H v with H = ∇²_θ L(θ), by double backprop (Pearlmutter 1994, "Fast exact multiplication by the Hessian").

    ``loss_fn`` is called **once**; its graph (with ``create_graph=True`` gradients) is kept and every product is one
    extra backward pass through it, so memory is about that of a double backward. Parameters the loss does not
    depend on get zero rows and columns.

    Args:
        loss_fn: ``() -> scalar tensor``, the loss at the current parameters (closing over model and batch).
        params: a module (its trainable parameters), a ``{name: tensor}`` mapping, or tensors.

    Attributes:
        params: the flattened parameters, in order. dim: P. loss: the detached loss. grad: the flat gradient ∇L.
        num_matvecs: products computed so far.

    Examples:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> op = HessianOperator(lambda: (w[0] ** 2 * w[1]), [w])   # H = [[2 w1, 2 w0], [2 w0, 0]]
        >>> op.matvec(torch.tensor([1.0, 0.0])).tolist()
        [4.0, 2.0]
    """

    def __init__(self, loss_fn: Callable[[], Tensor], params: ParamsLike) -> None:
        self.params = resolve_params(params)
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        loss = _scalar_loss(loss_fn)
        if not loss.requires_grad:
            raise ValueError("loss_fn()'s result does not depend on any of the parameters (it has no grad_fn).")
        with torch.enable_grad():
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.loss = loss.detach()
        self.grad = flatten(torch.zeros_like(p) if g is None else g.detach() for p, g in zip(self.params, grads))
        self._live = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.num_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector ``v`` of length P (cast to the parameters' dtype and device)."""
        if v.shape != (self.dim,):
            raise ValueError(f"expected a flat vector of length {self.dim}, got shape {tuple(v.shape)}.")
        self.num_matvecs += 1
        if not self._live:
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        pieces = unflatten(v.to(dtype=self.dtype, device=self.device), self.params)
        with torch.enable_grad():
            hv = torch.autograd.grad(
                [g for _, g in self._live], self.params, grad_outputs=[pieces[i] for i, _ in self._live],
                retain_graph=True, allow_unused=True,
            )
        return flatten(torch.zeros_like(p) if h is None else h for p, h in zip(self.params, hv)).detach()

    __call__ = matvec


def hvp(loss_fn: Callable[[], Tensor], params: ParamsLike, v: Tensor | Iterable[Tensor]) -> Tensor:
    """H v = ∇_θ(∇_θL · v) by double backprop (Pearlmutter 1994); ``v`` flat (P,) or tensors shaped like ``params``.

    Args:
        loss_fn: ``() -> scalar tensor``.
        params: module, mapping or tensors.
        v: the direction.

    Returns:
        H v as a flat vector.

    Examples:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> hvp(lambda: (x ** 3).sum(), [x], torch.ones(2)).tolist()   # H = diag(6 x)
        [6.0, 12.0]
    """
    op = HessianOperator(loss_fn, params)
    vec = v if isinstance(v, Tensor) else flatten(v)
    return op.matvec(vec.reshape(-1))


def dense_hessian(loss_fn: Callable[[], Tensor], params: ParamsLike, max_dim: int = 20_000) -> Tensor:
    """H ∈ ℝ^{P×P} assembled column by column from P Hessian-vector products (for small models and references).

    Args:
        loss_fn: ``() -> scalar tensor``.
        params: module, mapping or tensors.
        max_dim: refuse larger P (P² memory, P products).

    Examples:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> dense_hessian(lambda: x[0] * x[1], [x]).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
    """
    op = HessianOperator(loss_fn, params)
    if op.dim > max_dim:
        raise ValueError(f"P={op.dim} parameters exceed max_dim={max_dim}; use hessian_eigs / hessian_density instead.")
    eye = torch.eye(op.dim, dtype=op.dtype, device=op.device)
    h = torch.stack([op.matvec(eye[i]) for i in range(op.dim)], dim=1)
    return (h + h.T) / 2


# ------------------------------------------------------------------------------------------------------ eigenpairs
class LanczosResult(NamedTuple):
    """Ritz pairs from :func:`lanczos`: eigenvalues (k,) fp64 CPU, eigenvectors (P, k) as columns, residual norms
    ‖H y − θ y‖ (k,), the number of iterations (= matrix-vector products) and whether all k met the tolerance."""

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    num_iters: int
    converged: bool


def _check_k(k: int, dim: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int (the number of eigenpairs).")
    if k > dim:
        raise ValueError(
            f"k={k} eigenpairs requested but the operator has only P={dim} dimensions (parameters); a P × P Hessian "
            f"has at most P eigenpairs. Use k <= {dim}."
        )


def _start_vector(dim: int, seed: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    return (v / v.norm()).to(dtype=dtype, device=device)


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    n = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _select(theta: Tensor, k: int, which: str) -> Tensor:
    if which == "largest":
        return torch.argsort(theta, descending=True)[:k]
    if which == "smallest":
        return torch.argsort(theta)[:k]
    if which == "magnitude":
        return torch.argsort(theta.abs(), descending=True)[:k]
    raise ValueError(f"which={which!r} is not one of 'largest', 'smallest', 'magnitude'.")


def _keys(theta: Tensor, which: str) -> Tensor:
    """Sort keys: the wanted end of the spectrum has the largest key."""
    if which == "largest":
        return theta
    if which == "smallest":
        return -theta
    return theta.abs()


def _entering(run_keys: list[float], locked_keys: list[float], k: int, margin: float) -> int:
    """How many of a run's Ritz values (keys sorted descending) rank within the top k of locked ∪ run.

    A locked value within ``margin`` of a run value wins the tie, so a further copy of the k-th eigenvalue (which
    would not change the top-k values) does not count."""
    count = 0
    for i, r in enumerate(run_keys):
        better = sum(1 for x in locked_keys if x >= r - margin)
        if better + i >= k:
            break
        count += 1
    return count


def lanczos(
    matvec: MatVec,
    dim: int,
    k: int = 10,
    *,
    which: str = "largest",
    max_iter: int | None = None,
    tol: float = 1e-5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    v0: Tensor | None = None,
) -> LanczosResult:
    """Top-k Ritz pairs of a symmetric H by Lanczos with full reorthogonalization, locking and random restarts (Lanczos 1950; Parlett 1998).

    A single Krylov space K(H, v) holds one direction per distinct eigenvalue, so one Lanczos run cannot see the
    second copy of a repeated eigenvalue. This routine therefore runs Lanczos repeatedly:

    1. a run starts from ``v0`` (first run) or a random vector orthogonal to the locked vectors U, and every Lanczos
       vector is Gram–Schmidt-orthogonalized twice against U and the run's own basis (so the run works on H
       restricted to U⊥, and no spurious "ghost" Ritz values appear);
    2. the run stops when the Ritz pairs that enter the current top k (of locked ∪ run; at least its best one) have
       residuals ‖H y − θ y‖ ≤ ``tol`` · max|θ| — residuals include the coupling ‖Uᵀ H y‖ to the locked vectors —
       or when its Krylov space is invariant;
    3. those pairs (all of them if the run's space is invariant) are locked, and a new run starts, until a run's
       converged best Ritz value does not enter the top k (by more than ``tol`` · max|θ| beyond the k-th), or
       U ⊕ the run spans the whole space.

    Each further copy of a repeated eigenvalue is found by the run after the one that found the previous copy (a
    random start in U⊥ has a component in the rest of the eigenspace). ``converged`` is True only when the last run
    certified the top k this way and every returned pair meets ``tol``; otherwise (``max_iter`` products spent) a
    warning names the worst residual. As with any Krylov method, the certificate is probabilistic: it relies on the
    random start vectors having a component along every missing eigenvector. Cost: the certifying run adds
    products (typically 1.5–2× a single run on a spectrum without repeats). Memory: one run's basis plus the locked
    vectors, each of length P.

    Args:
        matvec: ``v ↦ H v`` on flat vectors of length ``dim`` (H symmetric).
        dim: P, the operator's size.
        k: number of eigenpairs, 1 ≤ k ≤ P.
        which: ``"largest"`` (algebraic, descending; default), ``"smallest"`` (ascending) or ``"magnitude"``.
        max_iter: most products over all runs, ≥ k (default ``3·min(P, max(3k, k + 50))``).
        tol: relative residual tolerance (default 1e-5; fp32 products cannot reach much below 1e-6). ``tol=0`` never
            stops a run early; ``converged`` then means residuals at rounding level (100·eps of ``dtype``).
        seed: seed of the start vectors (CPU generator, so results do not depend on the device's RNG).
        dtype, device: of the Lanczos vectors (use the parameters' dtype and device).
        v0: optional start vector of the first run.

    Returns:
        :class:`LanczosResult` (eigenvalues, eigenvectors as columns, residuals, num_iters = products used over all
        runs, converged).

    Examples:
        >>> d = torch.linspace(1.0, 10.0, 50, dtype=torch.float64)
        >>> res = lanczos(lambda v: d * v, 50, k=3, dtype=torch.float64)
        >>> [round(x, 6) for x in res.eigenvalues.tolist()], res.converged
        ([10.0, 9.816327, 9.632653], True)
        >>> d = torch.tensor([5.0, 5.0, 5.0, 4.0, 4.0, 3.0] + [2.0 - i / 20 for i in range(30)], dtype=torch.float64)
        >>> res = lanczos(lambda v: d * v, 36, k=6, dtype=torch.float64)
        >>> [round(x, 6) for x in res.eigenvalues.tolist()], res.converged
        ([5.0, 5.0, 5.0, 4.0, 4.0, 3.0], True)
    """
    _check_k(k, dim)
    if max_iter is None:
        max_iter = 3 * min(dim, max(3 * k, k + 50))
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < k:
        raise ValueError(f"max_iter={max_iter!r} must be an int >= k={k} (matrix-vector products over all runs).")
    _select(torch.zeros(1), 1, which)  # validates ``which``
    gen = torch.Generator().manual_seed(int(seed) + 1)
    tiny = torch.finfo(torch.float64).tiny
    breakdown = 100 * torch.finfo(dtype).eps
    chunk = min(dim, max(3 * k, k + 50))

    locked_vecs: list[Tensor] = []
    locked_vals: list[float] = []
    locked_res: list[float] = []
    total = 0
    scale = 0.0  # max |α|, β, |θ| seen: the tolerance's scale
    certified = False
    run_ok = True
    first = True
    while total < max_iter:
        l = len(locked_vecs)
        room = dim - l
        if room == 0:
            certified = True
            break
        u = torch.stack(locked_vecs) if l else None  # (l, P)
        if first:
            q = (_start_vector(dim, seed, dtype, device) if v0 is None
                 else v0.detach().reshape(-1).to(dtype=dtype, device=device))
        else:
            q = torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        if u is not None:
            for _ in range(2):
                q = q - u.T @ (u @ q)
        qn = float(q.norm())
        if qn <= breakdown:  # U⊥ is numerically empty: everything is locked
            certified = True
            break
        q = q / qn
        cap = min(room, max_iter - total)
        basis = torch.zeros(min(cap, chunk), dim, dtype=dtype, device=device)
        alphas: list[float] = []
        betas: list[float] = []
        coupling: list[Tensor] = []  # Uᵀ H q_j per step (l,), fp64
        theta = s = None
        need = 0
        n = 0
        beta = 0.0
        small = invariant = exhausted = False
        for j in range(cap):
            if j == basis.shape[0]:  # grow the run's basis by doubling
                basis = torch.cat([basis, torch.zeros(min(cap, 2 * j) - j, dim, dtype=dtype, device=device)])
            basis[j] = q
            w = matvec(q).to(dtype=dtype, device=device)
            total += 1
            alpha = float(torch.dot(q, w))
            w = w - alpha * q
            if j > 0:
                w = w - betas[j - 1] * basis[j - 1]
            done = basis[: j + 1]
            c = torch.zeros(l, dtype=torch.float64)
            for _ in range(2):  # "twice is enough" (Kahan/Parlett): orthonormal to working precision
                if u is not None:
                    cu = u @ w
                    w = w - u.T @ cu
                    c += cu.double().cpu()
                w = w - done.T @ (done @ w)
            coupling.append(c)
            beta = float(w.norm())
            alphas.append(alpha)
            scale = max(scale, abs(alpha), beta)
            n = j + 1
            invariant = beta <= breakdown * max(scale, torch.finfo(torch.float32).tiny)
            exhausted = n == room
            if invariant or exhausted or n == cap or n < 64 or n % 8 == 0:
                theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
                keys = _keys(theta, which)
                order = torch.argsort(keys, descending=True)
                top = max(scale, float(theta.abs().max()), max((abs(v) for v in locked_vals), default=0.0))
                margin = tol * max(top, tiny)
                locked_keys = _keys(torch.tensor(locked_vals, dtype=torch.float64), which).tolist()
                need = _entering(keys[order].tolist(), locked_keys, k, margin)
                want = order[: max(need, 1)]
                res = (beta * s[-1, want]).abs()
                if l:
                    res = torch.sqrt(res.square() + (torch.stack(coupling, 1) @ s[:, want]).square().sum(0))
                small = n >= min(max(k - l, 1), room) and bool((res <= margin).all())
                if small or invariant or exhausted:
                    break
            if n == cap:
                break
            betas.append(beta)
            q = w / beta
        # lock the pairs of this run that enter the top k (at least enough to return k pairs); an invariant run's
        # pairs are all exact, and locking them all makes the next run explore only the complement of its space
        keys = _keys(theta, which)
        order = torch.argsort(keys, descending=True)
        n_lock = n if invariant else min(n, max(need, k - l))
        idx = order[:n_lock]
        vectors = basis[:n].T @ s[:, idx].to(dtype=dtype, device=device)
        res = (beta * s[-1, idx]).abs()
        if l:
            res = torch.sqrt(res.square() + (torch.stack(coupling, 1) @ s[:, idx]).square().sum(0))
        for i in range(n_lock):
            locked_vecs.append(vectors[:, i])
            locked_vals.append(float(theta[idx[i]]))
            locked_res.append(float(res[i]))
        scale = max(scale, float(theta.abs().max()))
        first = False
        run_ok = small or invariant or exhausted
        if not run_ok:
            break  # budget spent inside this run
        if exhausted or need == 0:
            certified = True
            break

    vals = torch.tensor(locked_vals, dtype=torch.float64)
    idx = _select(vals, k, which)
    eigenvalues = vals[idx].clone()
    eigenvectors = torch.stack([locked_vecs[int(i)] for i in idx], 1)
    residuals = torch.tensor([locked_res[int(i)] for i in idx], dtype=torch.float64)
    top = max(scale, float(vals.abs().max()))
    accurate = bool((residuals <= max(tol, breakdown) * max(top, tiny)).all())  # tol=0: rounding level
    converged = certified and accurate
    if not converged:
        why = ("repeated eigenvalues not ruled out: the last restart did not converge" if accurate else
               f"largest residual {float(residuals.max()):.3g}, tolerance {tol:g} x max|eigenvalue|")
        warnings.warn(
            f"lanczos: {k} Ritz pairs not converged after {total} products ({why}); raise max_iter.",
            RuntimeWarning,
            stacklevel=2,
        )
    return LanczosResult(eigenvalues, eigenvectors, residuals, total, converged)


def power_iteration(
    matvec: MatVec,
    dim: int,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs of largest *magnitude* by deflated power iteration (as PyHessian; Yao et al. 2020).

    Pair i iterates v ← (I − UUᵀ) H v / ‖·‖ with U the pairs already found, until the Rayleigh quotient changes by
    less than ``tol`` (relative). Slower than :func:`lanczos` when eigenvalues are close (convergence ∝ |λ_{i+1}/λ_i|
    per product); kept as the simple cross-check.

    Args:
        matvec: ``v ↦ H v``; dim: P; k: pairs (1 ≤ k ≤ P); max_iter: products per pair; tol: relative change.
        seed, dtype, device: as :func:`lanczos`.

    Returns:
        (eigenvalues (k,) fp64 in the order found, eigenvectors (P, k)).

    Examples:
        >>> d = torch.tensor([3.0, -5.0, 1.0])
        >>> vals, _ = power_iteration(lambda v: d * v, 3, k=2, max_iter=200, tol=1e-8)
        >>> [round(x, 4) for x in vals.tolist()]
        [-5.0, 3.0]
    """
    _check_k(k, dim)
    gen = torch.Generator().manual_seed(int(seed))
    found: list[Tensor] = []
    values: list[float] = []
    for _ in range(k):
        u = torch.stack(found, 1) if found else None
        v = torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        if u is not None:
            v = v - u @ (u.T @ v)
        v = v / v.norm()
        lam = None
        for _ in range(max_iter):
            w = matvec(v).to(dtype=dtype, device=device)
            if u is not None:
                w = w - u @ (u.T @ w)
            new = float(torch.dot(v, w))
            norm = w.norm()
            if float(norm) == 0.0:
                lam = new
                break
            v = w / norm
            if lam is not None and abs(new - lam) <= tol * max(abs(new), 1e-30):
                lam = new
                break
            lam = new
        found.append(v)
        values.append(float(lam))
    return torch.tensor(values, dtype=torch.float64), torch.stack(found, 1)


# ------------------------------------------------------------------------------------------------------------ traces
class TraceEstimate(NamedTuple):
    """A stochastic trace estimate, its standard error and the number of matrix-vector products used."""

    estimate: float
    stderr: float
    num_matvecs: int


def _rademacher(dim: int, n: int, gen: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    return (torch.randint(0, 2, (n, dim), generator=gen, dtype=torch.int8) * 2 - 1).to(dtype=dtype, device=device)


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    num_samples: int = 100,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """tr(H) ≈ (1/m) Σ zᵢᵀ H zᵢ with Rademacher zᵢ (Hutchinson 1990), with the sample standard error.

    Unbiased; its variance is 2(‖H‖²_F − Σ H_ii²)/m (exact for diagonal H).

    Args:
        matvec: ``v ↦ H v``; dim: P; num_samples: m ≥ 2 probes; seed, dtype, device: of the probes.

    Examples:
        >>> d = torch.arange(1.0, 6.0)
        >>> hutchinson_trace(lambda v: d * v, 5, num_samples=4).estimate   # exact for a diagonal matrix
        15.0
    """
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples} must be >= 2 (the standard error needs two probes).")
    gen = torch.Generator().manual_seed(int(seed))
    z = _rademacher(dim, num_samples, gen, dtype, device)
    samples = torch.tensor([float(torch.dot(zi, matvec(zi).to(dtype=dtype, device=device))) for zi in z], dtype=torch.float64)
    return TraceEstimate(float(samples.mean()), float(samples.std() / math.sqrt(num_samples)), num_samples)


def hutchpp_trace(
    matvec: MatVec,
    dim: int,
    num_matvecs: int = 99,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """tr(H) ≈ tr(QᵀHQ) + (1/m) Σ gᵢᵀ(I−QQᵀ)H(I−QQᵀ)gᵢ, Q = orth(H S) (Hutch++, Meyer, Musco, Musco, Woodruff 2021).

    A third of the budget sketches the top of the spectrum (s = ⌊budget/3⌋ columns, at most P), a third computes its
    trace exactly and the rest runs Hutchinson on the deflated remainder: error O(1/m) instead of O(1/√m) for
    matrices with decaying spectra — Hessians. Exact once s = P. The standard error is that of the remainder term.

    Args:
        matvec: ``v ↦ H v``; dim: P; num_matvecs: total products (≥ 3); seed, dtype, device: of the probes.

    Examples:
        >>> h = torch.diag(torch.tensor([100.0, 1.0, 0.01]))
        >>> round(hutchpp_trace(lambda v: h @ v, 3, num_matvecs=9).estimate, 4)   # s = 3 = P: exact
        101.01
    """
    if num_matvecs < 3:
        raise ValueError(f"num_matvecs={num_matvecs} must be >= 3 (sketch, its trace, and at least one probe).")
    gen = torch.Generator().manual_seed(int(seed))
    s = min(num_matvecs // 3, dim)
    sketch = _rademacher(dim, s, gen, dtype, device)
    y = torch.stack([matvec(v).to(dtype=dtype, device=device) for v in sketch], 1)
    q = torch.linalg.qr(y, mode="reduced")[0]
    top = sum(float(torch.dot(qi, matvec(qi).to(dtype=dtype, device=device))) for qi in q.T)
    used = 2 * s
    rest = num_matvecs - used
    if s == dim or rest < 1:
        return TraceEstimate(top, 0.0 if s == dim else math.nan, used)
    g = _rademacher(dim, rest, gen, dtype, device)
    g = g - (g @ q) @ q.T
    samples = torch.tensor([float(torch.dot(gi, matvec(gi).to(dtype=dtype, device=device))) for gi in g], dtype=torch.float64)
    stderr = float(samples.std() / math.sqrt(rest)) if rest > 1 else math.nan
    return TraceEstimate(top + float(samples.mean()), stderr, num_matvecs)


# --------------------------------------------------------------------------------------------------- spectral density
@dataclass
class SpectralDensity:
    """A spectral measure Σ wⱼ δ(λ − θⱼ) from stochastic Lanczos quadrature; the weights sum to 1.

    ``nodes``/``weights`` are fp64 vectors (all probes concatenated; each probe's weights sum to 1/num_vectors).
    :meth:`moment` gives Σ w θᵖ (estimates tr(Hᵖ)/P); :meth:`density` a Gaussian-smoothed curve that integrates to 1.
    """

    nodes: Tensor
    weights: Tensor
    dim: int
    num_vectors: int

    def moment(self, p: int = 1) -> float:
        """Σ wⱼ θⱼᵖ ≈ tr(Hᵖ)/P (exact for each probe's quadratic form when p ≤ 2·num_iters − 1)."""
        return float((self.weights * self.nodes.pow(p)).sum())

    @property
    def trace(self) -> float:
        """P · first moment: the Hutchinson trace estimate with the same probes."""
        return self.dim * self.moment(1)

    def default_sigma(self) -> float:
        """Smoothing width: 1 % of the spectral range (PyHessian uses σ² = 1e-5 · range; that is often too spiky)."""
        span = float(self.nodes.max() - self.nodes.min())
        return max(span, float(self.nodes.abs().max()), 1e-12) * 0.01

    def grid(self, num: int = 2000, sigma: float | None = None) -> Tensor:
        """Evaluation points covering all nodes ± 6σ."""
        sigma = self.default_sigma() if sigma is None else sigma
        lo, hi = float(self.nodes.min()) - 6 * sigma, float(self.nodes.max()) + 6 * sigma
        return torch.linspace(lo, hi, num, dtype=torch.float64)

    def density(self, grid: Tensor | None = None, sigma: float | None = None) -> tuple[Tensor, Tensor]:
        """(grid, φ(grid)) with φ(λ) = Σ wⱼ N(λ; θⱼ, σ²): integrates to 1 over ℝ (to ~1e-9 over the default grid)."""
        sigma = self.default_sigma() if sigma is None else float(sigma)
        if grid is None:
            grid = self.grid(sigma=sigma)
        grid = grid.to(torch.float64)
        z = (grid[:, None] - self.nodes[None, :]) / sigma
        values = (self.weights[None, :] * torch.exp(-0.5 * z * z)).sum(1) / (sigma * math.sqrt(2 * math.pi))
        return grid, values


def _tridiagonalize(matvec: MatVec, v: Tensor, m: int) -> tuple[list[float], list[float]]:
    """m Lanczos steps from v with full reorthogonalization; stops early (exactly) if the Krylov space is invariant."""
    dim = v.numel()
    basis = torch.zeros(m, dim, dtype=v.dtype, device=v.device)
    q = v / v.norm()
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(m):
        basis[j] = q
        w = matvec(q).to(dtype=v.dtype, device=v.device)
        alpha = float(torch.dot(q, w))
        w = w - alpha * q
        if j > 0:
            w = w - betas[j - 1] * basis[j - 1]
        done = basis[: j + 1]
        for _ in range(2):
            w = w - done.T @ (done @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        if j == m - 1 or beta <= 100 * torch.finfo(v.dtype).eps * max(scale, 1e-30):
            break
        betas.append(beta)
        q = w / beta
    return alphas, betas


def spectral_density(
    matvec: MatVec,
    dim: int,
    num_iters: int = 80,
    num_vectors: int = 4,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> SpectralDensity:
    """φ(λ) ≈ (1/n_v) Σ_v Σ_j τ_{v,j}² δ(λ − θ_{v,j}): stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et al. 2019).

    For each Rademacher probe v, m Lanczos steps (full reorthogonalization) give the Gauss quadrature nodes θ (the
    eigenvalues of the tridiagonal T) and weights τ² (squared first components of T's eigenvectors), which reproduce
    v̂ᵀ Hᵖ v̂ exactly for p ≤ 2m − 1. Each probe's weights sum to 1, so the measure integrates to 1 and its first
    moment is exactly the Hutchinson estimate of tr(H)/P with the same probes.

    Args:
        matvec: ``v ↦ H v``; dim: P; num_iters: m Lanczos steps per probe (≤ P); num_vectors: probes;
        seed, dtype, device: of the probes.

    Examples:
        >>> d = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
        >>> sd = spectral_density(lambda v: d * v, 4, num_iters=4, num_vectors=1, dtype=torch.float64)
        >>> round(float(sd.weights.sum()), 6), round(sd.moment(1), 6), [round(x, 6) for x in sd.nodes.tolist()]
        (1.0, 2.5, [1.0, 2.0, 3.0, 4.0])
    """
    if num_iters < 1 or num_vectors < 1:
        raise ValueError(f"num_iters={num_iters} and num_vectors={num_vectors} must both be >= 1.")
    m = min(num_iters, dim)
    gen = torch.Generator().manual_seed(int(seed))
    nodes, weights = [], []
    for z in _rademacher(dim, num_vectors, gen, dtype, device):
        alphas, betas = _tridiagonalize(matvec, z, m)
        theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
        nodes.append(theta)
        weights.append(s[0].square() / num_vectors)
    return SpectralDensity(torch.cat(nodes), torch.cat(weights), dim, num_vectors)


# ----------------------------------------------------------------------------------------------- loss-level wrappers
def hessian_eigs(
    loss_fn: Callable[[], Tensor],
    params: ParamsLike,
    k: int = 10,
    *,
    method: str = "lanczos",
    which: str = "largest",
    max_iter: int | None = None,
    tol: float | None = None,
    seed: int = 0,
    return_info: bool = False,
) -> tuple[Tensor, Tensor] | LanczosResult:
    """Top-k eigenpairs of H = ∇²L(θ) from Hessian-vector products: Lanczos with full reorthogonalization, locking and
    restarts (default; repeated eigenvalues found with their multiplicity) or deflated power iteration (Yao et al.
    2020, PyHessian, arXiv:1912.07145).

    Args:
        loss_fn: ``() -> scalar tensor`` (called once; closes over the model and the batch).
        params: a module (its trainable parameters), a ``{name: tensor}`` mapping, or tensors.
        k: number of eigenpairs, 1 ≤ k ≤ P (default 10).
        method: ``"lanczos"`` (default) or ``"power"`` (largest magnitude, in the order found).
        which: for Lanczos, ``"largest"`` (default), ``"smallest"`` or ``"magnitude"``.
        max_iter: Lanczos products over all restarts (default ``3·min(P, max(3k, k + 50))``) or power steps per pair
            (default 100).
        tol: relative residual (Lanczos, default 1e-5) or Rayleigh-quotient change (power, default 1e-4) tolerance.
        seed: start-vector seed.
        return_info: return the whole :class:`LanczosResult` (residuals, iterations, convergence) instead.

    Returns:
        ``(eigenvalues, eigenvectors)``: eigenvalues a (k,) fp64 CPU tensor sorted by descending value (for
        ``which="largest"``); eigenvectors a (P, k) tensor whose *columns* are unit eigenvectors in the flattened
        parameter order (``unflatten(vecs[:, i], params)`` gives tensors shaped like the parameters).

    Examples:
        >>> _ = torch.manual_seed(0); model = torch.nn.Linear(3, 2); x, y = torch.randn(16, 3), torch.randn(16, 2)
        >>> vals, vecs = hessian_eigs(lambda: torch.nn.functional.mse_loss(model(x), y), model, k=2)
        >>> vals.shape, vecs.shape, bool(vals[0] >= vals[1])
        (torch.Size([2]), torch.Size([8, 2]), True)
    """
    op = HessianOperator(loss_fn, params)
    if method == "lanczos":
        res = lanczos(
            op.matvec, op.dim, k, which=which, max_iter=max_iter, tol=1e-5 if tol is None else tol, seed=seed,
            dtype=op.dtype, device=op.device,
        )
    elif method == "power":
        vals, vecs = power_iteration(
            op.matvec, op.dim, k, max_iter=100 if max_iter is None else max_iter, tol=1e-4 if tol is None else tol,
            seed=seed, dtype=op.dtype, device=op.device,
        )
        residuals = torch.stack([(op.matvec(vecs[:, i]) - vals[i].item() * vecs[:, i]).norm() for i in range(k)]).double().cpu()
        res = LanczosResult(vals, vecs, residuals, op.num_matvecs, True)
    else:
        raise ValueError(f"method={method!r} is not one of 'lanczos', 'power'.")
    return res if return_info else (res.eigenvalues, res.eigenvectors)


def hessian_trace(
    loss_fn: Callable[[], Tensor],
    params: ParamsLike,
    *,
    method: str = "hutch++",
    num_matvecs: int = 99,
    seed: int = 0,
) -> TraceEstimate:
    """tr(∇²L(θ)) by Hutch++ (default; Meyer et al. 2021) or Hutchinson (1990) from Hessian-vector products.

    Args:
        loss_fn: ``() -> scalar tensor``; params: module, mapping or tensors.
        method: ``"hutch++"`` or ``"hutchinson"``; num_matvecs: product budget; seed: probe seed.

    Examples:
        >>> x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        >>> round(hessian_trace(lambda: (x ** 3).sum(), [x], num_matvecs=9).estimate, 4)   # tr diag(6x); s = P: exact
        36.0
    """
    op = HessianOperator(loss_fn, params)
    if method == "hutch++":
        return hutchpp_trace(op.matvec, op.dim, num_matvecs, seed=seed, dtype=op.dtype, device=op.device)
    if method == "hutchinson":
        return hutchinson_trace(op.matvec, op.dim, num_matvecs, seed=seed, dtype=op.dtype, device=op.device)
    raise ValueError(f"method={method!r} is not one of 'hutch++', 'hutchinson'.")


def hessian_density(
    loss_fn: Callable[[], Tensor],
    params: ParamsLike,
    *,
    num_iters: int = 80,
    num_vectors: int = 4,
    seed: int = 0,
) -> SpectralDensity:
    """Spectral density of ∇²L(θ) by stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao 2019, arXiv:1901.10159).

    Args:
        loss_fn: ``() -> scalar tensor``; params: module, mapping or tensors.
        num_iters: Lanczos steps per probe; num_vectors: probes; seed: probe seed.

    Examples:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> sd = hessian_density(lambda: (x ** 3).sum(), [x], num_iters=2, num_vectors=1)
        >>> [round(v, 4) for v in sd.nodes.tolist()], round(float(sd.weights.sum()), 6)
        ([6.0, 12.0], 1.0)
    """
    op = HessianOperator(loss_fn, params)
    return spectral_density(op.matvec, op.dim, num_iters, num_vectors, seed=seed, dtype=op.dtype, device=op.device)


# ---------------------------------------------------------------------------------------------------------- per layer
def parameter_blocks(model: nn.Module | Mapping[str, Tensor], by: str = "module") -> dict[str, list[Tensor]]:
    """Trainable parameters grouped into Hessian diagonal blocks: per module (``by="module"``: a layer's weight and
    bias together) or per tensor (``by="parameter"``). A mapping ``{name: tensor}`` is always per tensor.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
        >>> {k: len(v) for k, v in parameter_blocks(net).items()}
        {'0': 2, '2': 2}
    """
    if isinstance(model, Mapping):
        return {name: [p] for name, p in model.items() if p.requires_grad}
    if by == "parameter":
        blocks = {name: [p] for name, p in model.named_parameters() if p.requires_grad}
    elif by == "module":
        blocks = {}
        for name, mod in model.named_modules():
            own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
            if own:
                blocks[name or "(root)"] = own
    else:
        raise ValueError(f"by={by!r} is not one of 'module', 'parameter'.")
    if not blocks:
        raise ValueError(f"the {type(model).__name__} has no trainable parameters; there is no Hessian to analyse.")
    return blocks


def per_layer(
    fn: Callable[..., Any],
    loss_fn: Callable[[], Tensor],
    model: nn.Module | Mapping[str, Tensor],
    *,
    by: str = "module",
    **kwargs: Any,
) -> dict[str, Any]:
    """{block: fn(loss_fn, block_params, **kwargs)}: any instrument on each diagonal block H_ℓℓ = ∂²L/∂θ_ℓ² (the
    per-layer Hessian, PyHessian issue #10), with the other parameters held fixed.

    ``fn`` is :func:`hessian_eigs`, :func:`hessian_trace`, :func:`hessian_density` or any function with that
    signature. ``k`` is clamped to each block's size.

    Args:
        fn: the instrument; loss_fn: ``() -> scalar tensor`` (re-run for each block).
        model: a module or a ``{name: tensor}`` mapping; by: ``"module"`` or ``"parameter"`` blocks.
        **kwargs: passed to ``fn``.

    Examples:
        >>> _ = torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> x, y = torch.randn(32, 3), torch.randn(32, 1)
        >>> out = per_layer(hessian_eigs, lambda: torch.nn.functional.mse_loss(net(x), y), net, k=2)
        >>> sorted(out), out["2"][0].shape
        (['0', '2'], torch.Size([2]))
    """
    out = {}
    for name, params in parameter_blocks(model, by).items():
        kw = dict(kwargs)
        if "k" in kw:
            kw["k"] = min(int(kw["k"]), sum(p.numel() for p in params))
        out[name] = fn(loss_fn, params, **kw)
    return out
