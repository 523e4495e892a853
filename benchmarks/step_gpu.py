#!/usr/bin/env python
"""The step benchmark of ``benchmarks/step.py`` on a GPU: a LLaMA-350M-shaped stack in bf16, ``torch.cuda.Event`` timings.

One command, a few minutes on one GPU; never required by the tests::

    python benchmarks/step_gpu.py --json step_gpu.json --md step_gpu.md        # on a machine with a GPU
    python benchmarks/step_gpu.py --device cpu --quick --no-peers --json -     # smoke run of the same code on CPU

Same contenders, table, targets and JSON as ``step.py`` (whose functions it calls), at one size: 24 layers, hidden
1024, MLP 2736, vocab 32000 (embeddings and ``lm_head`` in full space, as GaLore's LLaMA-350M), rank 256, bf16 weights
and gradients (``--size 1b``: 24 layers, hidden 2048, MLP 5461, rank 512). Two lower bounds are timed in the same
round-robin: the projection GEMMs in fp32 (the precision gradspace computes a bf16 weight's update in; the targets use
this one) and in bf16 (what a bf16-native implementation would pay). On a GPU the non-refresh GaLore step is
memory-bound (it reads G, reads and writes W, touches small moments) while AdamW reads and writes two full moments, so
the JSON also records ``gpu_galore_over_adamw``: GaLoreAdamW's step over AdamW's (fused and foreach). Refresh spikes:
100 steps, a refresh every 50, with and without ``refresh_stagger``, on 8 of the layers.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step  # noqa: E402  (benchmarks/step.py: the one implementation of the benchmark)
import torch  # noqa: E402

GPU_SIZES = {
    "350m": step.Size("350m", 24, 1024, 2736, 256, vocab=32000),
    "1b": step.Size("1b", 24, 2048, 5461, 512, vocab=32000),
}
QUICK_SIZE = step.Size("quick", 2, 64, 172, 16, vocab=128)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = step.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--size", choices=sorted(GPU_SIZES), default="350m", help="model shape (default 350m)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="weights and gradients")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    q = args.quick
    args.repeats = args.repeats if args.repeats is not None else (2 if q else 20)
    args.warmup = args.warmup if args.warmup is not None else (0 if q else 3)
    args.spike_steps = args.spike_steps if args.spike_steps is not None else (6 if q else 100)
    args.spike_every = args.spike_every if args.spike_every is not None else (3 if q else 50)
    size = QUICK_SIZE if q else GPU_SIZES[args.size]
    dtype = getattr(torch, args.dtype)
    bounds = (torch.float32,) if dtype == torch.float32 else (torch.float32, dtype)

    def galore_over_adamw(result: dict) -> dict:
        """The non-refresh GaLoreAdamW step over AdamW's (memory-bound on a GPU: it can in principle be below 1)."""
        rows = {r["name"]: r for r in result["sizes"][size.name]["rows"]}
        if "GaLoreAdamW" not in rows:
            return {}
        g = rows["GaLoreAdamW"]["step_ms_median"]
        ratios = {k: g / rows[k]["step_ms_median"] for k in ("torch.AdamW(fused)", "torch.AdamW(foreach)") if k in rows}
        return {"gpu_galore_over_adamw" if device.type == "cuda" else "galore_over_adamw": ratios,
                "notes": ["GaLoreAdamW non-refresh step / AdamW on " + device.type + ": "
                          + ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items())]}

    # the spike runs pay every weight's SVD three times (step 0 of both runs, step T unstaggered) plus once spread out:
    # 8 of the layers keep that to about a minute on a GPU
    spike_size = size if q else dataclasses.replace(size, name=f"{size.name}-8L", layers=min(8, size.layers))
    step.run(f"gradspace step benchmark ({device.type}, {args.dtype})", args, [size], spike_size, device, dtype, bounds,
             argv, main_sizes=(size.name,), extra=galore_over_adamw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
