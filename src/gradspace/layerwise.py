"""Layer-wise (optimizer-in-backward) updates that keep the training-loop contract.

Each weight is updated from a gradient hook as soon as its gradient of the *last* micro-batch of an accumulation
window is complete, and its gradient buffer is freed right away, so at most one layer's gradient is alive at the
end of backward (the memory saving GaLore's per-layer mode promises). Unlike the anchors' per-layer mode it steps
only at accumulation boundaries, shares the optimizer (so LR schedulers and ``state_dict`` see every layer), reports
the global gradient norm of each step, and can clip per parameter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Variable

from .optimizer import SubspaceOptimizer


_ATTR = "_gradspace_layerwise_stepper"  # the optimizer's attached stepper (an instance attribute; not pickled)


def attached_stepper(optimizer: torch.optim.Optimizer) -> LayerwiseStepper | None:
    """The :class:`LayerwiseStepper` currently attached to ``optimizer``, or ``None``."""
    return getattr(optimizer, _ATTR, None)


def _sparse_controllers(optimizer: torch.optim.Optimizer) -> list[Any]:
    """The :class:`gradspace.sparse.SparseMomentum` controllers attached to ``optimizer`` by a step post-hook."""
    from .sparse.controller import SparseMomentum

    out = []
    for hook in list(getattr(optimizer, "_optimizer_step_post_hooks", {}).values()):
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, SparseMomentum):
            out.append(owner)
    return out


class LayerwiseStepper:
    """Update each parameter inside backward at accumulation boundaries: W_i ← step(W_i, Σ_k G_i^(k)), then free G_i.

    Layer-wise ("optimizer in backward") updates as in GaLore's per-layer mode (Zhao et al. 2024, arXiv:2403.03507),
    but with the training-loop contract of ``optimizer.step()``: every ``accumulation_steps``-th backward pass is a
    boundary, and at a boundary each parameter that has a gradient is updated — from its gradient hook as soon as its
    gradient is complete, or, for a parameter that got gradients earlier in the window but none in the boundary
    backward, at the end of that backward. A parameter that gets no gradient in a window is not updated (as
    ``step()`` skips ``grad=None``). So the result equals the ``backward × accumulation_steps; step(); zero_grad()``
    loop, also when some parameters are unused.

    Args:
        optimizer: a :class:`SubspaceOptimizer` (any preset); its param groups, schedulers and state are used as is.
            One stepper per optimizer: a second one is refused (``remove()`` the first to replace it).
        accumulation_steps: backward passes per optimizer step (≥ 1). A backward pass counts when at least one of the
            optimizer's parameters receives a gradient in it.
        max_grad_norm: clip each parameter's gradient to this L2 norm before its update (per-tensor clipping: a
            global-norm clip needs every gradient before the first update, which layer-wise updates cannot wait for).
            ``None`` (default) disables it.

    After each boundary backward, ``grad_norm`` holds the global L2 norm of the gradients that were consumed (before
    clipping) and ``steps`` the number of completed optimizer steps. A :class:`gradspace.sparse.SparseMomentum`
    attached to the optimizer is driven after every step (its masks re-applied, its events run), exactly as
    ``optimizer.step()`` would; other step hooks of the optimizer are not run. Single process only (under DDP the
    hook sees the local, unreduced gradient); ``remove()`` detaches the hooks.

    Examples:
        >>> import torch, gradspace
        >>> model = torch.nn.Linear(16, 8)
        >>> opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, rank=4)
        >>> stepper = gradspace.LayerwiseStepper(opt, accumulation_steps=2)
        >>> for _ in range(4):
        ...     model(torch.randn(3, 16)).square().mean().backward()   # no opt.step() / zero_grad() in the loop
        >>> stepper.steps, model.weight.grad is None
        (2, True)
    """

    def __init__(self, optimizer: SubspaceOptimizer, accumulation_steps: int = 1, max_grad_norm: float | None = None) -> None:
        if not isinstance(optimizer, SubspaceOptimizer):
            raise TypeError(f"LayerwiseStepper needs a gradspace.SubspaceOptimizer (or preset), got {type(optimizer).__name__}.")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps={accumulation_steps!r} must be an int >= 1.")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm!r} must be > 0 or None.")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise RuntimeError(
                "LayerwiseStepper is single-process only: under DDP/FSDP the gradient seen during backward is the local, "
                "unreduced one, so replicas would diverge. Use optimizer.step() with DDP/FSDP."
            )
        if attached_stepper(optimizer) is not None:
            raise RuntimeError(
                "optimizer: a LayerwiseStepper is already attached to this optimizer (two would update every parameter "
                "twice per backward). Call remove() on the first one before attaching another."
            )
        gradient_growth = [sm for sm in _sparse_controllers(optimizer) if sm.growth == "gradient"]
        if gradient_growth:
            raise ValueError(
                "optimizer: a SparseMomentum with growth='gradient' (RigL) is attached; it reads p.grad at its events, "
                "but the stepper frees every gradient right after its layer's update. Use growth='momentum' or "
                "'random', or optimizer.step() instead of LayerwiseStepper."
            )
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.steps = 0
        self.grad_norm = math.nan
        self._micro = 0  # completed backward passes in the current accumulation window
        self._task: int | None = None  # autograd graph task of the backward pass being counted
        self._stepped = 0
        self._sq_norms: list[float] = []
        self._params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self._params]
        setattr(optimizer, _ATTR, self)

    def _hook(self, param: Tensor) -> None:
        task = torch._C._current_graph_task_id()
        if task != self._task:
            # first gradient of this backward pass: its end closes a micro-batch (and, at a boundary, the step). The
            # graph-task id, not a flag, tells passes apart, so a backward that raised midway cannot block the next.
            self._task = task
            Variable._execution_engine.queue_callback(self._end_of_backward)
        if self._micro + 1 < self.accumulation_steps:
            return  # inside the window: the gradient accumulates in param.grad
        self._consume(param)

    def _consume(self, param: Tensor) -> None:
        grad = param.grad
        norm = float(grad.detach().float().norm())
        self._sq_norms.append(norm * norm)
        if self.max_grad_norm is not None and norm > self.max_grad_norm:
            grad.mul_(self.max_grad_norm / (norm + 1e-6))
        self.optimizer.step_param(param)
        param.grad = None
        self._stepped += 1

    def _end_of_backward(self) -> None:
        self._task = None
        self._micro += 1
        if self._micro < self.accumulation_steps:
            return
        self._micro = 0
        for p in self._params:  # gradients from earlier micro-batches of the window, none in this backward
            if p.grad is not None:
                self._consume(p)
        if self._stepped == 0:
            return
        self.grad_norm = math.sqrt(sum(self._sq_norms))
        self._sq_norms.clear()
        self._stepped = 0
        self.steps += 1
        # LR schedulers check this flag (set by the optimizer.step they wrap) to warn about a skipped step
        self.optimizer._opt_called = True  # type: ignore[attr-defined]
        for sm in _sparse_controllers(self.optimizer):
            sm._after_step(self.optimizer, (), {})

    def state_dict(self) -> dict[str, Any]:
        """The stepper's counters (the optimizer's own ``state_dict`` holds the optimizer state)."""
        return {"steps": self.steps, "accumulation_steps": self.accumulation_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters saved by :meth:`state_dict` (``accumulation_steps`` must match)."""
        if state["accumulation_steps"] != self.accumulation_steps:
            raise ValueError(f"checkpoint has accumulation_steps={state['accumulation_steps']}, this stepper "
                             f"{self.accumulation_steps}.")
        self.steps = int(state["steps"])

    def remove(self) -> None:
        """Detach the gradient hooks (another stepper may then be attached to the optimizer)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if attached_stepper(self.optimizer) is self:
            delattr(self.optimizer, _ATTR)
