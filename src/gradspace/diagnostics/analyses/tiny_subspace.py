"""tiny-subspace: the gradient lives in the top-k Hessian eigenspace (Gur-Ari, Roberts, Dyer 2018, arXiv:1812.04754),
with the eigengap that makes "k = number of classes" meaningful, a negative control where it vanishes, and the
Dom/Bulk ablation of Song, Ahn, Yun 2024 (arXiv:2405.16002): projecting SGD onto the dominant subspace stops the loss.

Setup (Gur-Ari et al.'s regime): MLP 64-32-32-10 tanh, MSE ½‖f(x) − onehot(y)‖² (batch mean), raw pixels/16,
SGD lr 0.1, batch 32, scikit-learn digits (P = 3 466). At checkpoints, the top 11 eigenpairs of the full-batch
Hessian by Lanczos; f = ‖P₁₀ g‖²/‖g‖² (squared fraction) for the full-batch and the next mini-batch gradient;
eigengap λ₁₀/λ₁₁; overlap ‖V₁₀(t)ᵀV₁₀(t')‖²/10 of the top subspace over time. Negative control: the same net with
cross-entropy on standardized inputs. Ablation: from the step-300 checkpoint, three branches on the same batches —
SGD, Dom-SGD (update P₁₀g) and Bulk-SGD ((I−P₁₀)g) — with V₁₀ recomputed every few steps.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..hessian import hessian_eigs
from ..subspace import captured_energy, subspace_overlap
from ._common import Report, batches, load_digits, mlp, num

NAME = "tiny-subspace"
DESCRIPTION = "fraction of the gradient in the top-10 Hessian eigenspace, eigengap, negative control, Dom/Bulk ablation"
K = 10
WARMUP = 300


def _loss(kind: str, out: Tensor, y: Tensor) -> Tensor:
    if kind == "mse":
        return 0.5 * (out - F.one_hot(y, 10).to(out.dtype)).square().sum(1).mean()
    return F.cross_entropy(out, y)


def _flat_grad(net: nn.Module, loss: Tensor) -> Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])


def _top(net: nn.Module, kind: str, x: Tensor, y: Tensor, v0: Tensor | None = None):
    """Top-(K+1) eigenpairs of the full-batch Hessian and the full-batch gradient."""
    res = hessian_eigs(lambda: _loss(kind, net(x), y), net, k=K + 1, return_info=True, max_iter=200, tol=1e-4)
    g = _flat_grad(net, _loss(kind, net(x), y))
    return res, g


def _track(kind: str, standardize: bool, steps: int, checkpoints: list[int], seed: int, keep: int | None = None):
    """Train with SGD and measure at checkpoints; returns (rows, top-subspace bases, state at ``keep``)."""
    xtr, ytr, _, _ = load_digits(standardize=standardize, seed=seed)
    net = mlp([64, 32, 32, 10], nn.Tanh, seed=seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    order = batches(len(xtr), 32, steps + 1, seed)
    rows, bases, kept = [], {}, None
    for step in range(steps + 1):
        idx = order[step]
        if step in checkpoints:
            res, g = _top(net, kind, xtr, ytr)
            v = res.eigenvectors[:, :K]
            gb = _flat_grad(net, _loss(kind, net(xtr[idx]), ytr[idx]))
            lam = res.eigenvalues.tolist()
            with torch.no_grad():
                loss = float(_loss(kind, net(xtr), ytr))
            rows.append({
                "step": step, "loss": loss, "fraction_full": float(captured_energy(g, v)),
                "fraction_minibatch": float(captured_energy(gb, v)), "eigenvalues": lam,
                "eigengap": lam[K - 1] / lam[K] if lam[K] > 0 else float("inf"), "lanczos_iters": res.num_iters,
            })
            bases[step] = v
        if step == keep:
            kept = copy.deepcopy(net.state_dict())
        if step == steps:
            break
        opt.zero_grad()
        _loss(kind, net(xtr[idx]), ytr[idx]).backward()
        opt.step()
    return rows, bases, kept


def _ablation(state: dict, steps: int, refresh: int, seed: int) -> dict:
    """Song et al.'s three branches from one checkpoint, on the same batch sequence."""
    xtr, ytr, _, _ = load_digits(seed=seed)
    order = batches(len(xtr), 32, WARMUP + steps + 1, seed)[WARMUP : WARMUP + steps]
    out = {}
    for mode in ("sgd", "dom", "bulk"):
        net = mlp([64, 32, 32, 10], nn.Tanh, seed=seed)
        net.load_state_dict(state)
        curve, chis = [], []
        v = None
        for t, idx in enumerate(order):
            if t % 10 == 0:
                with torch.no_grad():
                    curve.append((t, float(_loss("mse", net(xtr), ytr))))
            if mode != "sgd" and t % refresh == 0:
                res, g = _top(net, "mse", xtr, ytr)
                v = res.eigenvectors[:, :K]
                chis.append(float(captured_energy(g, v).sqrt()))
            g = _flat_grad(net, _loss("mse", net(xtr[idx]), ytr[idx]))
            if mode == "dom":
                g = v @ (v.T @ g)
            elif mode == "bulk":
                g = g - v @ (v.T @ g)
            with torch.no_grad():
                vector_to_parameters(parameters_to_vector(net.parameters()) - 0.1 * g, net.parameters())
        with torch.no_grad():
            curve.append((steps, float(_loss("mse", net(xtr), ytr))))
        out[mode] = {"loss_curve": curve, "final_loss": curve[-1][1], "chi_full_gradient": chis}
    start = out["sgd"]["loss_curve"][0][1]
    drop = {m: start - out[m]["final_loss"] for m in out}
    return {
        "start_step": WARMUP, "steps": steps, "refresh_every": refresh, "start_loss": start,
        **{m: out[m] for m in out},
        "dom_decrease_over_sgd_decrease": drop["dom"] / drop["sgd"] if drop["sgd"] else float("nan"),
        "bulk_final_over_sgd_final": out["bulk"]["final_loss"] / out["sgd"]["final_loss"],
    }


