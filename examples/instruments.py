#!/usr/bin/env python
"""A tour of gradspace's instruments on one small model: see the subspace a training run lives in.

Trains an MLP (64-64-64-10) on scikit-learn's bundled digits with ``SubspaceOptimizer`` (GaLore-style SVD projector,
rank 8, Fira residual), and shows, each in a few lines:

1. live telemetry (``Telemetry``): per-weight captured gradient energy ‖G P‖²/‖G‖², subspace drift at every refresh,
   effective ranks of gradient and momentum, Fira's residual scale — written to ``OUT/telemetry.csv`` and ``.jsonl``;
2. curvature (``hessian_eigs``, ``hessian_trace``, ``hessian_density``, ``per_layer``): top Hessian eigenvalues by
   Lanczos, Hutch++ trace, the SLQ spectral density and the largest eigenvalue of each layer's diagonal block;
3. how much of the full-batch gradient lies in the top-10 Hessian eigenspace (Gur-Ari et al. 2018);
4. trajectory PCA against the random-walk prediction 6/(π²k²) (Antognini & Sohl-Dickstein 2018);
5. ``refresh="adaptive"`` (refresh a weight when its captured energy drops below a threshold) against a fixed period
   with about the same number of refreshes — one run of each, so noise decides small differences;
   ``gradspace analyze adaptive-refresh`` sweeps thresholds, periods, residuals and seeds.

Usage::

    python examples/instruments.py              # under 30 s on one CPU thread
    python examples/instruments.py --quick      # a few seconds
    python examples/instruments.py --out runs/instruments

The reproductions of the papers themselves are ``gradspace analyze NAME`` (tiny-subspace, trajectory-pca,
policy-gradient, momentum-small-lr, training-jacobian, adaptive-refresh, overhead).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

import gradspace
from gradspace.diagnostics import (
    Telemetry,
    TrajectoryRecorder,
    captured_energy,
    hessian_density,
    hessian_eigs,
    hessian_trace,
    per_layer,
    random_walk_ratios,
    trajectory_pca,
)
from gradspace.diagnostics.analyses._common import batches, load_digits, mlp


def train(steps: int, seed: int, out: str | None, record: bool = False, **schedule):
    xtr, ytr, xte, yte = load_digits(seed=seed)
    net = mlp([64, 64, 64, 10], torch.nn.Tanh, seed=seed)
    groups = gradspace.param_groups(net, rank=8, exclude_last_linear=False, verbose=False)
    opt = gradspace.SubspaceOptimizer(groups, lr=3e-3, projector="svd", residual="fira", **schedule)
    tel = Telemetry(opt, every=10, path=out, names=net, spectra_every=50)
    rec = TrajectoryRecorder(net, max_snapshots=steps + 1).attach(opt) if record else None
    for idx in batches(len(xtr), 32, steps, seed + 1):
        opt.zero_grad()
        F.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
        opt.step()
    tel.close()
    with torch.no_grad():
        loss = float(F.cross_entropy(net(xtr), ytr))
        acc = float((net(xte).argmax(1) == yte).float().mean())
    projected = [p for g in opt.param_groups if g["projector"] != "identity" for p in g["params"]]
    refreshes = sum(int(opt.state[p].get("proj.count", 0)) for p in projected)
    return net, tel, rec, loss, acc, refreshes, (xtr, ytr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="runs/instruments")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 150 if args.quick else 600

    # 1. live telemetry ---------------------------------------------------------------------------------------------
    net, tel, rec, loss, acc, _, (x, y) = train(steps, args.seed, args.out, record=True, refresh_every=50)
    print(f"trained {steps} steps: train loss {loss:.4f}, test accuracy {acc:.3f}; telemetry in {args.out}/")
    print(f"  telemetry hooks took {tel.seconds:.2f} s in total")
    for name, s in tel.summary().items():
        extra = f", momentum erank {s['momentum_erank_last']:.1f}" if "momentum_erank_last" in s else ""
        print(f"  {name:10s} captured energy mean {s['energy_mean']:.3f} (last {s['energy_last']:.3f}), "
              f"{s['refreshes']} refreshes, overlap at refresh {s['overlap_mean']:.3f}, "
              f"gradient erank {s.get('grad_erank_last', float('nan')):.1f}{extra}")
    fira = [r for r in tel.records if r["kind"] == "step" and "resid_scale_mean" in r]
    if fira:
        print(f"  Fira residual scale φ (last record, {fira[-1]['param']}): mean {fira[-1]['resid_scale_mean']:.3g}, "
              f"limiter shrink {fira[-1]['resid_limiter']:.3g}")

    # 2. curvature --------------------------------------------------------------------------------------------------
    loss_fn = lambda: F.cross_entropy(net(x), y)  # noqa: E731  (full training set)
    vals, vecs = hessian_eigs(loss_fn, net, k=11)
    trace = hessian_trace(loss_fn, net, num_matvecs=60 if args.quick else 150)
    density = hessian_density(loss_fn, net, num_iters=40, num_vectors=2 if args.quick else 6)
    layers = per_layer(hessian_eigs, loss_fn, net, k=1)
    print("Hessian top-11 eigenvalues:", " ".join(f"{v:.3g}" for v in vals.tolist()))
    print(f"  eigengap λ10/λ11 = {vals[9] / vals[10]:.2f}; trace (Hutch++) = {trace.estimate:.3g} ± {trace.stderr:.2g}; "
          f"SLQ density: weights sum {float(density.weights.sum()):.3f}, P·mean = {density.trace:.3g} "
          f"({density.num_vectors} probes: a rough trace)")
    print("  per-layer λ_max:", ", ".join(f"{k}: {v[0].item():.3g}" for k, v in layers.items()))

    # 3. gradient in the top-10 Hessian eigenspace -------------------------------------------------------------------
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_fn(), list(net.parameters()))])
    fraction = float(captured_energy(g, vecs[:, :10]))
    print(f"fraction of the full-batch gradient in the top-10 Hessian eigenspace: {fraction:.3f} "
          f"(random: {10 / g.numel():.4f})")

    # 4. trajectory PCA ---------------------------------------------------------------------------------------------
    pca = trajectory_pca(rec.matrix(), k=5)
    walk = random_walk_ratios(5)
    print("trajectory PCA ρ_k:", " ".join(f"{v:.3f}" for v in pca.explained_variance_ratio.tolist()),
          " | random walk 6/(π²k²):", " ".join(f"{v:.3f}" for v in walk.tolist()))

    # 5. adaptive vs fixed refresh at equal refresh count -----------------------------------------------------------
    adaptive = train(steps, args.seed, None, refresh="adaptive", refresh_threshold=0.6, refresh_min_gap=10, refresh_every=steps)
    n = adaptive[5]
    weights = 3
    period = max(1, round(steps * weights / max(n, 1)))
    fixed = train(steps, args.seed, None, refresh_every=period)
    print(f"adaptive (τ = 0.6): {n} refreshes, train loss {adaptive[3]:.4f}; fixed every {period} steps: "
          f"{fixed[5]} refreshes, train loss {fixed[3]:.4f}")

    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("(matplotlib not installed: pip install -e \".[plot]\" from a gradspace checkout for the picture)")
        return
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for name in tel.summary():
        rows = [r for r in tel.records if r["kind"] == "step" and r["param"] == name]
        ax1.plot([r["step"] for r in rows], [r["energy"] for r in rows], label=name)
    ax1.set_title("captured gradient energy")
    ax1.set_xlabel("step")
    ax1.legend(fontsize=7)
    grid, dens = density.density()
    ax2.semilogy(grid, dens.clamp_min(1e-6))
    ax2.set_title("Hessian spectral density (SLQ)")
    proj = pca.projections
    ax3.plot(proj[:, 0], proj[:, 1])
    ax3.set_title("trajectory: PC1 vs PC2")
    os.makedirs(args.out, exist_ok=True)
    fig.savefig(os.path.join(args.out, "instruments.png"), dpi=110)
    print(f"wrote {os.path.join(args.out, 'instruments.png')}")


if __name__ == "__main__":
    main()
