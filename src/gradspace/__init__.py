"""gradspace: train neural networks with momentum kept in small subspaces.

The core is :class:`SubspaceOptimizer` (projector × rule × residual, refreshed on a schedule); the presets
(:class:`GaLoreAdamW`, :class:`Fira`, :class:`APOLLO`, …) pin its options to published methods.
"""

from .functional import subspace_update
from .optimizer import SubspaceOptimizer
from .registry import register_projector, register_residual, register_rule

__version__ = "0.1.0"

__all__ = ["SubspaceOptimizer", "subspace_update", "register_projector", "register_rule", "register_residual"]
