#!/usr/bin/env python
"""Train one small byte-level language model with torch AdamW and two gradspace presets, side by side.

Everything runs offline on CPU in 1 to 1.5 minutes on 2 cores. The corpus is raw bytes (vocabulary 256). It is the
first of these that exists:

1. the file named by ``$GRADSPACE_DATA``;
2. ``../shared/data/tinyshakespeare.txt`` relative to the repository root;
3. the Python standard library's own source (``os.py``, ``argparse.py``, ...), which every install has.

The model is a 2-layer pre-norm transformer (hidden 128, 4 heads, MLP 512, context 64, untied input and output
embeddings). ``gradspace.param_groups(model, rank=32)`` gives its 8 attention and MLP matrices a rank-32 subspace.
The embeddings, norms and output head stay in full space. Every optimizer starts from the same initial weights and
sees the same batches in the same order. The three runs advance in lockstep (one step of each in turn), so
background load hits them alike. All runs use 10% linear warm-up then cosine decay to 10% of the peak, gradient
clipping at 1.0 and no weight decay.

Learning rates (one per optimizer, the same for all its groups, as in the anchors' scripts), each the best of a small
grid on this model, corpus and seed (tinyshakespeare, 300 steps, validation loss):

- ``torch.optim.AdamW``: 3e-3 (1e-3 → 2.381, **3e-3 → 2.266**, 1e-2 → 2.515).
- ``gradspace.GaLoreAdamW``: 3e-2 with ``scale=0.25`` and ``update_proj_gap=100`` (3e-3 → 2.406, 1e-2 → 2.292,
  **3e-2 → 2.245**, 1e-1 → 2.294). Scale 0.25 is GaLore's README value; the gap is scaled to a 300-step run.
- ``gradspace.APOLLOMini``: 1e-2 with rank 1 and tensor-wise scale 128, APOLLO's README values for APOLLO-Mini
  (3e-3 → 2.421, **1e-2 → 2.407**, 3e-2 → 2.478).
- ``apollo`` and ``fira`` (optional): 1e-2, not tuned here.

Usage::

    python examples/demo.py              # 300 steps each, 1 to 1.5 minutes
    python examples/demo.py --quick      # 30 steps each, under 20 s (a smoke test)
    python examples/demo.py --steps 600 --optimizers adamw,galore,fira
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-waiting on a shared box

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "gradspace").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
import gradspace  # noqa: E402

STDLIB_FILES = ("os.py", "argparse.py", "textwrap.py", "typing.py", "inspect.py", "functools.py", "subprocess.py",
                "tarfile.py", "zipfile.py", "pathlib.py", "pathlib/__init__.py", "collections/__init__.py",
                "dataclasses.py", "logging/__init__.py", "json/decoder.py", "email/message.py", "difflib.py")


# ---------------------------------------------------------------------------------------------------------------- data
def load_corpus(choice: str = "auto") -> tuple[bytes, str]:
    """The training text as raw bytes, and a description of where it came from."""
    if choice in ("auto", "env") and os.environ.get("GRADSPACE_DATA"):
        path = Path(os.environ["GRADSPACE_DATA"]).expanduser()
        return path.read_bytes(), f"$GRADSPACE_DATA = {path}"
    shakespeare = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
    if choice in ("auto", "shakespeare") and shakespeare.is_file():
        return shakespeare.read_bytes(), f"tinyshakespeare ({shakespeare.relative_to(ROOT.parent)}, next to the repo)"
    stdlib = Path(os.__file__).parent
    parts, used = [], []
    for name in STDLIB_FILES:
        f = stdlib / name
        if f.is_file():
            parts.append(f.read_bytes())
            used.append(name)
    return b"\n".join(parts), f"Python {sys.version.split()[0]} standard library source ({', '.join(used)})"


class Batches:
    """Fixed train batches (a seeded index stream, identical for every optimizer) and fixed validation batches."""

    def __init__(self, data: bytes, ctx: int, batch: int, seed: int) -> None:
        t = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        split = int(0.9 * len(t))
        self.train, self.val = t[:split], t[split:]
        if len(self.val) <= ctx + 1:
            raise SystemExit(f"the corpus has {len(t):,} bytes; it needs at least {10 * (ctx + 2):,} for a 10% "
                             f"validation split of context {ctx}")
        self.ctx, self.batch, self.seed = ctx, batch, seed

    def _take(self, src: torch.Tensor, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(src) - self.ctx - 1, (n,), generator=gen)
        rows = torch.stack([src[i:i + self.ctx + 1] for i in idx.tolist()])
        return rows[:, :-1], rows[:, 1:]

    def train_batches(self, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(10_000 + self.seed)
        return [self._take(self.train, gen, self.batch) for _ in range(steps)]

    def val_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(1234)
        return [self._take(self.val, gen, self.batch) for _ in range(n)]


# --------------------------------------------------------------------------------------------------------------- model
class Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, mlp, bias=False)
        self.out = nn.Linear(mlp, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ByteLM(nn.Module):
    """A 2-layer byte-level transformer: embeddings → blocks → LayerNorm → ``head`` (256 logits)."""

    def __init__(self, d: int = 128, layers: int = 2, heads: int = 4, mlp: int = 512, ctx: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(256, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads, mlp) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 256, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h))


# ---------------------------------------------------------------------------------------------------------- optimizers
DEFAULT_LR = {"adamw": 3e-3, "galore": 3e-2, "apollo_mini": 1e-2, "apollo": 1e-2, "fira": 1e-2}


def make_optimizer(key: str, model: nn.Module, rank: int, gap: int, lr: float | None = None
                   ) -> tuple[str, float, torch.optim.Optimizer, str]:
    """(label, lr, optimizer, setting) for one of: adamw, galore, apollo_mini, apollo, fira."""
    if key not in DEFAULT_LR:
        raise SystemExit(f"unknown optimizer {key!r}; choose from {', '.join(DEFAULT_LR)}")
    lr = DEFAULT_LR[key] if lr is None else lr
    if key == "adamw":
        return "torch.optim.AdamW", lr, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, foreach=True), \
            "foreach, wd 0"
    if key == "galore":
        groups = gradspace.param_groups(model, rank=rank)
        return "gradspace.GaLoreAdamW", lr, gradspace.GaLoreAdamW(groups, lr=lr, update_proj_gap=gap, scale=0.25), \
            f"rank {rank}, scale 0.25, gap {gap}"
    if key == "apollo_mini":
        groups = gradspace.param_groups(model, rank=1, verbose=False)
        return "gradspace.APOLLOMini", lr, gradspace.APOLLOMini(groups, lr=lr, update_proj_gap=gap), \
            f"rank 1, tensor scale 128, gap {gap}"
    if key == "apollo":
        groups = gradspace.param_groups(model, rank=rank, verbose=False)
        return "gradspace.APOLLO", lr, gradspace.APOLLO(groups, lr=lr, update_proj_gap=gap), \
            f"rank {rank}, channel scale 1, gap {gap}"
    if key == "fira":
        groups = gradspace.param_groups(model, rank=rank, verbose=False)
        return "gradspace.Fira", lr, gradspace.Fira(groups, lr=lr, update_proj_gap=gap, alpha=0.25), \
            f"rank {rank}, alpha 0.25, gap {gap}"
    raise AssertionError(key)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Exact optimizer-state bytes: ``state_bytes()`` for gradspace, the state tensors' storages for torch."""
    if isinstance(opt, gradspace.SubspaceOptimizer):
        return opt.state_bytes()
    seen, total = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
                if key not in seen:
                    seen.add(key)
                    total += v.untyped_storage().nbytes()
            elif isinstance(v, (int, float)):
                total += 8
    return total


