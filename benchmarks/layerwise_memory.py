"""Peak memory of normal vs layer-wise (optimizer-in-backward) steps, each mode in its own process.

Prints a table and writes JSON. What is measured: the process's peak resident set size (``ru_maxrss``) over a few
training steps of a stack of Linear layers, and the bytes of ``.grad`` buffers still alive right after backward.

    python benchmarks/layerwise_memory.py [--layers 8 --hidden 1024 --out bench_out/layerwise_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys


def _child(mode: str, layers: int, hidden: int, steps: int, lm: bool) -> dict:
    import torch

    import gradspace

    torch.manual_seed(0)
    torch.set_num_threads(2)
    if lm:  # the bench LM: LLaMA-style byte decoder with `layers` blocks of width `hidden`
        from gradspace.bench.model import LlamaConfig, TinyLlama

        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers)
        model = TinyLlama(cfg)
        groups = gradspace.param_groups(model, rank=hidden // 4, verbose=False)
        batch = lambda: (torch.randint(0, cfg.vocab_size, (8, 64)),)  # noqa: E731
        loss_fn = lambda ids: model.loss(ids)  # noqa: E731
    else:
        model = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden, bias=False) for _ in range(layers)])
        groups = model.parameters()
        batch = lambda: (torch.randn(8, hidden),)  # noqa: E731
        loss_fn = lambda x: model(x).square().mean()  # noqa: E731
    opt = gradspace.SubspaceOptimizer(groups, lr=1e-3, rank=hidden // 8, refresh_every=100)
    stepper = gradspace.LayerwiseStepper(opt) if mode == "layerwise" else None
    alive = 0
    for _ in range(steps):
        loss_fn(*batch()).backward()
        alive = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
        if stepper is None:
            opt.step()
            opt.zero_grad()
    return {
        "mode": mode,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "grad_bytes_alive_after_backward": alive,
        "param_bytes": sum(p.numel() * 4 for p in model.parameters()),
        "state_bytes": opt.state_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", choices=["linear", "lm"], default="linear",
                        help="a stack of square Linear layers, or the bench LM (gradspace.bench.model.TinyLlama)")
    parser.add_argument("--out", default="bench_out/layerwise_memory.json")
    parser.add_argument("--child", choices=["normal", "layerwise"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.layers, args.hidden, args.steps, args.model == "lm")))
        return
    rows = []
    for mode in ("normal", "layerwise"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--layers", str(args.layers), "--hidden", str(args.hidden),
             "--steps", str(args.steps), "--model", args.model], check=True, capture_output=True, text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]["peak_rss_mb"]
    print(f"| mode | peak RSS MiB | Δ vs normal MiB | .grad bytes alive after backward | params MiB | state MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - base:+.0f} | "
              f"{r['grad_bytes_alive_after_backward']:,} | {r['param_bytes'] / 2**20:.0f} | {r['state_bytes'] / 2**20:.1f} |")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"config": vars(args), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                   "runs": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
