"""Name → component registries, the declared options with their defaults, and construction-time validation."""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import torch

from .projectors import SVD, Identity, OnlinePCA, Random, RandomizedSVD
from .residuals import SGD, Apollo, Drop, ErrorFeedback, Fira, Sign
from .rules import SGDM, Adam, Lion, Orthogonal

PROJECTORS: dict[str, Any] = {c.name: c() for c in (Identity, SVD, RandomizedSVD, OnlinePCA, Random)}
RULES: dict[str, Any] = {c.name: c() for c in (Adam, SGDM, Lion, Orthogonal)}
RESIDUALS: dict[str, Any] = {c.name: c() for c in (Drop, Fira, Apollo, Sign, SGD, ErrorFeedback)}

ON_REFRESH = ("keep", "reset", "rotate")
SIDES = ("smaller", "larger", "left", "right")
NONFINITE = ("skip", "raise")
PROJECTOR_SYNC = ("broadcast", "redundant")
BIAS_CORRECTION = ("torch", "hf", "none")
ORTHO_METHODS = ("newton_schulz", "svd", "auto")
SCALE_TYPES = ("channel", "tensor")
RANDOM_DISTS = ("gaussian", "stiefel")

#: Every option a param group may carry, with its default. Components read theirs from the group at each step.
DEFAULTS: dict[str, Any] = {
    # the four choices
    "projector": "svd",
    "rule": "adam",
    "residual": "drop",
    "on_refresh": "keep",
    # subspace
    "rank": 128,
    "refresh_every": 200,
    "refresh": "every",
    "refresh_threshold": 0.5,
    "refresh_min_gap": 10,
    "side": "smaller",
    "scale": 1.0,
    "seed": 0,
    # outer step
    "weight_decay": 0.0,
    "maximize": False,
    "nonfinite": "skip",
    "projector_sync": "broadcast",
    "verify_sync": False,
    "state_dtype": None,
    "fallback_rule": "adam",
    "radial_projection": False,
    "radial_delta": 0.1,
    "radial_wd_ratio": 0.1,
    # rules
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "bias_correction": "torch",
    "rotate_second_moment": False,
    "momentum": 0.9,
    "dampening": 0.0,
    "nesterov": False,
    "ortho_method": "auto",
    "ns_steps": 5,
    "ortho_svd_max": 64,
    # projectors
    "power_iters": 1,
    "oversample": 8,
    "pca_lr": None,
    "random_dist": "gaussian",
    "svd_warmup_steps": 0,
    # residuals
    "residual_scale_type": "channel",
    "limiter_gamma": 1.01,
    "residual_lr_scale": 1.0,
}

#: Keys torch or users commonly attach to param groups that are not options (kept, never validated).
PASSTHROUGH_KEYS = frozenset({"params", "lr", "name", "names", "param_names", "initial_lr"})

_RULE_SPECIFIC = {"momentum": ("sgdm", "orthogonal"), "betas": ("adam", "lion")}


def register_projector(cls: type) -> type:
    """Add a projector class (with a unique ``name``) so groups can select it by name."""
    PROJECTORS[cls.name] = cls()
    return cls


def register_rule(cls: type) -> type:
    """Add a rule class (with a unique ``name``) so groups can select it by name."""
    RULES[cls.name] = cls()
    return cls


def register_residual(cls: type) -> type:
    """Add a residual class (with a unique ``name``) so groups can select it by name."""
    RESIDUALS[cls.name] = cls()
    return cls


def _choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of the allowed values {sorted(allowed)}.")


