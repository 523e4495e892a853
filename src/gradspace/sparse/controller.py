"""SparseMomentum: a model-level controller that keeps chosen weights sparse and moves their budget during training."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from .report import inference_flops_ratio, plot_events, train_flops_ratio, write_jsonl
from .selection import (
    DISTRIBUTIONS,
    ROUNDINGS,
    SPARSE_LEARNING_PRUNE_RATE_MIN,
    allocate,
    cosine_prune_rate,
    largest_inactive,
    layer_counts,
    layer_prune_rates,
    prune_count,
    smallest_active,
)
from .state import coordinate_state, find_momentum, has_momentum, is_projected

GROWTH = ("momentum", "gradient", "random")
REDISTRIBUTION = ("momentum", "magnitude", "none")
STATE_ON_REGROW = ("keep", "zero", "mean")

_KEPT, _REGROWN = 1, 2  # codes of the per-event position map (0 = inactive)


def _sparse_kinds() -> tuple[type, ...]:
    return (nn.Linear, nn.modules.conv._ConvNd)


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}.")


def _choose_layers(model: nn.Module, layers: str | Sequence[str] | None) -> tuple[dict[str, nn.Parameter], str]:
    """The sparse weights {name: parameter} and a sentence saying what was left dense and why."""
    candidates: list[tuple[str, str, nn.Parameter]] = []  # (module name, parameter name, weight)
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, _sparse_kinds()) or not isinstance(weight, nn.Parameter) or weight.dim() < 2:
            continue
        if id(weight) in seen or not weight.requires_grad:
            continue
        seen.add(id(weight))
        candidates.append((mod_name, f"{mod_name}.weight" if mod_name else "weight", weight))
    if layers is None:
        chosen = candidates[1:-1]
        dense = [c[1] for c in candidates[:1] + candidates[-1:]] if len(candidates) > 1 else [c[1] for c in candidates]
        note = (f"dense: first and output layer {dense} (default; pass layers='all' or a list of names to change)"
                if dense else "")
    elif layers == "all":
        chosen, note = candidates, "layers='all': every Linear/Conv weight is sparse"
    elif isinstance(layers, str):
        raise ValueError(f"layers={layers!r} must be None (default), 'all', or a list of parameter/module names.")
    else:
        wanted = list(layers)
        chosen = [c for c in candidates if c[0] in wanted or c[1] in wanted]
        found = {c[0] for c in chosen} | {c[1] for c in chosen}
        missing = [w for w in wanted if w not in found]
        if missing:
            names = [c[1] for c in candidates]
            raise ValueError(f"layers: {missing} name no Linear/Conv weight of the model; eligible weights: {names}.")
        note = f"layers={wanted}"
    if not chosen:
        raise ValueError(
            f"layers={layers!r}: the model has no eligible layer to make sparse (found {len(candidates)} Linear/Conv "
            "weight(s); the default keeps the first and the output layer dense). Pass layers='all' or a list of names."
        )
    return {name: w for _, name, w in chosen}, note


class SparseMomentum:
    r"""Sparse momentum: prune the smallest |W|, share the freed budget ∝ mean |momentum|, regrow the largest |momentum| (Dettmers & Zettlemoyer 2019).

    A controller, not an optimizer: it owns one boolean mask per sparse weight and, through
    ``optimizer.register_step_post_hook``, re-applies it after every ``optimizer.step()`` so pruned weights stay
    exactly zero. Gradients and momenta are never masked: the momentum of a zero weight keeps accumulating its dense
    gradient, which is the growth signal. Every ``update_every`` steps (and before ``end_step``) an event runs:

    1. rate p_t = p_min + (p₀ − p_min)·(1 + cos(π t / T_end))/2 (sparse_learning's ``CosineDecay``, floor 0.005);
    2. each layer's score s_l (mean |momentum| or mean |W| over its active weights) is taken;
    3. a layer more than 80 % dense whose share s_l/Σs exceeds 1/L uses p_l = min(sparsity_l, p_t), every other
       layer p_l = p_t (sparse_learning's ``adjust_prune_rate``; ``adjust_dense_layers``);
    4. each layer drops its ⌈p_l·nnz_l⌉ smallest-|W| active weights (``prune_rounding``);
    5. the total dropped is shared across layers ∝ s_l, capped at each layer's free positions (``allocate``);
    6. each layer regrows its share at its inactive positions with the largest |momentum| (``growth="momentum"``),
       |gradient| (``"gradient"``, RigL) or at random (``"random"``, SET); regrown weights start at 0 and their
       optimizer state follows ``state_on_regrow``.

    Against sparse_learning (TimDettmers/sparse_learning, ``Masking``): the schedule (1), the dense-layer
    adjustment (3), the ceil rounding (4), magnitude pruning, the momentum statistic and growth match it. It differs
    in: (a) the freed budget is placed exactly (largest-remainder rounding, Σ regrown = Σ pruned, a layer may fill up
    to all its free positions), where sparse_learning rounds shares with ceil/floor, caps a layer at 0.99 of its free
    positions and corrects the drift with an exponential moving average, so its active count wanders around the
    target; (b) growth never picks an active position (sparse_learning#22); (c) for Adam the raw ``exp_avg`` is the
    momentum, where sparse_learning uses ``exp_avg/(√exp_avg_sq + 1e-8)``; (d) masks are saved in
    :meth:`state_dict` instead of being inferred from zeros on resume. RigL's schedule is
    ``prune_rate_min=0, prune_rounding="floor", adjust_dense_layers=False``.

    The masks are applied to the weights lazily, at the first of: the first forward of a sparse layer, the first
    ``optimizer.step()``, :meth:`load_state_dict`, :meth:`prune_and_regrow` or :meth:`apply_masks`. So building the
    controller never touches the weights, and a model just loaded from a checkpoint keeps every weight until the
    controller's own state is loaded. Resume order: build the model and ``model.load_state_dict``; build the
    optimizer and ``optimizer.load_state_dict``; build ``SparseMomentum`` and ``sm.load_state_dict`` — before the
    first forward or step. (If the first automatic application would zero nonzero weights of layers that are already
    mostly exact zeros, a warning says the controller's state was probably not loaded.)

    The number of active weights after every event is exactly ``round(density · Σ numel)`` (deterministic top-k,
    ties broken by index). Time and memory are those of dense training plus the masks (masked dense tensors); the
    FLOP ratios in :attr:`log` are estimates of a sparse-kernel implementation. Events and masking run in a step
    post-hook after ``optimizer.step()``; with per-parameter updates inside backward
    (:class:`gradspace.LayerwiseStepper`) the stepper drives the same hook once every layer of a step is updated
    (``growth="gradient"`` is refused there: the stepper frees the gradients). The step counter counts steps (a step
    an optimizer skips internally, e.g. SubspaceOptimizer's ``nonfinite="skip"``, still counts).

    Args:
        model: the model whose weights are made sparse (a DDP-wrapped model works; names then start with ``module.``).
        optimizer: any torch optimizer holding the sparse weights — ``torch.optim.SGD`` with momentum, AdamW,
            :class:`gradspace.SubspaceOptimizer` (projected weights: momentum read as ``up(M)``, see
            :func:`gradspace.sparse.find_momentum`).
        density: overall fraction of active weights over the sparse layers, in (0, 1] (default 0.1).
        total_steps: T ≥ 1, the training length in optimizer steps; the prune rate decays to 0 at ``end_step``
            (``None`` is accepted only for static masks: ``update_every=None`` and no manual event).
        update_every: N ≥ 1 steps between events (set it to the steps per epoch for per-epoch events), or ``None``
            for no automatic event (static masks, or call :meth:`prune_and_regrow` yourself).
        prune_rate: p₀ ∈ [0, 1), the initial fraction of each layer's active weights dropped per event (default 0.5).
        prune_rate_min: p_min ∈ [0, 1), the floor the cosine decays to at ``end_step`` (default 0.005, sparse_learning's
            ``CosineDecay(eta_min=0.005)``; 0 decays to 0 as RigL). Never above p₀.
        prune_rounding: ``"ceil"`` (default; sparse_learning's ⌈p·nnz⌉) or ``"floor"`` (RigL's ⌊p·nnz⌋).
        adjust_dense_layers: apply sparse_learning's prune-rate cap p_l = min(sparsity_l, p) to layers more than
            80 % dense that are growing (default True; ignored with ``redistribution="none"``, as in sparse_learning).
        end_step: no event at or after this step, and the cosine reaches p_min there (default ``total_steps``; RigL
            uses 0.75·T).
        growth: ``"momentum"`` (sparse momentum, default), ``"gradient"`` (RigL: |∇W| of the batch of the event
            step) or ``"random"`` (SET).
        redistribution: ``"momentum"`` (default), ``"magnitude"`` or ``"none"`` (each layer regrows what it dropped,
            so per-layer densities never move).
        distribution: initial per-layer densities: ``"uniform"`` (default) or ``"erk"`` (Erdős–Rényi-kernel).
        state_on_regrow: what a regrown weight's per-coordinate optimizer state (momentum, Adam moments) starts from:
            ``"keep"`` (default; the paper: the accumulated dense-gradient momentum stays), ``"zero"`` (RigL) or
            ``"mean"`` (each state tensor's mean over the weights that stayed active; sparse_learning's removed
            reset). ``"zero"``/``"mean"`` are refused for projected SubspaceOptimizer weights (no per-coordinate
            state).
        layers: ``None`` (default: every Linear/Conv weight except the first and the output layer), ``"all"``, or a
            list of parameter or module names.
        seed: seeds the initial masks and random growth (a CPU generator whose state is in :meth:`state_dict`).
        process_group: replicas under DDP (default: the default group when torch.distributed is initialized); masks
            computed on its rank 0 are broadcast after construction and after every event.
        verbose: print the chosen layers at construction.

    Attributes:
        masks: ``{parameter name: bool tensor}``, True = active.
        log: one dict per event (JSON-serialisable; see :meth:`write_jsonl` and :meth:`plot`).

    Examples:
        >>> import torch
        >>> from gradspace.sparse import SparseMomentum
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
        ...                             torch.nn.ReLU(), torch.nn.Linear(32, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> sm = SparseMomentum(model, opt, density=0.25, total_steps=20, update_every=5, verbose=False)
        >>> for _ in range(20):
        ...     opt.zero_grad(); model(torch.randn(16, 8)).square().mean().backward(); opt.step()
        >>> int(sm.masks["2.weight"].sum()), int((model[2].weight != 0).sum()) <= 256, len(sm.log)
        (256, True, 3)

    References:
        Dettmers & Zettlemoyer 2019, "Sparse Networks from Scratch: Faster Training without Losing Performance"
        (arXiv:1907.04840); Evci et al. 2020, "Rigging the Lottery" (RigL, ERK; arXiv:1911.11134); Mocanu et al.
        2018, "Scalable training of artificial neural networks with adaptive sparse connectivity" (SET).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        density: float = 0.1,
        total_steps: int | None = None,
        update_every: int | None = None,
        *,
        prune_rate: float = 0.5,
        prune_rate_min: float = SPARSE_LEARNING_PRUNE_RATE_MIN,
        prune_rounding: str = "ceil",
        adjust_dense_layers: bool = True,
        end_step: int | None = None,
        growth: str = "momentum",
        redistribution: str = "momentum",
        distribution: str = "uniform",
        state_on_regrow: str = "keep",
        layers: str | Sequence[str] | None = None,
        seed: int = 0,
        process_group: Any = None,
        verbose: bool = True,
    ) -> None:
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < float(density) <= 1.0:
            raise ValueError(f"density={density!r} must be in (0, 1] (the fraction of weights kept active).")
        if not isinstance(prune_rate, (int, float)) or not 0.0 <= float(prune_rate) < 1.0:
            raise ValueError(f"prune_rate={prune_rate!r} must be in [0, 1) (fraction of active weights dropped per event).")
        if (isinstance(prune_rate_min, bool) or not isinstance(prune_rate_min, (int, float))
                or not 0.0 <= float(prune_rate_min) < 1.0):
            raise ValueError(f"prune_rate_min={prune_rate_min!r} must be in [0, 1) (the cosine schedule's floor; "
                             "sparse_learning: 0.005, RigL: 0).")
        _check_choice("prune_rounding", prune_rounding, ROUNDINGS)
        if not isinstance(adjust_dense_layers, bool):
            raise ValueError(f"adjust_dense_layers={adjust_dense_layers!r} must be True or False.")
        if update_every is not None and (isinstance(update_every, bool) or not isinstance(update_every, int)
                                         or update_every < 1):
            raise ValueError(f"update_every={update_every!r} must be an int ≥ 1 (steps between events) or None.")
        if total_steps is None:
            if update_every is not None:
                raise ValueError("total_steps=None: give the training length in optimizer steps (an int ≥ 1); the "
                                 "prune rate's cosine schedule needs it.")
        elif isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} must be an int ≥ 1 (training length in optimizer steps).")
        if end_step is not None and (not isinstance(end_step, int) or end_step < 1):
            raise ValueError(f"end_step={end_step!r} must be an int ≥ 1 or None (default: total_steps).")
        _check_choice("growth", growth, GROWTH)
        _check_choice("redistribution", redistribution, REDISTRIBUTION)
        _check_choice("distribution", distribution, DISTRIBUTIONS)
        _check_choice("state_on_regrow", state_on_regrow, STATE_ON_REGROW)

        self.model = model
        self.optimizer = optimizer
        self.density = float(density)
        self.total_steps = total_steps
        self.update_every = update_every
        self.prune_rate = float(prune_rate)
        self.prune_rate_min = float(prune_rate_min)
        self.prune_rounding = prune_rounding
        self.adjust_dense_layers = adjust_dense_layers
        self.end_step = end_step if end_step is not None else total_steps
        self.growth = growth
        self.redistribution = redistribution
        self.distribution = distribution
        self.state_on_regrow = state_on_regrow
        self.process_group = process_group
        self.params, note = _choose_layers(model, layers)
        self._check_optimizer()

        self._generator = torch.Generator().manual_seed(int(seed))
        self.step_count = 0
        self.event_count = 0
        self.log: list[dict[str, Any]] = []
        self.target_active = int(round(self.density * sum(p.numel() for p in self.params.values())))
        self.masks: dict[str, Tensor] = self._initial_masks()
        self._broadcast_masks()
        # Lazy application (see the class docstring): the weights are untouched until the first forward, step,
        # load_state_dict, event or apply_masks().
        self._pending = True
        self._pending_hooks = self._register_pending_hooks()

        self._layer_flops: dict[str, float] = {}
        self._flop_hooks = self._register_flop_hooks()
        self._hook = optimizer.register_step_post_hook(self._after_step)
        from ..layerwise import attached_stepper

        if self.growth == "gradient" and attached_stepper(optimizer) is not None:
            self.remove()
            raise ValueError("growth='gradient' (RigL) reads p.grad at the event, but a gradspace.LayerwiseStepper is "
                             "attached to this optimizer and frees every gradient right after its layer's update. Use "
                             "growth='momentum' or 'random', or optimizer.step() instead of the stepper.")
        if verbose:
            self._print_layers(note)

    # ------------------------------------------------------------------ setup
    def _check_optimizer(self) -> None:
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        for name, p in self.params.items():
            if id(p) not in held:
                raise ValueError(f"sparse weight {name!r} is not in the optimizer; pass an optimizer built on "
                                 "model.parameters().")
            if self.state_on_regrow != "keep" and is_projected(self.optimizer, p):
                raise ValueError(
                    f"state_on_regrow={self.state_on_regrow!r}: weight {name!r} is projected by a SubspaceOptimizer, so "
                    "its momentum has no per-coordinate entries to reset. Use state_on_regrow='keep', or "
                    "projector='identity' for the sparse weights."
                )
            if "momentum" in (self.growth, self.redistribution) and has_momentum(self.optimizer, p) is False:
                which = "growth" if self.growth == "momentum" else "redistribution"
                raise ValueError(
                    f"{which}='momentum' reads the optimizer's momentum, but {type(self.optimizer).__name__} keeps none "
                    f"for {name!r} (momentum=0). Use an optimizer with momentum (SGD momentum=0.9, AdamW) or "
                    f"{which}={'gradient' if which == 'growth' else 'magnitude'!r}."
                )

    def _initial_masks(self) -> dict[str, Tensor]:
        counts = layer_counts([tuple(p.shape) for p in self.params.values()], self.density, self.distribution)
        masks = {}
        for (name, p), n in zip(self.params.items(), counts):
            flat = torch.zeros(p.numel(), dtype=torch.bool)
            flat[torch.randperm(p.numel(), generator=self._generator)[:n]] = True
            masks[name] = flat.view(p.shape).to(p.device)
        return masks

    def _print_layers(self, note: str) -> None:
        total = sum(p.numel() for p in self.params.values())
        print(f"gradspace.SparseMomentum: {len(self.params)} sparse weight(s), {self.target_active:,} of {total:,} "
              f"active (density {self.density:g}, {self.distribution}); growth={self.growth}, "
              f"redistribution={self.redistribution}, state_on_regrow={self.state_on_regrow}")
        for name, p in self.params.items():
            m = self.masks[name]
            print(f"  {name} {tuple(p.shape)}: density {int(m.sum()) / m.numel():.4f}")
        if note:
            print(f"  {note}")

    def _register_flop_hooks(self) -> list[list[Any]]:
        """Record each Linear/Conv layer's positions per sample once (for the FLOP estimate), then remove the hook.

        F_l = numel(W_l) × positions (1 for a Linear on a vector, H·W for a 2-D conv, T for a Linear on sequences);
        until the first forward every layer counts one position."""
        boxes: list[list[Any]] = []
        weights = {id(w): n for n, w in self.params.items()}
        for mod_name, module in self.model.named_modules():
            weight = getattr(module, "weight", None)
            if not isinstance(module, _sparse_kinds()) or not isinstance(weight, nn.Parameter):
                continue
            name = weights.get(id(weight), f"{mod_name}.weight" if mod_name else "weight")
            self._layer_flops.setdefault(name, float(weight.numel()))
            box: list[Any] = [None]

            def hook(mod: nn.Module, args: Any, output: Any, name: str = name, box: list[Any] = box) -> None:
                transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
                t = args[0] if transposed and args else output  # a transposed conv's work scales with its input
                channels = mod.in_channels if transposed else (
                    mod.out_channels if isinstance(mod, nn.modules.conv._ConvNd) else mod.out_features)
                if isinstance(t, Tensor) and t.dim() > 0:
                    batch = t.shape[0] if t.dim() > 1 else 1
                    positions = t.numel() / max(int(channels), 1) / max(int(batch), 1)
                    self._layer_flops[name] = float(mod.weight.numel()) * max(positions, 1.0)
                box[0].remove()

            box[0] = module.register_forward_hook(hook)
            boxes.append(box)
        return boxes

    # ------------------------------------------------------------------ distributed
    def _replicas(self) -> tuple[Any, int] | None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        if dist.get_world_size(self.process_group) <= 1:
            return None
        src = 0 if self.process_group is None else dist.get_global_rank(self.process_group, 0)
        return self.process_group, src

    def _broadcast_codes(self, codes: dict[str, Tensor]) -> None:
        """Make every rank use rank 0's position maps (uint8: gloo and NCCL both broadcast it)."""
        replicas = self._replicas()
        if replicas is None:
            return
        group, src = replicas
        for name in self.params:  # same order on every rank
            dist.broadcast(codes[name], src=src, group=group)

    def _broadcast_masks(self) -> None:
        codes = {n: m.to(torch.uint8) for n, m in self.masks.items()}
        self._broadcast_codes(codes)
        self.masks = {n: c.bool() for n, c in codes.items()}

    # ------------------------------------------------------------------ the step hook
    def _register_pending_hooks(self) -> list[Any]:
        """Forward pre-hooks on the modules owning sparse weights: the first forward applies the masks."""
        owned = {id(p) for p in self.params.values()}
        handles = []
        for module in self.model.modules():
            if any(id(p) in owned for p in module.parameters(recurse=False)):
                handles.append(module.register_forward_pre_hook(self._first_forward))
        return handles

    def _first_forward(self, module: nn.Module, args: Any) -> None:
        self._activate(check=True)

    def _clear_pending(self) -> None:
        self._pending = False
        for handle in self._pending_hooks:
            handle.remove()
        self._pending_hooks = []

    @torch.no_grad()
    def _activate(self, check: bool) -> None:
        """Apply the masks for the first time (``check``: warn if that zeroes weights of an already sparse model)."""
        if not self._pending:
            return
        self._clear_pending()
        if check:
            lost, zero, total = 0, 0, 0
            for name, p in self.params.items():
                nonzero = p.detach() != 0
                zero += int(p.numel() - int(nonzero.sum()))
                total += p.numel()
                lost += int((nonzero & ~self.masks[name]).sum())
            if lost and zero >= total / 2:
                warnings.warn(
                    f"SparseMomentum: the sparse weights were already {zero / total:.0%} exact zeros (a sparse-trained "
                    f"checkpoint?) and the fresh masks now zero {lost} nonzero weights. To resume, call "
                    "sm.load_state_dict(saved) after building SparseMomentum and before the first forward or step.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self._apply_masks()

    @torch.no_grad()
    def _apply_masks(self) -> None:
        for name, p in self.params.items():
            p.masked_fill_(~self.masks[name], 0)

    def apply_masks(self) -> None:
        """W_l ← W_l ⊙ m_l now (done automatically at the first forward/step and after every step)."""
        self._clear_pending()
        self._apply_masks()

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self._activate(check=True)
        self.step_count += 1
        self._apply_masks()
        if (self.update_every is not None and self.step_count % self.update_every == 0
                and self.step_count < int(self.end_step)):
            self.prune_and_regrow()

    def remove(self) -> None:
        """Detach from the optimizer (masks stop being applied; weights keep their current values)."""
        self._clear_pending()
        self._hook.remove()
        for box in self._flop_hooks:
            box[0].remove()

    # ------------------------------------------------------------------ the event
    def _momentum(self, name: str, p: Tensor) -> Tensor:
        m = find_momentum(self.optimizer, p)
        if m is None:
            if self.optimizer.state.get(p):
                raise RuntimeError(
                    f"{type(self.optimizer).__name__} keeps no momentum for {name!r} (looked for momentum_buffer, exp_avg "
                    f"and the SubspaceOptimizer rule state; found {sorted(self.optimizer.state[p])}). Use growth and "
                    "redistribution that do not read momentum ('gradient'/'random', 'magnitude'/'none')."
                )
            return torch.zeros_like(p)
        return m

    def _scores(self) -> list[float]:
        scores = []
        for name, p in self.params.items():
            mask = self.masks[name]
            n = int(mask.sum())
            if n == 0:
                scores.append(0.0)
                continue
            source = self._momentum(name, p) if self.redistribution == "momentum" else p.detach()
            value = float(source.abs().float()[mask].sum() / n)
            scores.append(value if math.isfinite(value) else 0.0)
        return scores

    def _growth_score(self, name: str, p: Tensor) -> Tensor:
        if self.growth == "momentum":
            return self._momentum(name, p).abs()
        if self.growth == "gradient":
            if p.grad is None:
                raise RuntimeError(
                    f"growth='gradient' (RigL) needs the dense gradient of {name!r} at the event, but p.grad is None. "
                    "Events run right after optimizer.step(); do not clear gradients before it (or call "
                    "prune_and_regrow() while the gradients are still there)."
                )
            return p.grad.detach().abs()
        return torch.rand(p.numel(), generator=self._generator).view(p.shape).to(p.device)

    @torch.no_grad()
    def prune_and_regrow(self) -> dict[str, Any]:
        """Run one prune/regrow event now (automatic every ``update_every`` steps) and return its log record."""
        if self.total_steps is None:
            raise RuntimeError("prune_and_regrow needs total_steps (the prune-rate schedule's length); pass it at "
                               "construction.")
        self._activate(check=True)
        start = time.perf_counter()
        rate = cosine_prune_rate(self.step_count, int(self.end_step), self.prune_rate, self.prune_rate_min)
        names = list(self.params)
        actives = [int(self.masks[n].sum()) for n in names]
        scores = self._scores() if self.redistribution != "none" else [0.0] * len(names)
        numels = [self.params[n].numel() for n in names]
        adjust = self.adjust_dense_layers and self.redistribution != "none"
        rates = layer_prune_rates(rate, actives, numels, scores if adjust else None)

        pruned_masks, n_pruned = [], []
        for name, active, layer_rate in zip(names, actives, rates):
            p, mask = self.params[name], self.masks[name]
            k = prune_count(layer_rate, active, self.prune_rounding)
            keep = mask.clone()
            keep.view(-1)[smallest_active(p.abs(), mask, k)] = False
            pruned_masks.append(keep)
            n_pruned.append(k)
        caps = [self.params[n].numel() - (a - k) for n, a, k in zip(names, actives, n_pruned)]
        if self.redistribution == "none":
            n_grow = list(n_pruned)
        else:
            n_grow = allocate(sum(n_pruned), scores, caps)

        codes: dict[str, Tensor] = {}
        for name, keep, r in zip(names, pruned_masks, n_grow):
            p = self.params[name]
            code = keep.to(torch.uint8)
            if r > 0:
                idx = largest_inactive(self._growth_score(name, p), keep, r)
                code.view(-1)[idx.to(code.device)] = _REGROWN
            codes[name] = code
        self._broadcast_codes(codes)
        record = self._commit(codes, actives, rate)
        record["layer_prune_rate"] = dict(zip(names, rates))
        record["event_seconds"] = time.perf_counter() - start  # measured
        record["mask_bytes"] = self.mask_bytes()  # measured
        record["layer_score"] = dict(zip(names, scores))
        self.log.append(record)
        return record

    def _commit(self, codes: dict[str, Tensor], actives: list[int], rate: float) -> dict[str, Any]:
        """Install the position maps: zero pruned and regrown weights, reset regrown state, update masks, log."""
        layer_pruned, layer_regrown, layer_density = {}, {}, {}
        for (name, code), active in zip(codes.items(), actives):
            p = self.params[name]
            kept, regrown = code == _KEPT, code == _REGROWN
            p.masked_fill_(~kept, 0)
            if self.state_on_regrow != "keep" and bool(regrown.any()):
                for value in coordinate_state(self.optimizer, p).values():
                    fill = 0.0
                    if self.state_on_regrow == "mean" and bool(kept.any()):
                        fill = float(value[kept].float().mean())
                    value.masked_fill_(regrown, fill)
            self.masks[name] = code > 0
            layer_pruned[name] = active - int(kept.sum())
            layer_regrown[name] = int(regrown.sum())
            layer_density[name] = int(self.masks[name].sum()) / p.numel()
        self.event_count += 1
        active_total = sum(int(m.sum()) for m in self.masks.values())
        return {
            "event": self.event_count,
            "step": self.step_count,
            "prune_rate": rate,
            "pruned": sum(layer_pruned.values()),
            "regrown": sum(layer_regrown.values()),
            "active": active_total,
            "density": active_total / sum(p.numel() for p in self.params.values()),
            "layer_density": layer_density,
            "layer_pruned": layer_pruned,
            "layer_regrown": layer_regrown,
            "train_flops_ratio_estimate": self.train_flops_ratio(),
            "inference_flops_ratio_estimate": self.inference_flops_ratio(),
        }

    # ------------------------------------------------------------------ reports
    def layer_density(self) -> dict[str, float]:
        """Current density of each sparse weight."""
        return {n: int(m.sum()) / m.numel() for n, m in self.masks.items()}

    def train_flops_ratio(self, growth: str | None = "auto") -> float:
        """Estimated training FLOPs relative to dense (see :func:`gradspace.sparse.train_flops_ratio`); an estimate,
        not a measurement. ``growth="auto"`` uses this controller's method (``None``, static masks, while it has no
        automatic and no past events)."""
        if growth == "auto":
            growth = self.growth if self.update_every is not None or self.event_count > 0 else None
        return train_flops_ratio(self._layer_flops, self.layer_density(), growth, self.update_every)

    def inference_flops_ratio(self) -> float:
        """Estimated forward FLOPs relative to dense (an estimate, see :func:`gradspace.sparse.inference_flops_ratio`)."""
        return inference_flops_ratio(self._layer_flops, self.layer_density())

    def mask_bytes(self) -> int:
        """Bytes held by the masks (measured: one byte per weight for bool tensors)."""
        return sum(m.numel() * m.element_size() for m in self.masks.values())

    def write_jsonl(self, path: str) -> None:
        """Write :attr:`log` as JSON lines."""
        write_jsonl(self.log, path)

    def plot(self, path: str, title: str = "") -> None:
        """Plot :attr:`log` (per-layer density, pruned/regrown counts) to ``path`` (needs matplotlib)."""
        plot_events(self.log, path, title)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only: ``masks.<name>`` (bool), ``step_count``, ``event_count``, ``generator`` (uint8 RNG state).

        :attr:`log` is not included (save it with :meth:`write_jsonl`)."""
        out: dict[str, Tensor] = {f"masks.{n}": m.detach().clone() for n, m in self.masks.items()}
        out["step_count"] = torch.tensor(self.step_count, dtype=torch.int64)
        out["event_count"] = torch.tensor(self.event_count, dtype=torch.int64)
        out["generator"] = self._generator.get_state()
        return out

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Restore masks, counters and the RNG (names and shapes must match), then apply the masks to the weights.

        Call it before the first forward or step of a resumed run (the class docstring gives the resume order): the
        weights are not touched by the controller before that, so a loaded checkpoint keeps every active weight."""
        want = {f"masks.{n}" for n in self.params}
        have = {k for k in state_dict if k.startswith("masks.")}
        if want != have:
            raise ValueError(f"SparseMomentum.load_state_dict: masks for {sorted(have)} do not match the sparse weights "
                             f"{sorted(want)}.")
        for name, p in self.params.items():
            mask = state_dict[f"masks.{name}"]
            if tuple(mask.shape) != tuple(p.shape):
                raise ValueError(f"mask of {name!r} has shape {tuple(mask.shape)}, the weight {tuple(p.shape)}.")
            self.masks[name] = mask.to(device=p.device, dtype=torch.bool).clone()
        self.step_count = int(state_dict["step_count"])
        self.event_count = int(state_dict["event_count"])
        self._generator.set_state(state_dict["generator"].to(device="cpu", dtype=torch.uint8))
        self.apply_masks()
