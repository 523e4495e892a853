"""gradspace: train neural networks with momentum kept in small subspaces.

The core is :class:`SubspaceOptimizer` (projector × rule × residual, refreshed on a schedule); the presets
(:class:`GaLoreAdamW`, :class:`Fira`, :class:`APOLLO`, …) pin its options to published methods, and
:func:`param_groups` chooses which weights get a subspace.
"""

from .functional import subspace_update
from .layerwise import LayerwiseStepper
from .optimizer import SubspaceOptimizer
from .presets import (
    APOLLO,
    FRUGAL,
    PRESETS,
    SGDP,
    SUMO,
    AdamP,
    APOLLOAdamW,
    APOLLOMini,
    Fira,
    FiraAdamW,
    FloraAdam,
    GaLoreAdamW,
    GoLore,
    LDAdam,
    OnlineSubspaceAdamW,
)
from .registry import DEFAULTS, register_projector, register_residual, register_rule
from .routing import param_groups
from . import convert  # noqa: E402  (from_galore_torch / from_apollo_torch checkpoints)

__version__ = "0.1.0"

__all__ = [
    "SubspaceOptimizer", "LayerwiseStepper", "subspace_update", "param_groups", "register_projector", "register_rule",
    "register_residual", "DEFAULTS", "PRESETS", "GaLoreAdamW", "OnlineSubspaceAdamW", "FloraAdam", "GoLore", "APOLLO",
    "APOLLOAdamW", "APOLLOMini", "Fira", "FiraAdamW", "FRUGAL", "LDAdam", "SUMO", "AdamP", "SGDP",
]
