"""adaptive-refresh: does refreshing a weight's basis when its captured energy ‖G P‖²/‖G‖² falls below a threshold
(``refresh="adaptive"``) beat refreshing every T steps, at the same number of refreshes?

Setup: MLP 64-128-128-10 ReLU on scikit-learn digits, cross-entropy, batch 32, 1 000 steps,
``SubspaceOptimizer(projector="svd", rank=4, rule="adam", lr=3e-3)`` on all three weight matrices, with the GaLore
residual (``drop``: nothing outside the subspace is trained) and with Fira's residual (``fira``). Fixed schedules sweep
T; adaptive schedules sweep the threshold (minimum gap 10 steps, no forced refresh). Each adaptive run is compared
with the fixed-schedule loss interpolated (in log refresh count) at its own total refresh count, seed by seed.
:class:`~gradspace.diagnostics.Telemetry` runs on every training run: it feeds the adaptive schedule and records the
per-layer captured energy that explains where each schedule spends its refreshes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...optimizer import SubspaceOptimizer
from ..telemetry import Telemetry
from ._common import Report, batches, load_digits, mlp, num

NAME = "adaptive-refresh"
DESCRIPTION = "captured-energy refresh schedule vs a fixed period at equal refresh count"
MIN_GAP = 10


def _train(seed: int, steps: int, residual: str, data, **schedule) -> dict:
    xtr, ytr, xte, yte = data
    net = mlp([64, 128, 128, 10], nn.ReLU, seed=seed)
    matrices = [p for p in net.parameters() if p.dim() == 2]
    vectors = [p for p in net.parameters() if p.dim() < 2]
    opt = SubspaceOptimizer(
        [{"params": matrices}, {"params": vectors, "projector": "identity"}], lr=3e-3, projector="svd", rank=4,
        residual=residual, **schedule,
    )
    tel = Telemetry(opt, every=10, names=net, spectra_every=0)
    for idx in batches(len(xtr), 32, steps, seed + 1):
        opt.zero_grad()
        F.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
        opt.step()
    tel.close()
    with torch.no_grad():
        loss = float(F.cross_entropy(net(xtr), ytr))
        acc = float((net(xte).argmax(1) == yte).float().mean())
    names = {p: n for n, p in net.named_parameters()}
    counts = {names[p]: int(opt.state[p]["proj.count"]) for p in matrices}
    energy = {name: s["energy_mean"] for name, s in tel.summary().items()}
    return {"final_loss": loss, "test_acc": acc, "refreshes": sum(counts.values()), "per_layer_refreshes": counts,
            "per_layer_energy_mean": energy}


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear interpolation of y at x in log(x); NaN outside the range of xs."""
    pts = sorted(zip(xs, ys))
    lx = math.log(x)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return y0
            w = (lx - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + w * (y1 - y0)
    return float("nan")


def run(quick: bool = False, seed: int = 0) -> Report:
    """Sweep fixed periods and adaptive thresholds; return the report (see the module docstring)."""
    if quick:
        steps, periods, thresholds, seeds, residuals = 200, [10, 25, 100], [0.5], [seed], ["drop"]
    else:
        steps, periods, thresholds = 1000, [10, 25, 50, 100, 200, 400], [0.3, 0.5, 0.7, 0.8]
        seeds, residuals = [seed, seed + 1], ["drop", "fira"]
    data = load_digits(seed=seed)
    out: dict = {}
    summary = []
    for residual in residuals:
        fixed, adaptive = [], []
        for s in seeds:
            for period in periods:
                fixed.append({"seed": s, "refresh_every": period, **_train(s, steps, residual, data, refresh_every=period)})
            for tau in thresholds:
                r = _train(s, steps, residual, data, refresh="adaptive", refresh_threshold=tau,
                           refresh_min_gap=MIN_GAP, refresh_every=steps)
                adaptive.append({"seed": s, "refresh_threshold": tau, **r})
        for a in adaptive:
            same = [f for f in fixed if f["seed"] == a["seed"]]
            ref = _interp(a["refreshes"], [f["refreshes"] for f in same], [f["final_loss"] for f in same])
            a["fixed_loss_at_equal_refreshes"] = ref
            a["loss_minus_fixed"] = a["final_loss"] - ref
        compared = [a for a in adaptive if math.isfinite(a["loss_minus_fixed"])]
        wins = sum(a["loss_minus_fixed"] < 0 for a in compared)
        out[residual] = {
            "fixed": fixed,
            "adaptive": adaptive,
            "adaptive_wins": wins,
            "adaptive_compared": len(compared),
            "mean_loss_minus_fixed": sum(a["loss_minus_fixed"] for a in compared) / len(compared) if compared else float("nan"),
        }
        for period in periods:
            rows = [f for f in fixed if f["refresh_every"] == period]
            summary.append((f"[{residual}] every {period}: refreshes / loss / acc",
                            f"{rows[0]['refreshes']} / {num(sum(r['final_loss'] for r in rows) / len(rows))} / "
                            f"{sum(r['test_acc'] for r in rows) / len(rows):.3f}", "fixed"))
        for tau in thresholds:
            rows = [a for a in adaptive if a["refresh_threshold"] == tau]
            layers = rows[0]["per_layer_refreshes"]
            summary.append((f"[{residual}] adaptive τ={tau}: refreshes / loss / acc",
                            f"{sum(r['refreshes'] for r in rows) / len(rows):.0f} / "
                            f"{num(sum(r['final_loss'] for r in rows) / len(rows))} / "
                            f"{sum(r['test_acc'] for r in rows) / len(rows):.3f}",
                            "per layer " + ",".join(str(v) for v in layers.values()) + f" (seed {rows[0]['seed']}); "
                            f"fixed at equal count {num(sum(r['fixed_loss_at_equal_refreshes'] for r in rows) / len(rows))}"))
        summary.append((f"[{residual}] adaptive beats fixed at equal refresh count",
                        f"{wins} of {len(compared)} runs",
                        f"mean Δloss {num(out[residual]['mean_loss_minus_fixed'])} (< 0: adaptive better)"))
    results = {
        "setup": {"model": "MLP 64-128-128-10 ReLU", "optimizer": "SubspaceOptimizer svd rank 4 adam lr 3e-3",
                  "steps": steps, "batch": 32, "refresh_min_gap": MIN_GAP, "seeds": seeds, "periods": periods,
                  "thresholds": thresholds},
        **out,
    }

    def tradeoff(fig) -> None:
        axes = fig.subplots(1, len(residuals))
        axes = axes if len(residuals) > 1 else [axes]
        for ax, residual in zip(axes, residuals):
            for s in seeds:
                f = sorted((r["refreshes"], r["final_loss"]) for r in out[residual]["fixed"] if r["seed"] == s)
                a = sorted((r["refreshes"], r["final_loss"]) for r in out[residual]["adaptive"] if r["seed"] == s)
                first = s == seeds[0]
                ax.plot([x for x, _ in f], [y for _, y in f], "o-", color="tab:blue", label="fixed T" if first else None)
                ax.plot([x for x, _ in a], [y for _, y in a], "s--", color="tab:red", label="adaptive τ" if first else None)
            ax.set_xscale("log")
            ax.set_xlabel("total refreshes (3 weights)")
            ax.set_ylabel("final training loss")
            ax.set_title(f"residual={residual!r}")
            ax.legend()

    return Report(NAME, results, summary, {"adaptive_vs_fixed": tradeoff})
