"""SubspaceOptimizer: one ``torch.optim.Optimizer`` that executes any projector × rule × residual combination.

The class holds state and validates options; the math is :func:`gradspace.functional.subspace_update`, and how it runs
across processes is :mod:`gradspace.distributed`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import distributed as D
from .frame import Frame, frame_of
from .functional import compilable, compiled_update, fusable, fused_full_space, needs_refresh, subspace_update
from .registry import DEFAULTS, PROJECTORS, RESIDUALS, check_unknown, fill, validate_options
from .residuals.base import row_norms_fp32

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]
Work = tuple[dict[str, Any], Tensor, str, int, Frame]


def route(params: Any, rank: int | float | None, caller: str) -> Any:
    """An ``nn.Module`` is routed as :func:`gradspace.param_groups` routes it (matrices get a subspace; embeddings,
    heads and the output layer stay in full space); bare tensors pass as given, with a warning naming the embedding-
    or head-shaped ones a ``rank`` would project. ``(name, tensor)`` pairs keep torch's meaning (named parameters)."""
    from torch import nn

    from .routing import resolve_params

    if isinstance(params, nn.Module):
        return resolve_params(params, rank=rank, caller=caller, verbose=False)
    if isinstance(params, Tensor):
        return [params]
    params = list(params)
    if rank is not None and params and all(isinstance(p, Tensor) for p in params):
        resolve_params(params, rank=rank, caller=caller, verbose=False)  # warns only
    return params


_DOT_DTYPES = (torch.float32, torch.float64)

#: compile=True: how many graphs (weight shapes × option sets) the compiled update may hold
COMPILE_GRAPH_LIMIT = 64


def _absmax(g: Tensor) -> Tensor:
    """max |g| as a 1-element fp64 tensor from min and max in ``g``'s own dtype (NaN propagates through both, nothing
    overflows): the exact finiteness test."""
    lo, hi = torch.aminmax(g)
    return torch.maximum(lo.double().abs(), hi.double().abs()).reshape(1)


def _to_host(values: list[Tensor]) -> list[float]:
    if len({v.device for v in values}) == 1:
        return torch.cat(values).cpu().tolist()
    return torch.cat([v.cpu() for v in values]).tolist()


