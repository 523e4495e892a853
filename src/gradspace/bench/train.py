"""One benchmark run: build the task's model from a seed, train it with one optimizer, and measure.

Measured per run (all in the returned dict):

* ``val_loss``: mean cross-entropy (nats per token; per image for digits) over the fixed held-out batches after the
  last step; ``curve``: ``[step, mean train loss since the previous point, val loss]`` at every evaluation point;
* ``state_bytes``: :func:`~gradspace.bench.optimizers.measure_state_bytes` after the last step (for gradspace
  optimizers also their own ``state_bytes()``, which must agree);
* ``step_ms``: median wall time of ``optimizer.step()`` alone (``time.perf_counter`` around the call), steps after
  the first ``timing_skip`` (those include the first SVDs and allocator warm-up); ``step_ms_mean`` is the mean over
  the same steps, so it amortizes periodic refreshes; ``step_cpu_ms`` the median process CPU time of the call;
* ``tokens_per_s``: training tokens (images for digits) per second of the training loop (forward, backward, clipping,
  step; evaluation excluded);
* ``peak_rss_mb``: the process's peak resident set during the run. On Linux the high-water mark is reset at the start
  of each run (``/proc/self/clear_refs``) and read from ``VmHWM``, so it is per run; elsewhere it is ``ru_maxrss``,
  the process peak so far (``peak_rss_method`` says which).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import ByteBatches, Corpus, load_digits_split, resolve_corpus
from .model import LlamaConfig, TinyLlama
from .optimizers import build_optimizer, measure_state_bytes

Emit = Callable[[dict[str, Any]], None]


@dataclass
class TaskConfig:
    """Everything that defines a task run except the optimizer, the lr and the seed."""

    task: str = "lm"
    hidden: int = 256
    intermediate: int = 688
    layers: int = 4
    heads: int = 4
    seq: int = 128
    batch: int = 16
    steps: int = 600
    warmup: int | None = None  # None → 10 % of steps
    val_batches: int = 16
    eval_every: int | None = None  # None → steps // 6
    clip: float = 1.0
    data: str | None = None
    corpus: str | None = None  # "tinyshakespeare" | "stdlib" | None (the documented order)
    allow_download: bool = True
    rank: int | None = None  # None → rank_fraction of each routed weight's smaller side
    rank_fraction: float = 0.25
    gap: int | None = None  # None → steps // 3
    threads: int | None = None
    timing_skip: int = 10
    digits_models: list[str] = field(default_factory=lambda: ["mlp", "cnn"])

    def resolved(self) -> "TaskConfig":
        out = TaskConfig(**asdict(self))
        out.warmup = max(1, self.steps // 10) if self.warmup is None else self.warmup
        out.eval_every = max(1, self.steps // 6) if self.eval_every is None else self.eval_every
        out.gap = max(1, self.steps // 3) if self.gap is None else self.gap
        return out

    def llama(self) -> LlamaConfig:
        return LlamaConfig(vocab_size=256, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads, max_position_embeddings=self.seq)


def warmup_cosine(warmup: int, steps: int, floor: float = 0.1) -> Callable[[int], float]:
    """lr multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``steps``."""

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        t = min(1.0, (s - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _reset_peak_rss() -> str:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM (reset per run)"
    except OSError:
        return "ru_maxrss (process peak so far)"


def _peak_rss_mb(method: str) -> float:
    if method.startswith("VmHWM"):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class DigitsMLP(nn.Sequential):
    """64 → 256 → 256 → 10 ReLU MLP on flattened 8×8 digits."""

    def __init__(self) -> None:
        super().__init__(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


class DigitsCNN(nn.Sequential):
    """conv 3×3 (1→16) → conv 3×3 (16→32) → linear 2048 → 128 → 10; the conv kernels are viewed as (out, in·9) matrices."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 64, 128), nn.ReLU(), nn.Linear(128, 10))


def build_model(cfg: TaskConfig, model: str | None = None) -> nn.Module:
    if cfg.task == "lm":
        return TinyLlama(cfg.llama())
    return {"mlp": DigitsMLP, "cnn": DigitsCNN}[model or "mlp"]()


