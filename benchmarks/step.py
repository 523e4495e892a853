#!/usr/bin/env python
"""Non-refresh step time of gradspace vs the peer libraries and torch AdamW, against each step's GEMM lower bound (issue 13).

Everything runs interleaved in one process, so background load hits every contender alike:

a) Non-refresh steps at two LLaMA-style sizes (``nn.Linear`` stacks without biases; per layer q, k, v, o
   hidden × hidden, gate/up ``Linear(hidden, mlp)``, down ``Linear(mlp, hidden)``, two norm vectors in full space):
   (i) 8 layers, hidden 512, MLP 1376, rank 128; (ii) 4 layers, hidden 1024, MLP 2752, rank 256 (hidden/4, as (i)).
   Contenders: gradspace ``GaLoreAdamW``, ``Fira``, ``APOLLO``, ``APOLLOMini``, ``SubspaceOptimizer`` with the identity
   projector (adam), the random projector with and without ``cache_random_basis``; ``galore_torch.GaLoreAdamW``,
   ``apollo_torch.APOLLOAdamW`` (APOLLO and APOLLO-Mini settings), ``fira.FiraAdamW``; ``torch.optim.AdamW`` foreach and
   fused. Each has its own copy of the same weights; all share one set of fixed random gradients (checked unchanged at
   the end). The refresh period is set beyond the run, so only step 0 refreshes; it is timed apart ("first step").
   Rounds are round-robin with a rotating start; the median of the timed rounds is reported.
   The lower bound ("GEMMs alone") is a pseudo-contender in the same round-robin: every projected matrix's two
   projection GEMMs at the step's shapes and rank, on the same gradients, into preallocated outputs — down
   ``X·Q`` (``Qᵀ·G`` for a wide matrix) and up ``D·Qᵀ`` — and nothing else.
   State bytes: ``SubspaceOptimizer.state_bytes()``, and ``gradspace.bench.optimizers.measure_state_bytes`` for torch and
   the peers (their projector objects included).
b) Refresh spikes at size (i): ``GaLoreAdamW`` with a refresh every 50 steps over 100 steps, with and without
   ``refresh_stagger=True``, interleaved step by step; worst step / median step over steps 1..99 (step 0, where every
   weight computes its first basis in both, is reported apart).
c) Random bases: the random projector's step with and without ``cache_random_basis=True`` (rows of part a).

glibc's malloc trim and mmap thresholds are raised first (``mallopt``), so a contender's full-size temporaries are
reused from the heap instead of being unmapped and faulted in again on every step (which biases the ratios).
Prints markdown tables; ``--json PATH`` (``-``: stdout, the tables then go to stderr) and ``--md PATH`` write them.
The targets of issue 13 are evaluated in the output (PASS/FAIL with the measured ratio).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/step.py --json docs/results/step/step.json --md docs/results/step/step.md
    python benchmarks/step.py --quick --json -          # smoke mode (tiny sizes, few rounds)

The same code runs on a GPU through ``benchmarks/step_gpu.py`` (bf16, ``torch.cuda.Event`` timings).
"""

from __future__ import annotations

import ctypes
import os

# OMP_WAIT_POLICY is left to the caller's environment (unset: libgomp's spin-then-sleep default, what a user's training
# loop gets); OMP_WAIT_POLICY=PASSIVE avoids spinning on a shared box but adds a wake-up to every parallel op, which
# penalizes steps made of many small ops (measured: docs/results/step/step_passive.md)

import argparse
import copy
import datetime as _dt
import importlib
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "gradspace").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
import gradspace  # noqa: E402
from gradspace.bench.optimizers import measure_state_bytes  # noqa: E402

MiB = 2**20
NEVER = 10**9  # a refresh period beyond any run: only step 0 refreshes


# ------------------------------------------------------------------------------------------------------------ malloc
def raise_malloc_thresholds() -> dict[str, Any]:
    """Raise glibc's trim threshold (1 GiB) and mmap threshold (32 MiB, its maximum on 64-bit), so freed full-size
    temporaries stay in the heap. The env variables (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``) would do
    the same before the process starts; ``mallopt`` does it in-process. Returns what was set (1 = accepted)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as err:
        return {"glibc": False, "note": f"no glibc ({err}); thresholds unchanged"}
    m_trim, m_mmap = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD from <malloc.h>
    trim, mmap = 1 << 30, 32 * MiB
    return {"glibc": True, "M_TRIM_THRESHOLD": trim, "M_TRIM_THRESHOLD_ok": libc.mallopt(m_trim, trim),
            "M_MMAP_THRESHOLD": mmap, "M_MMAP_THRESHOLD_ok": libc.mallopt(m_mmap, mmap)}


# ------------------------------------------------------------------------------------------------------------- model
@dataclass
class Size:
    """A LLaMA-shaped stack: ``layers`` × (q, k, v, o, gate, up, down); ``vocab`` > 0 adds embeddings and a head."""

    name: str
    layers: int
    hidden: int
    mlp: int
    rank: int
    vocab: int = 0

    def label(self) -> str:
        v = f", vocab {self.vocab}" if self.vocab else ""
        return f"{self.layers} layers, hidden {self.hidden}, MLP {self.mlp}, rank {self.rank}{v}"


class Block(nn.Module):
    """One LLaMA-style layer's weights (no forward: gradients are fixed random tensors)."""

    def __init__(self, hidden: int, mlp: int) -> None:
        super().__init__()
        self.input_norm = nn.Parameter(torch.ones(hidden))
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.post_norm = nn.Parameter(torch.ones(hidden))
        self.gate_proj = nn.Linear(hidden, mlp, bias=False)
        self.up_proj = nn.Linear(hidden, mlp, bias=False)
        self.down_proj = nn.Linear(mlp, hidden, bias=False)


