"""The learning-rate sweep of the standard benchmark: one grid for every method, extended while the best is at an edge.

Every method (AdamW, the peers, gradspace's presets) tries the same grid on the first seed — :data:`STANDARD_GRID`,
four points on the 1–3 ladder (…, 1e-3, 3e-3, 1e-2, 3e-2, …). While the lowest validation loss sits at the grid's
lowest or highest lr, the next ladder point beyond that edge is tried (a diverged run counts as worse than any finite
one), at most ``max_extensions`` times; a best lr still at an edge after that is flagged in the results. A grid off
the ladder is extended by the ratio of its two outermost points on that side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: the grid every method gets in the standard mode
STANDARD_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
#: how many extra lrs the sweep may add beyond the grid's edges, in total
MAX_EXTENSIONS = 3


def _on_ladder(lr: float) -> float | None:
    """The mantissa (1 or 3) of an lr on the 1–3 ladder, else ``None``."""
    mant = lr / 10 ** math.floor(math.log10(lr))
    for m in (1.0, 3.0, 10.0):
        if abs(mant - m) < 1e-6 * m:
            return 1.0 if m == 10.0 else m
    return None


def step_beyond(lrs: Sequence[float], up: bool) -> float:
    """The next lr beyond the highest (``up``) or lowest point of ``lrs``: the next 1–3 ladder point, or for a grid
    off the ladder the outermost ratio repeated; rounded to 3 significant digits."""
    xs = sorted(lrs)
    edge = xs[-1] if up else xs[0]
    mant = _on_ladder(edge)
    if mant is not None:
        exp = math.floor(math.log10(edge) + 1e-9)
        if up:
            nxt = 3 * 10 ** exp if mant == 1.0 else 10 ** (exp + 1)
        else:
            nxt = 3 * 10 ** (exp - 1) if mant == 1.0 else 10 ** exp
    else:
        ratio = (xs[-1] / xs[-2]) if up else (xs[1] / xs[0]) if len(xs) > 1 else math.sqrt(10)
        nxt = edge * ratio if up else edge / ratio
    return float(f"{nxt:.3g}")


def best_lr(tried: Mapping[float, float | None]) -> float | None:
    """The lr with the lowest finite validation loss (``None`` when every run diverged)."""
    finite = {lr: v for lr, v in tried.items() if v is not None and math.isfinite(v)}
    return min(finite, key=lambda lr: (finite[lr], lr)) if finite else None


def next_lr(tried: Mapping[float, float | None], grid: Sequence[float], max_extensions: int = MAX_EXTENSIONS) -> float | None:
    """The next lr the sweep should try, or ``None`` when it is done.

    ``tried`` maps every lr run so far (the grid first) to its validation loss (``None``: diverged). Grid points not yet
    run come first; then, while the best lr is the lowest or highest tried and fewer than ``max_extensions`` lrs beyond
    the grid were added, the next point beyond that edge."""
    for lr in grid:
        if lr not in tried:
            return lr
    best = best_lr(tried)
    if best is None or len(tried) - len(set(grid)) >= max_extensions:
        return None
    lrs = sorted(tried)
    if len(lrs) < 2:
        return None
    if best == lrs[0]:
        return step_beyond(lrs, up=False)
    if best == lrs[-1]:
        return step_beyond(lrs, up=True)
    return None


def at_edge(tried: Mapping[float, float | None]) -> bool:
    """Whether the best lr is still the lowest or highest tried (with at least three lrs tried)."""
    best = best_lr(tried)
    lrs = sorted(tried)
    return best is not None and len(lrs) > 2 and best in (lrs[0], lrs[-1])
