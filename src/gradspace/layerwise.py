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

from .optimizer import SubspaceOptimizer


class LayerwiseStepper:
    """Update each parameter inside backward at accumulation boundaries: W_i ← step(W_i, Σ_k G_i^(k)), then free G_i.

    Args:
        optimizer: a :class:`SubspaceOptimizer` (any preset); its param groups, schedulers and state are used as is.
        accumulation_steps: micro-batches per optimizer step (≥ 1). A parameter steps on the backward that completes
            its ``accumulation_steps``-th gradient since its last step.
        max_grad_norm: clip each parameter's gradient to this L2 norm before its update (per-tensor clipping: a
            global-norm clip needs every gradient before the first update, which layer-wise updates cannot wait for).
            ``None`` (default) disables it.

    After each boundary backward, ``grad_norm`` holds the global L2 norm of the gradients that were consumed (before
    clipping) and ``steps`` the number of completed optimizer steps. Single process only (under DDP the hook sees the
    local, unreduced gradient); ``remove()`` detaches the hooks.

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
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.steps = 0
        self.grad_norm = math.nan
        self._counts: dict[int, int] = {}
        self._sq_norms: list[float] = []
        self._pending = 0
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self._total = len(params)
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]

    def _hook(self, param: Tensor) -> None:
        count = self._counts.get(id(param), 0) + 1
        if count < self.accumulation_steps:
            self._counts[id(param)] = count
            return
        self._counts[id(param)] = 0
        grad = param.grad
        norm = float(grad.detach().float().norm())
        self._sq_norms.append(norm * norm)
        if self.max_grad_norm is not None and norm > self.max_grad_norm:
            grad.mul_(self.max_grad_norm / (norm + 1e-6))
        self.optimizer.step_param(param)
        param.grad = None
        self._pending += 1
        if self._pending == self._total:
            self.grad_norm = math.sqrt(sum(self._sq_norms))
            self._sq_norms.clear()
            self._pending = 0
            self.steps += 1
            # LR schedulers check this flag (set by the optimizer.step they wrap) to warn about a skipped step
            self.optimizer._opt_called = True  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        """The stepper's counters (the optimizer's own ``state_dict`` holds the optimizer state)."""
        return {"steps": self.steps, "accumulation_steps": self.accumulation_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["accumulation_steps"] != self.accumulation_steps:
            raise ValueError(f"checkpoint has accumulation_steps={state['accumulation_steps']}, this stepper "
                             f"{self.accumulation_steps}.")
        self.steps = int(state["steps"])

    def remove(self) -> None:
        """Detach the gradient hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
