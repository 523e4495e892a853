"""Convert a galore-torch / apollo-torch optimizer checkpoint into one a gradspace preset loads.

galore-torch and apollo-torch keep, per projected weight, a Python projector object (``state["projector"]``, its
basis in ``.ortho_matrix``) and Adam moments in the weight's *natural* low-rank shape: ``m × r`` for a right
projection (``R = G Pᵀ``, ``P``: ``r × n``), ``r × n`` for a left one (``R = Pᵀ G``, ``P``: ``m × r``). gradspace keeps
plain tensors and ints in the *oriented frame* (``gradspace.functional``: the gradient X is ``a × b`` with the
projected side ``b`` as columns — ``G`` itself for a right projection, ``Gᵀ`` for a left one): ``proj.basis``
(``b × r``, fp32), ``rule.exp_avg``/``rule.exp_avg_sq`` (``a × r``), the int counters ``step``, ``rule.step``,
``proj.count`` (refreshes done), ``proj.seed``, ``proj.fallbacks``, and for APOLLO the norm-growth limiter's
``resid.prev_norm``. Full-space weights keep ``step`` and their moments.

Loading such a checkpoint needs ``torch.load(path, weights_only=False)`` (the projector objects are pickled) and the
anchor package importable; the converted state dict loads with ``weights_only=True`` ever after.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .frame import frame_of
from .functional import state_dtype
from .optimizer import SubspaceOptimizer
from .registry import resolve_basis_dtype

__all__ = ["from_galore_torch", "from_apollo_torch"]


def _ortho(projector: Any, where: str) -> Any:
    if isinstance(projector, Mapping):
        return projector.get("ortho_matrix")
    if not hasattr(projector, "ortho_matrix"):
        raise ValueError(f"{where}: state['projector'] is a {type(projector).__name__} without 'ortho_matrix'; expected "
                         "a galore-torch / apollo-torch projector.")
    return projector.ortho_matrix


def _attr(projector: Any, name: str, default: Any = None) -> Any:
    if isinstance(projector, Mapping):
        return projector.get(name, default)
    return getattr(projector, name, default)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return a == b


def _convert(state_dict: Mapping[str, Any], optimizer: SubspaceOptimizer, source: str, residual: str,
             scale_of: Any, prev_norm_of: Any) -> dict[str, Any]:
    if not isinstance(optimizer, SubspaceOptimizer):
        raise TypeError(f"from_{source.replace('-', '_')}: optimizer must be a gradspace optimizer (the one that will "
                        f"load the result), got {type(optimizer).__name__}.")
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
        raise TypeError(f"from_{source.replace('-', '_')}: state_dict must be a {source} optimizer's state_dict() "
                        "(a mapping with 'state' and 'param_groups').")
    src_groups = state_dict["param_groups"]
    template = optimizer.state_dict()
    dst_groups = optimizer.param_groups
    sizes = ([len(g["params"]) for g in src_groups], [len(g["params"]) for g in dst_groups])
    if sizes[0] != sizes[1]:
        raise ValueError(f"{source} checkpoint has param groups of sizes {sizes[0]}, the gradspace optimizer "
                         f"{sizes[1]}; build it with the same groups in the same order.")
    out_groups = copy.deepcopy(template["param_groups"])
    out_state: dict[int, dict[str, Any]] = {}
    differences: list[str] = []
    index = 0
    for gi, (src, dst, out) in enumerate(zip(src_groups, dst_groups, out_groups)):
        for key in ("lr", "initial_lr"):  # where the run's lr schedule had got to
            if key in src:
                out[key] = src[key]
        for key in ("betas", "eps", "weight_decay"):
            if key in src and key in dst and not _close(src[key], dst[key]):
                differences.append(f"group {gi} {key}: {src[key]!r} (checkpoint) vs {dst[key]!r}")
        if isinstance(dst.get("state_dtype"), str) and dst["state_dtype"] not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"group {gi}: state_dtype={dst['state_dtype']!r} (quantized moments) cannot take a {source} "
                             "checkpoint directly; convert into an optimizer with float moments (state_dtype=None), "
                             "then save and load that.")
        if dst["rule"] != "adam":
            raise ValueError(f"group {gi}: the gradspace group's rule is {dst['rule']!r}; a {source} checkpoint holds "
                             "Adam moments (rule='adam').")
        names = dst.get("param_names") or [None] * len(dst["params"])
        for src_id, p, dst_id, name in zip(src["params"], dst["params"], out["params"], names):
            where = f"parameter {name!r}" if name else f"parameter {index} {tuple(p.shape)}"
            s = state_dict["state"].get(src_id, {})
            index += 1
            if "exp_avg" not in s or "step" not in s:
                continue  # never stepped
            step = int(s["step"])
            frame = frame_of(p.shape, dst)
            sdtype = state_dtype(p, dst)
            new: dict[str, Any] = {"step": step, "proj.seed": int(dst["seed"]) * 1_000_003 + index - 1,
                                   "proj.count": 0, "proj.fallbacks": 0}
            m, v = s["exp_avg"], s["exp_avg_sq"]
            projector = s.get("projector")
            if frame.projected != (projector is not None):
                raise ValueError(
                    f"{where}: the gradspace group {'projects' if frame.projected else 'does not project'} it, the "
                    f"{source} state {'has' if projector is not None else 'has no'} projector; build the gradspace "
                    "optimizer with the same groups (the ones with 'rank' projected).")
            if frame.projected:
                if dst["residual"] != residual:
                    raise ValueError(f"group {gi}: residual={dst['residual']!r}, but a {source} checkpoint needs "
                                     f"residual={residual!r} (use the matching preset).")
                ortho = _ortho(projector, where)
                if ortho is None:
                    continue  # created but never used
                if isinstance(ortho, (list, tuple)):
                    raise ValueError(f"{where}: proj_type='full' (two-sided) states cannot be converted; gradspace "
                                     "projects one side.")
                ortho = ortho.detach().float()
                # oriented frame: right projection (not transposed) → P is r × b, moments a × r; left → P is b × r,
                # moments r × a
                q = ortho if frame.transposed else ortho.T
                m, v = (m.T, v.T) if frame.transposed else (m, v)
                if q.shape != (frame.b, frame.rank) or tuple(m.shape) != (frame.a, frame.rank):
                    side = "rows (left)" if frame.transposed else "columns (right)"
                    raise ValueError(
                        f"{where}: the gradspace group projects the {side} of the {tuple(p.shape)} weight at rank "
                        f"{frame.rank} (side={dst['side']!r}), but the {source} basis is {tuple(ortho.shape)} with "
                        f"moments {tuple(s['exp_avg'].shape)}; match rank and proj_type (std ↔ side='smaller', "
                        "reverse_std ↔ 'larger', left/right ↔ 'left'/'right').")
                gap = int(_attr(projector, "update_proj_gap", dst["refresh_every"]))
                if gap != int(dst["refresh_every"]):
                    differences.append(f"{where} update_proj_gap: {gap} (checkpoint) vs {dst['refresh_every']}")
                want_scale = scale_of(projector, src)
                if want_scale is not None and not _close(want_scale, dst["scale"]):
                    differences.append(f"{where} scale: {want_scale!r} (checkpoint, as gradspace applies it) vs "
                                       f"{dst['scale']!r}")
                bdtype = resolve_basis_dtype(dst.get("basis_dtype"))
                new["proj.basis"] = q.to(bdtype).contiguous().clone()
                # the anchors refresh when step % gap == 0 before counting the step: at 0, gap, 2·gap, ...
                new["proj.count"] = (step - 1) // gap + 1 if step > 0 else 0
                norm = prev_norm_of(s)
                if norm is not None:
                    new["resid.prev_norm"] = torch.as_tensor(norm, dtype=torch.float32).detach().clone().reshape(())
            else:
                shape = frame.orient(torch.zeros(p.shape, device="meta")).shape
                if m.numel() != math.prod(shape):
                    raise ValueError(f"{where}: moments of {tuple(m.shape)} do not fit the {tuple(p.shape)} weight.")
                m, v = m.reshape(shape), v.reshape(shape)
            new["rule.step"] = step
            new["rule.exp_avg"] = m.detach().to(sdtype).contiguous().clone()
            new["rule.exp_avg_sq"] = v.detach().to(sdtype).contiguous().clone()
            out_state[dst_id] = new
    if differences:
        warnings.warn(f"from_{source.replace('-', '_')}: the gradspace optimizer differs from the checkpoint's run "
                      f"(the state converts; the continued run follows the gradspace settings): "
                      + "; ".join(differences), UserWarning, stacklevel=3)
    return {"state": out_state, "param_groups": out_groups}


def from_galore_torch(state_dict: Mapping[str, Any], optimizer: SubspaceOptimizer) -> dict[str, Any]:
    """A ``galore_torch.GaLoreAdamW`` ``state_dict()`` as a state dict that ``optimizer`` (a ``gradspace.GaLoreAdamW``
    with the same param groups, in the same order) loads with ``load_state_dict``.

    Bases are transposed into the oriented frame (``P`` ``r × n`` → ``proj.basis`` ``n × r`` for a right projection;
    a left one's ``m × r`` is kept) and stored in fp32; moments of a left projection are transposed (``r × n`` →
    ``n × r``); ``proj.count`` = refreshes done, ⌈step / update_proj_gap⌉. The current ``lr`` (and ``initial_lr``)
    of each group comes from the checkpoint. Training then continues as galore-torch would (same bases, moments and
    refresh steps). Differences in ``betas``, ``eps``, ``weight_decay``, ``update_proj_gap`` or ``scale`` between the
    two optimizers warn.

    Args:
        state_dict: ``galore_torch.GaLoreAdamW(...).state_dict()``, e.g. ``torch.load(path, weights_only=False)``.
        optimizer: the gradspace optimizer that will load the result (its groups give names, ranks and sides).

    Returns:
        A ``{"state", "param_groups"}`` dict of tensors, numbers and strings (loads with ``weights_only=True``).

    Raises:
        ValueError: the groups differ in size, a weight is projected by one side only, the rank or projected side
            differ, or ``proj_type="full"``.

    Example:
        >>> import torch, gradspace, galore_torch  # doctest: +SKIP
        >>> w = torch.nn.Parameter(torch.randn(16, 8))  # doctest: +SKIP
        >>> keys = {"rank": 2, "update_proj_gap": 5, "scale": 0.25, "proj_type": "std"}  # doctest: +SKIP
        >>> theirs = galore_torch.GaLoreAdamW([{"params": [w], **keys}], lr=1e-2, no_deprecation_warning=True)  # doctest: +SKIP
        >>> w.grad = torch.randn(16, 8); theirs.step()  # doctest: +SKIP
        >>> ours = gradspace.GaLoreAdamW([{"params": [w], **keys}], lr=1e-2)  # doctest: +SKIP
        >>> ours.load_state_dict(gradspace.convert.from_galore_torch(theirs.state_dict(), ours))  # doctest: +SKIP
    """
    return _convert(state_dict, optimizer, "galore-torch", "drop",
                    scale_of=lambda projector, src: _attr(projector, "scale"),
                    prev_norm_of=lambda s: None)


def from_apollo_torch(state_dict: Mapping[str, Any], optimizer: SubspaceOptimizer, *,
                      scale_front: bool = False) -> dict[str, Any]:
    """An ``apollo_torch.APOLLOAdamW`` ``state_dict()`` as a state dict that ``optimizer`` (a ``gradspace.APOLLO`` /
    ``APOLLOMini`` with the same param groups, in the same order) loads with ``load_state_dict``.

    As :func:`from_galore_torch`, plus the norm-growth limiter's last norm (``state["scaled_grad"]`` →
    ``resid.prev_norm``). With ``proj="svd"`` training continues as apollo-torch would. With ``proj="random"`` the
    checkpoint's random basis is used until the next refresh; from then on gradspace draws its bases from its own
    seeded generator (not apollo-torch's stream), so the runs part at the next refresh, as two seeds would.

    Args:
        state_dict: ``apollo_torch.APOLLOAdamW(...).state_dict()`` (``torch.load(path, weights_only=False)``).
        optimizer: the gradspace optimizer that will load the result.
        scale_front: the apollo-torch optimizer's ``scale_front`` (an attribute, not saved in its state dict): with
            ``True`` its limiter norm includes √scale, which gradspace applies after the limiter.

    Returns:
        A ``{"state", "param_groups"}`` dict of tensors, numbers and strings.

    Example:
        >>> import torch, gradspace, apollo_torch  # doctest: +SKIP
        >>> w = torch.nn.Parameter(torch.randn(16, 8))  # doctest: +SKIP
        >>> keys = {"rank": 2, "proj": "svd", "scale_type": "channel", "scale": 1.0, "update_proj_gap": 5, "proj_type": "std"}  # doctest: +SKIP
        >>> theirs = apollo_torch.APOLLOAdamW([{"params": [w], **keys}], lr=1e-2)  # doctest: +SKIP
        >>> w.grad = torch.randn(16, 8); theirs.step()  # doctest: +SKIP
        >>> ours = gradspace.APOLLO([{"params": [w], **keys}], lr=1e-2)  # doctest: +SKIP
        >>> ours.load_state_dict(gradspace.convert.from_apollo_torch(theirs.state_dict(), ours))  # doctest: +SKIP
    """
    def scale_of(projector: Any, src: Mapping[str, Any]) -> float | None:
        scale = src.get("scale")
        return None if scale is None else math.sqrt(float(scale))  # APOLLO applies √scale

    def prev_norm_of(s: Mapping[str, Any]) -> Any:
        norm = s.get("scaled_grad")
        if norm is None:
            return None
        if scale_front:
            scale = float(_attr(s.get("projector"), "scale", 1.0) or 1.0)
            norm = torch.as_tensor(norm, dtype=torch.float32) / math.sqrt(scale)
        return norm

    return _convert(state_dict, optimizer, "apollo-torch", "apollo", scale_of=scale_of, prev_norm_of=prev_norm_of)
