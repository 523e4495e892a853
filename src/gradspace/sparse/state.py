"""Where an optimizer keeps a weight's momentum and its other per-coordinate state, for any supported optimizer.

Supported: ``torch.optim.SGD`` (``momentum_buffer``), the Adam family (``exp_avg``; ``exp_avg_sq``,
``max_exp_avg_sq``), any torch optimizer whose per-weight state tensors have the weight's shape, and
:class:`gradspace.SubspaceOptimizer` (``rule.momentum_buffer`` for ``sgdm``/``orthogonal``, ``rule.exp_avg`` for
``adam``/``lion``). For a *projected* SubspaceOptimizer weight the momentum M lives in a rank-r subspace; it is
reconstructed in full space as ``up(M) = M Qᵀ`` with the weight's current basis Q — that is the part of the momentum
the optimizer actually applies. Such state has no per-coordinate entries, so it cannot be reset position by position
(:func:`coordinate_state` refuses with an error).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

#: state keys tried, in order, for torch optimizers (SGD, then the Adam family / Lion-style first moments)
MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


def _group_of(optimizer: Optimizer, param: Tensor) -> dict[str, Any]:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError(f"a parameter of shape {tuple(param.shape)} is not in the optimizer's param_groups.")


def _subspace_frame(optimizer: Optimizer, param: Tensor) -> tuple[dict[str, Any], bool] | None:
    """(group, projected) for a SubspaceOptimizer parameter, None for any other optimizer."""
    from ..functional import matrix_shape
    from ..optimizer import SubspaceOptimizer

    if not isinstance(optimizer, SubspaceOptimizer):
        return None
    group = _group_of(optimizer, param)
    return group, group["projector"] != "identity" and matrix_shape(param.shape) is not None


def is_projected(optimizer: Optimizer, param: Tensor) -> bool:
    """Whether ``param``'s optimizer state lives in a low-rank subspace (a projected SubspaceOptimizer weight).

    Examples:
        >>> import torch, gradspace
        >>> w = torch.nn.Parameter(torch.zeros(8, 8))
        >>> is_projected(gradspace.SubspaceOptimizer([w], projector="svd", rank=2), w)
        True
        >>> is_projected(torch.optim.SGD([w], lr=0.1, momentum=0.9), w)
        False
    """
    frame = _subspace_frame(optimizer, param)
    return bool(frame and frame[1])


def find_momentum(optimizer: Optimizer, param: Tensor) -> Tensor | None:
    """M(p): the optimizer's first-moment (momentum) tensor of ``param``, in ``param``'s shape (Dettmers & Zettlemoyer 2019).

    ``torch.optim.SGD`` → ``momentum_buffer``; Adam/AdamW/NAdam/… → ``exp_avg`` (sparse_learning normalizes Adam's as
    ``exp_avg/(√exp_avg_sq+ε)``; gradspace uses the raw first moment, the direct analogue of SGD's buffer);
    SubspaceOptimizer → the rule's first moment (``rule.momentum_buffer`` / ``rule.exp_avg``), reconstructed as
    ``up(M) = M Qᵀ`` (a new fp32 tensor) when the weight is projected.

    Args:
        optimizer: a torch optimizer or a :class:`gradspace.SubspaceOptimizer` holding ``param``.
        param: the weight.

    Returns:
        The momentum (a view of the live state when it is stored per coordinate), or ``None`` when the optimizer
        has no state for ``param`` yet (no step taken) or keeps no momentum (SGD with ``momentum=0``).

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2, 3))
        >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
        >>> w.grad = torch.full((2, 3), 2.0); opt.step()
        >>> find_momentum(opt, w)
        tensor([[2., 2., 2.],
                [2., 2., 2.]])
    """
    state = optimizer.state.get(param)
    if not state:
        return None
    frame = _subspace_frame(optimizer, param)
    if frame is None:
        for key in MOMENTUM_KEYS:
            value = state.get(key)
            if isinstance(value, Tensor) and value.shape == param.shape:
                return value
        return None
    from ..functional import effective_rank, matrix_shape, transposes
    from ..registry import PROJECTORS, RULES

    group, projected = frame
    rule = RULES[group["rule"]]
    key = next((k for k in rule.linear_keys if k in state), None)
    if key is None:
        return None
    m = state[key]
    if not projected:
        return m.reshape(param.shape)
    if state.get("proj.count", 0) == 0:
        return None
    rows, cols = matrix_shape(param.shape)
    transpose = transposes(rows, cols, group["side"])
    b = rows if transpose else cols
    q = PROJECTORS[group["projector"]].basis(state, b, effective_rank(group["rank"], b), group, m.device)
    full = m.float() if q is None else m.float() @ q.float().T
    return (full.T if transpose else full).reshape(param.shape)


def coordinate_state(optimizer: Optimizer, param: Tensor) -> dict[str, Tensor]:
    """Every floating per-coordinate state tensor of ``param`` (momenta, second moments), as views in ``param``'s shape.

    Writing into the returned views changes the optimizer's state. Used to reset the state of regrown weights.

    Raises:
        ValueError: for a projected SubspaceOptimizer weight, whose state is not per coordinate.

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2, 2))
        >>> opt = torch.optim.AdamW([w])
        >>> w.grad = torch.ones(2, 2); opt.step()
        >>> sorted(coordinate_state(opt, w))
        ['exp_avg', 'exp_avg_sq']
    """
    frame = _subspace_frame(optimizer, param)
    if frame is not None and frame[1]:
        raise ValueError(
            f"the optimizer state of a weight of shape {tuple(param.shape)} lives in a rank-r subspace "
            f"(SubspaceOptimizer projector={frame[0]['projector']!r}); it has no per-coordinate entries to reset. "
            "Use state_on_regrow='keep', or projector='identity' for the sparse weights."
        )
    out = {}
    for key, value in optimizer.state.get(param, {}).items():
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.numel() != param.numel():
            continue
        if value.shape == param.shape or (frame is not None and value.dim() == 2):
            out[key] = value.view(param.shape)
    return out


def has_momentum(optimizer: Optimizer, param: Tensor) -> bool | None:
    """Whether ``optimizer`` will keep a momentum for ``param`` (None when it cannot be told before a step).

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2, 2))
        >>> has_momentum(torch.optim.SGD([w], lr=0.1), w), has_momentum(torch.optim.AdamW([w]), w)
        (False, True)
    """
    frame = _subspace_frame(optimizer, param)
    if frame is not None:
        group = frame[0]
        if group["rule"] in ("sgdm", "orthogonal"):
            return float(group["momentum"]) > 0
        return True
    group = _group_of(optimizer, param)
    if isinstance(optimizer, torch.optim.SGD):
        return float(group.get("momentum", 0.0)) > 0
    if "betas" in group:
        return True
    return None
