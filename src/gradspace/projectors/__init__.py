"""Projectors: how the subspace is chosen. See :mod:`gradspace.projectors.base` for the protocol."""

from .base import Projector
from .identity import Identity
from .online_pca import OnlinePCA
from .random import Random
from .randomized import RandomizedSVD
from .svd import SVD

__all__ = ["Projector", "Identity", "SVD", "RandomizedSVD", "OnlinePCA", "Random"]
