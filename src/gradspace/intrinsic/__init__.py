"""Random-subspace training (Li et al. 2018): θ = θ₀ + P z with only z ∈ R^d trained, and the d_int90 search.

:class:`IntrinsicDimension` wraps any module; projections (dense, sparse, Fastfood) live in
:mod:`gradspace.intrinsic.projections`; :func:`find_dint90` searches the smallest d reaching 90 % of direct
training. ``import gradspace.intrinsic`` needs only torch; the digits task needs scikit-learn, plots matplotlib.
"""

from .projections import PROJECTIONS, DenseProjection, FastfoodProjection, SparseProjection, fwht, make_projection
from .search import PAPER_MNIST_FC_DINT90, DintResult, find_dint90, write_result
from .wrapper import IntrinsicDimension

__all__ = [
    "IntrinsicDimension", "find_dint90", "DintResult", "write_result", "fwht", "make_projection", "DenseProjection",
    "SparseProjection", "FastfoodProjection", "PROJECTIONS", "PAPER_MNIST_FC_DINT90",
]
