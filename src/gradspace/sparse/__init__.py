"""Sparse training as a model-level controller: masks kept by an optimizer step post-hook, budget moved by momentum.

:class:`SparseMomentum` (Dettmers & Zettlemoyer 2019) with RigL (``growth="gradient"``) and SET (``growth="random"``)
behind the same API; the selection math is in :mod:`gradspace.sparse.selection`, the optimizer-state access in
:mod:`gradspace.sparse.state`. ``import gradspace.sparse`` needs only torch; the benchmark
(:func:`gradspace.sparse.bench.run_sparse_benchmark`) needs scikit-learn and matplotlib.
"""

from .controller import GROWTH, REDISTRIBUTION, STATE_ON_REGROW, SparseMomentum
from .report import inference_flops_ratio, plot_events, train_flops_ratio, write_jsonl
from .selection import (
    DISTRIBUTIONS,
    ROUNDINGS,
    allocate,
    cosine_prune_rate,
    largest_inactive,
    layer_counts,
    layer_prune_rates,
    prune_count,
    smallest_active,
)
from .state import coordinate_state, find_momentum, has_momentum, is_projected

__all__ = [
    "SparseMomentum", "find_momentum", "coordinate_state", "has_momentum", "is_projected", "cosine_prune_rate",
    "allocate", "layer_counts", "layer_prune_rates", "prune_count", "ROUNDINGS", "smallest_active", "largest_inactive", "train_flops_ratio", "inference_flops_ratio",
    "write_jsonl", "plot_events", "GROWTH", "REDISTRIBUTION", "STATE_ON_REGROW", "DISTRIBUTIONS",
]
