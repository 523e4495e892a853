"""Option validation helpers shared by the core and the components: every error names the option, its value and the
allowed range, as an :class:`OptionError` that also carries the option's name (so a preset can re-word it in the
anchor's spelling: ``update_proj_gap=0``, not ``refresh_every=0``)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch


class OptionError(ValueError):
    """A bad option value; ``key`` is the option's name, ``value`` what was passed."""

    def __init__(self, key: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


class OptionTypeError(TypeError):
    """An option of the wrong type; ``key`` is the option's name."""

    def __init__(self, key: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


def choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise OptionError(key, value, f"{key}={value!r} is not one of the allowed values {sorted(map(str, allowed))}.")


def real(key: str, value: Any, lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True) -> None:
    """Raise unless ``value`` is a real number (or a one-element tensor) in the interval ``lo … hi``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise OptionError(key, value, f"{key} must be a number or a one-element tensor, got a tensor of shape "
                                          f"{tuple(value.shape)}.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionTypeError(key, value, f"{key} must be a real number, got {value!r}.")
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi or value != value:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open else "]"
        raise OptionError(key, value, f"{key}={value!r} is outside the allowed range {lo_b}{lo}, "
                                      f"{hi if hi is not None else 'inf'}{hi_b}.")


def integer(key: str, value: Any, lo: int) -> None:
    """Raise unless ``value`` is an int ≥ ``lo``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionTypeError(key, value, f"{key} must be an int, got {value!r}.")
    if value < lo:
        raise OptionError(key, value, f"{key}={value!r} must be an int >= {lo}.")


def flag(key: str, value: Any) -> None:
    """Raise unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise OptionTypeError(key, value, f"{key} must be True or False, got {value!r}.")


def pair(key: str, value: Any) -> None:
    """Raise unless ``value`` is a pair of reals in [0, 1) (Adam/Lion betas)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise OptionError(key, value, f"{key} must be a pair (beta1, beta2), each in [0, 1), got {value!r}.")
    for i, b in enumerate(value):
        real(f"{key}[{i}]", b, 0.0, 1.0)
