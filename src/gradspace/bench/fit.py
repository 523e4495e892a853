"""``gradspace fit``: train a few real steps of a large LLaMA-shaped model here and hold measured peak memory against the plan.

    planned peak = process baseline + weights + gradients alive + optimizer state + activations + step temporaries

The model is built on the meta device and materialized directly in the target dtype (``to_empty`` then an in-place
N(0, 0.02²) init: never an fp32 copy), every decoder layer runs under activation checkpointing
(``torch.utils.checkpoint``), ``--layerwise`` updates each weight inside backward with
:class:`gradspace.LayerwiseStepper` (no full gradient buffer), and the first step refreshes every subspace (the
randomized range finder replaces GaLore/Fira's full SVD by default). Reported (``--json``): measured peak memory
(peak RSS, ``VmHWM`` after resetting it when the run starts, on CPU; ``torch.cuda.max_memory_allocated`` on CUDA),
the planned peak and its parts (state from :func:`gradspace.bench.memory.plan_state`, exact; the rest estimated here,
see :func:`plan_fit`), seconds per step and the losses.

Example::

    gradspace fit --model llama-7b --optimizer APOLLOMini --layerwise --dtype bf16 --seq 64 --steps 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import RMSNorm, TinyLlama, load_config, named_configs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: presets whose projector is a full SVD: at these sizes ``--projector auto`` swaps in the randomized range finder
SVD_PRESETS = {"GaLoreAdamW", "Fira", "gs-galore", "gs-fira"}
#: optimizer-step temporaries, in fp32 copies of the largest weight (see plan_fit); measured on llama-60m … 1b
STEP_TEMPS = {"torch": 2.0, "gradspace": 3.0}
#: more fp32 copies of the largest weight with quantized moments: its two decoded moments and the encoder's working
#: buffers (codes as int64 indices, the scaled copy); measured on llama-60m: 4.5
QUANT_TEMPS = 5.0


# ----------------------------------------------------------------------------------------------- memory measurement
def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident memory since :meth:`reset`: ``VmHWM`` (reset through ``/proc/self/clear_refs``) on Linux, else the
    process-lifetime ``ru_maxrss``; on CUDA ``torch.cuda.max_memory_allocated``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "ru_maxrss (process lifetime)"

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        kib = _status_kib("VmRSS")
        return 1024 * kib if kib is not None else 0

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        kib = _status_kib("VmHWM") if self.method == "VmHWM" else None
        if kib is None:
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return 1024 * kib


def tune_malloc(threshold: int = 1 << 20) -> str | None:
    """Serve every CPU allocation ≥ ``threshold`` bytes by ``mmap`` (and return it to the OS when freed).

    glibc raises its mmap threshold dynamically (up to 32 MiB) after the first large free, so afterwards gradients and
    step temporaries of a few MiB come from the heap, and freed heap memory that is not at its top stays resident:
    layer-wise APOLLO-Mini on llama-350m grew 0.66 GiB over one backward that way. A fixed threshold
    (``mallopt(M_MMAP_THRESHOLD)``, as ``MALLOC_MMAP_THRESHOLD_`` does) keeps RSS equal to live tensors. Returns a
    label, or ``None`` where glibc's ``mallopt`` is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        if libc.mallopt(m_mmap_threshold, threshold) != 1 or libc.mallopt(m_trim_threshold, threshold) != 1:
            return None
    except (OSError, AttributeError):
        return None
    return f"glibc mallopt M_MMAP_THRESHOLD=M_TRIM_THRESHOLD={threshold}"


class MemoryGuard:
    """A watchdog thread: if resident memory passes ``limit`` bytes, print why and end the process (exit code 3)
    before the machine swaps or the OOM killer picks another process."""

    def __init__(self, limit: int | None, interval: float = 0.05) -> None:
        self.limit, self.interval = limit, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MemoryGuard":
        if self.limit:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            kib = _status_kib("VmRSS")
            if kib is not None and 1024 * kib > self.limit:
                sys.stderr.write(f"\ngradspace fit: resident memory {1024 * kib / 2**30:.2f} GiB passed the guard "
                                 f"--max-rss-gib {self.limit / 2**30:.2f}; stopping.\n")
                sys.stderr.flush()
                os._exit(3)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


# ------------------------------------------------------------------------------------------------------- the model
def build_model(cfg: Any, dtype: torch.dtype, device: torch.device, seed: int = 0, progress: bool = True) -> TinyLlama:
    """``TinyLlama(cfg)`` materialized in ``dtype`` on ``device`` without an fp32 copy: meta → ``to_empty`` → init."""
    model = TinyLlama(cfg, device="meta").to(dtype=dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    modules = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding, RMSNorm))]
    with torch.no_grad():
        for m in _bar(modules, "build model (init in place)", progress, unit="tensor"):
            if isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            else:
                m.weight.normal_(0.0, cfg.initializer_range, generator=gen)
    return model


