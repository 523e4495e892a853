"""Residuals: what happens outside the subspace. See :mod:`gradspace.residuals.base` for the protocol."""

from .base import Residual
from .kinds import SGD, Apollo, Drop, ErrorFeedback, Fira, Sign

__all__ = ["Residual", "Drop", "Fira", "Apollo", "Sign", "SGD", "ErrorFeedback"]