class SubspaceOptimizer(Optimizer):
    r"""W ← W − lr·(α·up(rule(down(G))) + residual(G − up(down(G)))) − lr·wd·W, per matrix weight.

    Each matrix weight's gradient is projected into a rank-``r`` subspace chosen by a *projector* and refreshed every
    ``refresh_every`` steps; a *rule* keeps its momentum there; a *residual* policy decides what happens to the part
    of the gradient outside; ``on_refresh`` decides what the rule's moments do when the basis changes. Vectors
    (biases, norms), scalars and matrices with a side of 1 run the rule in full space; conv kernels are treated as
    ``(out, in·k…)`` matrices. Every option may be overridden per param group and is re-read at every step, so LR
    schedulers and hand edits of ``param_groups`` take effect.

    Args:
        params: an ``nn.Module`` (routed as :func:`gradspace.param_groups` routes it), tensors, ``(name, tensor)``
            pairs or param-group dicts (see :func:`gradspace.param_groups`). Bare tensors are all projected: a warning
            names the embedding-/head-shaped ones.
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
            defaults is :data:`gradspace.registry.DEFAULTS` (each component declares its own); a group holds the
            core options and those of the components it selects. Unknown names raise ``TypeError``. ``state_dtype=None``
            keeps moments in the parameter's dtype, except fp16 parameters, whose moments are fp32 (fp16 cannot hold
            Adam's second moment); bases are always fp32 and decompositions run in fp32. ``fused=True`` (default):
            full-space Adam weights (norms, biases, embeddings, every weight under the identity projector) are
            stepped by torch's fused AdamW kernel in one multi-tensor call (SGD-momentum ones by its fused SGD
            kernel), and Adam's subspace moments by the same kernel, where it computes the reference's math (fp32,
            ``bias_correction`` "torch"/"hf", ``|g| < 1e18``; tested equal to rounding over the contract table);
            ``fused=False`` always takes the reference path. ``compile=True`` (or a backend name: ``"inductor"``,
            ``"aot_eager"``, ``"eager"``): each projected weight's non-refresh update runs through
            ``torch.compile(subspace_update, fullgraph=True, dynamic=True)`` — one graph per weight shape and option
            set, ``lr`` passed as data, so schedulers and equal layers cause no recompiles; refresh steps, telemetry
            steps and weights it cannot take (:func:`~gradspace.functional.compilable`) run eagerly. Default ``False``:
            on CPU it was measured slower than eager.

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

    _routes_params = True  # presets route with their own (optional) rank

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
        if self._routes_params:
            params = route(params, rank, type(self).__name__)
        self._process_group = process_group
        self._observe_next: dict[str, Any] | None = None
        self.last_records: dict[Tensor, dict[str, Any]] = {}
        self._lr_tensors: dict[tuple[int, torch.device], Tensor] = {}  # compile=True: lr as data
        self._eager_only: set[tuple[int, Any, torch.device]] = set()  # compile=True: updates that did not trace
        defaults = dict(options)
        defaults.update(
            lr=lr, projector=projector, rule=rule, residual=residual, rank=rank, refresh_every=refresh_every,
            on_refresh=on_refresh, side=side, scale=scale, weight_decay=weight_decay, maximize=maximize,
            nonfinite=nonfinite,
        )
        fill(defaults)
        validate_options(defaults)
        super().__init__(params, defaults)

    def _group_options(self, param_group: dict[str, Any]) -> dict[str, Any]:
        """The group to install for a group given by the caller (presets translate their anchor's names here)."""
        return param_group

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validated before anything is installed (unknown keys → ``TypeError``, bad values →
        ``ValueError``; rank ≥ side warns): a refused group leaves the optimizer as it was."""
        group = self._group_options(dict(param_group))
        check_unknown(group.keys(), "param group")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if params and all(isinstance(p, tuple) and len(p) == 2 for p in params):
            group.setdefault("param_names", [n for n, _ in params])
            params = [p for _, p in params]
        group["params"] = params
        trial = fill({**self.defaults, **{k: v for k, v in group.items() if k != "params"}})
        validate_options(trial)
        self._check_params(group["params"], group.get("param_names"), trial)
        for key in trial:
            if key not in self.defaults:
                group.setdefault(key, trial[key])
        super().add_param_group(group)

    def _check_params(self, params: list[Tensor], names: list[str] | None, group: dict[str, Any]) -> None:
        names = names or [None] * len(params)
        projected = not PROJECTORS[group["projector"]].full_space
        if projected and params and all(p.dim() == 1 for p in params) and sum(p.numel() for p in params) >= 65536:
            raise ValueError(
                f"a param group meant for a subspace (projector={group['projector']!r}) holds only 1-D tensors "
                f"({sum(p.numel() for p in params):,} elements): this looks like DeepSpeed ZeRO-1/2's flattened "
                "partitions, on which every weight would silently run in full space and save no memory. Use "
                "torch.distributed.fsdp.fully_shard (FSDP2) or DDP instead, or projector='identity' if this is meant."
            )
        clamped = []
        for p, name in zip(params, names):
            label = repr(name) if name else f"of shape {tuple(p.shape)}"
            if hasattr(p, "ds_shape") or hasattr(p, "ds_numel"):
                raise ValueError(
                    f"parameter {label} is a DeepSpeed ZeRO flat partition; its matrix shape is not available to the "
                    "optimizer, so every weight would silently run in full space. gradspace supports DDP and FSDP2 "
                    "(torch.distributed.fsdp.fully_shard); use one of them instead."
                )
            if D.is_dtensor(p):
                kinds = {type(pl).__name__ + str(getattr(pl, "dim", "")) for pl in p.placements}
                if p.device_mesh.ndim != 1 or not kinds <= {"Shard0", "Replicate"}:
                    raise ValueError(
                        f"parameter {label} is a DTensor with placements {p.placements} on a {p.device_mesh.ndim}-D mesh; "
                        "gradspace supports FSDP2 row sharding (Shard(0)) on a 1-D mesh and DDP, not tensor "
                        "parallelism or 2-D meshes."
                    )
            if p.is_complex():
                raise ValueError(f"gradspace does not support complex parameters (parameter {label}); use torch.view_as_real.")
            frame = frame_of(p.shape, group)
            if not frame.projected:
                continue
            if not isinstance(group["rank"], float) and int(group["rank"]) >= frame.b:
                clamped.append(f"{repr(name) + ' ' if name else ''}{tuple(p.shape)} (projected side {frame.b})")
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
        self.__dict__.setdefault("_process_group", None)
        self.__dict__.setdefault("_observe_next", None)
        self.__dict__.setdefault("last_records", {})
        self.__dict__.setdefault("_lr_tensors", {})
        self.__dict__.setdefault("_eager_only", set())
        for group in self.param_groups:
            fill(group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like ``torch.optim.Optimizer`` — by parameter name when both sides know names — and keep every state
        tensor's saved dtype; refuse, before changing anything, a state that cannot belong to these parameters.

        torch casts floating state tensors to the parameter's dtype on load; that would turn fp32 bases and moments
        of bf16 weights (and the limiter's fp32 norm) into bf16 and break exact resume, so they are restored here.
        """
        from .checkpoint import align_state_dict

        state_dict = align_state_dict(self, state_dict)
        super().load_state_dict(state_dict)
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for key, p in zip(saved, params):
            for name, value in state_dict["state"].get(key, {}).items():
                if isinstance(value, Tensor) and self.state[p][name].dtype != value.dtype:
                    self.state[p][name] = value.to(device=p.device, copy=True)
        for group in self.param_groups:
            fill(group)

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
                        storage = value.untyped_storage()
                        key = (storage.data_ptr(), storage.nbytes()) if not value.is_meta else (id(storage), 0)
                        if key not in seen:
                            seen.add(key)
                            total += storage.nbytes()
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
        state["proj.fallbacks"] = 0  # always present: a checkpoint's keys do not depend on what happened in the run
        return state

    def _check_grads(self, work: list[Work]) -> list[tuple[float | None, float | None, Tensor | None]] | None:
        """Apply the NaN/Inf policy: ``None`` if this step must be skipped, else each gradient's (``max |g|`` bound,
        ``‖g‖`` or ``None`` where not measured, its oriented frame's row norms or ``None``); ``(None, None, None)``
        on meta tensors (a memory plan).

        fp32/fp64 gradients are checked by ``g·g`` (one BLAS pass; finite means every entry is finite, and gives
        ‖g‖), others by min/max; where the weight's residual reads ‖G_i‖ per row (``grad_rows``), the pass computes
        those instead and sums them, so the update does not read G again for them. Everything comes to the host in
        one transfer (one device sync per step), with ``refresh="adaptive"``'s captured energies; a ``g·g`` that
        overflows (|g| ≳ 1e19 in fp32) is re-checked exactly by min/max, a second sync only then."""
        if any(p.grad.is_meta for _, p, _, _, _ in work):
            return [(None, None, None)] * len(work)  # a memory plan: nothing to check
        grads = [D.local(p.grad) for _, p, _, _, _ in work]
        energies = [self.state[p] for group, p, _, _, _ in work if group["refresh"] == "adaptive"
                    and isinstance(self.state[p].get("sched.energy"), Tensor)]
        by_dtype: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        exact = []
        for i, g in enumerate(grads):
            if g.dtype in _DOT_DTYPES:  # an empty shard too (its g·g is 0): every rank lists the same entries
                by_dtype.setdefault((g.dtype, g.device), []).append(i)
            elif g.numel():
                exact.append(i)
        rows: list[Tensor | None] = [None] * len(grads)
        for i, (group, p, _, _, frame) in enumerate(work):
            if frame.projected and grads[i].dtype in _DOT_DTYPES and not D.is_dtensor(p) and getattr(
                    RESIDUALS[group["residual"]], "grad_rows", lambda g: False)(group):
                rows[i] = row_norms_fp32(frame.orient(grads[i]))
        order, parts = [], []
        for idx in by_dtype.values():
            flats = [grads[i].reshape(-1) if rows[i] is None else rows[i].reshape(-1) for i in idx]
            squares = [torch.dot(f, f) for f in flats]
            parts.append(torch.stack(squares).double())
            order += idx
        parts += [_absmax(grads[i]) for i in exact]
        if energies:
            parts.append(torch.stack([s["sched.energy"].reshape(()) for s in energies]).double())
        host = _to_host(parts) if parts else []
        shards = [pos for pos, i in enumerate(order) if D.is_dtensor(work[i][1])]
        if shards and D.replicas(self._process_group) is not None:  # a shard's g·g: the whole gradient's, summed
            summed = D.all_sum(torch.tensor([host[pos] for pos in shards], dtype=torch.float64), self._process_group)
            for pos, value in zip(shards, summed.tolist()):
                host[pos] = value
        bounds: list[float] = [0.0] * len(grads)
        norms: list[float | None] = [None] * len(grads)
        for pos, i in enumerate(order):
            bounds[i] = norms[i] = math.sqrt(host[pos]) if math.isfinite(host[pos]) else math.inf
        for pos, i in enumerate(exact, start=len(order)):
            bounds[i] = host[pos]
        again = [i for i in order if not math.isfinite(bounds[i])]
        if again:  # g·g overflowed or a non-finite entry: decide exactly
            for i, value in zip(again, _to_host([_absmax(grads[i]) for i in again])):
                bounds[i], norms[i] = value, None
        finite = torch.tensor([math.isfinite(b) for b in bounds])
        if D.replicas(self._process_group) is not None and any(D.is_dtensor(p) for _, p, _, _, _ in work):
            finite = D.all_finite(finite, self._process_group)  # shards: all ranks agree
        if not bool(finite.all()):
            bad = [(group, p, label) for (group, p, label, _, _), ok in zip(work, finite.tolist()) if not ok]
            for group, _, label in bad:
                if group["nonfinite"] == "raise":
                    raise FloatingPointError(f"non-finite gradient (NaN or Inf) in parameter {label}; "
                                             "nonfinite='raise'.")
            for _, p, _ in bad:
                self.state[p]["nonfinite_skips"] = self.state[p].get("nonfinite_skips", 0) + 1
            warnings.warn(
                "gradspace: a gradient has NaN/Inf values; the step was skipped (no parameter or state changed) and "
                "counted in state[p]['nonfinite_skips']. Set nonfinite='raise' to stop instead.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        for state, value in zip(energies, host[len(order) + len(exact):]):
            state["sched.energy"] = value  # the step goes ahead: its refresh decisions read these floats
        return [(b, n, r if n is not None else None) for b, n, r in zip(bounds, norms, rows)]

    def _work(self, only: Tensor | None = None) -> list[Work]:
        """(group, param, label, global index, frame) of every parameter with a gradient (or just ``only``), with
        hand-edited groups re-filled and validated first, so a bad edit is refused before any weight changes."""
        work = []
        index = 0
        for group in self.param_groups:
            fill(group)
            validate_options(group)
            names = group.get("param_names") or [None] * len(group["params"])
            for p, name in zip(group["params"], names):
                if p.grad is not None and p.numel() > 0 and (only is None or p is only):
                    if p.grad.is_sparse:
                        raise RuntimeError(f"gradspace does not support sparse gradients (parameter {name or index}).")
                    label = repr(name) if name else f"#{index} of shape {tuple(p.shape)}"
                    work.append((group, p, label, index, frame_of(p.shape, group)))
                index += 1
        for group, p, _, index, _ in work:
            if not self.state.get(p):
                self._new_state(p, group, index)
        return work

    def observe_next_step(self, spectra: bool = False) -> None:
        """Ask the next ``step()`` to record what it measured per weight in :attr:`last_records` (captured energy,
        gradient norm, the basis before/after a refresh, residual scales and limiter; singular values of each
        oriented gradient with ``spectra=True``). Used by :class:`gradspace.diagnostics.Telemetry`."""
        self._observe_next = {"want_spectra": bool(spectra)}

    def _record(self, p: Tensor) -> dict[str, Any] | None:
        if self._observe_next is None:
            return None
        return self.last_records.setdefault(p, dict(self._observe_next))

    @torch.no_grad()
    def step_param(self, param: Tensor) -> None:
        """Update one parameter from its gradient, as ``step`` would (used by :class:`gradspace.LayerwiseStepper`).

        The NaN/Inf policy applies to this parameter alone. Not for replicated or sharded training.
        """
        if D.replicas(self._process_group) is not None:
            raise RuntimeError("step_param (layer-wise updates) is single-process only: under DDP/FSDP the gradient "
                               "seen during backward is not yet reduced. Use step().")
        if not any(param is p for g in self.param_groups for p in g["params"]):
            raise ValueError(f"step_param: the tensor of shape {tuple(param.shape)} is not a parameter of this "
                             "optimizer.")
        work = self._work(only=param)
        bounds = self._check_grads(work) if work else None
        if bounds is None:
            return
        group, p, _, _, frame = work[0]
        subspace_update(p, p.grad, self.state[p], group, float(group["lr"]), frame=frame, record=self._record(p),
                        grad_norm=bounds[0][1], grad_rows=bounds[0][2])

    def _compiled_step(self, p: Tensor, state: dict[str, Any], group: dict[str, Any], lr: float, frame: Frame,
                       norm: float | None, rows: Tensor | None) -> None:
        """``compile=True``: this weight's update by :func:`~gradspace.functional.compiled_update`, ``lr`` passed as
        a 0-d tensor (one per group and device, refilled each step). A weight whose update does not trace (or that
        would exceed torch.compile's recompile limit) is updated eagerly from then on, with one warning."""
        key = (id(group), frame.matrix, p.device)
        if key in self._eager_only:
            subspace_update(p, p.grad, state, group, lr, frame=frame, grad_norm=norm, grad_rows=rows)
            return
        lr_t = self._lr_tensors.get((id(group), p.device))
        if lr_t is None:
            lr_t = self._lr_tensors[(id(group), p.device)] = torch.zeros((), device=p.device)
        lr_t.fill_(lr)
        try:  # a graph per weight shape and option set: more than dynamo's default 8 for this one function
            with torch._dynamo.config.patch(recompile_limit=COMPILE_GRAPH_LIMIT):
                compiled_update(group["compile"])(p, p.grad, state, group, lr_t, frame=frame, grad_rows=rows)
        except (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit) as err:
            # raised while tracing or compiling, before the graph ran: nothing has changed yet
            self._eager_only.add(key)
            warnings.warn(f"gradspace: compile={group['compile']!r}: the update of a {tuple(p.shape)} weight could not "
                          f"be compiled ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); it "
                          f"runs eagerly (at most {COMPILE_GRAPH_LIMIT} graphs: one per weight shape and option set).",
                          RuntimeWarning, stacklevel=3)
            subspace_update(p, p.grad, state, group, lr, frame=frame, grad_norm=norm, grad_rows=rows)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step; returns the closure's loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_records = {}
        work = self._work()
        bounds = self._check_grads(work) if work else None
        if bounds is None:
            self._observe_next = None
            return loss
        # full-space Adam/SGD weights: subspace_update's fused branch, batched into one kernel call per group
        fast = [i for i, ((group, p, _, _, frame), (bound, _, _)) in enumerate(zip(work, bounds))
                if fusable(p, self.state[p], group, frame, bound)]
        if fast:
            fused_full_space([(work[i][1], self.state[work[i][1]], work[i][0], work[i][4]) for i in fast],
                             [self._record(work[i][1]) for i in fast])
            rest = sorted(set(range(len(work))) - set(fast))
            work, bounds = [work[i] for i in rest], [bounds[i] for i in rest]
        pg = self._process_group
        found = D.replicas(pg)
        world = found[1] if found else 1
        full = {p: p.grad.full_tensor() for group, p, _, _, frame in work if D.gathers(p, group, frame)}
        shared = D.shared_bases(work, self.state, full, pg)
        verify = [(p, label) for group, p, label, _, frame in work
                  if group["verify_sync"] and frame.projected and needs_refresh(self.state[p], group)]
        for (group, p, _, index, frame), (_, norm, rows) in zip(work, bounds):
            state, lr, record = self.state[p], float(group["lr"]), self._record(p)
            if D.shardable(p, group, frame):
                D.update_sharded(p, state, group, lr, frame, pg, index % world, record, grad_norm=norm)
            elif p in full:
                D.update_gathered(p, full[p], state, group, lr, frame, shared.get(p), record, grad_norm=norm)
            elif record is None and p not in shared and compilable(p, state, group, frame):
                self._compiled_step(p, state, group, lr, frame, norm, rows)
            else:
                subspace_update(p, p.grad, state, group, lr, frame=frame, new_basis=shared.get(p), record=record,
                                grad_norm=norm, grad_rows=rows)
        D.verify_sync(verify, self.state, pg)
        self._observe_next = None
        return loss