def loss_fn(model: TinyLlama, ids: Tensor, checkpoint: bool = True) -> Tensor:
    """Next-token cross-entropy of ``ids`` (batch, seq + 1), each decoder layer under activation checkpointing."""
    from torch.utils.checkpoint import checkpoint as ckpt

    x = model.embed_tokens(ids[:, :-1])
    for layer in model.layers:
        x = ckpt(layer, x, use_reentrant=False) if checkpoint else layer(x)
    logits = model.lm_head(model.norm(x))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def warm_up(cfg: Any, dtype: torch.dtype, device: torch.device, checkpoint: bool = True) -> None:
    """One forward/backward of a 1-layer, 64-wide copy of the model: pages in the kernels the run uses, so the
    baseline (resident memory before the model is built) includes the runtime and not only the imports."""
    from dataclasses import replace

    tiny = build_model(replace(cfg, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                               vocab_size=128), dtype, device, progress=False)
    loss_fn(tiny, torch.randint(0, 128, (1, 9), device=device), checkpoint).backward()
    del tiny


def _bar(items: Any, desc: str, progress: bool, **kw: Any) -> Any:
    if not progress:
        return items
    try:
        from tqdm import tqdm  # lazy: progress bars are optional
    except ImportError:
        print(desc, file=sys.stderr)
        return items
    return tqdm(items, desc=desc, file=sys.stderr, **kw)


