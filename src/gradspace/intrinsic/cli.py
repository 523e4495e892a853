"""``gradspace intrinsic``: the d_int90 search on the digits MLP (Li et al. 2018), with a plot of accuracy vs d."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

import torch

from ..cli import HelpFormatter, bounded, json_arg, step_progress, write_json
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
        formatter_class=HelpFormatter,
    )
    p.add_argument("--hidden", type=bounded(int, 1), nargs="+", default=[200, 200],
                   help="hidden widths of the 64-…-10 ReLU MLP (200 200: D = 55,210)")
    p.add_argument("--projection", choices=("dense", "sparse", "fastfood"), default="fastfood",
                   help="random projection P (fastfood: O(D) memory)")
    p.add_argument("--epochs", type=bounded(int, 1), default=20, help="training epochs per run")
    p.add_argument("--seeds", type=bounded(int, 1), default=2, help="seeds averaged per d")
    p.add_argument("--threshold", type=bounded(float, 0, 1, lo_open=True), default=0.9,
                   help="fraction of direct accuracy to reach")
    p.add_argument("--d-start", type=bounded(int, 1), default=16, help="first d of the doubling phase")
    p.add_argument("--rtol", type=bounded(float, 0, 1, lo_open=True, hi_open=True), default=0.05,
                   help="stop bisecting at this relative bracket width")
    p.add_argument("--threads", type=bounded(int, 1), default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="64-64-10 MLP, 8 epochs, 1 seed, rtol 0.25 (a smoke run)")
    p.add_argument("--out", default="bench_out/intrinsic", help="output folder")
    p.add_argument("--json", type=json_arg, default=None, metavar="FILE",
                   help="also write the result (dint.json's content) to FILE; '-' writes it to stdout (the table then "
                        "goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    to_stdout = args.json == "-"
    # with --json -, stdout carries only the JSON: the search's and the report's lines go to stderr
    with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
        try:
            with step_progress("intrinsic (training steps)", enabled=not args.quiet) as bar:
                score, D = digits_score_fn(tuple(args.hidden), args.projection, epochs=args.epochs,
                                           seeds=tuple(range(args.seeds)))
                if bar is not None:
                    inner, runs = score, []

                    def score(d):  # type: ignore[no-redef]  # names the d being trained on the bar
                        label = "direct training" if d is None else f"d={d}"
                        bar.set_postfix_str(label + (f", last acc {runs[-1]:.3f}" if runs else ""))
                        runs.append(inner(d))
                        return runs[-1]

                result = find_dint90(score, D, threshold=args.threshold, d_start=args.d_start, rtol=args.rtol,
                                     verbose=True)
        finally:
            torch.set_num_threads(old)
        seconds = time.perf_counter() - start
        config = {"hidden": args.hidden, "projection": args.projection, "epochs": args.epochs, "seeds": args.seeds,
                  "rtol": args.rtol, "seconds": seconds, "paper_mnist_fc_dint90": PAPER_MNIST_FC_DINT90}
        write_result(result, args.out, title=f"digits MLP 64-{'-'.join(map(str, args.hidden))}-10, {args.projection}",
                     extra={"config": config})
        print(_report(result, args, seconds))
        print(f"wrote {os.path.join(args.out, 'dint.json')} and {os.path.join(args.out, 'accuracy_vs_d.png')}")
    if args.json:
        import json

        with open(os.path.join(args.out, "dint.json")) as fh:
            where = write_json(json.load(fh), args.json)
        if not to_stdout:
            print(f"wrote {where}")
    return 0
