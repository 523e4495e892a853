"""Shared pieces of the analyses: data, small models, the report format, plotting and output."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..._extras import install_hint

PLOT_HINT = install_hint("plot")
DATA_HINT = install_hint("bench")


@dataclass
class Report:
    """What an analysis returns: JSON-able ``results``, the printed ``summary`` rows (metric, measured value,
    expectation or reference) and ``figures`` (file name → function drawing on a matplotlib ``Figure``)."""

    name: str
    results: dict[str, Any]
    summary: list[tuple[str, str, str]] = field(default_factory=list)
    figures: dict[str, Callable[[Any], None]] = field(default_factory=dict)


def require_matplotlib() -> Any:
    """The matplotlib ``Figure`` class (no pyplot, no global backend), or ImportError naming the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            f"gradspace analyze draws its plots with matplotlib, which is not installed: {PLOT_HINT} "
            "(or pass --no-plots to write only results.json)."
        ) from err
    return Figure


def load_digits(standardize: bool = False, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8×8 digits (1 797 images, 10 classes, bundled: no download), 80/20 stratified split.

    Inputs are pixel/16 ∈ [0, 1], or standardized with the training mean and std when ``standardize``.
    """
    try:
        from sklearn.datasets import load_digits as sk_load
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError(f"this analysis uses scikit-learn's bundled digits data set: {DATA_HINT}") from err
    data = sk_load()
    xtr, xte, ytr, yte = train_test_split(
        data.data / 16.0, data.target, test_size=0.2, stratify=data.target, random_state=seed
    )
    xtr, xte = torch.tensor(xtr, dtype=torch.float32), torch.tensor(xte, dtype=torch.float32)
    if standardize:
        mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    return xtr, torch.tensor(ytr), xte, torch.tensor(yte)


def mlp(
    sizes: Sequence[int], act: type[nn.Module] = nn.Tanh, seed: int = 0, dtype: torch.dtype = torch.float32
) -> nn.Sequential:
    """A fully connected net ``sizes[0] → … → sizes[-1]`` with ``act`` between layers, seeded."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    net = nn.Sequential(*layers).to(dtype)
    torch.random.set_rng_state(gen_state)
    return net


def batches(n: int, batch: int, steps: int, seed: int) -> list[Tensor]:
    """A fixed sequence of mini-batch index tensors (epochs of seeded permutations), shared by compared runs."""
    gen = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen)
        out.extend(perm[i : i + batch] for i in range(0, n - batch + 1, batch))
    return out[:steps]


def num(x: float, digits: int = 4) -> str:
    """Compact number formatting for the summary table."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def to_jsonable(obj: Any) -> Any:
    """Tensors → lists, non-finite floats → None, tuples → lists, recursively."""
    if isinstance(obj, Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def write(report: Report, out: str | os.PathLike, plots: bool = True) -> list[str]:
    """Write ``out/results.json`` (and a PNG per figure when ``plots``); returns the paths written."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.json")
    with open(path, "w") as f:
        json.dump(to_jsonable({"analysis": report.name, **report.results}), f, indent=1)
    written = [path]
    if plots:
        figure_cls = require_matplotlib()
        for name, draw in report.figures.items():
            fig = figure_cls(figsize=(10, 4), layout="constrained")
            draw(fig)
            png = os.path.join(out, name if name.endswith(".png") else name + ".png")
            fig.savefig(png, dpi=110)
            written.append(png)
    return written


def print_summary(report: Report) -> None:
    """Print the summary rows as an aligned three-column table."""
    rows = [("metric", "measured", "expected / reference")] + list(report.summary)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    print(f"gradspace analyze {report.name}")
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print(line)


def flat_params(model: nn.Module) -> Tensor:
    """All parameters as one detached flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
