"""``gradspace intrinsic``: the d_int90 search on the digits MLP (Li et al. 2018), with a plot of accuracy vs d."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch

from .search import PAPER_MNIST_FC_DINT90, DintResult, find_dint90, write_result


def add_parser(subparsers: Any) -> None:
    """Register ``gradspace intrinsic`` (the CLI dispatcher calls this).

    Examples:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="gradspace")
        >>> add_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["intrinsic", "--quick", "--projection", "sparse"])
        >>> args.projection, args.quick, args.func is run
        ('sparse', True, True)
    """
    p = subparsers.add_parser(
        "intrinsic",
        help="d_int90 of the digits MLP: smallest random-subspace dimension reaching 90%% of direct training",
        description="Train the digits MLP in random d-dim subspaces θ = θ₀ + P z (Li et al. 2018) and search the "
                    "smallest d whose validation accuracy reaches THRESHOLD × direct training (doubling, then "
                    "bisection). Writes dint.json and accuracy_vs_d.png to --out.",
    )
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200],
                   help="hidden widths of the 64-…-10 ReLU MLP (default 200 200: D = 55,210)")
    p.add_argument("--projection", choices=("dense", "sparse", "fastfood"), default="fastfood",
                   help="random projection P (default fastfood: O(D) memory)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs per run (default 20)")
    p.add_argument("--seeds", type=int, default=2, help="seeds averaged per d (default 2)")
    p.add_argument("--threshold", type=float, default=0.9, help="fraction of direct accuracy to reach (default 0.9)")
    p.add_argument("--d-start", type=int, default=16, help="first d of the doubling phase (default 16)")
    p.add_argument("--rtol", type=float, default=0.05, help="stop bisecting at this relative bracket width (0.05)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quick", action="store_true", help="64-64-10 MLP, 8 epochs, 1 seed, rtol 0.25 (a smoke run)")
    p.add_argument("--out", default="bench_out/intrinsic", help="output folder (default bench_out/intrinsic)")
    p.set_defaults(func=run)


def _report(result: DintResult, args: argparse.Namespace, seconds: float) -> str:
    lines = [f"{'d':>8}  val. accuracy", *(f"{d:>8}  {s:.4f}" for d, s in sorted(result.evaluations))]
    found = f"d_int{round(100 * args.threshold)} = {result.d_int}" if result.d_int is not None else \
        f"no d ≤ {result.bracket[0]} reached the target"
    lines += [
        f"direct training: {result.baseline:.4f}; target {result.threshold:g} × direct = {result.target:.4f}",
        f"digits MLP 64-{'-'.join(map(str, args.hidden))}-10 (D = {result.D:,}), projection {args.projection}, "
        f"{args.seeds} seed(s), {args.epochs} epochs: {found} (bracket {result.bracket}, d/D = "
        f"{(result.d_int or 0) / result.D:.4f}) in {seconds:.0f} s",
        f"paper (Li et al. 2018): MNIST FC 784-200-200-10 (D = 199,210): d_int90 ≈ {PAPER_MNIST_FC_DINT90}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the search described by ``args``; print the table and write ``dint.json`` + ``accuracy_vs_d.png``.

    Examples:
        >>> from gradspace.cli import main
        >>> main(["intrinsic", "--quick", "--out", "bench_out/intrinsic_quick"])  # doctest: +SKIP
        0
    """
    from .digits import digits_score_fn

    if args.quick:
        args.hidden, args.epochs, args.seeds, args.rtol = [64], 8, 1, 0.25
    if args.seeds < 1 or args.epochs < 1:
        raise SystemExit(f"gradspace intrinsic: --seeds ({args.seeds}) and --epochs ({args.epochs}) must be ≥ 1.")
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        score, D = digits_score_fn(tuple(args.hidden), args.projection, epochs=args.epochs,
                                   seeds=tuple(range(args.seeds)))
        result = find_dint90(score, D, threshold=args.threshold, d_start=args.d_start, rtol=args.rtol, verbose=True)
    finally:
        torch.set_num_threads(old)
    seconds = time.perf_counter() - start
    config = {"hidden": args.hidden, "projection": args.projection, "epochs": args.epochs, "seeds": args.seeds,
              "rtol": args.rtol, "seconds": seconds, "paper_mnist_fc_dint90": PAPER_MNIST_FC_DINT90}
    write_result(result, args.out, title=f"digits MLP 64-{'-'.join(map(str, args.hidden))}-10, {args.projection}",
                 extra={"config": config})
    print(_report(result, args, seconds))
    print(f"wrote {os.path.join(args.out, 'dint.json')} and {os.path.join(args.out, 'accuracy_vs_d.png')}")
    return 0
