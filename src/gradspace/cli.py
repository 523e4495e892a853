"""The ``gradspace`` command line: each subcommand lives in the module of the capability it runs.

A subcommand module defines ``add_parser(subparsers) -> None`` that registers its parser and sets
``func=callable(args) -> int`` as a default. Modules are imported only when present, so ``import gradspace`` and
``gradspace --help`` need nothing beyond torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Sequence

#: subcommand modules, in the order ``--help`` lists them
COMMAND_MODULES = (
    "gradspace.bench.cli",
    "gradspace.bench.memory",
    "gradspace.bench.fit",
    "gradspace.diagnostics.cli",
    "gradspace.intrinsic.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradspace", description="Subspace optimizers: benchmarks and instruments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            present = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            present = False
        if present:
            importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
