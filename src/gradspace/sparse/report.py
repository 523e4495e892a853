"""FLOP estimates, JSONL logs and plots of a sparse run's prune/regrow events.

The FLOP ratios here are *estimates* of what a sparse-kernel implementation of each method would cost relative to
dense training (the kind of estimate behind the sparse momentum paper's "5.61× faster"). :class:`SparseMomentum`
computes with dense, masked tensors, so its measured time and memory are those of dense training plus the masks;
measure those separately (``gradspace.sparse.bench`` reports both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any


def train_flops_ratio(
    layer_flops: Mapping[str, float],
    densities: Mapping[str, float],
    growth: str | None,
    update_every: int | None = None,
) -> float:
    """FLOPs(sparse training)/FLOPs(dense training), an estimate: Σ_l c_l·F_l / Σ_l 3·F_l (Evci et al. 2020, App. H).

    Each layer l costs F_l (forward), F_l (gradient w.r.t. its input) and F_l (gradient w.r.t. its weight) when
    dense. A sparse layer at density d_l costs d_l·F_l for the first two; the weight gradient costs d_l·F_l too,
    except where the method needs the dense gradient: sparse momentum (``growth="momentum"``) at every step (the
    momentum of zero weights accumulates it), RigL (``growth="gradient"``) once every ``update_every`` steps.
    Layers absent from ``densities`` are dense. Biases, activations and the optimizer are ignored.

    Args:
        layer_flops: F_l per layer (any common unit: only ratios matter).
        densities: d_l ∈ [0, 1] of the sparse layers.
        growth: ``"momentum"``, ``"gradient"``, ``"random"`` or ``None`` (static masks).
        update_every: steps between events (RigL's ΔT); ``None`` means no dense gradients for RigL.

    Examples:
        >>> round(train_flops_ratio({"a": 1.0}, {"a": 0.1}, "random"), 4)
        0.1
        >>> round(train_flops_ratio({"a": 1.0}, {"a": 0.1}, "momentum"), 4)  # (2·0.1 + 1)/3
        0.4
    """
    dense_total = 3.0 * sum(layer_flops.values())
    if dense_total <= 0:
        return 1.0
    if growth == "momentum":
        dense_grad = 1.0
    elif growth == "gradient" and update_every:
        dense_grad = 1.0 / float(update_every)
    else:
        dense_grad = 0.0
    cost = 0.0
    for name, f in layer_flops.items():
        if name not in densities:
            cost += 3.0 * f
            continue
        d = float(densities[name])
        cost += f * (2.0 * d + dense_grad + (1.0 - dense_grad) * d)
    return cost / dense_total


def inference_flops_ratio(layer_flops: Mapping[str, float], densities: Mapping[str, float]) -> float:
    """FLOPs(sparse forward)/FLOPs(dense forward) = Σ_l d_l·F_l / Σ_l F_l, an estimate (dense layers have d_l = 1).

    Examples:
        >>> inference_flops_ratio({"a": 3.0, "b": 1.0}, {"a": 0.5})
        0.625
    """
    total = sum(layer_flops.values())
    if total <= 0:
        return 1.0
    return sum(f * float(densities.get(name, 1.0)) for name, f in layer_flops.items()) / total


def write_jsonl(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write one JSON object per line (the controller's ``log``).

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "events.jsonl")
        >>> write_jsonl([{"step": 1}, {"step": 2}], path)
        >>> open(path).read().splitlines()
        ['{"step": 1}', '{"step": 2}']
    """
    with open(path, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def plot_events(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Plot per-layer density and pruned/regrown counts over the events of a log to ``path`` (matplotlib, lazily).

    Examples:
        >>> import tempfile, os
        >>> log = [{"step": 10, "prune_rate": 0.5, "pruned": 4, "regrown": 4, "layer_density": {"w": 0.1}}]
        >>> plot_events(log, os.path.join(tempfile.mkdtemp(), "events.png"))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    names = list(records[0]["layer_density"]) if records else []
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in names:
        ax0.plot(steps, [r["layer_density"][name] for r in records], marker="o", ms=3, label=name)
    ax0.set_xlabel("optimizer step")
    ax0.set_ylabel("layer density")
    ax0.set_yscale("log")
    ax0.legend(fontsize=7)
    ax0.set_title("per-layer density after each event")
    ax1.plot(steps, [r["pruned"] for r in records], marker="o", ms=3, label="pruned")
    ax1.plot(steps, [r["regrown"] for r in records], marker="x", ms=3, ls="--", label="regrown")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("weights")
    ax1.legend(fontsize=7)
    ax1.set_title("pruned / regrown per event")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
