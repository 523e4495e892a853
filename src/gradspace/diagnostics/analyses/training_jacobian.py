"""training-jacobian: the Jacobian of the final parameters with respect to the initial ones, J = ∂θ_T/∂θ_0, and its
singular-value spectrum with the chaotic (σ > 1), bulk (σ ≈ 1) and stable (σ < 1) regions labelled (Belrose &
Scherlis 2024, "Understanding Gradient Descent through the Training Jacobian").

Setup: MLP 64-8-10 tanh (P = 610) on 256 scikit-learn digits, cross-entropy, full-batch gradient descent (lr 0.5,
100 steps), fp64, written with ``torch.func`` so that every column of J is one forward-mode (jvp) pass through the whole
run. Check: J v against central finite differences of the training run for random directions v. The bulk is tested
as "training does not act there": for right singular vectors with σ ≈ 1, also J v ≈ v (cosine). The input weights of
pixels that are zero in every training image receive no gradient and are an exact part of the bulk; their count is
reported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..jacobian import jacobian_fd, spectrum_regions, training_jacobian
from ._common import Report, load_digits, mlp, num

NAME = "training-jacobian"
DESCRIPTION = "singular values of ∂θ_T/∂θ_0 (forward mode, checked by finite differences): chaotic / bulk / stable"
TOL = 0.01


def run(quick: bool = False, seed: int = 0) -> Report:
    """Build the functional training run, its Jacobian and spectrum; return the report."""
    from torch.func import functional_call, grad

    hidden, samples, steps, lr = (4, 128, 30, 0.5) if quick else (8, 256, 100, 0.5)
    xtr, ytr, _, _ = load_digits(seed=seed)
    x, y = xtr[:samples].double(), ytr[:samples]
    net = mlp([64, hidden, 10], seed=seed, dtype=torch.float64)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]
    P = sum(sizes)

    def unflat(th: Tensor) -> dict[str, Tensor]:
        return {n: t.view(s) for n, t, s in zip(names, th.split(sizes), shapes)}

    def loss(th: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(net, unflat(th), (x,)), y)

    step = grad(loss)

    def train(th: Tensor) -> Tensor:
        for _ in range(steps):
            th = th - lr * step(th)
        return th

    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    with torch.no_grad():
        theta_t = train(theta0)
        loss0, loss_t = float(loss(theta0)), float(loss(theta_t))
    jac = training_jacobian(train, theta0, method="forward", chunk=128)
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(P, 3, generator=gen, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    fd = jacobian_fd(train, theta0, dirs, eps=1e-5)
    fd_err = float(((fd - jac @ dirs).norm(dim=0) / (jac @ dirs).norm(dim=0)).max())
    u, s, vh = torch.linalg.svd(jac)
    regions = {str(t): spectrum_regions(s, t) for t in (1e-3, 1e-2, 1e-1)}
    bulk = ((s - 1).abs() <= TOL).nonzero().flatten()
    v_bulk = vh[bulk].T
    bulk_cos = (jac @ v_bulk * v_bulk).sum(0) / (jac @ v_bulk).norm(dim=0).clamp_min(1e-300)
    dead_pixels = int((x.abs().sum(0) == 0).sum())
    main = regions[str(TOL)]
    results = {
        "setup": {"model": f"MLP 64-{hidden}-10 tanh", "samples": samples, "loss": "cross-entropy",
                  "optimizer": f"full-batch GD lr {lr}", "steps": steps, "P": P, "dtype": "float64", "tol": TOL},
        "loss_initial": loss0, "loss_final": loss_t,
        "singular_values": s,
        "regions": regions,
        "chaotic": main["chaotic"], "bulk": main["bulk"], "stable": main["stable"],
        "forward_vs_finite_difference_max_rel_error": fd_err,
        "bulk_cosine_Jv_v_mean": float(bulk_cos.mean()) if bulk.numel() else float("nan"),
        "bulk_cosine_Jv_v_min": float(bulk_cos.min()) if bulk.numel() else float("nan"),
        "dead_input_pixels": dead_pixels,
        "dead_pixel_weights_in_bulk_exactly": dead_pixels * hidden,
        "sigma_max": float(s[0]), "sigma_min": float(s[-1]),
        "log_det_abs": float(torch.log(s.clamp_min(1e-300)).sum()),
    }
    summary = [
        ("training loss initial → final", f"{num(loss0)} → {num(loss_t)}", ""),
        ("forward-mode vs finite differences, max rel. error", num(fd_err), "< 1e-6"),
        (f"regions at tol {TOL}: chaotic / bulk / stable", f"{main['chaotic']} / {main['bulk']} / {main['stable']}",
         f"P = {P}"),
        ("regions at tol 0.1: chaotic / bulk / stable",
         f"{regions['0.1']['chaotic']} / {regions['0.1']['bulk']} / {regions['0.1']['stable']}", ""),
        ("σ_max / σ_min", f"{num(float(s[0]))} / {num(float(s[-1]))}", ""),
        ("bulk: mean cos(J v, v) over σ≈1 singular vectors", num(results["bulk_cosine_Jv_v_mean"]), "≈ 1 (J ≈ I there)"),
        ("input weights of always-zero pixels (exact bulk)", str(dead_pixels * hidden), f"≤ bulk {main['bulk']}"),
    ]

    def spectrum_fig(fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        idx = torch.arange(1, P + 1)
        colors = ["tab:red" if v > 1 + TOL else "tab:green" if v >= 1 - TOL else "tab:blue" for v in s.tolist()]
        ax1.scatter(idx, s.clamp_min(1e-18), c=colors, s=6)
        ax1.set_yscale("log")
        ax1.axhline(1.0, color="k", lw=0.8)
        ax1.set_xlabel("index")
        ax1.set_ylabel("singular value of ∂θ_T/∂θ_0")
        ax1.set_title(
            f"chaotic {main['chaotic']} (red) / bulk {main['bulk']} (green) / stable {main['stable']} (blue)", fontsize=9
        )
        logs = torch.log10(s.clamp_min(1e-18))
        ax2.hist(logs.tolist(), bins=80)
        ax2.axvline(0.0, color="k", lw=0.8)
        ax2.set_xlabel("log10 σ")
        ax2.set_title("histogram of singular values")

    return Report(NAME, results, summary, {"jacobian_spectrum": spectrum_fig})
