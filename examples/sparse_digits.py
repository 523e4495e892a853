"""Sparse momentum vs SET vs RigL vs static sparse vs dense on digits (64-256-256-10 MLP, every weight matrix sparse).

    python examples/sparse_digits.py --quick          # 10 epochs, 3 seeds: about a minute on one CPU thread
    python examples/sparse_digits.py --seeds 5        # the full run: 20 epochs

Writes results.json, results.md and accuracy_vs_density.png to --out (default bench_out/sparse_digits).
"""

from __future__ import annotations

import argparse

from gradspace.sparse.bench import run_sparse_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 epochs instead of 20")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default="bench_out/sparse_digits", help="output folder")
    args = parser.parse_args()
    result = run_sparse_benchmark(args.out, quick=args.quick, seeds=args.seeds, threads=args.threads)
    with open(f"{args.out}/results.md") as fh:
        print(fh.read())
    failed = [c["check"] for c in result["checks"] if not c["pass"]]
    print("all ordering checks passed" if not failed else f"ordering checks that did not hold: {failed}")


if __name__ == "__main__":
    main()
