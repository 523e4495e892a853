#!/usr/bin/env python
"""A plain PyTorch loop with AdamW swapped for a gradspace preset: the ten-line story.

The only changes from an AdamW loop are the two marked lines: ``param_groups`` decides which weights get a
subspace (2-D ``nn.Linear`` weights, not embeddings or the output layer) and ``GaLoreAdamW`` replaces
``torch.optim.AdamW``. The script trains the same MLP with both on a synthetic regression task and prints the final
loss and the exact optimizer-state bytes of each. On this tiny synthetic task the rank-32 run converges more slowly
than AdamW for the same steps; the benchmarks page compares them on real text with tuned learning rates.

    python examples/plain_loop.py            # 300 steps, a few seconds on CPU
    python examples/plain_loop.py --quick    # 60 steps
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gradspace


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 8))


def train(use_gradspace: bool, steps: int) -> tuple[float, int]:
    model = make_model()
    g = torch.Generator().manual_seed(1)
    target = torch.randn(128, 8, generator=g) / 128**0.5
    if use_gradspace:
        groups = gradspace.param_groups(model, rank=32, verbose=False)                   # changed line 1
        opt = gradspace.GaLoreAdamW(groups, lr=1e-2, update_proj_gap=50, scale=0.25)     # changed line 2
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        x = torch.randn(64, 128, generator=g)
        loss = nn.functional.mse_loss(model(x), x @ target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return loss.item(), state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="60 steps instead of 300")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    steps = args.steps or (60 if args.quick else 300)
    torch.set_num_threads(1)
    for name, flag in (("torch.optim.AdamW", False), ("gradspace.GaLoreAdamW", True)):
        loss, state = train(flag, steps)
        print(f"{name:22s} final loss {loss:.4f}  optimizer state {state / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
