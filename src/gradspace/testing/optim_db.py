"""The optimizers the contract suite runs: one entry per preset and a sampled set of SubspaceOptimizer combinations.

Modelled on torch's ``OptimizerInfo``/``optim_db`` (our own table; torch's is private). Every entry uses a small rank
and a refresh period of 3 so bases are refreshed during short tests. Adding a preset means adding one line here; the
suite in ``tests/contract/`` then runs every check on it.

Examples:
    >>> from gradspace.testing import make_params, optim_db
    >>> info = next(i for i in optim_db if i.name == "GaLoreAdamW")
    >>> opt = info.make(make_params(), lr=1e-3)  # keyword arguments override the entry's
    >>> opt.param_groups[0]["refresh_every"], opt.param_groups[0]["lr"]
    (3, 0.001)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from .. import presets
from ..optimizer import ParamsT, SubspaceOptimizer

#: Parameter shapes the suite uses: tall and wide matrices, a vector, a conv kernel (viewed 8 × 27) and a scalar.
DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = ((16, 8), (6, 12), (8,), (8, 3, 3, 3), ())


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer configuration under test: ``make(params, **overrides)`` builds it.

    Attributes:
        name: test id.
        cls: the optimizer class (a preset or :class:`SubspaceOptimizer`).
        kwargs: constructor keyword arguments; ``make``'s overrides replace them.
        refresh_every: steps between basis refreshes (``None`` when no weight is projected), so tests can stop
            mid-period.
        reference: for degenerate configurations, a factory ``(params, **overrides) -> torch.optim.Optimizer`` that
            the entry must equal step for step (identity projector + adam ≡ AdamW, + sgdm ≡ SGD).
    """

    name: str
    cls: type[Optimizer]
    kwargs: dict[str, Any] = field(default_factory=dict)
    refresh_every: int | None = 3
    reference: Callable[..., Optimizer] | None = None

    def make(self, params: ParamsT, **overrides: Any) -> Optimizer:
        """Construct the optimizer over ``params``, with ``overrides`` replacing the entry's keyword arguments."""
        return self.cls(params, **{**self.kwargs, **overrides})

    def __repr__(self) -> str:
        return self.name


def _preset(cls: type[Optimizer], refresh_every: int | None = 3, **kwargs: Any) -> OptimizerInfo:
    return OptimizerInfo(cls.__name__, cls, {"lr": 1e-2, **kwargs}, refresh_every)


def _combo(projector: str, rule: str, residual: str = "drop", on_refresh: str = "keep", suffix: str = "",
           **kwargs: Any) -> OptimizerInfo:
    name = f"{projector}-{rule}" if projector == "identity" else f"{projector}-{rule}-{residual}-{on_refresh}"
    name += suffix
    options = {"lr": 1e-2, "projector": projector, "rule": rule, "residual": residual, "on_refresh": on_refresh,
               "rank": 4, "refresh_every": 3, **kwargs}
    reference = options.pop("reference", None)
    return OptimizerInfo(name, SubspaceOptimizer, options, None if projector == "identity" else 3, reference)


def _adamw(params: ParamsT, **overrides: Any) -> Optimizer:
    options = {"lr": 1e-2, "weight_decay": 0.1, **overrides}
    return torch.optim.AdamW(params, **options)


def _sgd(params: ParamsT, **overrides: Any) -> Optimizer:
    options = {"lr": 1e-2, "momentum": 0.9, "nesterov": True, **overrides}
    return torch.optim.SGD(params, **options)


optim_db: list[OptimizerInfo] = [
    # presets, with the anchors' argument names
    _preset(presets.GaLoreAdamW, rank=4, update_proj_gap=3, scale=0.5, weight_decay=0.01),
    _preset(presets.OnlineSubspaceAdamW, rank=4, update_proj_gap=3),
    _preset(presets.FloraAdam, rank=4, kappa=3),
    _preset(presets.GoLore, rank=4, update_proj_gap=3, total_steps=10, rand_ratio=0.5),  # svd for 5 steps, then random
    _preset(presets.APOLLO, rank=4, update_proj_gap=3, scale=4.0),
    _preset(presets.APOLLOMini, rank=1, update_proj_gap=3),
    _preset(presets.Fira, rank=4, update_proj_gap=3, alpha=0.5),
    _preset(presets.FRUGAL, rank=4, density=0.5, update_gap=3),
    _preset(presets.LDAdam, 1, rank=4, error_feedback=True),
    _preset(presets.SUMO, rank=4, update_proj_gap=3),
    _preset(presets.AdamP, None, weight_decay=0.01),
    _preset(presets.SGDP, None, momentum=0.9, nesterov=True, weight_decay=0.01),
    # SubspaceOptimizer combinations: every projector, rule, residual and on_refresh at least once
    _combo("svd", "adam", weight_decay=0.01),
    _combo("svd", "sgdm", "fira", "reset", momentum=0.9, nesterov=True),
    _combo("randomized", "lion", "sign", "rotate", betas=(0.9, 0.99), residual_lr_scale=0.1),
    _combo("online_pca", "adam", "apollo", "keep", residual_scale_type="tensor", bias_correction="hf"),
    _combo("random", "adam", "drop", "rotate", rotate_second_moment=True),
    _combo("random", "sgdm", "error_feedback", "reset", random_dist="stiefel", side="larger", dampening=0.1),
    _combo("randomized", "orthogonal", "sgd", "rotate", ortho_method="newton_schulz"),
    _combo("svd", "orthogonal", "drop", "reset", side="left", ortho_method="svd", nesterov=True),
    _combo("online_pca", "lion", "fira", "rotate", rank=0.5),
    _combo("svd", "adam", "error_feedback", "rotate", side="right", bias_correction="none", state_dtype=torch.float32),
    _combo("identity", "adam", weight_decay=0.1, reference=_adamw),
    _combo("identity", "sgdm", momentum=0.9, nesterov=True, reference=_sgd),
    _combo("identity", "orthogonal", momentum=0.95),
    _combo("svd", "adam", "fira", "rotate", "-adaptive", refresh="adaptive", refresh_min_gap=1, refresh_threshold=0.9),
    # quantized moments (int8 / int4, blockwise), bf16 bases, stochastic rounding of bf16 weights
    OptimizerInfo("GaLoreAdamW-int8", presets.GaLoreAdamW,
                  {"lr": 1e-2, "rank": 4, "update_proj_gap": 3, "scale": 0.5, "state_dtype": "int8", "quant_block": 32}),
    _combo("svd", "adam", "fira", "rotate", "-int8-bf16basis-sr", state_dtype="int8", basis_dtype="bfloat16", quant_block=64,
           stochastic_rounding=True),
    _combo("random", "adam", "apollo", "keep", "-int4", state_dtype="int4", quant_block=16),
    # speed options: staggered refreshes, a cached random basis
    _combo("random", "adam", "fira", "rotate", "-stagger-cached", refresh_stagger=True, cache_random_basis=True),
]