@torch.no_grad()
def evaluate(model: nn.Module, batches: list) -> float:
    model.eval()
    loss = statistics.fmean(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches)
    model.train()
    return loss


# ---------------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps per optimizer (default 300; quick 30)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 30 steps, 4 validation batches (< 20 s)")
    ap.add_argument("--optimizers", default="adamw,galore,apollo_mini",
                    help="comma-separated: adamw, galore, apollo_mini, apollo, fira (default: the first three)")
    ap.add_argument("--lr", default="", help="per-optimizer learning-rate overrides, e.g. adamw=1e-3,galore=3e-3")
    ap.add_argument("--corpus", choices=("auto", "env", "shakespeare", "stdlib"), default="auto",
                    help="which text to train on (default: $GRADSPACE_DATA, else tinyshakespeare, else stdlib)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--rank", type=int, default=32, help="subspace rank (hidden 128 / 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    steps = args.steps or (30 if args.quick else 300)
    lrs = {k.strip(): float(v) for k, v in (kv.split("=") for kv in args.lr.split(",") if kv.strip())}
    n_val = 4 if args.quick else 16
    gap = max(1, steps // 3)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    data, source = load_corpus(args.corpus)
    print(f"corpus: {source}; {len(data):,} bytes (90% train / 10% validation)")
    batches = Batches(data, args.ctx, args.batch, args.seed)
    train, val = batches.train_batches(steps), batches.val_batches(n_val)

    torch.manual_seed(args.seed)
    base = ByteLM(ctx=args.ctx)
    print(f"model: 2-layer byte transformer, hidden 128, {sum(p.numel() for p in base.parameters()):,} parameters; "
          f"{steps} steps of {args.batch}×{args.ctx} bytes each; subspace refresh every {gap} steps")

    runs = []
    for key in args.optimizers.split(","):
        model = copy.deepcopy(base)
        label, lr, opt, setting = make_optimizer(key.strip(), model, args.rank, gap, lrs.get(key.strip()))
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, warm=warm: (s + 1) / warm if s < warm
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
        runs.append({"label": label, "lr": lr, "setting": setting, "model": model, "opt": opt, "sched": sched,
                     "losses": [], "opt_ms": [], "step_ms": []})

    for step, (x, y) in enumerate(train):  # lockstep: one step of every run in turn
        for r in runs:
            t0 = time.perf_counter()
            loss = F.cross_entropy(r["model"](x).flatten(0, 1), y.flatten())
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 1.0)
            t1 = time.perf_counter()
            r["opt"].step()
            t2 = time.perf_counter()
            r["sched"].step()
            r["losses"].append(loss.item())
            r["opt_ms"].append((t2 - t1) * 1e3)
            r["step_ms"].append((t2 - t0) * 1e3)
        if (step + 1) % max(1, steps // 5) == 0 or step == 0:
            print(f"step {step + 1:4d}: " + "  ".join(f"{r['label']} {r['losses'][-1]:.3f}" for r in runs), flush=True)

    ref = next((state_bytes(r["opt"]) for r in runs if r["label"] == "torch.optim.AdamW"), None)
    tail = max(1, min(20, steps // 5))
    skip = min(5, steps // 4)  # leave out the first steps (lazy state, the first decompositions) from the medians
    print(f"\n| optimizer | lr | setting | final train loss (mean of last {tail}) "
          f"| validation loss ({n_val} fixed batches) | optimizer state bytes | % of AdamW | opt.step ms (median) "
          "| train step ms (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for r in runs:
        sb = state_bytes(r["opt"])
        res = {"optimizer": r["label"], "lr": r["lr"], "train_loss": statistics.fmean(r["losses"][-tail:]),
               "val_loss": evaluate(r["model"], val), "state_bytes": sb,
               "pct_adamw": 100.0 * sb / ref if ref else float("nan"),
               "opt_ms": statistics.median(r["opt_ms"][skip:]), "step_ms": statistics.median(r["step_ms"][skip:])}
        results.append(res)
        print(f"| {r['label']} | {r['lr']:g} | {r['setting']} | {res['train_loss']:.4f} | {res['val_loss']:.4f} | "
              f"{sb:,} | {res['pct_adamw']:.1f}% | {res['opt_ms']:.2f} | {res['step_ms']:.1f} |".replace("nan%", "-"))
    print("\nState bytes cover all parameters (the embeddings, norms and head keep full Adam state in every "
          f"optimizer). Total wall time {time.perf_counter() - t_start:.1f} s; loadavg {os.getloadavg()[0]:.2f}.")
    bad = [r["optimizer"] for r in results if not math.isfinite(r["val_loss"])]
    if bad:
        print(f"non-finite validation loss: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
