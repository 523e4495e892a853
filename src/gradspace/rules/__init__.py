"""Rules: the momentum update inside the subspace. See :mod:`gradspace.rules.base` for the protocol."""

from .adam import Adam
from .base import Rule
from .lion import Lion
from .orthogonal import Orthogonal, newton_schulz, svd_orthogonalize
from .sgdm import SGDM

__all__ = ["Rule", "Adam", "SGDM", "Lion", "Orthogonal", "newton_schulz", "svd_orthogonalize"]
