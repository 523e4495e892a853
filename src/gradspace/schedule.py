"""When to refresh a basis (the projector decides how). Pure functions of the step count, the group and stored stats."""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping

import torch
from torch import Tensor

from .comm import LOCAL, Comm


def captured_energy(x: Tensor, q: Tensor | None, orthonormal: bool = True, comm: Comm = LOCAL,
                    xq: Tensor | None = None) -> Tensor:
    """‖X P‖²_F / ‖X‖²_F with P the orthogonal projector onto span(Q) (GaLore's captured gradient energy).

    ``x`` is the oriented gradient (a × b, or a vector seen as 1 × b) and ``q`` a b × r basis; ``None`` is the full
    space (energy 1). For a non-orthonormal basis (``orthonormal=False``, e.g. Gaussian random projections, whose
    ``QᵀQ`` is only I in expectation) P = Q (QᵀQ)⁺ Qᵀ, computed from the r × r Gram matrix. A zero gradient counts as
    fully captured. Returns a 0-d fp32 tensor on ``x``'s device (no host sync). ``x`` may be this rank's rows of the
    matrix (sums go through ``comm``); ``xq``, when given, is ``x @ q`` already computed.

    Examples:
        >>> x = torch.tensor([[3.0, 4.0]]); q = torch.tensor([[1.0], [0.0]])
        >>> round(float(captured_energy(x, q)), 4), round(float(captured_energy(x, 2 * q, orthonormal=False)), 4)
        (0.36, 0.36)
    """
    if q is None:
        return torch.ones((), device=x.device)
    x = x.float().reshape(-1, q.shape[0])
    q = q.to(device=x.device, dtype=torch.float32)
    xq = x @ q if xq is None else xq.float()
    # sums of squares in fp64: those of a finite fp32 spike overflow fp32 (inf/inf)
    if orthonormal:
        inside = comm.sum(torch.linalg.vector_norm(xq, dtype=torch.float64).square())
    else:
        gram = comm.sum(xq.double().T @ xq.double())
        inside = (torch.linalg.pinv(q.double().T @ q.double(), hermitian=True) * gram).sum()
    total = comm.sum(torch.linalg.vector_norm(x, dtype=torch.float64).square())
    ratio = (inside / total.clamp_min(torch.finfo(torch.float64).tiny)).float()
    return torch.where(total > 0, ratio.clamp(0.0, 1.0).nan_to_num(1.0), torch.ones_like(ratio))


def stagger_offset(state: MutableMapping[str, Any] | None, period: int, group: Mapping[str, Any]) -> int:
    """With ``refresh_stagger=True``, this weight's refreshes are shifted by a fixed offset in ``[0, period)`` drawn
    from its seed (a hash of its index), so the weights of a model do not all pay their decomposition on the same step;
    the first basis is still computed at step 0. 0 without staggering."""
    if state is None or not group.get("refresh_stagger") or "proj.seed" not in state:
        return 0
    return (int(state["proj.seed"]) * 0x9E3779B1 >> 7) % period


def refresh_due(
    step: int,
    has_basis: bool,
    continuous: bool,
    group: Mapping[str, Any],
    state: MutableMapping[str, Any] | None = None,
) -> bool:
    """Whether the basis is refreshed at this step.

    ``refresh="every"`` (default): at steps 0, T, 2T, … (T = ``refresh_every``; GaLore counts steps from 0); with
    ``refresh_stagger=True`` at step 0 and then at the steps where ``step + offset`` is a multiple of T
    (:func:`stagger_offset`).
    ``refresh="adaptive"``: when the captured energy ‖P G‖²/‖G‖² of the last gradient (``state["sched.energy"]``,
    recorded by the update itself) is below ``refresh_threshold``, but no sooner than
    ``refresh_min_gap`` and no later than ``refresh_every`` steps after the previous refresh, whose step is kept in
    the int ``state["sched.last_refresh"]``. Always at every step for continuous projectors (online PCA) and whenever
    no basis from the data exists yet (``proj.count`` is 0, also after a first refresh that failed). Asking several times in one step gives the same answer (DDP asks first).
    """
    adaptive = group.get("refresh", "every") == "adaptive" and state is not None
    if not has_basis or continuous:
        due = True
    elif not adaptive:
        period = group["refresh_every"]
        return (step + stagger_offset(state, period, group)) % period == 0
    else:
        last = state.get("sched.last_refresh")
        if last is None:
            last = step - step % group["refresh_every"]
        gap = step - int(last)
        if gap == 0 or gap >= group["refresh_every"]:
            due = True
        elif gap < group["refresh_min_gap"]:
            due = False
        elif "sched.energy" not in state or getattr(state["sched.energy"], "is_meta", False):
            due = False  # no measurement yet (the update records one at every step) or a memory plan on meta
        else:  # a float when step() brought it to the host with the NaN check's one sync, else a 0-d tensor
            due = float(state["sched.energy"]) < group["refresh_threshold"]
    if due and adaptive:
        state["sched.last_refresh"] = step
    return due