def build_stack(size: Size, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    parts: dict[str, nn.Module] = {}
    if size.vocab:
        parts["embed_tokens"] = nn.Embedding(size.vocab, size.hidden)
    parts["layers"] = nn.ModuleList(Block(size.hidden, size.mlp) for _ in range(size.layers))
    if size.vocab:
        parts["lm_head"] = nn.Linear(size.hidden, size.vocab, bias=False)
    return nn.ModuleDict(parts).to(device=device, dtype=dtype)


def subspace_groups(model: nn.Module, rank: int, **opts: Any) -> list[dict]:
    """gradspace's routing: every Linear of the blocks projected (``lm_head`` is excluded by name); norms and
    embeddings in full space."""
    return gradspace.param_groups(model, rank=rank, verbose=False, exclude_last_linear=False, **opts)


def projected_names(model: nn.Module, rank: int) -> set[str]:
    return {n for g in subspace_groups(model, rank) if g.get("projector") != "identity" for n, _ in g["params"]}


def peer_groups(params: list[tuple[str, nn.Parameter]], projected: set[str], extra: dict) -> list[dict]:
    """The peers' idiom: one group of projected weights with their options, one plain group."""
    return [dict(params=[p for n, p in params if n in projected], **extra),
            dict(params=[p for n, p in params if n not in projected])]


# -------------------------------------------------------------------------------------------------------- timing
class Timer:
    """Milliseconds of ``fn()``: ``torch.cuda.Event`` pairs on a GPU (after a synchronize), ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


class Contender:
    """One optimizer in the round-robin: its own copy of the weights, the shared fixed gradients."""

    kind = "optimizer"

    def __init__(self, name: str, family: str, config: str, make: Callable, base: nn.Module,
                 grads: dict[str, torch.Tensor], peer: str | None = None, bound: str | None = None) -> None:
        self.name, self.family, self.config, self.peer, self.bound = name, family, config, peer, bound
        self.model = copy.deepcopy(base)
        self.params = list(self.model.named_parameters())
        for n, p in self.params:
            p.grad = grads[n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.opt = make(self.model, self.params)
        self.times: list[float] = []
        self.first_ms: float | None = None

    def step(self, timer: Timer) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return timer(self.opt.step)

    def state_bytes(self) -> int:
        if isinstance(self.opt, gradspace.SubspaceOptimizer):
            return int(self.opt.state_bytes())
        return int(measure_state_bytes(self.opt))

    def release(self) -> None:
        self.opt = self.model = self.params = None  # type: ignore[assignment]


class GemmBound:
    """The step's lower bound: every projected matrix's down (X·Q) and up (D·Qᵀ) GEMM at rank r, nothing else."""

    kind = "bound"
    family = "bound"
    peer = None
    bound = None

    def __init__(self, name: str, model: nn.Module, projected: set[str], grads: dict[str, torch.Tensor], rank: int,
                 dtype: torch.dtype) -> None:
        self.name, self.rank, self.dtype = name, rank, dtype
        self.config = (f"per projected matrix: down X·Q (Qᵀ·G when wide), up D·Qᵀ (Q·D), rank {rank}, {dtype}, "
                       "preallocated outputs")
        gen = torch.Generator(device="cpu").manual_seed(3)
        self.ops: list[tuple] = []
        self.flops = 0
        for n, p in model.named_parameters():
            if n not in projected:
                continue
            g = grads[n].reshape(p.shape[0], -1).to(dtype)
            m, k = g.shape
            r = min(rank, m, k)
            if m >= k:  # project the right (smaller) side: G (m×k) · Q (k×r); up C (m×r) · Qᵀ
                q = torch.randn(k, r, generator=gen).to(g.device, dtype)
                c, out = torch.empty(m, r, device=g.device, dtype=dtype), torch.empty_like(g)
                self.ops.append(((g, q, c), (c, q.T, out)))
            else:  # project the left side: Qᵀ (r×m) · G (m×k); up Q (m×r) · C (r×k)
                q = torch.randn(m, r, generator=gen).to(g.device, dtype)
                c, out = torch.empty(r, k, device=g.device, dtype=dtype), torch.empty_like(g)
                self.ops.append(((q.T, g, c), (q, c, out)))
            self.flops += 4 * m * k * r
        self.times: list[float] = []
        self.down: list[float] = []
        self.up: list[float] = []
        self.first_ms: float | None = None

    def _down(self) -> None:
        for (a, b, out), _ in self.ops:
            torch.mm(a, b, out=out)

    def _up(self) -> None:
        for _, (a, b, out) in self.ops:
            torch.mm(a, b, out=out)

    def step(self, timer: Timer) -> float:
        d, u = timer(self._down), timer(self._up)
        self.down.append(d)
        self.up.append(u)
        return d + u

    def state_bytes(self) -> int:
        return 0

    def release(self) -> None:
        self.ops = []


def import_peers(enabled: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    peers, missing = {}, {}
    for mod in ("galore_torch", "apollo_torch", "fira") if enabled else ():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peers[mod] = importlib.import_module(mod)
        except Exception as err:  # noqa: BLE001 - any import failure means "not available"
            missing[mod] = f"{type(err).__name__}: {err}"
    return peers, missing


def has_option(name: str) -> bool:
    return name in gradspace.DEFAULTS


def contender_specs(rank: int, lr: float, wd: float, peers: dict[str, Any], projected: set[str], fused_ok: bool,
                    compile_backend: str | None = None) -> list[tuple[str, str, str, Callable, str | None, str | None]]:
    """(name, family, config, make(model, params), peer row name, GEMM-bound name) of every contender;
    ``compile_backend`` adds GaLoreAdamW, Fira and APOLLO-Mini (basis kept) with ``compile=`` that backend."""
    P, T = gradspace, NEVER
    G = subspace_groups
    R = f"b{rank}"
    specs = [
        ("torch.AdamW(foreach)", "torch", "foreach=True",
         lambda m, ps: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd, foreach=True), None, None),
    ]
    if fused_ok:
        specs.append(("torch.AdamW(fused)", "torch", "fused=True",
                      lambda m, ps: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd, fused=True), None, None))
    specs += [
        ("GaLoreAdamW", "gradspace", "svd, adam, keep, drop",
         lambda m, ps: P.GaLoreAdamW(G(m, rank), lr=lr, weight_decay=wd, update_proj_gap=T),
         "galore_torch.GaLoreAdamW", R),
        ("Fira", "gradspace", "svd, adam, fira channel residual",
         lambda m, ps: P.Fira(G(m, rank), lr=lr, weight_decay=wd, update_proj_gap=T), "fira.FiraAdamW", R),
        ("APOLLO", "gradspace", "random gaussian, adam, apollo channel residual",
         lambda m, ps: P.APOLLO(G(m, rank), lr=lr, weight_decay=wd, update_proj_gap=T),
         "apollo_torch.APOLLOAdamW", R),
        ("APOLLOMini", "gradspace", "random rank 1, apollo tensor residual, scale 128",
         lambda m, ps: P.APOLLOMini(G(m, 1), lr=lr, weight_decay=wd, update_proj_gap=T),
         "apollo_torch.APOLLOAdamW(mini)", None),
        ("SubspaceOptimizer(identity)", "gradspace", "identity projector, adam (every weight in full space)",
         lambda m, ps: P.SubspaceOptimizer(m.parameters(), lr=lr, weight_decay=wd, projector="identity"), None, None),
        ("SubspaceOptimizer(random)", "gradspace", "random gaussian, adam, drop: basis redrawn from its seed each step",
         lambda m, ps: P.SubspaceOptimizer(G(m, rank), lr=lr, weight_decay=wd, projector="random", refresh_every=T),
         None, R),
    ]
    if has_option("cache_random_basis"):
        specs += [
            ("SubspaceOptimizer(random, cache_random_basis)", "gradspace",
             "random gaussian, adam, drop, basis kept for the refresh period",
             lambda m, ps: P.SubspaceOptimizer(G(m, rank), lr=lr, weight_decay=wd, projector="random",
                                               refresh_every=T, cache_random_basis=True), None, R),
            ("APOLLO(cache_random_basis)", "gradspace", "APOLLO with the basis kept for the refresh period",
             lambda m, ps: P.APOLLO(G(m, rank), lr=lr, weight_decay=wd, update_proj_gap=T, cache_random_basis=True),
             "apollo_torch.APOLLOAdamW", R),
        ]
    if compile_backend and has_option("compile"):
        C = compile_backend
        specs += [
            (f"GaLoreAdamW(compile={C})", "gradspace", f"GaLoreAdamW, non-refresh updates by torch.compile ({C})",
             lambda m, ps: P.GaLoreAdamW(G(m, rank), lr=lr, weight_decay=wd, update_proj_gap=T, compile=C),
             "galore_torch.GaLoreAdamW", R),
            (f"Fira(compile={C})", "gradspace", f"Fira, non-refresh updates by torch.compile ({C})",
             lambda m, ps: P.Fira(G(m, rank), lr=lr, weight_decay=wd, update_proj_gap=T, compile=C), "fira.FiraAdamW",
             R),
            (f"APOLLOMini(compile={C})", "gradspace", f"APOLLO-Mini, basis kept, updates by torch.compile ({C})",
             lambda m, ps: P.APOLLOMini(G(m, 1), lr=lr, weight_decay=wd, update_proj_gap=T, cache_random_basis=True,
                                        compile=C), "apollo_torch.APOLLOAdamW(mini)", None),
        ]
    if "galore_torch" in peers:
        gt = peers["galore_torch"]
        specs.append(("galore_torch.GaLoreAdamW", "peer", "galore-torch, proj_type std, scale 1",
                      lambda m, ps: gt.GaLoreAdamW(
                          peer_groups(ps, projected, dict(rank=rank, update_proj_gap=T, scale=1.0, proj_type="std")),
                          lr=lr, weight_decay=wd, no_deprecation_warning=True), None, R))
    if "fira" in peers:
        fr = peers["fira"]
        specs.append(("fira.FiraAdamW", "peer", "fira, alpha 1",
                      lambda m, ps: fr.FiraAdamW(
                          peer_groups(ps, projected, dict(rank=rank, update_proj_gap=T, alpha=1.0, proj_type="std")),
                          lr=lr, weight_decay=wd, no_deprecation_warning=True), None, R))
    if "apollo_torch" in peers:
        ap = peers["apollo_torch"]
        specs.append(("apollo_torch.APOLLOAdamW", "peer", "apollo-torch, random, channel, scale 1",
                      lambda m, ps: ap.APOLLOAdamW(
                          peer_groups(ps, projected, dict(rank=rank, proj="random", scale_type="channel", scale=1.0,
                                                          update_proj_gap=T, proj_type="std")),
                          lr=lr, weight_decay=wd), None, R))
        specs.append(("apollo_torch.APOLLOAdamW(mini)", "peer", "apollo-torch, rank 1, tensor, scale 128 front",
                      lambda m, ps: ap.APOLLOAdamW(
                          peer_groups(ps, projected, dict(rank=1, proj="random", scale_type="tensor", scale=128.0,
                                                          update_proj_gap=T, proj_type="std")),
                          lr=lr, weight_decay=wd, scale_front=True), None, None))
    return specs


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "min": min(xs), "q1": q[0], "q3": q[2], "n": len(xs)}


def grad_checksums(grads: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float(g.double().sum()) for n, g in grads.items()}


# ------------------------------------------------------------------------------------------------------- part a
def run_size(size: Size, args: argparse.Namespace, peers: dict[str, Any], device: torch.device, dtype: torch.dtype,
             bound_dtypes: tuple[torch.dtype, ...], log: Callable[[str], None]) -> dict[str, Any]:
    """Non-refresh step times, GEMM bound and state bytes of every contender at one size, interleaved."""
    timer = Timer(device)
    base = build_stack(size, device, dtype)
    projected = projected_names(base, size.rank)
    gen = torch.Generator(device="cpu").manual_seed(1)
    grads = {n: (torch.randn(p.shape, generator=gen) * 1e-2).to(device, dtype) for n, p in base.named_parameters()}
    sums = grad_checksums(grads)
    n_params = sum(p.numel() for p in base.parameters())
    n_proj = sum(p.numel() for n, p in base.named_parameters() if n in projected)
    fused_ok = device.type in ("cpu", "cuda")
    specs = contender_specs(size.rank, args.lr, args.weight_decay, peers, projected, fused_ok, args.compile)
    if args.only:
        keep = set(args.only.split(","))
        specs = [s for s in specs if s[0] in keep or s[0].startswith("torch.AdamW")]
    log(f"size ({size.name}): {size.label()}, {dtype}, {device}: {n_params:,} parameters, {n_proj:,} in "
        f"{len(projected)} projected matrices; building {len(specs)} contenders...")
    entries: list[Any] = []
    errors: dict[str, str] = {}
    for name, family, config, make, peer, bound in specs:
        try:
            entries.append(Contender(name, family, config, make, base, grads, peer, bound))
        except Exception as err:  # noqa: BLE001 - a contender that cannot be built is reported, not fatal
            errors[name] = f"construction: {type(err).__name__}: {err}"
    for bd in bound_dtypes:
        tag = str(bd).replace("torch.", "")
        entries.append(GemmBound(f"GEMMs alone (rank {size.rank}, {tag})", base, projected, grads, size.rank, bd))
    bound_name = entries[-len(bound_dtypes)].name if bound_dtypes else None
    del base

    def safe_step(e: Any) -> float | None:
        try:
            return e.step(timer)
        except Exception as err:  # noqa: BLE001
            errors[e.name] = f"step: {type(err).__name__}: {err}"
            return None

    for e in entries:  # step 0: lazy state and the first basis
        e.first_ms = safe_step(e)
    entries = [e for e in entries if e.name not in errors]
    rounds = args.warmup + args.repeats
    t0 = time.perf_counter()
    for rnd in range(rounds):
        for i in range(len(entries)):
            e = entries[(rnd + i) % len(entries)]
            if e.name in errors:
                continue
            ms = safe_step(e)
            if ms is not None and rnd >= args.warmup:
                e.times.append(ms)
    timed_s = time.perf_counter() - t0
    entries = [e for e in entries if e.name not in errors]
    changed = [n for n, v in grad_checksums(grads).items() if v != sums[n]]

    rows: list[dict[str, Any]] = []
    for e in entries:
        row = {"name": e.name, "family": e.family, "kind": e.kind, "config": e.config, "peer": e.peer,
               "step_ms": e.times, **{f"step_ms_{k}": v for k, v in _stats(e.times).items()},
               "first_step_ms": e.first_ms, "state_bytes": e.state_bytes()}
        if isinstance(e, GemmBound):
            row.update(gflop=e.flops / 1e9, down_ms_median=statistics.median(e.down), up_ms_median=statistics.median(e.up),
                       gflops=e.flops / 1e9 / (row["step_ms_median"] / 1e3))
        else:
            row["bound"] = bound_name if e.bound else None
            row["nonfinite_params"] = [n for n, p in e.params if not bool(torch.isfinite(p).all())]
        rows.append(row)
        e.release()
    by = {r["name"]: r for r in rows}
    adamw = by.get("torch.AdamW(foreach)")
    fused = by.get("torch.AdamW(fused)")
    for r in rows:
        med = r["step_ms_median"]
        r["x_adamw_foreach"] = med / adamw["step_ms_median"] if adamw else None
        r["x_adamw_fused"] = med / fused["step_ms_median"] if fused else None
        r["x_peer"] = med / by[r["peer"]]["step_ms_median"] if r.get("peer") in by else None
        r["x_bound"] = med / by[r["bound"]]["step_ms_median"] if r.get("bound") in by else None
        r["state_pct_adamw"] = 100.0 * r["state_bytes"] / adamw["state_bytes"] if adamw and r["kind"] != "bound" else None
    return {"size": asdict(size), "label": size.label(), "dtype": str(dtype), "device": str(device),
            "n_params": n_params, "n_projected_params": n_proj, "n_projected_matrices": len(projected),
            "warmup_rounds": args.warmup, "timed_rounds": args.repeats, "timed_wall_s": timed_s,
            "bound": bound_name, "rows": rows, "errors": errors, "grads_modified_by_a_contender": changed}


# ------------------------------------------------------------------------------------------------------- part b
def refresh_spikes(size: Size, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """GaLoreAdamW with a refresh every ``args.spike_every`` steps, with and without ``refresh_stagger``, interleaved."""
    if not has_option("refresh_stagger"):
        return {"skipped": True, "note": "gradspace has no refresh_stagger option yet (not in gradspace.DEFAULTS)"}
    timer = Timer(device)
    base = build_stack(size, device, dtype)
    gen = torch.Generator(device="cpu").manual_seed(1)
    grads = {n: (torch.randn(p.shape, generator=gen) * 1e-2).to(device, dtype) for n, p in base.named_parameters()}
    T, steps = args.spike_every, args.spike_steps
    log(f"refresh spikes at size ({size.name}): GaLoreAdamW, refresh every {T}, {steps} steps, stagger off/on...")
    runs = {}
    for stagger in (False, True):
        make = (lambda s: lambda m, ps: gradspace.GaLoreAdamW(subspace_groups(m, size.rank), lr=args.lr,
                                                               weight_decay=args.weight_decay, update_proj_gap=T,
                                                               refresh_stagger=s))(stagger)
        runs[stagger] = Contender(f"GaLoreAdamW(refresh_stagger={stagger})", "gradspace", "", make, base, grads)
    del base
    refreshes: dict[bool, list[int]] = {False: [], True: []}

    def count(c: Contender) -> int:
        return sum(int(st.get("proj.count", 0)) for st in c.opt.state.values())

    for _ in range(steps):
        for s, c in runs.items():
            before = count(c)
            c.times.append(c.step(timer))
            refreshes[s].append(count(c) - before)
    out: dict[str, Any] = {"size": size.name, "label": size.label(), "refresh_every": T, "steps": steps,
                           "method": "steps 1..N-1 (step 0: every weight's first basis, in both runs, reported apart)"}
    for s, c in runs.items():
        out["staggered" if s else "unstaggered"] = spike_summary(c.times, refreshes[s])
        c.release()
    return out


def spike_summary(times: list[float], refreshes: list[int]) -> dict[str, Any]:
    """Worst / median over steps 1..N-1, and worst / the median of the steps in which no weight refreshed (with
    staggering most steps refresh some weight, which lifts the plain median)."""
    rest, ref = times[1:], refreshes[1:]
    med, worst = statistics.median(rest), max(rest)
    quiet = [t for t, k in zip(rest, ref) if k == 0]
    quiet_med = statistics.median(quiet) if quiet else None
    return {"step_ms": times, "refreshes_per_step": refreshes, "first_step_ms": times[0], "median_ms": med,
            "worst_ms": worst, "worst_step": 1 + rest.index(worst), "worst_over_median": worst / med,
            "nonrefresh_median_ms": quiet_med, "nonrefresh_steps": len(quiet),
            "worst_over_nonrefresh_median": worst / quiet_med if quiet_med else None,
            "max_refreshes_in_one_step": max(ref) if ref else 0, "steps_with_a_refresh": sum(1 for k in ref if k)}


# ------------------------------------------------------------------------------------------------------ targets
def evaluate_targets(sizes: dict[str, dict], spikes: dict | None, main_sizes: tuple[str, ...] = ("i", "ii")
                     ) -> list[dict[str, Any]]:
    """The targets of issue 13, each PASS / FAIL with its measured ratio (SKIP when a row is missing)."""
    out = []

    def ratio(size: str, num: str, den: str | None, key: str | None = None) -> float | None:
        rows = {r["name"]: r for r in sizes[size]["rows"]}
        if num not in rows:
            return None
        if key is not None:
            return rows[num].get(key)
        return rows[num]["step_ms_median"] / rows[den]["step_ms_median"] if den in rows else None

    def add(tid: str, text: str, size: str, value: float | None, thr: float, note: str = "") -> None:
        res = "SKIP" if value is None else ("PASS" if value <= thr else "FAIL")
        out.append({"id": tid, "target": text, "size": size, "ratio": value, "threshold": thr, "result": res,
                    **({"note": note} if note else {})})

    for s in main_sizes:
        if s not in sizes:
            continue
        add(f"galore_vs_galore_torch[{s}]", "GaLoreAdamW non-refresh step <= 0.75x galore_torch.GaLoreAdamW", s,
            ratio(s, "GaLoreAdamW", "galore_torch.GaLoreAdamW"), 0.75)
        add(f"galore_vs_gemm_bound[{s}]", "GaLoreAdamW non-refresh step <= 1.15x its projection GEMMs alone", s,
            ratio(s, "GaLoreAdamW", None, "x_bound"), 1.15)
        add(f"fira_vs_galore[{s}]", "Fira step <= 1.2x GaLoreAdamW", s, ratio(s, "Fira", "GaLoreAdamW"), 1.2)
        add(f"apollomini_vs_adamw_fused[{s}]", "APOLLOMini step <= 2x torch AdamW(fused)", s,
            ratio(s, "APOLLOMini", "torch.AdamW(fused)"), 2.0)
        add(f"identity_vs_adamw_fused[{s}]", "SubspaceOptimizer(identity, adam) step <= 1.2x torch AdamW(fused)", s,
            ratio(s, "SubspaceOptimizer(identity)", "torch.AdamW(fused)"), 1.2)
    if spikes is not None:
        if spikes.get("skipped"):
            add("stagger_worst_over_median[i]", "staggered refresh: worst step <= 3x median step, refresh every 50",
                "i", None, 3.0, spikes["note"])
        else:
            add(f"stagger_worst_over_median[{spikes['size']}]",
                f"staggered refresh: worst step <= 3x median step, refresh every {spikes['refresh_every']}",
                spikes["size"], spikes["staggered"]["worst_over_median"], 3.0,
                f"unstaggered: {spikes['unstaggered']['worst_over_median']:.1f}x; staggered worst / unstaggered "
                f"non-refresh median: {spikes['staggered']['worst_ms'] / spikes['unstaggered']['nonrefresh_median_ms']:.2f}x"
                if spikes['unstaggered']['nonrefresh_median_ms'] else "")
    return out


# ------------------------------------------------------------------------------------------------------ markdown
def _f(v: Any, fmt: str = "{:.2f}", suffix: str = "") -> str:
    return "-" if v is None else fmt.format(v) + suffix


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    L = [f"# {meta['title']}{' (quick)' if meta.get('quick') else ''}", ""]
    L.append(f"Run {meta['started_utc']} (`{meta['command']}`); torch {meta['torch']}, gradspace {meta['gradspace']}, "
             f"{meta['device_name']}, {meta['torch_threads']} threads, OMP_WAIT_POLICY={meta['omp_wait_policy']}; "
             f"loadavg {meta['loadavg_start'][0]:.2f} at start, {meta.get('loadavg_end', [0])[0]:.2f} at end; "
             f"peers: {', '.join(f'{k} {v}' for k, v in meta['peers'].items()) or 'none'}; "
             f"malloc: {meta['malloc']}.")
    if meta.get("note"):
        L += ["", f"Machine state: {meta['note']}"]
    for key, sz in result["sizes"].items():
        L += ["", f"## Size ({key}): {sz['label']}, {sz['dtype']}, {sz['device']}", "",
              f"{sz['n_params']:,} parameters, {sz['n_projected_params']:,} in {sz['n_projected_matrices']} projected "
              f"matrices; non-refresh steps, median of {sz['timed_rounds']} interleaved rounds after "
              f"{sz['warmup_rounds']} warm-up round(s). Lower bound: `{sz['bound']}`.", "",
              "| contender | step ms (median) | IQR ms | × AdamW fused | × AdamW foreach | × its peer | "
              "× GEMMs alone | state MiB | state % AdamW | first step ms |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sz["rows"]:
            L.append(f"| {r['name']} | {r['step_ms_median']:.1f} | {r['step_ms_q1']:.1f}–{r['step_ms_q3']:.1f} | "
                     f"{_f(r['x_adamw_fused'], suffix='×')} | {_f(r['x_adamw_foreach'], suffix='×')} | "
                     f"{_f(r['x_peer'], suffix='×')} | {_f(r.get('x_bound'), suffix='×')} | "
                     f"{r['state_bytes'] / MiB:.2f} | {_f(r['state_pct_adamw'], '{:.1f}', '%')} | "
                     f"{_f(r['first_step_ms'], '{:.0f}')} |")
        for r in sz["rows"]:
            if r["kind"] == "bound":
                L.append(f"\n`{r['name']}`: {r['gflop']:.2f} GFLOP per step at {r['gflops']:.0f} GFLOP/s "
                         f"(down {r['down_ms_median']:.1f} ms, up {r['up_ms_median']:.1f} ms).")
        if sz["errors"]:
            L.append("\nContenders that failed: " + "; ".join(f"{k}: {v}" for k, v in sz["errors"].items()))
        if sz["grads_modified_by_a_contender"]:
            L.append(f"\nWARNING: a contender modified the shared gradients: {sz['grads_modified_by_a_contender'][:4]}")
        rc = {r["name"]: r for r in sz["rows"]}
        pairs = [("SubspaceOptimizer(random)", "SubspaceOptimizer(random, cache_random_basis)"),
                 ("APOLLO", "APOLLO(cache_random_basis)")]
        cached = [(a, b) for a, b in pairs if a in rc and b in rc]
        if cached:
            L.append("\nRandom basis kept for the refresh period (`cache_random_basis=True`): " + "; ".join(
                f"{a}: {rc[b]['step_ms_median']:.1f} ms vs {rc[a]['step_ms_median']:.1f} ms regenerated "
                f"({rc[b]['step_ms_median'] / rc[a]['step_ms_median']:.2f}×), state "
                f"{rc[b]['state_bytes'] / MiB:.2f} MiB vs {rc[a]['state_bytes'] / MiB:.2f} MiB" for a, b in cached) + ".")
        elif not has_option("cache_random_basis"):
            L.append("\n`cache_random_basis` is not a gradspace option yet: its rows are skipped.")
    sp = result.get("refresh_spikes")
    if sp is not None:
        L += ["", "## Refresh spikes", ""]
        if sp.get("skipped"):
            L.append(sp["note"])
        else:
            L += [f"GaLoreAdamW at size ({sp['size']}), refresh every {sp['refresh_every']}, {sp['steps']} steps, "
                  "the two runs interleaved step by step; statistics over steps 1.."
                  f"{sp['steps'] - 1} (step 0 computes every weight's first basis in both).", "",
                  "| refresh_stagger | median step ms | worst step ms (step) | worst / median | "
                  "median of steps without a refresh ms (n) | worst / that median | most refreshes in one step | "
                  "steps with a refresh | step 0 ms |", "|---|---|---|---|---|---|---|---|---|"]
            for key, flag in (("unstaggered", "False"), ("staggered", "True")):
                d = sp[key]
                L.append(f"| {flag} | {d['median_ms']:.1f} | {d['worst_ms']:.0f} ({d['worst_step']}) | "
                         f"{d['worst_over_median']:.2f}× | {_f(d['nonrefresh_median_ms'], '{:.1f}')} "
                         f"({d['nonrefresh_steps']}) | {_f(d['worst_over_nonrefresh_median'], suffix='×')} | "
                         f"{d['max_refreshes_in_one_step']} | "
                         f"{d['steps_with_a_refresh']} | {d['first_step_ms']:.0f} |")
    L += ["", "## Targets (issue 13)", "", "| target | size | measured | threshold | result |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        note = f" ({t['note']})" if t.get("note") else ""
        L.append(f"| {t['target']} | ({t['size']}) | {_f(t['ratio'], '{:.3f}', '×')}{note} | {t['threshold']}× | "
                 f"**{t['result']}** |")
    if result.get("notes"):
        L += [""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------------------------------------------ driver
def _git() -> dict[str, Any]:
    def run(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return None

    status = run("status", "--short", "--", "src")
    return {"commit": run("rev-parse", "HEAD"), "src_modified": status.splitlines() if status else []}


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def _command(argv: list[str]) -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return env + " ".join(["python", str(script), *argv])


def machine_state() -> dict[str, Any]:
    """Load average and the running/total tasks of /proc/loadavg (other processes share the cores)."""
    out: dict[str, Any] = {"loadavg": list(os.getloadavg())}
    try:
        out["proc_loadavg"] = Path("/proc/loadavg").read_text().strip()
    except OSError:
        pass
    return out


def build_meta(title: str, args: argparse.Namespace, device: torch.device, malloc: dict, peers: dict,
               missing: dict, argv: list[str]) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    return {
        "title": title, "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(argv),
        "torch": torch.__version__, "gradspace": gradspace.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device), "device_name": name, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "malloc": malloc,
        "loadavg_start": list(os.getloadavg()), "machine_start": machine_state(), "quick": args.quick,
        "note": args.note, "git": _git(), "lr": args.lr, "weight_decay": args.weight_decay,
        "peers": {k: _version({"galore_torch": "galore-torch", "apollo_torch": "apollo-torch"}.get(k, k)) or "?"
                  for k in peers},
        "peers_missing": missing, "options": {k: has_option(k) for k in ("refresh_stagger", "cache_random_basis")},
    }


def parser(desc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=desc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, few rounds")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON ('-': stdout)")
    ap.add_argument("--md", default=None, metavar="PATH", help="write the markdown tables to PATH")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per size (default 10; quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds after step 0 (default 2; quick 0)")
    ap.add_argument("--spike-steps", type=int, default=None, help="steps of the refresh-spike runs (default 100)")
    ap.add_argument("--spike-every", type=int, default=None, help="refresh period of the spike runs (default 50)")
    ap.add_argument("--no-spikes", action="store_true", help="skip the refresh-spike runs")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--only", default=None, help="comma-separated contender names (the AdamW rows are always kept)")
    ap.add_argument("--no-peers", action="store_true", help="skip galore_torch / apollo_torch / fira")
    ap.add_argument("--note", default="", help="free text recorded with the results (e.g. the machine's state)")
    ap.add_argument("--compile", default=None, metavar="BACKEND", nargs="?", const="inductor",
                    help="also time GaLoreAdamW, Fira and APOLLO-Mini with compile=BACKEND (default inductor; the "
                         "warm-up rounds absorb the compilation)")
    return ap


def run(title: str, args: argparse.Namespace, sizes: list[Size], spike_size: Size | None, device: torch.device,
        dtype: torch.dtype, bound_dtypes: tuple[torch.dtype, ...], argv: list[str],
        main_sizes: tuple[str, ...] = ("i", "ii"), extra: Callable[[dict], dict] | None = None) -> dict[str, Any]:
    """Run every part, print the tables (to stderr when the JSON goes to stdout), write --json/--md. ``extra(result)``
    returns more top-level entries (a ``notes`` list of strings is printed under the tables)."""
    malloc = raise_malloc_thresholds()
    if args.threads:
        torch.set_num_threads(args.threads)
    stream = sys.stderr if args.json == "-" else sys.stdout

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    peers, missing = import_peers(not args.no_peers)
    meta = build_meta(title, args, device, malloc, peers, missing, argv)
    t0 = time.perf_counter()
    results = {s.name: run_size(s, args, peers, device, dtype, bound_dtypes, log) for s in sizes}
    spikes = None if args.no_spikes or spike_size is None else refresh_spikes(spike_size, args, device, dtype, log)
    meta["loadavg_end"] = list(os.getloadavg())
    meta["machine_end"] = machine_state()
    meta["wall_s"] = time.perf_counter() - t0
    result = {"meta": meta, "sizes": results, "refresh_spikes": spikes,
              "targets": evaluate_targets(results, spikes, main_sizes)}
    if extra is not None:
        result.update(extra(result))
    md = markdown(result)
    print(md, file=stream, flush=True)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(md)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    elif args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
        log(f"wrote {args.json}")
    return result


SIZES = [Size("i", 8, 512, 1376, 128), Size("ii", 4, 1024, 2752, 256)]
QUICK_SIZES = [Size("i", 2, 64, 172, 16), Size("ii", 1, 128, 344, 32)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    q = args.quick
    args.repeats = args.repeats if args.repeats is not None else (2 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if q else 2)
    args.spike_steps = args.spike_steps if args.spike_steps is not None else (8 if q else 100)
    args.spike_every = args.spike_every if args.spike_every is not None else (4 if q else 50)
    sizes = QUICK_SIZES if q else SIZES
    run("gradspace step benchmark (CPU)", args, sizes, sizes[0], torch.device("cpu"), torch.float32,
        (torch.float32,), argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
