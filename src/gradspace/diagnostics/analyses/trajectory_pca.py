"""trajectory-pca: PCA of a training trajectory against the random-walk prediction ρ_k ≈ 6/(π²k²) (Antognini &
Sohl-Dickstein 2018, arXiv:1806.08805), with a pure Gaussian random walk (and a heavy-ball walk) as controls.

Setup: MLP 64-32-32-10 (tanh) on scikit-learn digits, cross-entropy, SGD lr 0.1, batch 32; a snapshot of all
P = 3 466 parameters after every step, PCA by randomized SVD (memory O(n × P) for the snapshots, O((n + P)·q) for
the PCA), checked against the exact Gram-matrix PCA. Control: a Gaussian random walk of the same length in
d = 10 000 dimensions, whose PCA must match 6/(π²k²) and whose projections must be cos(πk(t+½)/n) (Lissajous curves).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..trajectory import TrajectoryRecorder, cosine_correlation, random_walk_ratios, trajectory_pca
from ._common import Report, batches, load_digits, mlp, num

NAME = "trajectory-pca"
DESCRIPTION = "trajectory PCA vs the random-walk prediction 6/(π²k²), Lissajous projections, random-walk control"


def _walk(n: int, d: int, seed: int, beta: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, d, generator=gen)
    if beta:
        for t in range(1, n):
            steps[t] += beta * steps[t - 1]
    return steps.cumsum(0)


def run(quick: bool = False, seed: int = 0) -> Report:
    """Train, record, PCA; return the report (see the module docstring)."""
    steps = 300 if quick else 1000
    walk_dim = 3000 if quick else 10_000
    k = 10
    xtr, ytr, xte, yte = load_digits(seed=seed)
    net = mlp([64, 32, 32, 10], nn.Tanh, seed=seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = TrajectoryRecorder(net, max_snapshots=steps + 1).attach(opt)
    for idx in batches(len(xtr), 32, steps, seed):
        opt.zero_grad()
        F.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
        opt.step()
    rec.detach()
    with torch.no_grad():
        train_loss = float(F.cross_entropy(net(xtr), ytr))
        test_acc = float((net(xte).argmax(1) == yte).float().mean())
    snaps = rec.matrix()
    n = snaps.shape[0]
    pca = trajectory_pca(snaps, k, seed=seed)
    exact = trajectory_pca(snaps, k, method="exact")
    late = trajectory_pca(snaps[n // 2 :], k, seed=seed)

    walk = _walk(n, walk_dim, seed + 1)
    walk_pca = trajectory_pca(walk, k, seed=seed)
    hb_pca = trajectory_pca(_walk(n, walk_dim, seed + 2, beta=0.9), k, seed=seed)
    del walk
    theory = random_walk_ratios(k)
    finite = random_walk_ratios(k, n)
    walk_dev = (walk_pca.explained_variance_ratio[:5] - theory[:5]).abs().max().item()
    cos_train = cosine_correlation(pca.projections[:, :5])
    cos_walk = cosine_correlation(walk_pca.projections[:, :5])
    agree = (pca.explained_variance_ratio - exact.explained_variance_ratio).abs().max().item()

    results = {
        "setup": {"model": "MLP 64-32-32-10 tanh", "loss": "cross-entropy", "optimizer": "SGD lr 0.1 batch 32",
                  "steps": steps, "snapshots": n, "P": rec.dim, "walk_dim": walk_dim, "k": k},
        "explained_variance_ratio": pca.explained_variance_ratio,
        "explained_variance_ratio_exact": exact.explained_variance_ratio,
        "late_phase_explained_variance_ratio": late.explained_variance_ratio,
        "random_walk_explained_variance_ratio": walk_pca.explained_variance_ratio,
        "momentum_walk_explained_variance_ratio": hb_pca.explained_variance_ratio,
        "random_walk_prediction": theory,
        "random_walk_prediction_finite_n": finite,
        "random_walk_max_abs_deviation_k1to5": walk_dev,
        "cosine_correlation": cos_train,
        "random_walk_cosine_correlation": cos_walk,
        "randomized_vs_exact_max_abs_diff": agree,
        "top2_variance": float(pca.explained_variance_ratio[:2].sum()),
        "random_walk_top2_variance": float(walk_pca.explained_variance_ratio[:2].sum()),
        "final_train_loss": train_loss,
        "test_accuracy": test_acc,
    }
    ev, wv = pca.explained_variance_ratio.tolist(), walk_pca.explained_variance_ratio.tolist()
    summary = [
        (f"trained ρ{i + 1}", num(ev[i]), f"random walk {num(theory[i].item())}") for i in range(3)
    ] + [
        ("trained ρ1 (steps n/2..n)", num(late.explained_variance_ratio[0].item()), "drift: > 0.61"),
        ("walk ρ1..ρ5", " ".join(f"{v:.4f}" for v in wv[:5]), " ".join(f"{v:.4f}" for v in theory[:5].tolist())),
        ("walk max |ρ_k − 6/(π²k²)|, k ≤ 5", num(walk_dev), "< 0.02"),
        ("walk |corr(PC_k, cos πk(t+½)/n)|, k ≤ 3", " ".join(f"{v:.4f}" for v in cos_walk[:3].tolist()), "> 0.99"),
        ("trained |corr(PC_k, cos)|, k ≤ 3", " ".join(f"{v:.3f}" for v in cos_train[:3].tolist()), "≈1 would look like noise"),
        ("heavy-ball walk (β=0.9) ρ1", num(hb_pca.explained_variance_ratio[0].item()), "> 0.61 (shift to PC1)"),
        ("randomized vs exact PCA max |Δρ|", num(agree), "< 1e-3"),
        ("final train loss / test acc", f"{train_loss:.4f} / {test_acc:.3f}", ""),
    ]

    def spectrum(fig) -> None:
        ax = fig.subplots()
        ks = list(range(1, k + 1))
        ax.semilogy(ks, theory.tolist(), "k--", label="6/(π²k²)")
        ax.semilogy(ks, wv, "o-", label=f"Gaussian random walk (d={walk_dim})")
        ax.semilogy(ks, hb_pca.explained_variance_ratio.tolist(), "^-", label="heavy-ball walk β=0.9")
        ax.semilogy(ks, ev, "s-", label="MLP training (all steps)")
        ax.semilogy(ks, late.explained_variance_ratio.tolist(), "d-", label="MLP training (second half)")
        ax.set_xlabel("principal component k")
        ax.set_ylabel("explained variance ratio")
        ax.set_title(f"Trajectory PCA, n={n} snapshots, P={rec.dim}")
        ax.legend()

    def lissajous(fig) -> None:
        axes = fig.subplots(2, 3)
        for row, (label, proj) in enumerate((("training", pca.projections), ("random walk", walk_pca.projections))):
            for col, (i, j) in enumerate(((0, 1), (1, 2), (0, 2))):
                ax = axes[row][col]
                ax.plot(proj[:, i], proj[:, j], lw=0.8)
                ax.set_title(f"{label}: PC{i + 1} vs PC{j + 1}", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])

    def projections(fig) -> None:
        axes = fig.subplots(1, 2)
        t = torch.arange(n, dtype=torch.float64)
        for ax, (label, proj) in zip(axes, (("training", pca.projections), ("random walk", walk_pca.projections))):
            for i in range(3):
                x = proj[:, i] / proj[:, i].abs().max()
                ax.plot(t, x, label=f"PC{i + 1}")
                c = torch.cos(math.pi * (i + 1) * (t + 0.5) / n)
                sign = 1.0 if float((x * c).sum()) >= 0 else -1.0
                ax.plot(t, sign * c, "k:", lw=0.7)
            ax.set_title(f"{label}: projections (dotted: cos πk(t+½)/n)")
            ax.set_xlabel("snapshot t")
            ax.legend()

    return Report(NAME, results, summary, {"explained_variance": spectrum, "lissajous": lissajous, "projections": projections})
