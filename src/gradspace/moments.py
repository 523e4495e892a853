"""How a rule's moments are stored: in a float dtype, or blockwise-quantized (``state_dtype="int8"|"int4"``).

The math stays fp32 and in one place: :func:`call` hands a rule a view of the state whose quantized moments are
decoded to fp32, runs the rule (``init``/``direction``/``rotate``), and re-encodes every moment it left behind
(:mod:`gradspace.quant`: a code per element plus one fp32 scale per block, under ``key`` and ``key + ".scales"``; int4
codes are flat, so their shape is kept under ``key + ".shape"``).
A rule's ``nonnegative_keys`` (Adam's second moment) use the unsigned map, so they are never negative and stay well
resolved near zero; int4 first moments round stochastically (from a generator seeded by the parameter's ints, so a
resumed run draws the same).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from . import quant

QUANTIZED = ("int8", "int4")
SCALES = ".scales"
T = TypeVar("T")


def quantized(group: Mapping[str, Any]) -> str | None:
    """The quantized format of the group's moments (``"int8"``/``"int4"``), or ``None`` for a float dtype."""
    value = group["state_dtype"]
    return value if isinstance(value, str) and value in QUANTIZED else None


def _generator(state: Mapping[str, Any], device: torch.device) -> torch.Generator | None:
    if torch.device(device).type == "meta":
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed((int(state["proj.seed"]) * 0x2545F491 + int(state["step"]) * 0x9E3779B9 + 7) % (2**63 - 1))
    return gen


def call(rule: Any, state: MutableMapping[str, Any], group: Mapping[str, Any], fn: Callable[[MutableMapping[str, Any]], T],
         shapes: Mapping[str, torch.Size] | None = None) -> T:
    """``fn(state)`` with the rule's quantized moments decoded to fp32 and re-encoded afterwards."""
    fmt = quantized(group)
    if fmt is None:
        return fn(state)
    block = int(group["quant_block"])
    unsigned = set(getattr(rule, "nonnegative_keys", ()))
    view: dict[str, Any] = {}
    for key, value in state.items():
        if key.endswith(SCALES):
            continue
        scales = state.get(key + SCALES)
        if scales is not None:
            shape = state[key + ".shape"].tolist() if key + ".shape" in state else value.shape
            view[key] = quant.decode(value, scales, _shape(shape), fmt, signed=key not in unsigned, block=block)
        else:
            view[key] = value
    out = fn(view)
    gen = None
    for key, value in view.items():
        if key.startswith("rule.") and isinstance(value, Tensor) and value.is_floating_point() and value.dim() >= 1:
            stochastic = fmt == "int4" and key not in unsigned
            if stochastic and gen is None:
                gen = _generator(state, value.device)
            codes, scales = quant.encode(value, fmt, signed=key not in unsigned, block=block, stochastic=stochastic,
                                         generator=gen)
            state[key], state[key + SCALES] = codes, scales
            if fmt == "int4":  # codes are flat, two per byte: keep the moment's shape (an int64 tensor, 8 B a dim)
                state[key + ".shape"] = torch.tensor(list(value.shape), dtype=torch.int64)
        else:
            state[key] = value
    for key in [k for k in state if not k.endswith((SCALES, ".shape")) and k not in view]:
        state.pop(key)
        state.pop(key + SCALES, None)
        state.pop(key + ".shape", None)
    return out


def _shape(shape: Any) -> torch.Size:
    return torch.Size(int(s) for s in shape)
