"""Telemetry overhead benchmark: the time :class:`~gradspace.diagnostics.Telemetry` adds to a training step, as a
fraction of the step time (target: < 5 % at ``every=10``). Run ``python -m gradspace.diagnostics.overhead`` or
``gradspace analyze overhead``.

Workload: a small pre-norm Transformer language model (byte vocabulary, d = 192, 3 layers, 4 heads, FFN 768,
batch 8 × 64 tokens) trained with ``SubspaceOptimizer(projector="svd", rank=32, residual="fira",
refresh_every=200)`` on its 2-D weights (``param_groups(target="matrices")``). Two measurements:

* hook time: the seconds the hooks themselves spent (:attr:`Telemetry.seconds`, includes every refresh-drift and
  residual replay) divided by the baseline step time — the direct cost;
* A/B wall clock: median step time with telemetry recording vs paused, alternating step by step (noisier: it
  depends on everything else the machine runs).

Configurations: ``every=10`` with the default effective-rank cadence (every 100 steps); ``every=10`` with effective
ranks at every record (all statistics every 10 steps); ``every=1`` with defaults.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..optimizer import SubspaceOptimizer
from ..routing import param_groups
from .analyses._common import Report, num
from .telemetry import Telemetry

NAME = "overhead"
DESCRIPTION = "telemetry cost as a fraction of the training-step time (target < 5 % at every=10)"


class _TinyLM(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.ModuleList([_clone(layer) for _ in range(layers)])
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _clone(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer)


def _setup(quick: bool, seed: int) -> tuple[nn.Module, Any, torch.Tensor]:
    torch.manual_seed(seed)
    d, layers, batch = (96, 2, 4) if quick else (192, 3, 8)
    model = _TinyLM(256, d, layers, 4)
    groups = param_groups(model, rank=d // 6, target="matrices", verbose=False)
    opt = SubspaceOptimizer(groups, lr=1e-3, projector="svd", residual="fira", refresh_every=200)
    data = torch.randint(0, 256, (batch, 65), generator=torch.Generator().manual_seed(seed))
    return model, opt, data


def _step(model: nn.Module, opt: Any, data: torch.Tensor) -> float:
    t0 = time.perf_counter()
    opt.zero_grad()
    logits = model(data[:, :-1])
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1)).backward()
    opt.step()
    return time.perf_counter() - t0


def run(quick: bool = False, seed: int = 0) -> Report:
    """Measure the telemetry overhead; return the report (see the module docstring)."""
    block = 40 if quick else 100
    model, opt, data = _setup(quick, seed)
    for _ in range(3):
        _step(model, opt, data)
    configs = {
        "every=10 (effective ranks every 100 steps, default)": {"every": 10},
        "every=10, all statistics every 10 steps": {"every": 10, "spectra_every": 10},
        "every=1 (effective ranks every 10 steps)": {"every": 1},
    }
    # Steps alternate between telemetry on and paused, so that load from other processes hits both alike; the
    # telemetry's cadence counts only its own steps.
    base_times: list[float] = []
    rows = {}
    for label, kwargs in configs.items():
        tel = Telemetry(opt, **kwargs)
        on: list[float] = []
        off: list[float] = []
        for i in range(2 * block):
            if i % 2:
                tel.pause()
                off.append(_step(model, opt, data))
            else:
                tel.resume()
                on.append(_step(model, opt, data))
        tel.close()
        base_times += off
        rows[label] = {"kwargs": kwargs, "hook_seconds_per_step": tel.seconds / block, "records": len(tel.records),
                       "with_median": statistics.median(on), "without_median": statistics.median(off)}
    base = statistics.median(base_times)
    for row in rows.values():
        row["hook_overhead"] = row["hook_seconds_per_step"] / row["without_median"]
        row["ab_overhead"] = row["with_median"] / row["without_median"] - 1.0
    default = rows[next(iter(rows))]
    params = sum(p.numel() for p in model.parameters())
    results = {
        "setup": {"model": "pre-norm Transformer LM", "parameters": params, "optimizer": "svd rank d/6, fira, T=200",
                  "threads": torch.get_num_threads(), "block_steps": block},
        "baseline_step_seconds_median": base,
        "configs": rows,
        "overhead_every10": default["hook_overhead"],
        "meets_target_5pct": default["hook_overhead"] < 0.05,
    }
    summary = [("baseline step time (median)", f"{base * 1e3:.1f} ms", f"{params} parameters")]
    for label, row in rows.items():
        summary.append((label, f"{100 * row['hook_overhead']:.2f} % (hook time)",
                        f"A/B wall clock {100 * row['ab_overhead']:+.1f} %"))
    summary.append(("target: every=10 below 5 %", str(results["meets_target_5pct"]), ""))

    def bars(fig) -> None:
        ax = fig.subplots()
        labels = list(rows)
        ax.barh(range(len(labels)), [100 * rows[k]["hook_overhead"] for k in labels], label="hook time / step time")
        ax.scatter([100 * rows[k]["ab_overhead"] for k in labels], range(len(labels)), color="k", zorder=3,
                   label="A/B wall clock (median)")
        ax.axvline(5.0, color="tab:red", ls="--", label="5 % target")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel(f"overhead in % of a {base * 1e3:.0f} ms training step")
        ax.legend(fontsize=8)

    return Report(NAME, results, summary, {"overhead": bars})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gradspace.diagnostics.overhead [--quick]``: print the overhead table."""
    import argparse

    from .analyses._common import print_summary

    parser = argparse.ArgumentParser(prog="python -m gradspace.diagnostics.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_summary(run(quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
