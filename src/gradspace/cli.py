"""The ``gradspace`` command line: each subcommand lives in the module of the capability it runs.

A subcommand module defines ``add_parser(subparsers) -> None`` that registers its parser and sets
``func=callable(args) -> int`` as a default. Modules are imported only when present, so ``import gradspace`` and
``gradspace --help`` need nothing beyond torch.

Errors: a subcommand raises :class:`UsageError` (or ``ValueError``) for a mistake in what the user asked; ``main``
prints it as one line, ``gradspace COMMAND: error: ...``, and exits 2. Missing files, network failures and missing
extras (``OSError``, ``ImportError``) print one line and exit 1. ``GRADSPACE_TRACEBACK=1`` shows the traceback
instead. Shared helpers for subcommands: :class:`HelpFormatter` (every default shown), :func:`write_json`
(``--json -`` means stdout) and :func:`step_progress` (a progress bar counting optimizer steps).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: subcommand modules, in the order ``--help`` lists them
COMMAND_MODULES = (
    "gradspace.bench.cli",
    "gradspace.bench.memory",
    "gradspace.bench.fit",
    "gradspace.diagnostics.cli",
    "gradspace.intrinsic.cli",
)

#: exit status of a usage error (as argparse's), of a runtime failure, and of Ctrl-C
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A mistake in the command line or its inputs: ``main`` prints the message as one line and exits 2.

    Examples:
        >>> import sys
        >>> sys.stderr = sys.stdout  # (to show the message here)
        >>> _report_error(UsageError("--seeds 0 must be >= 1"), "intrinsic")
        gradspace intrinsic: error: --seeds 0 must be >= 1
        2
        >>> sys.stderr = sys.__stderr__
    """


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, ``PROG: error: MESSAGE (see PROG --help)``, exit status 2 (the
    usage block is left to ``--help``). Subcommand parsers made with ``add_parser`` are of this class too."""

    def error(self, message: str) -> Any:  # argparse's signature: never returns
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to every option's help unless the help already names its default or there is none
    (``None``, ``False`` of a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def write_json(data: Any, dest: str | os.PathLike[str], *, indent: int | None = 1) -> str:
    """Write ``data`` as JSON to the file ``dest`` (parents created), or to stdout when ``dest`` is ``"-"``.

    Args:
        data: a JSON-serializable object.
        dest: a path, or ``"-"`` for standard output.
        indent: ``json.dumps`` indentation.

    Returns:
        Where it went, for messages: the path, or ``"stdout"``.

    Examples:
        >>> write_json({"a": 1}, "-", indent=None)
        {"a": 1}
        'stdout'
    """
    text = json.dumps(data, indent=indent, default=str)
    if str(dest) == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return "stdout"
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return str(path)


def bounded(kind: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> Any:
    """An argparse ``type`` that parses ``kind`` and refuses values outside ``[lo, hi]`` (bounds optional/open),
    naming the allowed range: ``--seeds 0`` → ``error: argument --seeds: 0 is not an int >= 1``.

    Examples:
        >>> bounded(int, 1)("3")
        3
        >>> bounded(float, 0, 1, lo_open=True)("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: 0 is not a float in (0, 1]
    """
    if lo is not None and hi is not None:
        allowed = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        allowed = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        allowed = f"{'<' if hi_open else '<='} {hi:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an {kind.__name__}" if kind is int else
                                             f"{text!r} is not a {kind.__name__}") from None
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            raise argparse.ArgumentTypeError(f"{text} is not a{'n' if kind is int else ''} {kind.__name__} {allowed}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def json_arg(value: str) -> str:
    """argparse ``type`` of a ``--json`` option: a file path or ``-`` (stdout); refuses an existing directory."""
    if value != "-" and Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory; give a file name, or - for stdout")
    return value


def say(*parts: Any, json_to_stdout: bool = False) -> None:
    """Print a human-readable line: to stdout, or to stderr when stdout carries JSON (``--json -``)."""
    print(*parts, file=sys.stderr if json_to_stdout else sys.stdout)


@contextlib.contextmanager
def step_progress(desc: str, *, enabled: bool = True, total: int | None = None, unit: str = "step") -> Iterator[Any]:
    """A tqdm bar on stderr counting every ``torch.optim`` optimizer step taken inside the block.

    Uses a global optimizer step post-hook, so any training loop inside shows progress without being changed. Yields
    the bar (``None`` when disabled, when stderr is not a terminal, or when tqdm is not installed), so the caller can
    ``set_postfix``.

    Args:
        desc: the bar's label.
        enabled: ``False`` for no bar (``--quiet``).
        total: the number of steps expected, if known.
        unit: the counted unit's name.

    Examples:
        >>> import torch
        >>> with step_progress("demo", enabled=False) as bar:
        ...     bar is None
        True
    """
    bar = None
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is in the [bench]/[dev] extras, not a dependency
            tqdm = None
        if tqdm is not None:
            bar = tqdm(desc=desc, total=total, unit=unit, disable=None, file=sys.stderr, dynamic_ncols=True)
            if bar.disable:  # not a terminal
                bar.close()
                bar = None
    if bar is None:
        yield None
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda *_: bar.update(1))
    try:
        yield bar
    finally:
        handle.remove()
        bar.close()


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand that is present in this install."""
    parser = ArgumentParser(prog="gradspace", description="Subspace optimizers: benchmarks and instruments.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"gradspace {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            present = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            present = False
        if present:
            importlib.import_module(name).add_parser(sub)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(err).__name__


def _report_error(err: BaseException, command: str | None) -> int:
    """Print ``err`` as one line on stderr and return the exit status for it."""
    prog = f"gradspace {command}" if command else "gradspace"
    usage = isinstance(err, (UsageError, ValueError, KeyError)) or any(
        c.__name__ == "UsageError" for c in type(err).__mro__)  # subcommands' own UsageError classes too
    status = EXIT_USAGE if usage else EXIT_FAILURE
    print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gradspace ARGS``; returns the exit status (0 ok, 1 failure, 2 usage error, 130 interrupted).

    Examples:
        >>> main(["--version"])  # doctest: +SKIP
        gradspace 0.1.0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    command = getattr(args, "command", None)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"gradspace {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        expected = isinstance(err, (UsageError, ValueError, KeyError, OSError, ImportError)) or any(
            c.__name__ == "UsageError" for c in type(err).__mro__)
        if not expected or os.environ.get("GRADSPACE_TRACEBACK"):
            raise  # a bug: keep the traceback
        return _report_error(err, command)


if __name__ == "__main__":
    raise SystemExit(main())
