"""Loading an optimizer state dict safely: mapped by parameter name when both sides know names, and refused, before
anything changes, when its state cannot belong to these parameters (torch maps state by position only, so groups
reordered between save and load would silently swap two weights' bases and moments)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .frame import frame_of
from .registry import fill


def _names(groups: list[dict[str, Any]]) -> list[list[str]] | None:
    names = [g.get("param_names") for g in groups]
    if any(n is None or len(n) != len(g["params"]) for n, g in zip(names, groups)):
        return None
    return [list(n) for n in names]


def _reorder(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    saved, current = state_dict["param_groups"], optimizer.param_groups
    s_names, c_names = _names(saved), _names(current)
    if s_names is None or c_names is None or s_names == c_names:
        return state_dict
    flat_s = [n for g in s_names for n in g]
    flat_c = [n for g in c_names for n in g]
    if sorted(flat_s) != sorted(flat_c) or len(set(flat_c)) != len(flat_c):
        missing, extra = sorted(set(flat_c) - set(flat_s)), sorted(set(flat_s) - set(flat_c))
        raise ValueError(f"load_state_dict: the saved optimizer holds other parameters than this one (missing: "
                         f"{missing[:5]}, unexpected: {extra[:5]}); nothing was loaded.")
    where = {n: (gi, pi) for gi, g in enumerate(s_names) for pi, n in enumerate(g)}
    groups = []
    for names in c_names:
        sources = {where[n][0] for n in names}
        if len(sources) != 1 or len(s_names[next(iter(sources))]) != len(names):
            raise ValueError(f"load_state_dict: the parameters {names[:3]}… were saved in different param groups "
                             "than they are in now; nothing was loaded. Build the optimizer with the same groups.")
        src = saved[next(iter(sources))]
        group = dict(src)
        group["params"] = [src["params"][where[n][1]] for n in names]
        group["param_names"] = list(names)
        groups.append(group)
    return {**state_dict, "param_groups": groups}


def _check_shapes(optimizer: Any, state_dict: dict[str, Any]) -> None:
    saved = state_dict["param_groups"]
    for s_group, c_group in zip(saved, optimizer.param_groups):
        options = fill({**optimizer.defaults, **{k: v for k, v in s_group.items() if k != "params"}})
        names = c_group.get("param_names") or [None] * len(c_group["params"])
        for key, p, name in zip(s_group["params"], c_group["params"], names):
            state = state_dict["state"].get(key)
            if not state:
                continue
            frame = frame_of(p.shape, options)
            label = repr(name) if name else f"of shape {tuple(p.shape)}"
            for k, v in state.items():
                if not isinstance(v, Tensor) or v.dim() == 0 or not k.startswith(("rule.", "proj.", "resid.")):
                    continue
                if k.endswith(".scales") or (k.startswith("rule.") and not v.is_floating_point()):
                    continue  # quantized moments: codes and block scales
                if k.startswith("proj."):  # the basis and any projector state beside it (b × r)
                    ok = frame.projected and v.dim() == 2 and v.shape[0] == frame.b
                elif frame.projected:
                    ok = v.dim() == 2 and v.shape[0] == frame.a
                else:
                    full = tuple(p.shape) if frame.matrix is None else frame.matrix
                    ok = tuple(v.shape) == full
                if not ok:
                    raise ValueError(f"load_state_dict: state {k!r} of shape {tuple(v.shape)} cannot belong to "
                                     f"parameter {label} (frame {frame.a}×{frame.b}, rank {frame.rank}); nothing was "
                                     "loaded. Were the param groups built in another order or with other options?")


def align_state_dict(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with its groups and parameters in this optimizer's order (by ``param_names``), checked against
    the parameters' frames; raises ``ValueError`` (changing nothing) when it cannot belong to them."""
    if len(state_dict["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"load_state_dict: the saved optimizer has {len(state_dict['param_groups'])} param groups, "
                         f"this one {len(optimizer.param_groups)}; nothing was loaded.")
    state_dict = _reorder(optimizer, state_dict)
    for s, c in zip(state_dict["param_groups"], optimizer.param_groups):
        if len(s["params"]) != len(c["params"]):
            raise ValueError(f"load_state_dict: a saved param group has {len(s['params'])} parameters, this one "
                             f"{len(c['params'])}; nothing was loaded.")
    _check_shapes(optimizer, state_dict)
    return state_dict