def _real(key: str, value: Any, lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{key} must be a number or a one-element tensor, got a tensor of shape {tuple(value.shape)}.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{key} must be a real number, got {value!r}.")
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi or value != value:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open else "]"
        raise ValueError(f"{key}={value!r} is outside the allowed range {lo_b}{lo}, {hi if hi is not None else 'inf'}{hi_b}.")


def _int(key: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{key} must be an int, got {value!r}.")
    if value < lo:
        raise ValueError(f"{key}={value!r} must be an int >= {lo}.")


def check_unknown(keys, where: str) -> None:
    """Raise ``TypeError`` for option names no component declares, listing the allowed names."""
    unknown = sorted(set(keys) - set(DEFAULTS) - PASSTHROUGH_KEYS)
    if unknown:
        raise TypeError(
            f"{where}: unknown option(s) {unknown}. Allowed options: {sorted(DEFAULTS)} "
            f"(plus {sorted(PASSTHROUGH_KEYS - {'params'})} on param groups)."
        )


def validate_options(g: Mapping[str, Any]) -> None:
    """Check every option of a (filled-in) param group; errors name the option, its value and the allowed range."""
    _choice("projector", g["projector"], PROJECTORS)
    _choice("rule", g["rule"], RULES)
    _choice("residual", g["residual"], RESIDUALS)
    _choice("on_refresh", g["on_refresh"], ON_REFRESH)
    _choice("side", g["side"], SIDES)
    _choice("nonfinite", g["nonfinite"], NONFINITE)
    _choice("projector_sync", g["projector_sync"], PROJECTOR_SYNC)
    _choice("bias_correction", g["bias_correction"], BIAS_CORRECTION)
    _choice("ortho_method", g["ortho_method"], ORTHO_METHODS)
    _choice("residual_scale_type", g["residual_scale_type"], SCALE_TYPES)
    _choice("random_dist", g["random_dist"], RANDOM_DISTS)
    _choice("fallback_rule", g["fallback_rule"], [n for n, r in RULES.items() if not r.needs_matrix])
    if "lr" in g:
        _real("lr", g["lr"], 0.0, None)
    rank = g["rank"]
    if isinstance(rank, bool) or not isinstance(rank, (numbers.Integral, float)):
        raise TypeError(f"rank must be an int >= 1 or a float in (0, 1) (a fraction of the projected side), got {rank!r}.")
    if isinstance(rank, float):
        if not 0.0 < rank < 1.0:
            raise ValueError(
                f"rank={rank!r}: a float rank is a fraction of the projected side and must be in (0, 1); "
                "pass an int for an absolute rank."
            )
    elif int(rank) < 1:
        raise ValueError(f"rank={rank!r} must be an int >= 1 or a float in (0, 1) (a fraction of the projected side).")
    _int("refresh_every", g["refresh_every"], 1)
    _choice("refresh", g["refresh"], ("every", "adaptive"))
    _real("refresh_threshold", g["refresh_threshold"], 0.0, 1.0, hi_open=False)
    _int("refresh_min_gap", g["refresh_min_gap"], 1)
    if g["refresh"] == "adaptive":
        if PROJECTORS[g["projector"]].continuous:
            raise ValueError(
                f"refresh='adaptive' needs a projector that refreshes on demand; projector={g['projector']!r} moves its "
                "basis at every step. Use refresh='every' or another projector."
            )
        if g["refresh_min_gap"] > g["refresh_every"]:
            raise ValueError(
                f"refresh_min_gap={g['refresh_min_gap']!r} must be <= refresh_every={g['refresh_every']!r} (with "
                "refresh='adaptive', refresh_every is the longest gap between refreshes)."
            )
    _int("seed", g["seed"], 0)
    _int("ns_steps", g["ns_steps"], 1)
    _int("ortho_svd_max", g["ortho_svd_max"], 1)
    _int("power_iters", g["power_iters"], 0)
    _int("oversample", g["oversample"], 0)
    _int("svd_warmup_steps", g["svd_warmup_steps"], 0)
    betas = g["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), each in [0, 1), got {betas!r}.")
    for i, b in enumerate(betas):
        _real(f"betas[{i}]", b, 0.0, 1.0)
    _real("eps", g["eps"], 0.0, None)
    _real("momentum", g["momentum"], 0.0, 1.0)
    _real("dampening", g["dampening"], 0.0, 1.0, hi_open=False)
    _real("weight_decay", g["weight_decay"], 0.0, None)
    _real("scale", g["scale"], 0.0, None)
    _real("limiter_gamma", g["limiter_gamma"], 0.0, None)
    if g["limiter_gamma"] and g["limiter_gamma"] < 1:
        raise ValueError(f"limiter_gamma={g['limiter_gamma']!r} must be 0 (off) or >= 1.")
    _real("residual_lr_scale", g["residual_lr_scale"], 0.0, None)
    _real("radial_delta", g["radial_delta"], 0.0, None)
    _real("radial_wd_ratio", g["radial_wd_ratio"], 0.0, None)
    if g["pca_lr"] is not None:
        _real("pca_lr", g["pca_lr"], 0.0, None, lo_open=True)
    if g["state_dtype"] is not None and not (isinstance(g["state_dtype"], torch.dtype) and g["state_dtype"].is_floating_point):
        raise TypeError(f"state_dtype must be None (the parameter's dtype) or a floating torch.dtype, got {g['state_dtype']!r}.")
    if g["nesterov"] and g["rule"] == "sgdm" and (g["momentum"] <= 0 or g["dampening"] != 0):
        raise ValueError("nesterov=True with rule='sgdm' requires momentum > 0 and dampening = 0 (as torch.optim.SGD).")
    if g["rule"] == "orthogonal" and g["momentum"] <= 0 and g["nesterov"]:
        raise ValueError("nesterov=True with rule='orthogonal' requires momentum > 0.")
