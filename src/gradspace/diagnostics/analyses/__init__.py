"""Reproductions of the measurement papers that double as regression benchmarks: ``gradspace analyze NAME``.

Each module defines ``NAME``, ``DESCRIPTION`` and ``run(quick: bool, seed: int) -> Report``; every number in a report
comes from the run. ``--quick`` shrinks the run to seconds (smoke tests); the full runs take a few CPU minutes.

| name | reproduces |
|---|---|
| tiny-subspace | Gur-Ari, Roberts, Dyer 2018 (gradient in the top-k Hessian eigenspace) + Song, Ahn, Yun 2024 ablation |
| trajectory-pca | Antognini & Sohl-Dickstein 2018 (trajectory PCA vs random walk, Lissajous curves) |
| policy-gradient | Schneider et al. 2024 (actor/critic gradient subspaces in RL) |
| momentum-small-lr | Wang et al. 2023 (SGD vs SGD-momentum at matched η/(1−β)) |
| training-jacobian | Belrose & Scherlis 2024 (singular values of ∂θ_T/∂θ_0: chaotic / bulk / stable) |
| adaptive-refresh | gradspace: captured-energy refresh schedule vs a fixed period at equal refresh count |
| overhead | gradspace: telemetry cost as a fraction of step time |
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: analysis name → module (imported on demand)
ANALYSES: dict[str, str] = {
    "tiny-subspace": "tiny_subspace",
    "trajectory-pca": "trajectory_pca",
    "policy-gradient": "policy_gradient",
    "momentum-small-lr": "momentum_small_lr",
    "training-jacobian": "training_jacobian",
    "adaptive-refresh": "adaptive_refresh",
    "overhead": "overhead",
}


def load(name: str) -> ModuleType:
    """The module of analysis ``name`` (ValueError listing the names when unknown)."""
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; choose one of {sorted(ANALYSES)}.")
    if name == "overhead":
        return importlib.import_module("gradspace.diagnostics.overhead")
    return importlib.import_module(f"{__name__}.{ANALYSES[name]}")
