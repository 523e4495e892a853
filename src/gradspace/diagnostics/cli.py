"""``gradspace analyze NAME [--quick] [--out DIR] [--json FILE|-]``: run a reproduction, write DIR/results.json and
PNGs, print a table."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

from ..cli import HelpFormatter, bounded, json_arg, step_progress, write_json
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
        formatter_class=HelpFormatter,
    )
    p.add_argument("name", choices=sorted(ANALYSES), metavar="NAME", help="one of: " + ", ".join(sorted(ANALYSES)))
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes (a smoke test, not the result)")
    p.add_argument("--out", default=None, help="output folder (default: runs/analyze/NAME)")
    p.add_argument("--seed", type=int, default=0, help="seed of data split, init and batches")
    p.add_argument("--threads", type=bounded(int, 1), default=1, help="torch CPU threads (the models are small: 1 is fast and reproducible)")
    p.add_argument("--no-plots", action="store_true", help="write only results.json (no matplotlib needed)")
    p.add_argument("--json", type=json_arg, default=None, metavar="FILE",
                   help="also write the results as JSON to FILE; '-' writes them to stdout (the table then goes to "
                        "stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run one analysis from parsed arguments; returns the exit status."""
    import torch

    from . import analyses
    from .analyses._common import print_summary, require_matplotlib, to_jsonable, write

    if not args.no_plots:
        try:
            require_matplotlib()  # fail before minutes of compute, naming the extra to install
        except ImportError as err:
            print(f"gradspace analyze: {err}", file=sys.stderr)
            return 1
    torch.set_num_threads(args.threads)
    out = args.out or os.path.join("runs", "analyze", args.name)
    module = analyses.load(args.name)
    to_stdout = args.json == "-"
    # with --json -, stdout carries only the JSON: everything the analysis prints goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
        t0 = time.perf_counter()
        with step_progress(f"analyze {args.name}", enabled=not args.quiet):
            report = module.run(quick=args.quick, seed=args.seed)
        report.results.setdefault("quick", bool(args.quick))
        report.results.setdefault("seed", args.seed)
        report.results["seconds"] = round(time.perf_counter() - t0, 2)
        written = write(report, out, plots=not args.no_plots)
        print_summary(report)
        print(f"wrote {', '.join(written)} ({report.results['seconds']} s)")
    if args.json:
        where = write_json(to_jsonable({"analysis": report.name, **report.results}), args.json)
        if not to_stdout:
            print(f"wrote {where}")
    return 0
