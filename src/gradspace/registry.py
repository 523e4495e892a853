"""Name → component registries, the options each declares, and construction-time validation.

The core declares its own options (:data:`CORE_OPTIONS`); every projector, rule and residual class declares its own
in a class attribute ``options: dict[str, default]`` and checks them in ``validate(group)``. Registering a component
(``register_rule`` …) adds its options to :data:`DEFAULTS`, so ``SubspaceOptimizer(params, rule="mine",
my_option=2.0)`` accepts the option and stores it in the param group.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import torch

from . import options as opt
from .options import OptionError, OptionTypeError
from .projectors import SVD, Identity, OnlinePCA, Random, RandomizedSVD
from .residuals import SGD, Apollo, Drop, ErrorFeedback, Fira, Sign
from .rules import SGDM, Adam, Lion, Orthogonal

PROJECTORS: dict[str, Any] = {}
RULES: dict[str, Any] = {}
RESIDUALS: dict[str, Any] = {}

ON_REFRESH = ("keep", "reset", "rotate")
SIDES = ("smaller", "larger", "left", "right")
NONFINITE = ("skip", "raise")
PROJECTOR_SYNC = ("broadcast", "redundant")
#: ``state_dtype`` strings (``None``: the parameter's dtype; fp16 parameters keep fp32 moments)
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: blockwise-quantized moment formats (:mod:`gradspace.moments`)
QUANTIZED_STATE = ("int8", "int4")
#: ``basis_dtype`` values (``None``: fp32 bases)
BASIS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

#: The options of the outer step and the four choices, with their defaults.
CORE_OPTIONS: dict[str, Any] = {
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
    "refresh_stagger": False,
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
    "radial_eps": 1e-8,
    "quant_block": 256,
    "basis_dtype": None,
    "stochastic_rounding": False,
    "fused": True,
    "compile": False,
}

#: the torch.compile backends ``compile`` may name (``True`` means inductor, torch.compile's default)
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")

#: Every option a param group may carry, with its default: the core's and every registered component's.
DEFAULTS: dict[str, Any] = dict(CORE_OPTIONS)

#: Which component declared each non-core option (for messages).
OWNERS: dict[str, list[str]] = {}

#: Keys torch or users commonly attach to param groups that are not options (kept, never validated).
PASSTHROUGH_KEYS = frozenset({"params", "lr", "name", "names", "param_names", "initial_lr"})


def _register(table: dict[str, Any], kind: str, cls: type) -> type:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_{kind}: {cls.__name__} needs a class attribute name = '...'.")
    declared = dict(getattr(cls, "options", {}) or {})
    for key, default in declared.items():
        if key in CORE_OPTIONS or key in PASSTHROUGH_KEYS:
            raise ValueError(f"register_{kind}: {cls.__name__} declares option {key!r}, which is a core option; "
                             "choose another name.")
        owners = [o for o in OWNERS.get(key, []) if o != f"{kind} {name!r}"]
        if owners and DEFAULTS[key] != default:
            raise ValueError(f"register_{kind}: {cls.__name__} declares {key}={default!r}, but {owners[0]} already "
                             f"declares it with default {DEFAULTS[key]!r}; options shared by components must agree.")
    table[name] = cls()
    for key, default in declared.items():
        DEFAULTS.setdefault(key, default)
        OWNERS.setdefault(key, [])
        if f"{kind} {name!r}" not in OWNERS[key]:
            OWNERS[key].append(f"{kind} {name!r}")
    return cls


def register_projector(cls: type) -> type:
    """Add a projector class (unique ``name``; optional ``options`` and ``validate``) so groups can select it by name."""
    return _register(PROJECTORS, "projector", cls)


def register_rule(cls: type) -> type:
    """Add a rule class (unique ``name``; optional ``options`` and ``validate``) so groups can select it by name."""
    return _register(RULES, "rule", cls)


def register_residual(cls: type) -> type:
    """Add a residual class (unique ``name``; optional ``options`` and ``validate``) so groups can select it by name."""
    return _register(RESIDUALS, "residual", cls)


for _cls in (Identity, SVD, RandomizedSVD, OnlinePCA, Random):
    register_projector(_cls)
for _cls in (Adam, SGDM, Lion, Orthogonal):
    register_rule(_cls)
for _cls in (Drop, Fira, Apollo, Sign, SGD, ErrorFeedback):
    register_residual(_cls)


def check_unknown(keys, where: str) -> None:
    """Raise ``TypeError`` for option names no component declares, listing the allowed names."""
    unknown = sorted(set(keys) - set(DEFAULTS) - PASSTHROUGH_KEYS)
    if unknown:
        raise TypeError(
            f"{where}: unknown option(s) {unknown}. Allowed options: {sorted(DEFAULTS)} "
            f"(plus {sorted(PASSTHROUGH_KEYS - {'params'})} on param groups)."
        )


def resolve_state_dtype(value: Any) -> torch.dtype | None:
    """``state_dtype`` as the torch dtype the rule computes its moments in (``None`` stays ``None``): strings
    ``"float32"``, ``"bfloat16"``, ``"float16"`` or the dtypes themselves; ``"int8"``/``"int4"`` (blockwise-quantized
    storage, fp32 math) give fp32."""
    if value is None or isinstance(value, torch.dtype) and value in STATE_DTYPES.values():
        return value
    if isinstance(value, str) and value in STATE_DTYPES:
        return STATE_DTYPES[value]
    if isinstance(value, str) and value in QUANTIZED_STATE:
        return torch.float32
    raise OptionTypeError("state_dtype", value, f"state_dtype={value!r} is not supported; allowed: None (the "
                          f"parameter's dtype), {sorted(STATE_DTYPES) + list(QUANTIZED_STATE)} or the matching torch "
                          "dtypes.")


def resolve_basis_dtype(value: Any) -> torch.dtype:
    """``basis_dtype`` as a torch dtype: ``None``/``"float32"`` (default) or ``"bfloat16"`` (galore-torch's choice)."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype) and value in BASIS_DTYPES.values():
        return value
    if isinstance(value, str) and value in BASIS_DTYPES:
        return BASIS_DTYPES[value]
    raise OptionTypeError("basis_dtype", value, f"basis_dtype={value!r} is not supported; allowed: None (fp32), "
                          f"{sorted(BASIS_DTYPES)} or the matching torch dtypes.")


def _core(g: Mapping[str, Any]) -> None:
    opt.choice("projector", g["projector"], PROJECTORS)
    opt.choice("rule", g["rule"], RULES)
    opt.choice("residual", g["residual"], RESIDUALS)
    opt.choice("on_refresh", g["on_refresh"], ON_REFRESH)
    opt.choice("side", g["side"], SIDES)
    opt.choice("nonfinite", g["nonfinite"], NONFINITE)
    opt.choice("projector_sync", g["projector_sync"], PROJECTOR_SYNC)
    opt.choice("fallback_rule", g["fallback_rule"], [n for n, r in RULES.items() if not r.needs_matrix])
    if "lr" in g:
        opt.real("lr", g["lr"], 0.0, None)
    rank = g["rank"]
    if isinstance(rank, bool) or not isinstance(rank, (numbers.Integral, float)):
        raise OptionTypeError("rank", rank, f"rank must be an int >= 1 or a float in (0, 1) (a fraction of the "
                              f"projected side), got {rank!r}.")
    if isinstance(rank, float):
        if not 0.0 < rank < 1.0:
            raise OptionError("rank", rank, f"rank={rank!r}: a float rank is a fraction of the projected side and must "
                              "be in (0, 1); pass an int for an absolute rank.")
    elif int(rank) < 1:
        raise OptionError("rank", rank, f"rank={rank!r} must be an int >= 1 or a float in (0, 1) (a fraction of the "
                          "projected side).")
    opt.integer("refresh_every", g["refresh_every"], 1)
    opt.choice("refresh", g["refresh"], ("every", "adaptive"))
    opt.real("refresh_threshold", g["refresh_threshold"], 0.0, 1.0, hi_open=False)
    opt.integer("refresh_min_gap", g["refresh_min_gap"], 1)
    opt.flag("refresh_stagger", g["refresh_stagger"])
    opt.flag("fused", g["fused"])
    if not (isinstance(g["compile"], bool) or isinstance(g["compile"], str) and g["compile"] in COMPILE_BACKENDS):
        raise OptionError("compile", g["compile"], f"compile={g['compile']!r}: allowed are False, True (inductor) or a "
                          f"torch.compile backend name, one of {list(COMPILE_BACKENDS)}.")
    if g["refresh"] == "adaptive":
        if PROJECTORS[g["projector"]].continuous:
            raise OptionError("refresh", g["refresh"],
                              f"refresh='adaptive' needs a projector that refreshes on demand; projector="
                              f"{g['projector']!r} moves its basis at every step. Use refresh='every' or another "
                              "projector.")
        if g["refresh_min_gap"] > g["refresh_every"]:
            raise OptionError("refresh_min_gap", g["refresh_min_gap"],
                              f"refresh_min_gap={g['refresh_min_gap']!r} must be <= refresh_every="
                              f"{g['refresh_every']!r} (with refresh='adaptive', refresh_every is the longest gap "
                              "between refreshes).")
    opt.integer("seed", g["seed"], 0)
    opt.real("weight_decay", g["weight_decay"], 0.0, None)
    opt.real("scale", g["scale"], 0.0, None)
    opt.real("radial_delta", g["radial_delta"], 0.0, None)
    opt.real("radial_wd_ratio", g["radial_wd_ratio"], 0.0, None)
    opt.real("radial_eps", g["radial_eps"], 0.0, None)
    resolve_state_dtype(g["state_dtype"])
    resolve_basis_dtype(g["basis_dtype"])
    opt.integer("quant_block", g["quant_block"], 1)
    opt.flag("stochastic_rounding", g["stochastic_rounding"])


def components(g: Mapping[str, Any]) -> list[Any]:
    """The components a group selects: its projector, rule and residual, and the fallback rule of a matrix rule."""
    opt.choice("projector", g["projector"], PROJECTORS)
    opt.choice("rule", g["rule"], RULES)
    opt.choice("residual", g["residual"], RESIDUALS)
    rule = RULES[g["rule"]]
    out = [PROJECTORS[g["projector"]], rule, RESIDUALS[g["residual"]]]
    if rule.needs_matrix:
        opt.choice("fallback_rule", g["fallback_rule"], [n for n, r in RULES.items() if not r.needs_matrix])
    if rule.needs_matrix:
        out.append(RULES[g["fallback_rule"]])
    return out


def component_options(g: Mapping[str, Any]) -> dict[str, Any]:
    """The options (with defaults) of the components ``g`` selects."""
    out: dict[str, Any] = {}
    for c in components(g):
        out.update(getattr(c, "options", {}) or {})
    return out


def fill(g: dict[str, Any]) -> dict[str, Any]:
    """Give ``g`` the defaults of every option its components declare that it does not set (after a hand edit of a
    choice, too); returns ``g``."""
    for key, value in CORE_OPTIONS.items():
        g.setdefault(key, value)
    for key, value in component_options(g).items():
        g.setdefault(key, value)
    if isinstance(g.get("betas"), list):
        g["betas"] = tuple(g["betas"])
    return g


def validate_options(g: Mapping[str, Any]) -> None:
    """Check every option of a (filled-in) param group: the core's, then each selected component's ``validate``.

    Errors are :class:`~gradspace.options.OptionError` (a ``ValueError``) or ``OptionTypeError`` (a ``TypeError``)
    naming the option, its value and the allowed range."""
    _core(g)
    missing = sorted(set(component_options(g)) - set(g))
    if missing:
        raise KeyError(f"param group lacks the option(s) {missing} of its components; fill it with registry.fill.")
    selected = components(g)
    for component in selected:
        check = getattr(component, "validate", None)
        if check is not None:
            check(g)
    # options set for components the group does not select are still checked, so a typo'd value never waits silently
    for table in (PROJECTORS, RULES, RESIDUALS):
        for component in table.values():
            declared = getattr(component, "options", {}) or {}
            if component in selected or not set(declared) & set(g) or getattr(component, "validate", None) is None:
                continue
            component.validate({**g, **{k: v for k, v in declared.items() if k not in g}})
