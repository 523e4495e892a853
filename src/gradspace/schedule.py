"""When to refresh a basis (the projector decides how). Pure functions of the step count and the group."""

from __future__ import annotations

from typing import Any, Mapping


def refresh_due(step: int, has_basis: bool, continuous: bool, group: Mapping[str, Any]) -> bool:
    """True at steps 0, T, 2T, … (T = ``refresh_every``; GaLore counts steps from 0), at every step for continuous
    projectors (online PCA), and whenever no basis exists yet."""
    return not has_basis or continuous or step % group["refresh_every"] == 0
