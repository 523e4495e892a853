"""SubspaceOptimizer: one ``torch.optim.Optimizer`` that executes any projector × rule × residual combination."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

import torch.distributed as dist

from .functional import (
    basis_is_shared,
    compute_basis,
    effective_rank,
    matrix_shape,
    needs_refresh,
    oriented_grad,
    subspace_update,
    transposes,
)
from .registry import DEFAULTS, check_unknown, validate_options
from .sharded import shardable, sharded_update

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


def _is_dtensor(t: Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def _copy_into_shard(param: Tensor, full: Tensor) -> None:
    """Write this rank's rows of the full (replicated) matrix into the sharded parameter, with no communication."""
    from torch.distributed.tensor import DTensor, Replicate

    local = DTensor.from_local(full, param.device_mesh, [Replicate()], run_check=False)
    param.to_local().copy_(local.redistribute(param.device_mesh, param.placements).to_local())


def _gathers(p: Tensor, group: dict[str, Any]) -> bool:
    """Whether an FSDP2-sharded weight is updated from its gathered full matrix (anything but elementwise math)."""
    from .registry import RULES

    if matrix_shape(p.shape) is None:
        return False
    return group["projector"] != "identity" or RULES[group["rule"]].needs_matrix or bool(group["radial_projection"])


class SubspaceOptimizer(Optimizer):
    r"""W ← W − lr·(α·up(rule(down(G))) + residual(G − up(down(G)))) − lr·wd·W, per matrix weight.

    Each matrix weight's gradient is projected into a rank-``r`` subspace chosen by a *projector* and refreshed every
    ``refresh_every`` steps; a *rule* keeps its momentum there; a *residual* policy decides what happens to the part
    of the gradient outside; ``on_refresh`` decides what the rule's moments do when the basis changes. Vectors
    (biases, norms), scalars and matrices with a side of 1 run the rule in full space; conv kernels are treated as
    ``(out, in·k…)`` matrices. Every option may be overridden per param group and is re-read at every step, so LR
    schedulers and hand edits of ``param_groups`` take effect.

    Args:
        params: tensors, ``(name, tensor)`` pairs or param-group dicts (see :func:`gradspace.param_groups`).
        lr: learning rate ≥ 0 (a float or a one-element tensor).
        projector: ``"svd"`` (GaLore), ``"randomized"`` (warm-started randomized SVD), ``"online_pca"`` (Online
            Subspace Descent), ``"random"`` (seeded Gaussian/Stiefel; stores only the seed), ``"identity"``.
        rule: ``"adam"`` (AdamW), ``"sgdm"`` (heavy ball / Nesterov), ``"lion"``, ``"orthogonal"`` (Muon / SUMO).
        residual: ``"drop"`` (GaLore), ``"fira"``, ``"apollo"``, ``"sign"`` (FRUGAL), ``"sgd"`` (SUMO).
        rank: int ≥ 1, or a float in (0, 1) meaning that fraction of the projected side. Clamped (with a warning at
            construction) to the projected side.
        refresh_every: steps between basis refreshes (≥ 1); refreshes happen at steps 0, T, 2T, …. With
            ``refresh="adaptive"`` a weight's basis is refreshed when the captured energy ‖PᵀG‖²/‖G‖² of its last
            gradient falls below ``refresh_threshold`` (default 0.5), no sooner than ``refresh_min_gap`` and no later
            than ``refresh_every`` steps after the previous refresh.
        on_refresh: ``"keep"`` (GaLore), ``"reset"`` (FRUGAL) or ``"rotate"`` (transport first moments
            ``M ← M (Q_newᵀ Q_old)ᵀ``; with ``rotate_second_moment=True`` Adam's second moment too, LDAdam-style).
        side: projected side: ``"smaller"`` (default), ``"larger"``, ``"left"`` (rows), ``"right"`` (columns).
        scale: α, multiplier of the subspace update (GaLore's ``scale``); not applied in full space.
        weight_decay: decoupled weight decay ≥ 0, applied to the full weight before the update (as AdamW).
        process_group: the process group replicas live in (default: the default group when torch.distributed is
            initialized). Under DDP gradients are already averaged, so only the optimizer's decompositions must
            agree: with ``projector_sync="broadcast"`` (default) each refreshed basis is computed by one owner rank
            (round-robin over weights) and broadcast; ``"redundant"`` lets every rank decompose (no communication;
            only safe on identical hardware and thread counts). ``verify_sync=True`` checks bases and weights agree
            across ranks after each refresh (debugging). Random projectors derive their bases from (seed, parameter
            index, refresh count) and need no communication.
        nonfinite: ``"skip"`` (default): if any gradient of the step has a NaN/Inf, no parameter and no state
            changes, the event is counted in ``state[p]["nonfinite_skips"]`` of the offending parameters and a
            warning is issued; ``"raise"``: raise ``FloatingPointError`` naming the parameter.
        **options: component options (``betas``, ``eps``, ``bias_correction``, ``momentum``, ``nesterov``,
            ``ortho_method``, ``power_iters``, ``oversample``, ``pca_lr``, ``random_dist``, ``limiter_gamma``,
            ``residual_scale_type``, ``residual_lr_scale``, ``state_dtype``, ``seed``, …); the full list with
            defaults is :data:`gradspace.registry.DEFAULTS`. Unknown names raise ``TypeError``. ``state_dtype=None``
            keeps moments in the parameter's dtype, except fp16 parameters, whose moments are fp32 (fp16 cannot hold
            Adam's second moment); bases are always fp32 and decompositions run in fp32.

    Examples:
        >>> import torch, gradspace
        >>> model = torch.nn.Linear(64, 32)
        >>> opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-3, projector="svd", rank=8)
        >>> model(torch.randn(4, 64)).square().mean().backward()
        >>> opt.step()
        >>> tuple(opt.state[model.weight]["rule.exp_avg"].shape)  # 32 × 64 weight: rows projected to rank 8
        (64, 8)

    References:
        Zhao et al. 2024 (GaLore, arXiv:2403.03507); Liang et al. 2024 (Online Subspace Descent, arXiv:2408.12857);
        Chen et al. 2024 (Fira, arXiv:2410.01623); Zhu et al. 2025 (APOLLO, arXiv:2412.05270); Zmushko et al. 2025
        (FRUGAL, arXiv:2411.07837); Robert et al. 2025 (LDAdam, arXiv:2410.16103); Refael et al. 2025 (SUMO,
        arXiv:2505.24749).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        *,
        projector: str = "svd",
        rule: str = "adam",
        residual: str = "drop",
        rank: int | float = 128,
        refresh_every: int = 200,
        on_refresh: str = "keep",
        side: str = "smaller",
        scale: float = 1.0,
        weight_decay: float = 0.0,
        maximize: bool = False,
        nonfinite: str = "skip",
        process_group: Any = None,
        **options: Any,
    ) -> None:
        check_unknown(options, type(self).__name__)
        self._process_group = process_group
        defaults = dict(DEFAULTS)
        defaults.update(options)
        defaults.update(
            lr=lr, projector=projector, rule=rule, residual=residual, rank=rank, refresh_every=refresh_every,
            on_refresh=on_refresh, side=side, scale=scale, weight_decay=weight_decay, maximize=maximize,
            nonfinite=nonfinite,
        )
        if isinstance(defaults["betas"], list):
            defaults["betas"] = tuple(defaults["betas"])
        validate_options(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (validated: unknown keys → ``TypeError``, bad values → ``ValueError``; rank ≥ side warns)."""
        check_unknown(param_group.keys(), "param group")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        validate_options(group)
        self._check_params(group)

    def _check_params(self, group: dict[str, Any]) -> None:
        names = group.get("param_names") or [None] * len(group["params"])
        clamped = []
        for p, name in zip(group["params"], names):
            label = repr(name) if name else f"of shape {tuple(p.shape)}"
            if hasattr(p, "ds_shape") or hasattr(p, "ds_numel"):
                raise ValueError(
                    f"parameter {label} is a DeepSpeed ZeRO flat partition; its matrix shape is not available to the "
                    "optimizer. gradspace supports DDP (torch.nn.parallel.DistributedDataParallel); use it instead."
                )
            if _is_dtensor(p):
                kinds = {type(pl).__name__ + str(getattr(pl, "dim", "")) for pl in p.placements}
                if p.device_mesh.ndim != 1 or not kinds <= {"Shard0", "Replicate"}:
                    raise ValueError(
                        f"parameter {label} is a DTensor with placements {p.placements} on a {p.device_mesh.ndim}-D mesh; "
                        "gradspace supports FSDP2 row sharding (Shard(0)) on a 1-D mesh and DDP, not tensor "
                        "parallelism or 2-D meshes."
                    )
            if p.is_complex():
                raise ValueError(f"gradspace does not support complex parameters (parameter {label}); use torch.view_as_real.")
            shape = matrix_shape(p.shape)
            if shape is None or group["projector"] == "identity":
                continue
            side = shape[0] if transposes(*shape, group["side"]) else shape[1]
            rank = group["rank"]
            if not isinstance(rank, float) and int(rank) >= side:
                clamped.append(f"{repr(name) + ' ' if name else ''}{tuple(p.shape)} (projected side {side})")
        if clamped:
            warnings.warn(
                f"rank={group['rank']} >= the projected side of {len(clamped)} parameter(s): {', '.join(clamped[:3])}"
                f"{' …' if len(clamped) > 3 else ''}. Clamped to the side: the subspace is the whole space there and "
                "saves no memory. Use a smaller rank, a fractional rank such as 0.25, or projector='identity'.",
                UserWarning,
                stacklevel=5,
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in DEFAULTS.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like ``torch.optim.Optimizer`` but keep every state tensor's saved dtype.

        torch casts floating state tensors to the parameter's dtype on load; that would turn fp32 bases and moments
        of bf16 weights (and the limiter's fp32 norm) into bf16 and break exact resume, so they are restored here.
        """
        super().load_state_dict(state_dict)
        saved = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for key, p in zip(saved, params):
            for name, value in state_dict["state"].get(key, {}).items():
                if isinstance(value, Tensor) and self.state[p][name].dtype != value.dtype:
                    self.state[p][name] = value.to(device=p.device, copy=True)

    def state_bytes(self, per_param: bool = False) -> int | dict[str, int]:
        """Exact bytes of the optimizer state: every tensor (bases, moments, masks, norms; shared storage once) plus
        8 bytes for each Python number (step counters, seeds). ``per_param=True`` returns ``{name: bytes}`` keyed by
        parameter name when groups carry ``param_names``, else by position ``"param{i}"``."""
        seen: set[tuple[int, int]] = set()
        out: dict[str, int] = {}
        index = 0
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for p, name in zip(group["params"], names):
                total = 0
                for value in self.state.get(p, {}).values():
                    if isinstance(value, Tensor):
                        key = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
                        if key not in seen:
                            seen.add(key)
                            total += value.untyped_storage().nbytes()
                    elif isinstance(value, (int, float)):
                        total += 8
                out[name or f"param{index}"] = total
                index += 1
        return out if per_param else sum(out.values())

    def _new_state(self, p: Tensor, group: dict[str, Any], index: int) -> dict[str, Any]:
        state = self.state[p]
        state["step"] = 0
        state["proj.seed"] = int(group["seed"]) * 1_000_003 + index
        state["proj.count"] = 0
        return state

    def _nonfinite(self, work: list[tuple[dict[str, Any], Tensor, str, int]]) -> bool:
        """Apply the NaN/Inf policy; True if this step must be skipped."""
        # a fp32-accumulated sum is NaN/Inf exactly when some entry is (short of a 3e38 overflow): one read, no mask
        flags = [
            (p.grad.to_local() if _is_dtensor(p.grad) else p.grad).sum(dtype=torch.float32).isfinite()
            for _, p, _, _ in work
        ]
        if len({f.device for f in flags}) == 1:
            finite = torch.stack(flags).cpu()  # one device sync per step
        else:
            finite = torch.stack([f.cpu() for f in flags])
        if self._replicas() is not None and any(_is_dtensor(p) for _, p, _, _ in work):
            flags = finite.to(torch.int32)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=self._process_group)  # shards: all ranks agree
            finite = flags.bool()
        if bool(finite.all()):
            return False
        skip = False
        for (group, p, label, _), ok in zip(work, finite.tolist()):
            if ok:
                continue
            if group["nonfinite"] == "raise":
                raise FloatingPointError(f"non-finite gradient (NaN or Inf) in parameter {label}; nonfinite='raise'.")
            self.state[p]["nonfinite_skips"] = self.state[p].get("nonfinite_skips", 0) + 1
            skip = True
        if skip:
            warnings.warn(
                "gradspace: a gradient has NaN/Inf values; the step was skipped (no parameter or state changed) and "
                "counted in state[p]['nonfinite_skips']. Set nonfinite='raise' to stop instead.",
                RuntimeWarning,
                stacklevel=3,
            )
        return skip

    def _replicas(self) -> tuple[Any, int, int] | None:
        """(process group, world size, rank) when running with more than one replica, else None."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        pg = self._process_group
        world = dist.get_world_size(pg)
        return (pg, world, dist.get_rank(pg)) if world > 1 else None

    def _shared_bases(
        self, work: list[tuple[dict[str, Any], Tensor, str, int]], grads: dict[Tensor, Tensor]
    ) -> dict[Tensor, tuple[Tensor, bool]]:
        """Under DDP with ``projector_sync="broadcast"``: owners compute the bases due this step, then broadcast.

        Every rank walks the same parameters in the same order, so the collective sequence is identical on all
        ranks; the owner of parameter i is rank i mod world size. A row of flags rides along to report fallbacks.
        """
        replicas = self._replicas()
        if replicas is None:
            return {}
        pg, world, me = replicas
        todo = []
        for group, p, _, index in work:
            state = self.state[p]
            if group["projector_sync"] != "broadcast" or not basis_is_shared(state, group) or not needs_refresh(state, group):
                continue
            if _is_dtensor(p) and p not in grads:  # row-sharded weights refresh inside their sharded update
                continue
            framed = oriented_grad(p, grads.get(p, p.grad), state, group)
            if framed is None:
                continue
            x, transposed = framed
            owner = index % world
            rank = effective_rank(group["rank"], x.shape[1])
            if me == owner:
                q, failed = compute_basis(x, state, group, transposed)
                packed = torch.cat([q.float(), torch.full((1, rank), float(failed), device=q.device)]).contiguous()
            else:
                packed = torch.empty(x.shape[1] + 1, rank, device=x.device, dtype=torch.float32)
            src = owner if pg is None else dist.get_global_rank(pg, owner)
            todo.append((p, packed, src))
        handles = [dist.broadcast(packed, src=src, group=pg, async_op=True) for _, packed, src in todo]
        for handle in handles:
            handle.wait()
        return {p: (packed[:-1].clone(), bool(packed[-1, 0] > 0)) for p, packed, _ in todo}

    def _verify_sync(self, refreshed: list[tuple[Tensor, str]]) -> None:
        """Raise if any refreshed basis or its weight differs across replicas (``verify_sync=True``)."""
        replicas = self._replicas()
        if replicas is None or not refreshed:
            return
        pg, world, _ = replicas
        sums = []
        for p, _ in refreshed:
            weight = p.detach().full_tensor() if _is_dtensor(p) else p.detach()
            basis = self.state[p].get("proj.basis")
            zero = torch.zeros((), dtype=torch.float64, device=weight.device)
            sums.append(torch.stack([weight.double().sum(), basis.double().sum() if basis is not None else zero]))
        local = torch.stack(sums)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=pg)
        for other in gathered[1:]:
            bad = (other != gathered[0]).any(dim=1).nonzero().flatten().tolist()
            if bad:
                names = [refreshed[i][1] for i in bad]
                raise RuntimeError(
                    f"gradspace verify_sync: replicas disagree on the basis or weight of {names[:3]} after a refresh. "
                    "Use projector_sync='broadcast' (the default), or identical hardware and thread counts."
                )

    def _work(self, only: Tensor | None = None) -> list[tuple[dict[str, Any], Tensor, str, int]]:
        """(group, param, label, global index) of every parameter with a gradient (or just ``only``), creating state."""
        work = []
        index = 0
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for p, name in zip(group["params"], names):
                if p.grad is not None and p.numel() > 0 and (only is None or p is only):
                    if p.grad.is_sparse:
                        raise RuntimeError(f"gradspace does not support sparse gradients (parameter {name or index}).")
                    if not self.state.get(p):
                        self._new_state(p, group, index)
                    work.append((group, p, repr(name) if name else f"#{index} of shape {tuple(p.shape)}", index))
                index += 1
        return work

    @torch.no_grad()
    def step_param(self, param: Tensor) -> None:
        """Update one parameter from its gradient, as ``step`` would (used by :class:`gradspace.LayerwiseStepper`).

        The NaN/Inf policy applies to this parameter alone. Not for replicated or sharded training.
        """
        if self._replicas() is not None:
            raise RuntimeError("step_param (layer-wise updates) is single-process only: under DDP/FSDP the gradient "
                               "seen during backward is not yet reduced. Use step().")
        work = self._work(only=param)
        if not work or self._nonfinite(work):
            return
        group = work[0][0]
        subspace_update(param, param.grad, self.state[param], group, float(group["lr"]))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step; returns the closure's loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._work()
        if not work or self._nonfinite(work):
            return loss
        # FSDP2 (Shard(0)): a weight with a right basis and an element-wise rule is updated on its own rows with sharded
        # moments (gradspace.sharded); any other non-element-wise update runs on the gathered full matrix on every rank
        # (replicated subspace state, identical to single-process math), and each rank keeps its own rows.
        local = {p for group, p, _, _ in work if _is_dtensor(p) and shardable(p, group)}
        full = {p: p.grad.full_tensor() for group, p, _, _ in work
                if _is_dtensor(p) and p not in local and _gathers(p, group)}
        shared = self._shared_bases(work, full)
        verify = [
            (p, label) for group, p, label, _ in work
            if group["verify_sync"] and matrix_shape(p.shape) is not None and group["projector"] != "identity"
            and needs_refresh(self.state[p], group)
        ]
        for group, p, _, index in work:
            state = self.state[p]
            basis, failed = shared.get(p, (None, False))
            if failed:
                state["proj.fallbacks"] = state.get("proj.fallbacks", 0) + 1
            if p in local:
                replicas = self._replicas()
                pg, world = (replicas[0], replicas[1]) if replicas else (None, 1)
                sharded_update(p, state, group, float(group["lr"]), pg, index % world)
            elif p in full:
                weight = p.detach().full_tensor()
                subspace_update(weight, full[p], state, group, float(group["lr"]), new_basis=basis)
                _copy_into_shard(p, weight)
            else:
                subspace_update(p, p.grad, state, group, float(group["lr"]), new_basis=basis)
        self._verify_sync(verify)
        return loss
