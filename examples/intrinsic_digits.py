"""Intrinsic dimension of the digits MLP (Li et al. 2018): train θ = θ₀ + P z in random subspaces, find d_int90.

    python examples/intrinsic_digits.py --quick                  # 64-64-10 MLP, 1 seed: about 20 s on one CPU thread
    python examples/intrinsic_digits.py                          # 64-200-200-10 (D = 55,210), 2 seeds: a few minutes
    python examples/intrinsic_digits.py --projection sparse      # same search with the sparse projection

Same as ``gradspace intrinsic ...``; writes dint.json and accuracy_vs_d.png to --out (default bench_out/intrinsic).
The paper's MNIST FC (784-200-200-10, D = 199,210) has d_int90 ≈ 750.
"""

from __future__ import annotations

import sys

from gradspace.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["intrinsic", *sys.argv[1:]]))