def run(quick: bool = False, seed: int = 0) -> Report:
    """Main run, negative control and ablation; return the report (see the module docstring)."""
    if quick:
        steps, checkpoints, ctrl_points, abl_steps, abl_refresh = WARMUP, [0, 100, 200, 300], [0, 300], 30, 10
    else:
        steps = 1500
        checkpoints = [0, 50, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500]
        ctrl_points = [0, 300, 600, 1000, 1500]
        abl_steps, abl_refresh = 600, 5
    rows, bases, warm_state = _track("mse", False, steps, checkpoints, seed, keep=WARMUP)
    ctrl_rows, _, _ = _track("ce", True, steps, ctrl_points, seed)
    ablation = _ablation(warm_state, abl_steps, abl_refresh, seed)
    P = sum(p.numel() for p in mlp([64, 32, 32, 10]).parameters())

    after = [r for r in rows if r["step"] >= WARMUP]
    ctrl_after = [r for r in ctrl_rows if r["step"] >= WARMUP]
    steps_sorted = sorted(bases)
    overlap_time = [[s, float(subspace_overlap(bases[WARMUP], bases[s]))] for s in steps_sorted if WARMUP in bases]
    overlap_consecutive = [
        [b, float(subspace_overlap(bases[a], bases[b]))] for a, b in zip(steps_sorted[:-1], steps_sorted[1:])
    ]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    results = {
        "setup": {"model": "MLP 64-32-32-10 tanh", "inputs": "pixels/16",
                  "loss": "0.5 * squared error to one-hot, summed over classes, batch mean",
                  "optimizer": "SGD lr 0.1 batch 32", "k": K, "P": P, "warmup_steps": WARMUP, "steps": steps},
        "overlap": [[r["step"], r["fraction_full"]] for r in rows],
        "overlap_minibatch": [[r["step"], r["fraction_minibatch"]] for r in rows],
        "eigengap": [[r["step"], r["eigengap"]] for r in rows],
        "eigenvalues": [[r["step"], r["eigenvalues"]] for r in rows],
        "checkpoints": rows,
        "random_baseline": K / P,
        "fraction_after_warmup_min": min(r["fraction_full"] for r in after),
        "fraction_after_warmup_mean": mean([r["fraction_full"] for r in after]),
        "eigengap_after_warmup_min": min(r["eigengap"] for r in after),
        "top_subspace_overlap_with_warmup": overlap_time,
        "top_subspace_overlap_consecutive": overlap_consecutive,
        "negative_control": {
            "setup": "same net and SGD, cross-entropy, standardized inputs",
            "overlap": [[r["step"], r["fraction_full"]] for r in ctrl_rows],
            "eigengap": [[r["step"], r["eigengap"]] for r in ctrl_rows],
            "checkpoints": ctrl_rows,
            "fraction_after_warmup_mean": mean([r["fraction_full"] for r in ctrl_after]),
            "eigengap_after_warmup_mean": mean([r["eigengap"] for r in ctrl_after]),
        },
        "ablation": ablation,
    }
    ab = ablation
    summary = [
        (f"f_top{K} full-batch grad, steps ≥ {WARMUP} (min / mean)",
         f"{num(results['fraction_after_warmup_min'])} / {num(results['fraction_after_warmup_mean'])}", "> 0.9"),
        (f"f_top{K} mini-batch grad, steps ≥ {WARMUP} (mean)", num(mean([r["fraction_minibatch"] for r in after])),
         "< full-batch"),
        ("f_top at step 0", num(rows[0]["fraction_full"]), f"random baseline k/P = {num(K / P)}"),
        (f"eigengap λ{K}/λ{K + 1}, steps ≥ {WARMUP} (min)", num(results["eigengap_after_warmup_min"]), "≥ 1.8"),
        ("top-10 subspace overlap, last vs warm-up", num(overlap_time[-1][1]) if overlap_time else "nan",
         f"≫ random k/P = {num(K / P)} (slow drift)"),
        ("top-10 subspace overlap, consecutive checkpoints ≥ warm-up (mean)",
         num(mean(late)) if (late := [o for s, o in overlap_consecutive if s > WARMUP]) else "nan",
         "near 1"),
        ("control (CE, standardized): f_top mean", num(results["negative_control"]["fraction_after_warmup_mean"]), "≪ 0.9"),
        ("control: eigengap mean", num(results["negative_control"]["eigengap_after_warmup_mean"]), "≈ 1 (no gap)"),
        (f"ablation loss from step {WARMUP} ({ab['steps']} steps): start", num(ab["start_loss"]), ""),
        ("  SGD / Dom-SGD / Bulk-SGD final loss",
         f"{num(ab['sgd']['final_loss'])} / {num(ab['dom']['final_loss'])} / {num(ab['bulk']['final_loss'])}", ""),
        ("  Dom-SGD decrease / SGD decrease", num(ab["dom_decrease_over_sgd_decrease"]), "< 0.1 (Dom stalls)"),
        ("  Bulk-SGD final / SGD final", num(ab["bulk_final_over_sgd_final"]), "≤ 1.1 (Bulk as good)"),
        ("  χ = ‖P g‖/‖g‖ at refreshes (Dom branch, mean)", num(mean(ab["dom"]["chi_full_gradient"])), "near 1"),
    ]

    def overlap_fig(fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot([r["step"] for r in rows], [r["fraction_full"] for r in rows], "o-", label="full-batch gradient")
        ax1.plot([r["step"] for r in rows], [r["fraction_minibatch"] for r in rows], "s-", label="mini-batch gradient")
        ax1.plot([r["step"] for r in ctrl_rows], [r["fraction_full"] for r in ctrl_rows], "x--",
                 label="control (CE, std. inputs)")
        ax1.axhline(K / P, color="gray", lw=0.8, ls=":", label="random k/P")
        ax1.axvline(WARMUP, color="gray", lw=0.8)
        ax1.set_xlabel("step")
        ax1.set_ylabel(f"‖P_top{K} g‖² / ‖g‖²")
        ax1.set_title("Gradient in the top-10 Hessian eigenspace")
        ax1.legend(fontsize=8)
        ax2.plot([r["step"] for r in rows], [r["eigengap"] for r in rows], "o-", label="MSE (main)")
        ax2.plot([r["step"] for r in ctrl_rows], [r["eigengap"] for r in ctrl_rows], "x--", label="control")
        ax2.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax2.set_xlabel("step")
        ax2.set_ylabel(f"λ{K} / λ{K + 1}")
        ax2.set_title("Eigengap after the k = #classes outliers")
        ax2.legend(fontsize=8)

    def spectrum_fig(fig) -> None:
        ax = fig.subplots()
        for r in rows[:: max(1, len(rows) // 5)]:
            ax.semilogy(range(1, K + 2), [max(v, 1e-6) for v in r["eigenvalues"]], "o-", label=f"step {r['step']}")
        ax.axvline(K + 0.5, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel("Hessian eigenvalue")
        ax.set_title("Top Hessian eigenvalues (full batch)")
        ax.legend(fontsize=8)

    def ablation_fig(fig) -> None:
        ax = fig.subplots()
        for mode, label in (("sgd", "SGD"), ("dom", "Dom-SGD (P g)"), ("bulk", "Bulk-SGD ((I−P) g)")):
            curve = ab[mode]["loss_curve"]
            ax.plot([WARMUP + t for t, _ in curve], [v for _, v in curve], label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("full-batch training loss")
        ax.set_title(f"Song et al. ablation (top-{K} eigenvectors refreshed every {ab['refresh_every']} steps)")
        ax.legend()

    return Report(NAME, results, summary, {"overlap": overlap_fig, "hessian_spectrum": spectrum_fig, "ablation": ablation_fig})
