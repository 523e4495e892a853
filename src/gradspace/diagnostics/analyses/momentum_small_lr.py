"""momentum-small-lr: SGD with momentum β at lr γ tracks plain SGD at the effective lr η = γ/(1−β) when η is small
(Wang, Malladi, Wang, Lyu, Li 2023, "The Marginal Value of Momentum for Small Learning Rate SGD", arXiv:2307.15196).

Setup: MLP 64-64-64-10 tanh on scikit-learn digits, cross-entropy, batch 32, β = 0.9, the same initialization and
batch order for both optimizers (torch.optim.SGD; momentum in PyTorch's convention buf = β·buf + g). The theory
compares the two over a horizon of O(1/η) steps, so each η runs for the same *time* η·T (T clipped to a range); at a
fixed step count, momentum's warm-up lag of ~1/(1−β) steps would leave a gap floor of ~1/((1−β)T) at every η. For
each η the gap is measured three ways: relative difference of the final training loss, the mean relative loss
difference along the run, and ‖θ_SGD − θ_SGDM‖ / ‖θ_SGD − θ₀‖ at the end. The gap must shrink as η falls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import Report, batches, flat_params, load_digits, mlp, num

NAME = "momentum-small-lr"
DESCRIPTION = "SGD vs SGD-momentum at matched effective lr η/(1−β); the gap shrinks as lr falls"
BETA = 0.9


def _train(eta: float, momentum: bool, steps: int, seed: int, data) -> dict:
    every = max(1, steps // 20)
    xtr, ytr, xte, yte = data
    net = mlp([64, 64, 64, 10], nn.Tanh, seed=seed)
    theta0 = flat_params(net)
    if momentum:
        opt = torch.optim.SGD(net.parameters(), lr=eta * (1 - BETA), momentum=BETA)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=eta)
    curve = []
    for t, idx in enumerate(batches(len(xtr), 32, steps, seed + 1)):
        if t % every == 0:
            with torch.no_grad():
                curve.append(float(F.cross_entropy(net(xtr), ytr)))
        opt.zero_grad()
        F.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
        opt.step()
    with torch.no_grad():
        loss = float(F.cross_entropy(net(xtr), ytr))
        acc = float((net(xte).argmax(1) == yte).float().mean())
    curve.append(loss)
    return {"final_loss": loss, "test_acc": acc, "curve": curve, "theta": flat_params(net), "theta0": theta0}


def _spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN entries are dropped."""
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 2:
        return float("nan")

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                out[order[t]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks([a for a, _ in pairs]), ranks([b for _, b in pairs])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else float("nan")


def run(quick: bool = False, seed: int = 0) -> Report:
    """Sweep η for both optimizers and seeds; return the report (see the module docstring)."""
    if quick:
        etas, horizon, clip, seeds = [0.01, 0.1, 1.0], 3.0, (100, 300), [seed]
    else:
        etas, horizon, clip, seeds = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], 30.0, (300, 3000), [seed, seed + 1, seed + 2]
    data = load_digits(seed=seed)
    rows = []
    for eta in etas:
        steps = int(min(max(round(horizon / eta), clip[0]), clip[1]))
        per_seed = []
        for s in seeds:
            a, b = _train(eta, False, steps, s, data), _train(eta, True, steps, s, data)
            finite = math.isfinite(a["final_loss"]) and math.isfinite(b["final_loss"])
            rel_final = abs(a["final_loss"] - b["final_loss"]) / max(min(a["final_loss"], b["final_loss"]), 1e-12)
            rel_curve = sum(
                abs(x - y) / max(min(x, y), 1e-12) for x, y in zip(a["curve"], b["curve"])
            ) / len(a["curve"])
            dist = float((a["theta"] - b["theta"]).norm() / (a["theta"] - a["theta0"]).norm().clamp_min(1e-12))
            per_seed.append({
                "seed": s, "sgd_final_loss": a["final_loss"], "sgdm_final_loss": b["final_loss"],
                "sgd_test_acc": a["test_acc"], "sgdm_test_acc": b["test_acc"], "finite": finite,
                "rel_final_loss_gap": rel_final if finite else float("nan"),
                "mean_rel_loss_gap": rel_curve if finite else float("nan"),
                "rel_param_distance": dist if finite else float("nan"),
                "sgd_curve": a["curve"], "sgdm_curve": b["curve"],
            })
        avg = lambda key: sum(r[key] for r in per_seed) / len(per_seed)  # noqa: E731
        rows.append({
            "eta_eff": eta, "sgd_lr": eta, "sgdm_lr": eta * (1 - BETA), "momentum": BETA, "steps": steps,
            "time_eta_times_steps": eta * steps,
            "sgd_final_loss": avg("sgd_final_loss"), "sgdm_final_loss": avg("sgdm_final_loss"),
            "sgd_test_acc": avg("sgd_test_acc"), "sgdm_test_acc": avg("sgdm_test_acc"),
            "rel_final_loss_gap": avg("rel_final_loss_gap"), "mean_rel_loss_gap": avg("mean_rel_loss_gap"),
            "rel_param_distance": avg("rel_param_distance"), "seeds": per_seed,
        })
    dists = [r["rel_param_distance"] for r in rows]
    initial = math.log(10.0)  # cross-entropy of a uniform prediction over 10 classes
    for r in rows:
        r["stable"] = max(r["sgd_final_loss"], r["sgdm_final_loss"]) < initial
    stable_d = [r["rel_param_distance"] for r in rows if r["stable"] and math.isfinite(r["rel_param_distance"])]
    monotone = len(stable_d) >= 2 and all(x < y for x, y in zip(stable_d[:-1], stable_d[1:]))
    spearman = _spearman(etas, dists)
    small = [r for r in rows if r["eta_eff"] <= 0.1]
    results = {
        "setup": {"model": "MLP 64-64-64-10 tanh", "loss": "cross-entropy", "batch": 32, "beta": BETA,
                  "seeds": seeds, "time_horizon": horizon, "steps_clip": list(clip)},
        "rows": rows,
        "eta_eff": etas,
        "rel_param_distance": dists,
        "mean_rel_loss_gap": [r["mean_rel_loss_gap"] for r in rows],
        "param_distance_increasing_in_lr_while_stable": monotone,
        "spearman_lr_vs_param_distance": spearman,
        "stable_eta": [r["eta_eff"] for r in rows if r["stable"]],
        "max_rel_final_loss_gap_eta_le_0.1": max((r["rel_final_loss_gap"] for r in small), default=float("nan")),
    }
    summary = [
        (f"η={num(r['eta_eff'])} ({r['steps']} steps): loss SGD / SGDM",
         f"{num(r['sgd_final_loss'])} / {num(r['sgdm_final_loss'])}",
         f"‖Δθ‖/‖θ−θ₀‖ {num(r['rel_param_distance'], 3)}, acc {r['sgd_test_acc']:.3f}/{r['sgdm_test_acc']:.3f}"
         + ("" if r["stable"] else " (unstable)"))
        for r in rows
    ] + [
        ("rel. distance increases with η (both runs stable)", str(monotone), "True (gap shrinks as lr falls)"),
        ("Spearman ρ(η, rel. distance), all η", num(spearman), "> 0"),
        ("max rel. final-loss gap for η ≤ 0.1", num(results["max_rel_final_loss_gap_eta_le_0.1"]), "< 0.05"),
    ]

    def gap_fig(fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        ax1.loglog(etas, [max(d, 1e-8) for d in dists], "o-", label="‖θ_SGD − θ_SGDM‖ / ‖θ_SGD − θ₀‖")
        ax1.loglog(etas, [max(r["mean_rel_loss_gap"], 1e-8) for r in rows], "s-", label="mean relative loss gap")
        ax1.set_xlabel("effective learning rate η = γ/(1−β)")
        ax1.set_title("SGD vs SGD-momentum (β = 0.9) at matched η")
        ax1.legend(fontsize=8)
        ax2.semilogx(etas, [r["sgd_final_loss"] for r in rows], "o-", label="SGD final train loss")
        ax2.semilogx(etas, [r["sgdm_final_loss"] for r in rows], "s--", label="SGDM final train loss")
        ax2.set_yscale("log")
        ax2.set_xlabel("η")
        ax2.legend(fontsize=8)

    def curves_fig(fig) -> None:
        axes = fig.subplots(1, min(4, len(rows)))
        picks = rows[:: max(1, len(rows) // len(axes))][: len(axes)]
        for ax, r in zip(axes, picks):
            s = r["seeds"][0]
            every = max(1, r["steps"] // 20)
            t = [every * i for i in range(len(s["sgd_curve"]) - 1)] + [r["steps"]]
            ax.semilogy(t, s["sgd_curve"], label="SGD")
            ax.semilogy(t, s["sgdm_curve"], "--", label="SGDM")
            ax.set_title(f"η = {r['eta_eff']}", fontsize=9)
            ax.set_xlabel("step")
        axes[0].legend(fontsize=8)

    return Report(NAME, results, summary, {"gap_vs_lr": gap_fig, "loss_curves": curves_fig})
