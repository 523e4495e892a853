"""The whole update of one weight as plain tensor code — the only place an update is computed.

    W ← (1 − lr·wd)·W − lr·f·U,   U = α·(up(coords) + full_scaled) + full = residual(G, down(G), rule(down(G)))

(default ``U = α·up(rule(down(G)))``), where ``f`` is the rule's step-size factor (1, or Adam's ``√bc2/bc1`` in the
Hugging Face form) and α is ``scale``. The weight is seen in its :class:`~gradspace.frame.Frame`. Every path calls
:func:`subspace_update`: ``step()``, the layer-wise stepper, FSDP2 row shards (given a
:class:`~gradspace.distributed.ShardComm`), the DDP owner's basis (:func:`compute_basis`), and the memory planner (on
meta tensors).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, Mapping, MutableMapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .comm import LOCAL, Comm, is_dtensor, local
from .frame import Frame, effective_rank, frame_of, matrix_shape, transposes
from .projectors.base import generator_for, orthonormalize
from . import moments
from .quant import stochastic_round_
from .registry import PROJECTORS, RESIDUALS, RULES, resolve_basis_dtype, resolve_state_dtype
from .residuals.base import Up, Update
from .schedule import captured_energy, refresh_due

State = MutableMapping[str, Any]
Group = Mapping[str, Any]
Record = MutableMapping[str, Any]

__all__ = [
    "subspace_update", "compiled_update", "compilable", "fused_full_space", "fusable", "compute_basis",
    "needs_refresh", "state_dtype", "prepared_grad", "frame_of", "Frame", "matrix_shape", "transposes", "effective_rank", "FUSED_GRAD_LIMIT",
]

#: below this |g| an fp32 ``g²`` cannot overflow, so Adam's second moment never saturates (the reference's clamp is a
#: no-op) and torch's fused AdamW kernel computes the reference's math (:func:`fused_full_space`)
FUSED_GRAD_LIMIT = 1e18


def state_dtype(param: Tensor, group: Group) -> torch.dtype:
    """The dtype of the rule's moments: ``state_dtype``, else the parameter's (fp32 for fp16 parameters: fp16's range
    cannot hold Adam's second moment, which underflows with eps 1e-8)."""
    chosen = resolve_state_dtype(group["state_dtype"])
    if chosen is not None:
        return chosen
    return torch.float32 if param.dtype == torch.float16 else param.dtype


def rule_for(frame: Frame, group: Group) -> Any:
    """The rule that runs on this weight: the group's, or ``fallback_rule`` where a matrix rule meets a non-matrix."""
    rule = RULES[group["rule"]]
    if rule.needs_matrix and frame.matrix is None:
        return RULES[group["fallback_rule"]]
    return rule


def needs_refresh(state: State, group: Group) -> bool:
    """Whether the next update of this (projected) weight refreshes its basis."""
    projector = PROJECTORS[group["projector"]]
    return refresh_due(state["step"], state["proj.count"] > 0, projector.continuous, group, state)


def prepared_grad(frame: Frame, grad: Tensor, state: State, group: Group) -> Tensor:
    """The fp32 oriented gradient the projector sees: ``maximize`` applied, then the residual's ``prepare`` (G + e)."""
    return RESIDUALS[group["residual"]].prepare(frame.orient(grad, group["maximize"]), state, group)


def _finite_basis(x: Tensor, q: Tensor | None, comm: Comm) -> None:
    """Raise ``FloatingPointError`` for a basis that is no basis: non-finite, or computed from an all-zero gradient
    (both decided with one host sync)."""
    if q is None or x.is_meta:
        return
    finite, nonzero = torch.stack([torch.isfinite(q).all(), comm.sum(x.square().sum()) > 0]).tolist()
    if not finite:
        raise FloatingPointError("non-finite basis")
    if not nonzero:
        raise FloatingPointError("all-zero gradient: its singular vectors are arbitrary")


def _refresh(x: Tensor, frame: Frame, state: State, group: Group, comm: Comm,
             given: tuple[Tensor, bool] | None = None) -> Tensor | None:
    """Refresh the basis (or install ``given = (basis, failed)`` computed by the owner rank under DDP); on a failed or
    non-finite decomposition, or an all-zero gradient, keep the previous basis (a seeded random one if none, not
    counted as a refresh, so the next step refreshes again) and count the fallback in ``state['proj.fallbacks']``."""
    projector = PROJECTORS[group["projector"]]
    old = state.get("proj.basis")
    state["proj.count"] += 1
    if given is not None:
        q, failed = given
        state["proj.basis"] = q
        if failed:
            _count_fallback(state, old is None, projector.name, tuple(x.shape), "on the owner rank")
        return q
    try:
        projector.refresh(x, frame.rank, state, group, frame.transposed, comm)
        q = projector.basis(state, x.shape[1], frame.rank, group, x.device)
        if not projector.continuous and projector.shares_basis(state, group):
            _finite_basis(x, q, comm)
        return q
    except (RuntimeError, FloatingPointError) as err:  # torch.linalg.LinAlgError is a RuntimeError
        _count_fallback(state, old is None, projector.name, tuple(x.shape), str(err))
        if old is None:
            gen = generator_for(state, x.device, 2)
            old = orthonormalize(comm.same(torch.randn(x.shape[1], frame.rank, generator=gen, device=x.device)))
        state["proj.basis"] = old
        return old


def _count_fallback(state: State, first: bool, name: str, shape: tuple[int, ...], why: str) -> None:
    state["proj.fallbacks"] = state.get("proj.fallbacks", 0) + 1
    if first:
        state["proj.count"] -= 1  # no basis from the data yet: the next step refreshes again
    warnings.warn(
        f"gradspace: the {name!r} projector could not refresh a {shape} basis ({why}); kept the previous basis "
        f"({'a seeded random one, refreshed again at the next step' if first else 'the last good one'}). Counted "
        "in state['proj.fallbacks'].",
        RuntimeWarning,
        stacklevel=4,
    )


def compute_basis(x: Tensor, frame: Frame, state: State, group: Group) -> tuple[Tensor, bool]:
    """The basis a refresh of this weight would install, without changing ``state``; returns (basis, failed).

    Used to compute a basis on one rank and broadcast it (``projector_sync="broadcast"``)."""
    scratch = dict(state)
    fallbacks = scratch.get("proj.fallbacks", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the installing rank warns
        q = _refresh(x, frame, scratch, group, LOCAL)
    return q, scratch.get("proj.fallbacks", 0) != fallbacks


def _stored_rank(state: State) -> int | None:
    """The rank the weight's stored basis or moments were built at (``None`` before the first step)."""
    for value in (state.get("proj.basis"), state.get("rule.exp_avg")):  # the common cases first
        if isinstance(value, Tensor) and value.dim() == 2:
            return int(value.shape[1])
    for key, value in state.items():
        if key.startswith("rule.") and isinstance(value, Tensor) and value.dim() == 2:
            return int(value.shape[1])
    return None


def _radial_projection(param: Tensor, grad: Tensor, update: Tensor, delta: float, eps: float) -> tuple[Tensor, bool]:
    """AdamP/SGDP (Heo et al. 2021, arXiv:2006.08217): if the weight looks scale-invariant (|cos(G, W)| < δ/√dim per
    channel, else per layer), remove the update's radial component ``Ŵ (Ŵ·U)``."""
    expand = (-1,) + (1,) * (param.dim() - 1)
    for view in (lambda t: t.reshape(t.shape[0], -1), lambda t: t.reshape(1, -1)):
        p_v, g_v = view(param.float()), view(grad.float())
        cos = F.cosine_similarity(g_v, p_v, dim=1, eps=eps).abs()
        if not param.is_meta and bool(cos.max() < delta / math.sqrt(p_v.shape[1])):
            p_n = param.float() / p_v.norm(dim=1).view(expand).add(eps)
            return update - p_n * view(p_n * update).sum(dim=1).view(expand), True
    return update, False


def _observe(x: Tensor, r: Tensor | None, q: Tensor | None, old: Tensor | None, refreshed: bool, group: Group,
             comm: Comm, record: Record | None, state: State) -> None:
    """What this step measured: the captured energy ‖X P‖²/‖X‖² (stored for ``refresh="adaptive"``; a tensor, so a
    resumed run decides exactly as the straight one) and, when ``record`` is given, what telemetry reads."""
    projector = PROJECTORS[group["projector"]]
    adaptive = group["refresh"] == "adaptive" and q is not None
    if not adaptive and record is None:
        return
    ortho = projector.is_orthonormal(group)
    energy = captured_energy(x, q, ortho, comm, xq=r) if q is not None else torch.ones((), device=x.device)
    if adaptive:
        state["sched.energy"] = energy.detach()
    if record is None:
        return
    record.update(energy=energy.detach(), grad_norm=comm.sum(x.square().sum()).sqrt(), basis=q, refreshed=refreshed,
                  orthonormal=ortho, oriented_shape=tuple(x.shape))
    if refreshed and old is not None and q is not None and old.shape == q.shape:
        record["basis_old"] = old
        record["energy_old_basis"] = captured_energy(x, old, ortho, comm)
    if record.get("want_spectra") and not comm.sharded and x.dim() == 2:
        record["grad_sv"] = torch.linalg.svdvals(x)


def _round_into(param: Tensor, w: Tensor, state: State, group: Group) -> None:
    """``param ← w`` (fp32): round to nearest, or stochastically (``stochastic_rounding=True``, bf16 weights; the
    draws come from a generator seeded by the parameter's seed and step, so a resumed run rounds the same)."""
    if group["stochastic_rounding"] and param.dtype == torch.bfloat16 and not param.is_meta:
        gen = torch.Generator(device=param.device)
        gen.manual_seed((int(state["proj.seed"]) * 0x632BE5AB + int(state["step"]) * 0x85EBCA6B + 11) % (2**63 - 1))
        stochastic_round_(param, w, gen)
    else:
        param.copy_(w)


def _write(param: Tensor, frame: Frame, parts: Update, q: Tensor | None, step_lr: float, alpha: float,
           decay: float, state: State, group: Group) -> None:
    """W ← decay·W − step_lr·(α·(up(coords) + full_scaled) + full), in fp32: straight into an (aligned) fp32 weight
    (the up-projection, decay and update in one ``addmm_``, no full-size temporary), else through one fp32 copy
    (bf16/fp16 weights are rounded once, at the end)."""
    # a GEMM's rounding can depend on where its output lies: writing into a view at an unaligned offset (FSDP2's
    # shards of a flat buffer) would break bitwise resume, so only 64-byte-aligned fp32 weights are written directly
    exact = param.dtype == torch.float32 and param.is_contiguous() and (
        param.is_meta or torch.compiler.is_compiling() or param.data_ptr() % 64 == 0)
    w = param if exact else param.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    mat = w.view(-1, frame.matrix[1])  # this rank's rows of a Shard(0) weight, or the whole matrix
    oriented = mat.T if frame.transposed else mat
    if isinstance(step_lr, Tensor):  # compile=True: lr is a 0-d tensor, scaled into the small factors, not baked in
        _write_scaled(mat, oriented, frame, parts, q, -step_lr * alpha, -step_lr, decay)
    else:
        if parts.coords is not None:
            c, qt = parts.coords.float(), q.T.float()
            if frame.transposed:
                mat.addmm_(qt.T, c.T, beta=decay, alpha=-step_lr * alpha)
            else:
                mat.addmm_(c, qt, beta=decay, alpha=-step_lr * alpha)
        elif decay != 1:
            mat.mul_(decay)
        if parts.full_scaled is not None and parts.factor is not None:
            oriented.addcmul_(parts.full_scaled, parts.factor, value=-step_lr * alpha)
        elif parts.full_scaled is not None:
            oriented.add_(parts.full_scaled, alpha=-step_lr * alpha)
        if parts.full is not None:
            oriented.add_(parts.full, alpha=-step_lr)
    if not exact:
        _round_into(param, w, state, group)


def _write_scaled(mat: Tensor, oriented: Tensor, frame: Frame, parts: Update, q: Tensor | None, sub: Tensor,
                  full: Tensor, decay: Tensor | float) -> None:
    """:func:`_write`'s W ← decay·W + sub·(up(coords) + full_scaled ⊙ factor) + full·U_full with the step sizes as
    0-d tensors (``sub`` = −lr·f·α, ``full`` = −lr·f): each multiplies a small operand (the coordinates, the
    per-row factor) or enters as an ``addcmul_`` multiplier, so a compiled graph takes a new ``lr`` as data."""
    if not (isinstance(decay, float) and decay == 1):
        mat.mul_(decay)
    if parts.coords is not None:
        c, qt = parts.coords.float() * sub, q.T.float()
        if frame.transposed:
            mat.addmm_(qt.T, c.T)
        else:
            mat.addmm_(c, qt)
    if parts.full_scaled is not None:
        oriented.addcmul_(parts.full_scaled, sub if parts.factor is None else parts.factor * sub)
    if parts.full is not None:
        oriented.addcmul_(parts.full, full)


def _dense(frame: Frame, parts: Update, q: Tensor | None, alpha: float, like: Tensor) -> Tensor:
    """The whole update U in the weight's shape (fp32), for paths that must see it (radial projection)."""
    u = torch.zeros(frame.a, frame.b, device=like.device) if parts.coords is None else parts.coords.float() @ q.T
    if alpha != 1:
        u.mul_(alpha)
    if parts.full_scaled is not None:
        u.add_(parts.full_scaled if parts.factor is None else parts.full_scaled * parts.factor, alpha=alpha)
    if parts.full is not None:
        u.add_(parts.full)
    return frame.restore(u, like)


def subspace_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    group: Group,
    lr: float | Tensor,
    *,
    frame: Frame | None = None,
    new_basis: tuple[Tensor, bool] | None = None,
    comm: Comm = LOCAL,
    record: Record | None = None,
    grad_norm: float | None = None,
    grad_rows: Tensor | None = None,
) -> None:
    """Apply one step of ``group``'s projector × rule × residual to ``param`` in place, updating ``state``.

    ``state`` must hold the ints ``step``, ``proj.seed`` and ``proj.count``; everything else is created lazily. The
    math is fp32; moments use :func:`state_dtype`. ``param``/``grad`` may be this rank's rows of a ``Shard(0)`` weight
    whose (global) ``frame`` is given, with ``comm`` summing over the shard group. ``new_basis = (basis, failed)``, at
    a refresh step, is installed instead of computing one (the DDP owner's). ``record``, when given, receives what the
    step measured (see :class:`gradspace.diagnostics.Telemetry`). ``lr`` may be a 0-d tensor (how
    :func:`compiled_update` passes it). ``grad_norm``, when known, is ‖grad‖ as the
    step's NaN check measured it (residuals that need ‖G‖ reuse it instead of another pass over G); ``grad_rows``
    likewise its oriented frame's row norms ‖G_i‖ (a × 1), for residuals that declare ``grad_rows(group)``.
    """
    frame = frame or frame_of(param.shape, group)
    if grad is param.grad and fusable(param, state, group, frame, grad_norm):  # ‖g‖ bounds |g|
        fused_full_space([(param, state, group, frame)], [record])
        return
    rule = rule_for(frame, group)
    sdtype = state_dtype(param, group)
    alpha = 1.0
    q = None
    if not frame.projected:
        x = frame.orient(grad, group["maximize"])
        if "rule.step" not in state:  # zeros_like keeps a DTensor's sharding
            moments.call(rule, state, group, lambda s: rule.init(torch.zeros_like(x, dtype=sdtype), s, group))
        d, factor = moments.call(rule, state, group, lambda s: rule.direction(x, s, group))
        _observe(x, None, None, None, False, group, comm, record, state)
        parts = Update(full=d)
    else:
        alpha = float(group["scale"])
        oriented = frame.orient(grad, group["maximize"])
        x = RESIDUALS[group["residual"]].prepare(oriented, state, group)
        if x is not oriented:
            grad_norm = grad_rows = None  # error feedback: G + e is not the gradient the NaN check measured
        refreshed = needs_refresh(state, group)
        stored = _stored_rank(state)
        if stored is not None and stored != frame.rank:  # a hand-edited rank takes effect at the next refresh
            if refreshed:
                for key in [k for k in state if k.startswith("rule.")]:
                    del state[key]  # a clean re-initialization of the rule at the new rank
                state.pop("proj.basis", None)
            else:
                frame = replace(frame, rank=stored)
        old = None
        if refreshed:
            projector = PROJECTORS[group["projector"]]
            has_basis = state["proj.count"] > 0 and (stored is None or stored == frame.rank)
            old = projector.basis(state, frame.b, frame.rank, group, x.device) if has_basis else None
            q = _refresh(x, frame, state, group, comm, new_basis)
            bdtype = resolve_basis_dtype(group["basis_dtype"])
            if bdtype != torch.float32 and isinstance(state.get("proj.basis"), Tensor):
                state["proj.basis"] = state["proj.basis"].to(bdtype)  # stored rounded; used as stored
                q = state["proj.basis"]
            if has_basis and "rule.step" in state:
                if group["on_refresh"] == "reset":
                    zeros = torch.zeros((x.shape[0], frame.rank), dtype=sdtype, device=x.device)
                    moments.call(rule, state, group, lambda s: rule.init(zeros, s, group))
                elif group["on_refresh"] == "rotate":
                    moments.call(rule, state, group, lambda s: rule.rotate(q.float().T @ old.float(), s, group))
        else:
            q = PROJECTORS[group["projector"]].basis(state, frame.b, frame.rank, group, x.device)
        q = q.float()
        r = x @ q
        _observe(x, r, q, old, refreshed, group, comm, record, state)
        if "rule.step" not in state:
            moments.call(rule, state, group,
                         lambda s: rule.init(torch.zeros(r.shape, dtype=sdtype, device=r.device), s, group))
        projector = PROJECTORS[group["projector"]]
        ortho = projector.is_orthonormal(group)
        bound = getattr(projector, "coordinate_gain", None)  # |r| ≤ gain·‖G‖ (a registered projector may lack it)
        gain = bound(group, frame.b, frame.rank) if bound is not None else (1.0 if ortho else None)
        fast = (group["fused"] and gain is not None and grad_norm is not None and grad_norm * gain < FUSED_GRAD_LIMIT
                and hasattr(rule, "fused_direction"))
        direction = rule.fused_direction if fast else rule.direction
        d, factor = moments.call(rule, state, group, lambda s: direction(r, s, group))
        up = Up(q, whole=ortho and frame.rank == frame.b, grad_norm=grad_norm, grad_rows=grad_rows,
                orthonormal=ortho and resolve_basis_dtype(group["basis_dtype"]) == torch.float32)
        parts = RESIDUALS[group["residual"]].update(x, r, d, up, state, group, comm, record)

    wd = group["weight_decay"]
    if group["radial_projection"] and param.dim() > 1:
        g = -grad if group["maximize"] else grad
        update, radial = _radial_projection(param, g, _dense(frame, parts, q, alpha, param), group["radial_delta"],
                                            group["radial_eps"])
        if radial:
            wd = wd * group["radial_wd_ratio"]
            key = getattr(rule, "stored_direction", lambda g: None)(group)
            if key is not None and not frame.projected and key in state:  # SGDP: the buffer is projected too
                moments.call(rule, state, group, lambda s: s[key].copy_(update.reshape(s[key].shape)))
        frame, parts, q, alpha = frame_of(param.shape, {**group, "projector": "identity"}), Update(full=update), None, 1.0
    decay = 1 - lr * wd if wd else 1.0
    if frame.matrix is None or not frame.projected:
        if group["stochastic_rounding"] and param.dtype == torch.bfloat16:
            w = param.float()
            if decay != 1:
                w.mul_(decay)
            w.add_(frame.restore(parts.full, param), alpha=-lr * factor)
            _round_into(param, w, state, group)
        elif isinstance(lr, Tensor):  # compile=True (see _write_scaled)
            if not (isinstance(decay, float) and decay == 1):
                param.mul_(decay)
            param.addcmul_(frame.restore(parts.full, param).to(param.dtype), -lr * factor)
        else:
            if decay != 1:
                param.mul_(decay)
            param.add_(frame.restore(parts.full, param).to(param.dtype), alpha=-lr * factor)
    else:
        _write(param, frame, parts, q, lr * factor, alpha, decay, state, group)
    state["step"] += 1


def fusable(param: Tensor, state: State, group: Group, frame: Frame, absmax: float | None) -> bool:
    """Whether :func:`fused_full_space` computes this weight's update from ``param.grad``: ``fused=True``, a
    full-space Adam (``bias_correction`` ``"torch"`` or ``"hf"``) or SGD-momentum weight, fp32 weight, gradient and
    moments, no radial projection, a contiguous CPU/CUDA tensor (or FSDP2 shard: the update is elementwise, so each rank steps its own),
    ``|g| < FUSED_GRAD_LIMIT`` (``absmax``, a bound the step's NaN check measured; ``None``: unknown), and not while
    ``torch.compile`` traces the step."""
    if not group["fused"] or frame.projected or absmax is None or not absmax < FUSED_GRAD_LIMIT:
        return False
    grad = param.grad
    if grad is None or param.dtype != torch.float32 or grad.dtype != torch.float32:
        return False
    if type(param.data) is torch.Tensor and type(grad) is torch.Tensor:
        if not (grad.is_contiguous() and param.is_contiguous()):
            return False
    elif not (is_dtensor(param) and is_dtensor(grad) and local(param).is_contiguous() and local(grad).is_contiguous()):
        return False
    return (
        param.device.type in ("cpu", "cuda")
        and _fused_rule(rule_for(frame, group).name, group)
        and not group["radial_projection"]
        and state_dtype(param, group) == torch.float32 and moments.quantized(group) is None
        and not torch.compiler.is_compiling()  # the kernel mutates its inputs in a way torch.compile cannot trace
    )


def _fused_rule(name: str, group: Group) -> bool:
    """Adam with torch/HF bias correction (torch's fused AdamW kernel), or SGD with momentum (its fused SGD kernel)."""
    return name == "adam" and group["bias_correction"] in ("torch", "hf") or name == "sgdm"


def fused_full_space(items: list[tuple[Tensor, State, Group, Frame]],
                     records: list[Record | None] | None = None) -> None:
    """The full-space branch of :func:`subspace_update` for :func:`fusable` weights, by torch's multi-tensor fused
    kernels (one call per group, rule and step count): Adam by ``torch._fused_adamw_`` — the same math,
    ``W ← (1 − lr·wd)·W − lr/bc1 · m / (√v/√bc2 + ε)``; the Hugging Face form ``lr·√bc2/bc1 · m / (√v + ε)`` is that
    with ``ε/√bc2`` — and SGD with momentum by ``torch._fused_sgd_`` (``torch.optim.SGD``'s buffer, which is the
    rule's) after the decoupled decay ``W ← (1 − lr·wd)·W``. Equal to the reference path to rounding
    (``tests/core/test_functional.py``). ``records`` (one per item, or ``None``) receive what telemetry reads, as from
    :func:`subspace_update`."""
    records = records or [None] * len(items)
    if torch.compiler.is_compiling():  # traced after a graph break: torch.compile cannot functionalize the kernel
        for (param, state, group, frame), record in zip(items, records):
            subspace_update(param, param.grad, state, group, float(group["lr"]), frame=frame, record=record)
        return
    buckets: dict[tuple[str, int, int, torch.device], list[tuple[Tensor, State, Group]]] = {}
    for (param, state, group, frame), record in zip(items, records):
        if record is not None:
            _observe(frame.orient(param.grad, group["maximize"]), None, None, None, False, group, LOCAL, record, state)
        rule = rule_for(frame, group)
        if "rule.step" not in state:  # the reference's moments: the oriented gradient's shape (a DTensor's sharding)
            rule.init(torch.zeros_like(frame.orient(param.grad), dtype=torch.float32), state, group)
        step = state["rule.step"]
        if rule.name == "sgdm" and group["momentum"] > 0 and "rule.momentum_buffer" not in state:
            # momentum switched on by a hand edit: the buffer starts at g, as on a first step
            state["rule.momentum_buffer"] = torch.zeros_like(frame.orient(param.grad), dtype=torch.float32)
            step = 0
        buckets.setdefault((rule.name, id(group), step, param.device), []).append((param, state, group))
    for (name, _, t, device), bucket in buckets.items():
        group = bucket[0][2]
        if name == "adam":
            keys: tuple[str, ...] = ("rule.exp_avg", "rule.exp_avg_sq")
        else:
            keys = ("rule.momentum_buffer",) if group["momentum"] > 0 else ()
        params, grads, buffers = [], [], [[] for _ in keys]
        for param, state, _ in bucket:
            p = local(param)
            if p.numel():  # an FSDP2 rank may hold no rows of a small weight
                params.append(p)
                grads.append(local(param.grad))
                for out, key in zip(buffers, keys):
                    m = local(state[key])
                    out.append(m if m.shape == p.shape else m.view(p.shape))
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        if params and name == "adam":
            beta1, beta2 = group["betas"]
            eps = float(group["eps"])
            if group["bias_correction"] == "hf":
                eps = eps / math.sqrt(1 - beta2 ** (t + 1))
            torch._fused_adamw_(
                params, grads, buffers[0], buffers[1], [], [torch.full((), float(t + 1), device=device)] * len(params),
                lr=lr, beta1=float(beta1), beta2=float(beta2), weight_decay=wd, eps=eps, amsgrad=False,
                maximize=bool(group["maximize"]),
            )
        elif params:
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._fused_sgd_(
                params, grads, buffers[0] if keys else [], weight_decay=0.0, momentum=float(group["momentum"]), lr=lr,
                dampening=float(group["dampening"]), nesterov=bool(group["nesterov"]),
                maximize=bool(group["maximize"]), is_first_step=t == 0,
            )
        for _, state, _ in bucket:
            state["rule.step"] += 1
            state["step"] += 1


_COMPILED: dict[str, Any] = {}


def compiled_update(backend: str | bool = True) -> Any:
    """:func:`subspace_update` compiled by ``torch.compile(fullgraph=True, dynamic=True)`` (one function per backend;
    ``True`` is inductor): the same code, traced. Called with ``lr`` as a 0-d tensor and ``grad_norm=None``, so
    nothing that changes between steps is baked into the graph; weights of one shape and option set share a graph,
    and the per-weight ints in ``state`` are symbolic. For :func:`compilable` weights."""
    name = "inductor" if backend is True else str(backend)
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(subspace_update, fullgraph=True, dynamic=True, backend=name)
    return _COMPILED[name]


def compilable(param: Tensor, state: State, group: Group, frame: Frame) -> bool:
    """Whether this weight's update may run through :func:`compiled_update` now: ``compile`` set, a projected
    fp32/bf16/fp16 weight (gradient of its dtype, float moments, no stochastic rounding, no radial projection, a plain
    tensor) on a non-refresh step, with a stored basis of the frame's rank (seeded random bases are redrawn through a
    generator: ``cache_random_basis=True`` stores them) and a fixed refresh schedule (``refresh="adaptive"`` decides
    from a measured value at every step)."""
    if not group["compile"] or not frame.projected or "rule.step" not in state or group["refresh"] != "every":
        return False
    grad = param.grad
    basis = state.get("proj.basis")
    return (
        grad is not None and param.dtype == grad.dtype and param.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and type(param.data) is torch.Tensor and type(grad) is torch.Tensor and param.device.type in ("cpu", "cuda")
        and isinstance(basis, Tensor) and basis.dim() == 2 and int(basis.shape[1]) == frame.rank  # the stored rank
        and moments.quantized(group) is None
        and not group["stochastic_rounding"] and not group["radial_projection"]
        and not needs_refresh(state, group)
    )