def run_one(
    cfg: TaskConfig,
    spec: dict[str, Any],
    lr: float,
    seed: int,
    *,
    model_name: str | None = None,
    corpus: Corpus | None = None,
    emit: Emit | None = None,
) -> dict[str, Any]:
    """Train one (task, optimizer, lr, seed) and return the measurements (see the module docstring)."""
    cfg = cfg.resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    emit = emit or (lambda event: None)
    rss_method = _reset_peak_rss()
    torch.manual_seed(seed)
    model = build_model(cfg, model_name)
    lm = cfg.task == "lm"
    if lm:
        corpus = corpus or resolve_corpus(cfg.data, allow_download=cfg.allow_download, kind=cfg.corpus)
        data = ByteBatches(corpus, cfg.seq, cfg.batch, cfg.val_batches, seed)
        target: Any = ("attn", "mlp")
        per_step = cfg.batch * cfg.seq
    else:
        xtr, ytr, xva, yva = load_digits_split()
        gen = torch.Generator().manual_seed(10000 + seed)
        target = "matrices"
        per_step = cfg.batch
    opt, info = build_optimizer(spec, model, lr, target=target, rank=cfg.rank, rank_fraction=cfg.rank_fraction, gap=cfg.gap)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.steps))

    def train_loss() -> torch.Tensor:
        if lm:
            return model.loss(data.next_train())
        idx = torch.randint(0, len(ytr), (cfg.batch,), generator=gen)
        return F.cross_entropy(model(xtr[idx]), ytr[idx])

    @torch.no_grad()
    def evaluate() -> tuple[float, float | None]:
        model.eval()
        try:
            if lm:
                return float(torch.stack([model.loss(b) for b in data.val]).mean()), None
            logits = model(xva)
            return float(F.cross_entropy(logits, yva)), float((logits.argmax(1) == yva).float().mean())
        finally:
            model.train()

    run = f"{spec['name']}{'/' + model_name if model_name else ''} lr={lr:g} seed={seed}"
    emit({"event": "start", "run": run, "steps": cfg.steps})
    step_s, step_cpu, losses, curve = [], [], [], []
    window: list[float] = []
    diverged = False
    val, acc = float("nan"), None
    train_s = 0.0
    progress_every = max(1, cfg.steps // 50)
    for step in range(1, cfg.steps + 1):
        t_start = time.perf_counter()
        loss = train_loss()
        loss.backward()
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        c0, t0 = time.process_time(), time.perf_counter()
        opt.step()
        t1, c1 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        sched.step()
        train_s += time.perf_counter() - t_start
        step_s.append(t1 - t0)
        step_cpu.append(c1 - c0)
        value = loss.detach().item()
        losses.append(value)
        window.append(value)
        if not math.isfinite(value):
            diverged = True
            curve.append([step, None, None])
            break
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val, acc = evaluate()
            curve.append([step, sum(window) / len(window), val])
            window = []
        if step % progress_every == 0 or step == cfg.steps:
            emit({"event": "progress", "run": run, "step": step, "loss": value})
    timed = step_s[cfg.timing_skip:] or step_s
    timed_cpu = step_cpu[cfg.timing_skip:] or step_cpu
    state = measure_state_bytes(opt)
    own = opt.state_bytes() if hasattr(opt, "state_bytes") else None
    tail = losses[-max(1, len(losses) // 10):]
    residual = sorted({g["residual"] for g in opt.param_groups if g.get("projector", "identity") != "identity"
                       and "residual" in g}) or None
    result = {
        "name": spec["name"],
        "optimizer": spec["optimizer"],
        "family": spec["family"],
        "model": model_name or "llama",
        "lr": lr,
        "seed": seed,
        "val_loss": None if diverged or not math.isfinite(val) else val,
        "val_ppl": None if diverged or not math.isfinite(val) else math.exp(min(val, 50.0)),
        "val_acc": acc,
        "train_loss_final": None if diverged else sum(tail) / len(tail),
        "diverged": diverged,
        "state_bytes": state,
        "state_bytes_self_reported": own,
        "step_ms": statistics.median(timed) * 1e3,
        "step_ms_mean": statistics.fmean(timed) * 1e3,
        "step_cpu_ms": statistics.median(timed_cpu) * 1e3,
        "tokens_per_s": per_step * len(losses) / train_s if train_s > 0 else None,
        "train_s": train_s,
        "peak_rss_mb": _peak_rss_mb(rss_method),
        "peak_rss_method": rss_method,
        "n_params": sum(p.numel() for p in model.parameters()),
        "residual": residual,
        "reference": spec["optimizer"] == "torch.optim.AdamW" and not spec["kwargs"].get("fused")
        and spec.get("lowrank_lr_scale") is None,
        "note": spec.get("note", ""),
        "curve": curve,
        **info,
    }
    emit({"event": "end", "run": run})
    return result


def run_job(job: dict[str, Any], emit: Emit | None = None) -> list[dict[str, Any]]:
    """All runs of one optimizer spec: with an lr grid, the sweep on the first seed (extended while the best lr is at
    an edge, :func:`~gradspace.bench.sweep.next_lr`), then the other seeds at the best lr.

    ``job = {"config": TaskConfig fields, "spec": spec, "lrs": [...], "seeds": [...], "model": None | "mlp" | "cnn",
    "max_extensions": int (default 0: the grid only)}``.
    """
    from .sweep import best_lr, next_lr

    cfg = TaskConfig(**job["config"])
    spec, lrs, seeds = job["spec"], job["lrs"], job["seeds"]
    corpus = resolve_corpus(cfg.data, allow_download=cfg.allow_download, kind=cfg.corpus) if cfg.task == "lm" else None
    results = []
    if len(lrs) > 1:
        tried: dict[float, float | None] = {}
        lr: float | None = lrs[0]
        while lr is not None:
            r = run_one(cfg, spec, lr, seeds[0], model_name=job.get("model"), corpus=corpus, emit=emit)
            r["sweep"] = True
            r["extension"] = lr not in lrs
            results.append(r)
            tried[lr] = r["val_loss"]
            lr = next_lr(tried, lrs, int(job.get("max_extensions", 0)))
        best = best_lr(tried)
        best = lrs[0] if best is None else best
        rest = seeds[1:]
    else:
        best, rest = lrs[0], seeds
    for seed in rest:
        r = run_one(cfg, spec, best, seed, model_name=job.get("model"), corpus=corpus, emit=emit)
        r["sweep"] = False
        results.append(r)
    return results


def main() -> int:
    """Subprocess entry (``python -m gradspace.bench.train``): a JSON job on stdin, JSON-line events on stdout."""
    import json

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr (the run's log), not into the event stream
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.read())

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    try:
        for result in run_job(job, emit):
            emit({"event": "result", "result": result})
    except Exception as err:  # reported to the parent, which records the spec as failed
        import traceback

        traceback.print_exc()
        emit({"event": "error", "error": f"{type(err).__name__}: {err}"})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
