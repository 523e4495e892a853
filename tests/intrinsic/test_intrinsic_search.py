"""find_dint90 against exhaustive search on synthetic monotone scores; the CLI end to end on a tiny MLP."""

from __future__ import annotations

import json

import pytest

from gradspace.cli import build_parser, main
from gradspace.intrinsic import PAPER_MNIST_FC_DINT90, find_dint90
from gradspace.intrinsic import cli as intrinsic_cli


def _step_score(true_d: int, calls: list):
    def score(d):
        calls.append(d)
        if d is None:
            return 0.8
        return 0.8 * (0.95 if d >= true_d else 0.5 * d / true_d)
    return score


@pytest.mark.parametrize("true_d", [1, 2, 3, 16, 17, 100, 750, 999, 4097])
def test_exact_search_finds_the_smallest_d_and_brackets_it(true_d):
    calls: list = []
    result = find_dint90(_step_score(true_d, calls), D=10_000, d_start=1, rtol=0.0)
    brute = min(d for d in range(1, 10_000) if _step_score(true_d, [])(d) >= 0.9 * 0.8)
    assert result.d_int == brute == true_d
    lo, hi = result.bracket
    assert hi == true_d and lo == true_d - 1  # rtol 0: an adjacent pair
    assert calls[0] is None and calls.count(None) == 1  # baseline trained once
    evaluated = dict(result.evaluations)
    assert evaluated[hi] >= result.target and (lo == 0 or evaluated[lo] < result.target)
    assert len(calls) <= 2 * 14 + 2  # doubling + bisection, logarithmic


def test_rtol_stops_early_but_keeps_a_valid_bracket_and_baseline_can_be_given():
    calls: list = []
    result = find_dint90(_step_score(300, calls), D=100_000, baseline=0.8, d_start=16, rtol=0.1)
    lo, hi = result.bracket
    assert None not in calls and lo < 300 <= hi and hi - lo <= max(1, 0.1 * hi)
    assert result.d_int == hi and [d for d, _ in result.evaluations][:6] == [16, 32, 64, 128, 256, 512]


def test_unreachable_target_and_bad_arguments():
    result = find_dint90(lambda d: 0.1 if d is not None else 1.0, D=200, d_start=8)
    assert result.d_int is None and result.bracket == (199, None)
    assert [d for d, _ in result.evaluations] == [8, 16, 32, 64, 128, 199]
    with pytest.raises(ValueError, match="d_start=0"):
        find_dint90(lambda d: 1.0, D=100, d_start=0)
    with pytest.raises(ValueError, match="d_start=100"):
        find_dint90(lambda d: 1.0, D=100, d_start=100)
    with pytest.raises(ValueError, match="threshold=1.5"):
        find_dint90(lambda d: 1.0, D=100, threshold=1.5)


def test_plot_and_json(tmp_path):
    pytest.importorskip("matplotlib")
    from gradspace.intrinsic import write_result

    result = find_dint90(_step_score(40, []), D=1000, d_start=4, rtol=0.0)
    write_result(result, tmp_path, extra={"note": "x"})
    saved = json.loads((tmp_path / "dint.json").read_text())
    assert saved["d_int"] == 40 and saved["note"] == "x" and saved["bracket"] == [39, 40]
    assert (tmp_path / "accuracy_vs_d.png").stat().st_size > 1000


def test_intrinsic_subcommand_is_registered():
    args = build_parser().parse_args(["intrinsic", "--projection", "dense", "--seeds", "3"])
    assert args.func is intrinsic_cli.run and args.projection == "dense" and args.seeds == 3


def test_cli_runs_the_digits_search_end_to_end(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    rc = main(["intrinsic", "--hidden", "8", "--epochs", "1", "--seeds", "1", "--d-start", "64", "--rtol", "0.5",
               "--projection", "sparse", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"d_int90 ≈ {PAPER_MNIST_FC_DINT90}" in out and "D = 610" in out
    saved = json.loads((tmp_path / "dint.json").read_text())
    assert saved["D"] == 64 * 8 + 8 + 8 * 10 + 10 and saved["config"]["projection"] == "sparse"
    assert saved["evaluations"][0][0] == 64