# --------------------------------------------------------------------------------------------------------- the plan
def spec_for(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark spec of ``--optimizer`` with ``--state-dtype``, ``--projector`` and ``--lr`` applied."""
    from .optimizers import builtin

    spec = builtin(args.optimizer)
    spec["lr"] = float(args.lr)
    if args.state_dtype is not None:
        spec["kwargs"]["state_dtype"] = args.state_dtype
    if getattr(args, "basis_dtype", None) is not None:
        spec["kwargs"]["basis_dtype"] = args.basis_dtype
    projector = args.projector
    if projector == "auto":
        short = spec["optimizer"].rpartition(".")[2]
        projector = "randomized" if (args.optimizer in SVD_PRESETS or short in SVD_PRESETS) else None
    if projector is not None and spec["family"] == "gradspace" and spec.get("group") is not None:
        spec["group"] = {**spec["group"], "projector": projector}
    return spec


def _gap(args: argparse.Namespace) -> int:
    return int(args.gap) if args.gap else max(1, int(args.steps))


def plan_fit(args: argparse.Namespace, cfg: Any, spec: dict[str, Any], baseline: int) -> dict[str, Any]:
    """Planned peak bytes of the run and its parts (all computed on the meta device; nothing allocated).

    * ``weights``: Σ numel · element size in ``--dtype``.
    * ``gradients``: every gradient (``optimizer.step()`` after backward), or with ``--layerwise`` the largest two
      (one being consumed by its hook while the next is produced).
    * ``state``: :func:`gradspace.bench.memory.plan_state` after ``--steps`` steps (exact: built by the optimizer's
      own code on meta tensors).
    * ``activations``: checkpointed inputs of every layer (L·b·s·h), one layer's recomputed activations and their
      gradients (≈ 2·b·s·(8h + 3i) + 2·b·heads·s² elements), and the head: logits, their fp32 copy, log-softmax and
      gradients (b·s·V · (2·size + 12) bytes).
    * ``temporaries``: the optimizer step's working copies, ``STEP_TEMPS[family]`` fp32 copies of the largest weight
      (torch AdamW: ``denom``; gradspace: the fp32 gradient, the rule's fp32 view of the moments and the update;
      ``QUANT_TEMPS`` more with int8/int4 moments: decoding and re-encoding them).
    * ``baseline``: the process's resident memory when the run starts (Python, libtorch; measured, not planned).
    """
    from .memory import plan_state

    dtype = DTYPES[args.dtype]
    size = torch.empty(0, dtype=dtype).element_size()
    meta = TinyLlama(cfg, device="meta").to(dtype=dtype)
    params = list(meta.parameters())
    weights = sum(p.numel() * size for p in params)
    biggest = sorted((p.numel() * size for p in params), reverse=True)
    grads = sum(biggest[:2]) if args.layerwise else weights
    state = plan_state(spec, meta, rank=args.rank, gap=_gap(args), step=args.steps)
    if "error" in state:
        raise RuntimeError(f"the planner cannot plan {args.optimizer}: {state['error']}")
    b, s, h, i = args.batch, args.seq, cfg.hidden_size, cfg.intermediate_size
    L, V, heads = cfg.num_hidden_layers, cfg.vocab_size, cfg.num_attention_heads
    act = (L * b * s * h + 2 * b * s * (8 * h + 3 * i) + 2 * b * heads * s * s) * size + b * s * V * (2 * size + 12)
    copies = STEP_TEMPS[spec["family"] if spec["family"] in STEP_TEMPS else "gradspace"]
    if spec["kwargs"].get("state_dtype") in ("int8", "int4"):
        copies += QUANT_TEMPS
    temps = int(copies * 4 * max(p.numel() for p in params))
    parts = {"baseline": baseline, "weights": weights, "gradients": grads, "state": state["state_bytes"],
             "activations": act, "temporaries": temps}
    return {"planned_peak_bytes": sum(parts.values()), "planned_parts": parts, "state_by_key": state["by_key"],
            "rank": state["rank"], "gap": state["gap"]}


# ----------------------------------------------------------------------------------------------------------- the run
def run_fit(args: argparse.Namespace) -> dict[str, Any]:
    """Build, plan, train ``--steps`` steps; returns the report (see the module docstring)."""
    from .optimizers import build_optimizer

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cfg = load_config(args.model)
    if args.layers is not None:
        cfg.num_hidden_layers = int(args.layers)
    spec = spec_for(args)
    meter = PeakMemory(device)
    malloc = tune_malloc() if device.type == "cpu" and not args.no_malloc_tuning else None
    warm_up(cfg, DTYPES[args.dtype], device, not args.no_checkpoint)
    meter.reset()
    baseline = meter.current() if device.type == "cpu" else 0
    try:
        plan = plan_fit(args, cfg, spec, baseline)
    except (TypeError, ValueError, KeyError) as err:
        if args.state_dtype is None:
            raise
        return {"model": args.model, "optimizer": args.optimizer, "state_dtype": args.state_dtype,
                "error": f"--state-dtype {args.state_dtype}: {spec['optimizer']} (or the planner) rejects it "
                         f"({type(err).__name__}: {err}). Quantized moments need an optimizer that accepts "
                         "state_dtype='int8'/'int4'."}
    report: dict[str, Any] = {
        "model": args.model, "layers": cfg.num_hidden_layers, "optimizer": args.optimizer, "spec": spec,
        "dtype": args.dtype, "state_dtype": args.state_dtype, "layerwise": bool(args.layerwise), "seq": args.seq,
        "batch": args.batch, "steps": args.steps, "device": str(device), "threads": torch.get_num_threads(),
        "checkpointing": not args.no_checkpoint, "memory_method": meter.method, "malloc": malloc, **plan,
    }
    print(f"plan: {_fmt_parts(plan)}", file=sys.stderr)
    if args.budget_gib is not None and plan["planned_peak_bytes"] > args.budget_gib * 2**30:
        report["error"] = (f"planned peak {plan['planned_peak_bytes'] / 2**30:.2f} GiB exceeds --budget-gib "
                           f"{args.budget_gib}; not run")
        return report
    limit = int(args.max_rss_gib * 2**30) if args.max_rss_gib else None
    with MemoryGuard(limit if device.type == "cpu" else None):
        t0 = time.perf_counter()
        model = build_model(cfg, DTYPES[args.dtype], device, args.seed, progress=not args.quiet)
        report["build_seconds"] = time.perf_counter() - t0
        report["after_build_peak_bytes"] = meter.peak()
        try:
            opt, info = build_optimizer(spec, model, spec["lr"], rank=args.rank, gap=_gap(args))
        except (TypeError, ValueError, KeyError) as err:
            if args.state_dtype is not None:
                report["error"] = (f"--state-dtype {args.state_dtype}: {spec['optimizer']} rejects it ({err}). "
                                   "Quantized moments need an optimizer that accepts state_dtype='int8'/'int4'.")
                return report
            raise
        stepper = None
        if args.layerwise:
            from ..layerwise import LayerwiseStepper

            stepper = LayerwiseStepper(opt)
        n_params = sum(1 for g in opt.param_groups for p in g["params"] if p.requires_grad)
        gen = torch.Generator(device=device).manual_seed(args.seed + 1)
        losses, seconds, refresh_steps = [], [], []
        gap = _gap(args)
        for k in range(args.steps):
            refresh = k % gap == 0
            if refresh:
                refresh_steps.append(k + 1)
            ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen, device=device)
            desc = f"step {k + 1}/{args.steps}" + (" (refresh)" if refresh else "")
            bar = _bar(range(n_params), desc, not args.quiet, unit="param", leave=True) if args.layerwise else None
            handles = []
            if bar is not None and hasattr(bar, "update"):
                # after the stepper's hook: one tick per updated weight
                def tick(_param: Tensor, bar: Any = bar) -> None:
                    bar.update(1)

                handles = [p.register_post_accumulate_grad_hook(tick)
                           for g in opt.param_groups for p in g["params"] if p.requires_grad]
            t = time.perf_counter()
            loss = loss_fn(model, ids, checkpoint=not args.no_checkpoint)
            loss.backward()
            if stepper is None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - t)
            losses.append(float(loss.detach()))
            for h in handles:
                h.remove()
            if bar is not None and hasattr(bar, "close"):
                bar.close()
            if not args.quiet:
                print(f"{desc}: loss {losses[-1]:.4f}, {seconds[-1]:.1f} s, peak {meter.peak() / 2**30:.2f} GiB",
                      file=sys.stderr)
        measured = meter.peak()
    try:
        from ..optimizer import SubspaceOptimizer

        state_bytes = opt.state_bytes() if isinstance(opt, SubspaceOptimizer) else None
    except Exception:  # noqa: BLE001 - a diagnostic only
        state_bytes = None
    if state_bytes is None:
        from .optimizers import measure_state_bytes

        state_bytes = measure_state_bytes(opt)
    report.update({
        "measured_peak_bytes": measured, "measured_state_bytes": state_bytes,
        "measured_over_planned": measured / plan["planned_peak_bytes"],
        "seconds_per_step": seconds, "losses": losses, "refresh_steps": refresh_steps, "rank": info["rank"],
        "finite": all(math.isfinite(x) for x in losses),
    })
    return report


def _fmt_parts(plan: dict[str, Any]) -> str:
    parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in plan["planned_parts"].items())
    return f"{plan['planned_peak_bytes'] / 2**30:.2f} GiB = {parts} (GiB)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``gradspace fit``."""
    p = subparsers.add_parser("fit", help="train a few real steps of a large model here; measured vs planned peak memory",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-60m", help=f"shipped config ({', '.join(named_configs())}) or a config.json")
    p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers (tests, dry runs)")
    p.add_argument("--optimizer", default="GaLoreAdamW", help="gradspace preset (GaLoreAdamW, APOLLOMini, …) or a "
                   "built-in bench name (adamw, gs-galore, …)")
    p.add_argument("--rank", type=int, default=None, help="subspace rank (default: the preset's, e.g. ¼ of the smaller side)")
    p.add_argument("--gap", type=int, default=None, help="refresh every this many steps (default --steps: one refresh, "
                   "at the first step)")
    p.add_argument("--projector", default="auto", help="'auto' (randomized range finder instead of a full SVD for "
                   "GaLoreAdamW/Fira), or a projector name; 'none' keeps the preset's")
    p.add_argument("--state-dtype", default=None, help="moment dtype passed to the optimizer: float32, bfloat16, int8, int4")
    p.add_argument("--basis-dtype", default=None, choices=["float32", "bfloat16"],
                   help="dtype the subspace bases are stored in (default: float32; bfloat16 halves them, as galore-torch)")
    p.add_argument("--layerwise", action="store_true", help="update each weight inside backward (LayerwiseStepper)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights, gradients and activations")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--no-checkpoint", action="store_true", help="keep every layer's activations (no checkpointing)")
    p.add_argument("--max-rss-gib", type=float, default=None, help="stop (exit 3) if resident memory passes this")
    p.add_argument("--budget-gib", type=float, default=None, help="do not run if the planned peak exceeds this")
    p.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's dynamic mmap threshold (see tune_malloc)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", type=Path, help="write the report here")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.projector == "none":
        args.projector = None
    report = run_fit(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if "error" in report:
        print(f"gradspace fit: {report['error']}", file=sys.stderr)
        return 2
    gib = 2**30
    print(f"{report['model']} ({report['layers']} layers, {report['dtype']}) {report['optimizer']}"
          f"{' layer-wise' if report['layerwise'] else ''}, state {report['state_dtype'] or 'default'}: "
          f"measured peak {report['measured_peak_bytes'] / gib:.2f} GiB, planned {report['planned_peak_bytes'] / gib:.2f} "
          f"GiB (×{report['measured_over_planned']:.3f}); s/step {', '.join(f'{s:.1f}' for s in report['seconds_per_step'])}; "
          f"losses {', '.join(f'{x:.4f}' for x in report['losses'])}")
    return 0
