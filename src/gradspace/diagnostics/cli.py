"""``gradspace analyze NAME [--quick] [--out DIR]``: run a reproduction, write DIR/results.json and PNGs, print a table."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .analyses import ANALYSES


def add_parser(subparsers: Any) -> None:
    """Register the ``analyze`` subcommand on the top-level CLI's subparsers."""
    p = subparsers.add_parser(
        "analyze",
        help="run an instrument reproduction (tiny-subspace, trajectory-pca, ...) and write results.json + plots",
        description=(
            "Reproduce a measurement paper on a small CPU problem; writes OUT/results.json and PNG plots and prints a "
            "summary. Analyses: " + ", ".join(ANALYSES) + "."
        ),
    )
    p.add_argument("name", choices=sorted(ANALYSES), metavar="NAME", help="one of: " + ", ".join(sorted(ANALYSES)))
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes (a smoke test, not the result)")
    p.add_argument("--out", default=None, help="output folder (default: runs/analyze/NAME)")
    p.add_argument("--seed", type=int, default=0, help="seed of data split, init and batches (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: small models, reproducible)")
    p.add_argument("--no-plots", action="store_true", help="write only results.json (no matplotlib needed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run one analysis from parsed arguments; returns the exit status."""
    import torch

    from . import analyses
    from .analyses._common import print_summary, require_matplotlib, write

    if not args.no_plots:
        try:
            require_matplotlib()  # fail before minutes of compute, naming the extra to install
        except ImportError as err:
            print(f"gradspace analyze: {err}", file=sys.stderr)
            return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or os.path.join("runs", "analyze", args.name)
    module = analyses.load(args.name)
    t0 = time.perf_counter()
    report = module.run(quick=args.quick, seed=args.seed)
    report.results.setdefault("quick", bool(args.quick))
    report.results.setdefault("seed", args.seed)
    report.results["seconds"] = round(time.perf_counter() - t0, 2)
    written = write(report, out, plots=not args.no_plots)
    print_summary(report)
    print(f"wrote {', '.join(written)} ({report.results['seconds']} s)")
    return 0
