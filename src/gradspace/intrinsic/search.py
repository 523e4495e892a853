"""d_int90: the smallest subspace dimension whose accuracy reaches 90 % of direct training (Li et al. 2018)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: the paper's figure for the MNIST fully-connected net 784-200-200-10 (D = 199 210), for comparison
PAPER_MNIST_FC_DINT90 = 750


@dataclass
class DintResult:
    """Outcome of :func:`find_dint90`.

    Attributes:
        d_int: the smallest evaluated d that reached the target (the upper end of ``bracket``), or None.
        bracket: ``(lo, hi)``: d = lo was evaluated below the target (0 if none was), d = hi at or above it; the true
            d_int lies in (lo, hi] if the score is monotone in d.
        baseline: the directly trained model's score.
        target: ``threshold · baseline``.
        threshold: the fraction (0.9 for d_int90).
        D: the number of trainable parameters.
        evaluations: ``[(d, score), …]`` in evaluation order.

    Examples:
        >>> r = find_dint90(lambda d: 1.0 if d is None else min(1.0, d / 100), D=1000, d_start=8, rtol=0.0)
        >>> r.d_int, r.bracket, [d for d, _ in r.evaluations]
        (90, (89, 90), [8, 16, 32, 64, 128, 96, 80, 88, 92, 90, 89])
    """

    d_int: int | None
    bracket: tuple[int, int | None]
    baseline: float
    target: float
    threshold: float
    D: int
    evaluations: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    def plot(self, path: str | os.PathLike, title: str = "") -> None:
        """Score vs d (log scale) with the baseline and the target lines (matplotlib, imported here)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = sorted(self.evaluations)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([d for d, _ in pts], [s for _, s in pts], marker="o", label="subspace training")
        ax.axhline(self.baseline, color="k", ls="--", lw=1, label=f"direct training ({self.baseline:.3f})")
        ax.axhline(self.target, color="r", ls=":", lw=1, label=f"{self.threshold:.0%} of direct ({self.target:.3f})")
        if self.d_int is not None:
            ax.axvline(self.d_int, color="g", lw=1, label=f"d_int{round(100 * self.threshold)} = {self.d_int}")
        ax.set_xscale("log", base=2)
        ds = [d for d, _ in pts]
        ticks = [2**k for k in range(max(0, min(ds).bit_length() - 1), max(ds).bit_length() + 1)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("subspace dimension d")
        ax.set_ylabel("validation accuracy")
        ax.set_title(title or f"intrinsic dimension (D = {self.D:,})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def find_dint90(
    score: Callable[[int | None], float],
    D: int,
    *,
    baseline: float | None = None,
    threshold: float = 0.9,
    d_start: int = 16,
    rtol: float = 0.05,
    max_d: int | None = None,
    verbose: bool = False,
) -> DintResult:
    """d_int = min{d : score(d) ≥ threshold·score(direct)}, by doubling d then bisecting the bracket (Li et al. 2018).

    Doubling evaluates d_start, 2·d_start, … until the target is reached (or ``max_d`` is passed); bisection then
    halves the bracket (lo, hi] until ``hi − lo ≤ max(1, rtol·hi)``. Bisection assumes the score is monotone in d:
    average several seeds inside ``score`` to keep noise from breaking that.

    Args:
        score: ``score(d)`` trains in a d-dimensional subspace and returns the validation score (higher is better);
            ``score(None)`` trains directly (called only when ``baseline`` is None).
        D: the model's number of trainable parameters (d stays < D).
        baseline: the direct-training score; computed with ``score(None)`` when None.
        threshold: fraction of the baseline to reach, in (0, 1] (0.9: d_int90; 1.0: d_int100).
        d_start: first d tried, 1 ≤ d_start < D (default 16).
        rtol: relative width at which bisection stops, ≥ 0 (0: exact integer answer).
        max_d: largest d tried (default D − 1).
        verbose: print each evaluation.

    Returns:
        A :class:`DintResult`; ``d_int`` is None when no d ≤ ``max_d`` reached the target.

    Examples:
        >>> find_dint90(lambda d: 1.0 if d is None else min(1.0, d / 1000), D=10**6, rtol=0.0).d_int
        900
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1].")
    max_d = D - 1 if max_d is None else min(int(max_d), D - 1)
    if not isinstance(d_start, int) or not 1 <= d_start <= max_d:
        raise ValueError(f"d_start={d_start!r} must be an int with 1 ≤ d_start ≤ {max_d} (< D = {D}).")
    if rtol < 0:
        raise ValueError(f"rtol={rtol!r} must be ≥ 0.")
    evaluations: list[tuple[int, float]] = []

    def run(d: int) -> float:
        s = float(score(d))
        evaluations.append((d, s))
        if verbose:
            print(f"gradspace intrinsic: d = {d:>7}  score {s:.4f}  (target {target:.4f})", flush=True)
        return s

    if baseline is None:
        baseline = float(score(None))
        if verbose:
            print(f"gradspace intrinsic: direct training (D = {D:,}) score {baseline:.4f}", flush=True)
    target = threshold * float(baseline)
    lo, hi, d = 0, None, d_start
    while True:
        if run(d) >= target:
            hi = d
            break
        lo = d
        if d >= max_d:
            break
        d = min(2 * d, max_d)
    if hi is None:
        return DintResult(None, (lo, None), float(baseline), target, threshold, D, evaluations)
    while hi - lo > max(1, rtol * hi):
        mid = (lo + hi) // 2
        if run(mid) >= target:
            hi = mid
        else:
            lo = mid
    return DintResult(hi, (lo, hi), float(baseline), target, threshold, D, evaluations)


def write_result(result: DintResult, out_dir: str | os.PathLike, title: str = "", extra: dict[str, Any] | None = None) -> None:
    """Write ``dint.json`` (the result plus ``extra``) and ``accuracy_vs_d.png`` into ``out_dir`` (needs matplotlib).

    Args:
        result: a :func:`find_dint90` result.
        out_dir: folder (created).
        title: plot title.
        extra: more JSON-serialisable entries for ``dint.json`` (the run's configuration).

    Examples:
        >>> import tempfile
        >>> r = find_dint90(lambda d: 1.0 if d is None else min(1.0, d / 100), D=1000)
        >>> write_result(r, tempfile.mkdtemp(), extra={"task": "toy"})  # doctest: +SKIP
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "dint.json"), "w") as fh:
        json.dump({**result.to_dict(), **(extra or {})}, fh, indent=1)
    result.plot(os.path.join(out_dir, "accuracy_vs_d.png"), title)
