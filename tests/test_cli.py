"""The ``gradspace`` command line: --version, exit statuses, one-line errors, ``--json -``, help with defaults."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import gradspace
from gradspace import cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"gradspace {gradspace.__version__}"


def test_console_entry_point_exits_with_the_status(tmp_path):
    # the real process: `python -m gradspace` (what the console script runs)
    run = subprocess.run([sys.executable, "-m", "gradspace", "intrinsic", "--seeds", "0"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "gradspace intrinsic: error: argument --seeds: 0 is not an int >= 1 (see gradspace intrinsic --help)"]


@pytest.mark.parametrize("argv, fragment", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["analyze", "tiny-subspace", "--threads", "0"], "--threads: 0 is not an int >= 1"),
    (["intrinsic", "--threshold", "1.5"], "--threshold: 1.5 is not a float in (0, 1]"),
    (["intrinsic", "--rtol", "x"], "--rtol: 'x' is not a float"),
    (["intrinsic", "--json", "."], "'.' is a directory"),
])
def test_usage_errors_are_one_line_with_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


_BUILD = cli.build_parser


def _with_command(monkeypatch, func):
    """main() with one extra subcommand ``boom`` whose ``func`` is ``func``."""
    def patched():
        parser = _BUILD()
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        action.add_parser("boom").set_defaults(func=func)
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)


class _OwnUsageError(Exception):
    """A subcommand's own class of that name (bench defines one): recognised by name."""


_OwnUsageError.__name__ = "UsageError"


@pytest.mark.parametrize("error, status", [
    (cli.UsageError("--steps -3 must be >= 1"), 2),
    (_OwnUsageError("--steps -3 must be >= 1"), 2),
    (ValueError("unknown optimizer 'nosuch';\nchoose one of ['adamw']"), 2),
    (KeyError("unknown optimizer 'nosuch'"), 2),
    (OSError("We couldn't connect to 'https://huggingface.co'"), 1),
    (ImportError("transformers is not installed"), 1),
])
def test_subcommand_errors_become_one_line_and_a_status(monkeypatch, capsys, error, status):
    def func(args):
        raise error

    _with_command(monkeypatch, func)
    assert cli.main(["boom"]) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("gradspace boom: error: ") and "Traceback" not in err
    if isinstance(error, ValueError):
        assert "nosuch'; choose one of" in err  # the message's lines joined, not cut
    assert "'unknown optimizer" not in err  # a KeyError's message is not repr-quoted


def test_bugs_keep_their_traceback_and_the_env_switch_shows_all(monkeypatch):
    def func(args):
        raise RuntimeError("a bug")

    _with_command(monkeypatch, func)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["boom"])

    def usage(args):
        raise cli.UsageError("x")

    _with_command(monkeypatch, usage)
    monkeypatch.setenv("GRADSPACE_TRACEBACK", "1")
    with pytest.raises(cli.UsageError):
        cli.main(["boom"])


def test_every_option_has_help_and_shows_its_default():
    subs = _subparsers(cli.build_parser())
    for name in ("analyze", "intrinsic"):
        parser = subs[name]
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            if action.default not in (None, False) and action.option_strings:
                assert "default" in parser._get_formatter()._get_help_string(action), (name, action.dest)
        assert "(default: fastfood)" in text if name == "intrinsic" else "(default: 1)" in text


def test_json_dash_writes_only_json_to_stdout(tmp_path, capsys):
    assert cli.main(["analyze", "trajectory-pca", "--quick", "--no-plots", "--quiet", "--out", str(tmp_path),
                     "--json", "-"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # nothing else on stdout
    assert data["analysis"] == "trajectory-pca" and len(data["explained_variance_ratio"]) == 10
    assert data == json.loads((tmp_path / "results.json").read_text()) | {"seconds": data["seconds"]}
    assert "trajectory-pca" in captured.err and "wrote" in captured.err  # the table went to stderr
    assert cli.write_json(data, tmp_path / "sub" / "copy.json") == str(tmp_path / "sub" / "copy.json")
    assert json.loads((tmp_path / "sub" / "copy.json").read_text()) == data


def test_step_progress_counts_optimizer_steps(monkeypatch):
    import torch

    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(tqdm.std.tqdm, "__init__", _tty_tqdm_init(tqdm.std.tqdm.__init__))
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    with cli.step_progress("t") as bar:
        for _ in range(5):
            w.grad = torch.ones(3)
            opt.step()
        assert bar is not None and bar.n == 5
    opt.step()  # the hook is gone after the block
    assert bar.n == 5


def _tty_tqdm_init(init):
    def patched(self, *args, **kwargs):
        kwargs["disable"] = False  # pytest's stderr is not a terminal
        init(self, *args, **kwargs)

    return patched
