#!/usr/bin/env python
"""Optimizer-state bytes and step time of every gradspace preset against torch AdamW and the peer libraries (CPU).

Three parts, all in one process (so background load hits every optimizer alike):

a) A LLaMA-style stack of ``nn.Linear`` layers (default 8 layers, hidden 512, MLP 1376: per layer q, k, v, o 512×512,
   gate/up ``Linear(512, 1376)``, down ``Linear(1376, 512)``, no biases, plus two RMSNorm-style 512-vectors that
   stay in full space), fp32, rank = hidden/4, refresh every 200 steps. Every optimizer gets its own copy of the
   same weights and the same fixed random gradients and is stepped round-robin (the starting optimizer rotates
   every round). Reported: exact state bytes (``SubspaceOptimizer.state_bytes()``; for torch and the peers the
   tensors reachable from ``optimizer.state``, the peers' projector objects included, shared storage once, Python
   numbers 8 bytes), the median non-refresh step time after a warm-up, and separately the time of a forced
   refresh step (``refresh_every`` / ``update_proj_gap`` set to 1 for one step; LDAdam and the online-PCA
   optimizers refresh at every step anyway) and of the first step (lazy state and the first decompositions).
b) Refresh cost at 1024×4096, rank 128: the projector's ``refresh`` call timed directly on the fp32 oriented
   gradient (primary number; with the configured threads and again with 1 thread), and alongside it whole optimizer
   steps with ``refresh_every=1`` vs non-refresh steps.
c) When importable: ``galore_torch.GaLoreAdamW``, ``apollo_torch.APOLLOAdamW`` (APOLLO and APOLLO-Mini) and
   ``fira.FiraAdamW`` rows in part a, and the ratio gradspace.GaLoreAdamW / galore_torch.GaLoreAdamW.

Usage::

    python benchmarks/step_memory.py                     # full run (about 4.5 min on 2 busy cores)
    python benchmarks/step_memory.py --quick --out /tmp/s.json   # smoke mode (< 30 s)
    python benchmarks/step_memory.py --only GaLoreAdamW,galore_torch.GaLoreAdamW --profile GaLoreAdamW

Prints markdown tables and writes every number to ``--out`` (JSON).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spin-waiting on a shared box

import argparse
import copy
import datetime as _dt
import importlib
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "gradspace").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
import gradspace  # noqa: E402
from gradspace.functional import transposes  # noqa: E402
from gradspace.registry import DEFAULTS, PROJECTORS  # noqa: E402

MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------- model
class Block(nn.Module):
    """One LLaMA-style layer's matrices (no forward is needed: gradients are fixed random tensors)."""

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


def build_stack(layers: int, hidden: int, mlp: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.ModuleDict({"layers": nn.ModuleList(Block(hidden, mlp) for _ in range(layers))})


def projected_names(model: nn.Module, rank: int) -> set[str]:
    groups = gradspace.param_groups(model, rank=rank, verbose=False, exclude_last_linear=False)
    return {n for g in groups if g.get("projector") != "identity" for n, _ in g["params"]}


# ----------------------------------------------------------------------------------------------------- state accounting
def _tensor_bytes(obj: Any, seen: set, depth: int = 0, count_numbers: bool = True) -> int:
    """Bytes of every tensor reachable from ``obj`` (dicts, sequences, plain objects' attributes), each storage once."""
    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        key = (st.data_ptr(), st.nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return st.nbytes()
    if isinstance(obj, bool):
        return 0
    if isinstance(obj, (int, float)):
        return 8 if count_numbers else 0
    if depth > 4:
        return 0
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen, depth + 1, count_numbers) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen, depth + 1, count_numbers) for v in obj)
    if hasattr(obj, "__dict__"):  # a peer's projector object: its tensors (ortho_matrix) are state; its ints are config
        return sum(_tensor_bytes(v, seen, depth + 1, False) for v in vars(obj).values())
    return 0


def _logical_bytes(obj: Any, seen: set, depth: int = 0) -> int:
    """numel × element size of every tensor reachable from ``obj`` (a view counts its own elements, not its storage)."""
    if isinstance(obj, torch.Tensor):
        key = (obj.data_ptr(), obj.numel(), obj.dtype)
        if key in seen:
            return 0
        seen.add(key)
        return obj.numel() * obj.element_size()
    if depth > 4 or isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return 0
    if isinstance(obj, dict):
        return sum(_logical_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_logical_bytes(v, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_logical_bytes(v, seen, depth + 1) for v in vars(obj).values())
    return 0


def state_report(opt: torch.optim.Optimizer, params: list[tuple[str, nn.Parameter]], projected: set[str]) -> dict:
    """Total / projected-weights / basis bytes of ``opt``'s state, plus the tensors' logical (numel) bytes."""
    logical = _logical_bytes([opt.state.get(p, {}) for _, p in params], set())
    if isinstance(opt, gradspace.SubspaceOptimizer):
        total = opt.state_bytes()
        per = opt.state_bytes(per_param=True)
        proj = sum(b for n, b in per.items() if n in projected)
        basis = sum(
            v.untyped_storage().nbytes() for st in opt.state.values() for k, v in st.items()
            if k.startswith("proj.") and isinstance(v, torch.Tensor)
        )
        return {"state_bytes": int(total), "projected_state_bytes": int(proj), "basis_bytes": int(basis),
                "tensor_logical_bytes": int(logical)}
    seen: set = set()
    total = proj = basis = 0
    for name, p in params:
        st = opt.state.get(p, {})
        b = _tensor_bytes(st, seen)
        total += b
        if name in projected:
            proj += b
        pr = st.get("projector") if isinstance(st, dict) else None
        om = getattr(pr, "ortho_matrix", None)
        if isinstance(om, torch.Tensor):
            basis += om.untyped_storage().nbytes()
    return {"state_bytes": int(total), "projected_state_bytes": int(proj), "basis_bytes": int(basis),
            "tensor_logical_bytes": int(logical)}


# ------------------------------------------------------------------------------------------------------ optimizer zoo
class Entry:
    """One optimizer in the round-robin: its own weight copy, fixed gradients and a way to force a refresh."""

    def __init__(self, name: str, kind: str, config: str, make: Callable[[list, list], torch.optim.Optimizer],
                 base: nn.Module, grads: dict[str, torch.Tensor], has_refresh: Any) -> None:
        self.name, self.kind, self.config, self.has_refresh = name, kind, config, has_refresh
        model = copy.deepcopy(base)
        self.params = list(model.named_parameters())
        for n, p in self.params:
            p.grad = grads[n].clone()
        self.model = model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.opt = make(model, self.params)
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.refresh_times: list[float] = []
        self.first_ms: float | None = None
        self._saved: list = []

    def step(self) -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        self.opt.step()
        t1, c1 = time.perf_counter(), time.process_time()
        return (t1 - t0) * 1e3, (c1 - c0) * 1e3

    def force_refresh(self, on: bool) -> None:
        """Make the next step a refresh step (gradspace: refresh_every=1; peers: projector.update_proj_gap=1)."""
        if on:
            self._saved = []
            if isinstance(self.opt, gradspace.SubspaceOptimizer):
                for g in self.opt.param_groups:
                    self._saved.append((g, "refresh_every", g["refresh_every"]))
                    g["refresh_every"] = 1
            else:
                for st in self.opt.state.values():
                    pr = st.get("projector")
                    if pr is not None and hasattr(pr, "update_proj_gap"):
                        self._saved.append((pr, "update_proj_gap", pr.update_proj_gap))
                        pr.update_proj_gap = 1
        else:
            for obj, key, value in self._saved:
                if isinstance(obj, dict):
                    obj[key] = value
                else:
                    setattr(obj, key, value)
            self._saved = []


def _groups(model: nn.Module, rank: int, **opts: Any) -> list[dict]:
    return gradspace.param_groups(model, rank=rank, verbose=False, exclude_last_linear=False, **opts)


def _peer_groups(params: list, projected: set[str], extra: dict) -> list[dict]:
    sub = [p for n, p in params if n in projected]
    rest = [p for n, p in params if n not in projected]
    return [dict(params=sub, **extra), dict(params=rest)]


def optimizer_specs(rank: int, T: int, lr: float, peers: dict[str, Any], projected: set[str]
                    ) -> list[tuple[str, str, str, Callable, Any]]:
    """(name, kind, config, make(model, params), refresh) for every optimizer benchmarked; refresh is True (a refresh
    can be forced), False (no subspace) or "every" (every step already refreshes: LDAdam, online PCA)."""
    P = gradspace
    specs: list[tuple[str, str, str, Callable, Any]] = [
        ("torch.AdamW(foreach)", "torch", "foreach=True",
         lambda m, ps: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0, foreach=True), False),
        ("torch.AdamW(fused)", "torch", "fused=True (extra reference)",
         lambda m, ps: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0, fused=True), False),
        ("GaLoreAdamW", "preset", f"svd, adam(hf), keep, drop, T={T}",
         lambda m, ps: P.GaLoreAdamW(_groups(m, rank), lr=lr, update_proj_gap=T), True),
        ("OnlineSubspaceAdamW", "preset", "online_pca (every step), adam(hf), keep, drop",
         lambda m, ps: P.OnlineSubspaceAdamW(_groups(m, rank), lr=lr, update_proj_gap=T), "every"),
        ("FloraAdam", "preset", f"random gaussian, adam, rotate, drop, kappa={T}",
         lambda m, ps: P.FloraAdam(_groups(m, rank), lr=lr, kappa=T), True),
        ("GoLore", "preset", f"random stiefel (no total_steps: random from step 0), rotate, T={T}",
         lambda m, ps: P.GoLore(_groups(m, rank), lr=lr, update_proj_gap=T), True),
        ("APOLLO", "preset", f"random gaussian, adam(hf), apollo channel residual, T={T}",
         lambda m, ps: P.APOLLO(_groups(m, rank), lr=lr, update_proj_gap=T), True),
        ("APOLLOMini", "preset", f"random rank 1, apollo tensor residual, scale 128, T={T}",
         lambda m, ps: P.APOLLOMini(_groups(m, 1), lr=lr, update_proj_gap=T), True),
        ("Fira", "preset", f"svd, adam(hf), fira channel residual, T={T}",
         lambda m, ps: P.Fira(_groups(m, rank), lr=lr, update_proj_gap=T), True),
        ("FRUGAL", "preset", f"svd, adam, reset, sign residual, T={T}",
         lambda m, ps: P.FRUGAL(_groups(m, rank), lr=lr, update_gap=T, weight_decay=0.0), True),
        ("LDAdam", "preset", "randomized (1 warm power step) EVERY step, rotate m and v",
         lambda m, ps: P.LDAdam(_groups(m, rank), lr=lr), "every"),
        ("SUMO", "preset", f"randomized, orthogonal (exact SVD), rotate, sgd residual, T={T}",
         lambda m, ps: P.SUMO(_groups(m, rank), lr=lr, update_proj_gap=T), True),
        ("AdamP", "preset", "identity, adam, radial projection",
         lambda m, ps: P.AdamP(list(m.named_parameters()), lr=lr), False),
        ("SGDP", "preset", "identity, sgdm(0.9), radial projection",
         lambda m, ps: P.SGDP(list(m.named_parameters()), lr=lr, momentum=0.9), False),
        ("Subspace(randomized)", "composition", f"randomized, adam, keep, drop, T={T}",
         lambda m, ps: P.SubspaceOptimizer(_groups(m, rank), lr=lr, projector="randomized", refresh_every=T), True),
        ("Subspace(online_pca)", "composition", "online_pca, adam, keep, drop",
         lambda m, ps: P.SubspaceOptimizer(_groups(m, rank), lr=lr, projector="online_pca", refresh_every=T), "every"),
        ("Subspace(randomized, lion)", "composition", f"randomized, lion, keep, drop, T={T}",
         lambda m, ps: P.SubspaceOptimizer(_groups(m, rank), lr=lr, projector="randomized", rule="lion",
                                           refresh_every=T), True),
        ("Subspace(randomized, orthogonal)", "composition",
         f"randomized, orthogonal (auto: Newton-Schulz), rotate, T={T}",
         lambda m, ps: P.SubspaceOptimizer(_groups(m, rank), lr=lr, projector="randomized", rule="orthogonal",
                                           on_refresh="rotate", refresh_every=T), True),
    ]
    if "galore_torch" in peers:
        gt = peers["galore_torch"]
        specs.append(("galore_torch.GaLoreAdamW", "peer", f"galore-torch, std, scale 1, T={T}",
                      lambda m, ps: gt.GaLoreAdamW(
                          _peer_groups(ps, projected, dict(rank=rank, update_proj_gap=T, scale=1.0, proj_type="std")),
                          lr=lr, no_deprecation_warning=True), True))
    if "apollo_torch" in peers:
        ap = peers["apollo_torch"]
        specs.append(("apollo_torch.APOLLOAdamW", "peer", f"apollo-torch, random, channel, scale 1, T={T}",
                      lambda m, ps: ap.APOLLOAdamW(
                          _peer_groups(ps, projected, dict(rank=rank, proj="random", scale_type="channel", scale=1.0,
                                                            update_proj_gap=T, proj_type="std")), lr=lr), True))
        specs.append(("apollo_torch.APOLLOAdamW(mini)", "peer", f"apollo-torch, rank 1, tensor, scale 128 front, T={T}",
                      lambda m, ps: ap.APOLLOAdamW(
                          _peer_groups(ps, projected, dict(rank=1, proj="random", scale_type="tensor", scale=128.0,
                                                            update_proj_gap=T, proj_type="std")),
                          lr=lr, scale_front=True), True))
    if "fira" in peers:
        fr = peers["fira"]
        specs.append(("fira.FiraAdamW", "peer", f"fira, alpha 1, T={T}",
                      lambda m, ps: fr.FiraAdamW(
                          _peer_groups(ps, projected, dict(rank=rank, update_proj_gap=T, alpha=1.0, proj_type="std")),
                          lr=lr, no_deprecation_warning=True), True))
    return specs


def import_peers() -> dict[str, Any]:
    peers = {}
    for mod in ("galore_torch", "apollo_torch", "fira"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peers[mod] = importlib.import_module(mod)
        except Exception as err:  # noqa: BLE001 - any import failure means "not available"
            print(f"(peer {mod} not importable: {type(err).__name__}: {err})")
    return peers


def _git_state() -> dict[str, Any]:
    """The commit and the locally modified files under src/ (read-only git commands), so numbers map to code."""
    import subprocess

    def run(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return None

    status = run("status", "--short", "--", "src")
    return {"commit": run("rev-parse", "HEAD"), "src_modified": status.splitlines() if status else []}


def _pkg_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------------------------------------- part a
def part_a(args: argparse.Namespace, peers: dict[str, Any]) -> dict:
    H, F, L, R, T = args.hidden, args.mlp, args.layers, args.rank, args.refresh_every
    base = build_stack(L, H, F)
    projected = projected_names(base, R)
    gen = torch.Generator().manual_seed(1)
    grads = {n: torch.randn(p.shape, generator=gen) * 1e-2 for n, p in base.named_parameters()}
    n_params = sum(p.numel() for p in base.parameters())
    n_proj = sum(p.numel() for n, p in base.named_parameters() if n in projected)
    specs = optimizer_specs(R, T, args.lr, peers, projected)
    if args.only:
        keep = set(args.only.split(","))
        specs = [s for s in specs if s[0] in keep or s[0] == "torch.AdamW(foreach)"]
    print(f"\n## a) State memory and step time: {L} layers, hidden {H}, MLP {F}, fp32, rank {R}, refresh every {T}\n")
    print(f"{n_params:,} parameters, {n_proj:,} in the {len(projected)} projected matrices; "
          f"{len(specs)} optimizers stepped round-robin; building...", flush=True)
    entries = [Entry(name, kind, cfg, make, base, grads, hr) for name, kind, cfg, make, hr in specs]
    del grads

    # first step (lazy state + the initial refresh for subspace methods)
    for e in entries:
        e.first_ms, _ = e.step()
    # warm-up + timed non-refresh rounds, round-robin with a rotating start
    n = len(entries)
    total_rounds = args.warmup + args.repeats
    t_start = time.perf_counter()
    for rnd in range(total_rounds):
        for i in range(n):
            e = entries[(rnd + i) % n]
            if len(e.times) >= 3 and sum(e.times) > 1e3 * args.budget_s:
                continue  # a slow optimizer stops after its time budget (at least 3 timed steps)
            ms, cpu = e.step()
            if rnd >= args.warmup:
                e.times.append(ms)
                e.cpu.append(cpu)
    t_timed = time.perf_counter() - t_start
    # forced refresh steps (one per round), also round-robin
    for rnd in range(args.refresh_repeats):
        for i in range(n):
            e = entries[(rnd + i) % n]
            if e.has_refresh is not True:
                continue  # no subspace, or every step is already a refresh step
            e.force_refresh(True)
            ms, _ = e.step()
            e.force_refresh(False)
            e.refresh_times.append(ms)

    adamw = entries[0]
    adamw_state = state_report(adamw.opt, adamw.params, projected)
    adamw_med = statistics.median(adamw.times)
    rows = []
    for e in entries:
        rep = state_report(e.opt, e.params, projected)
        med = statistics.median(e.times)
        row = {
            "name": e.name, "kind": e.kind, "config": e.config, **rep,
            "state_pct_adamw": 100.0 * rep["state_bytes"] / adamw_state["state_bytes"],
            "projected_pct_adamw": 100.0 * rep["projected_state_bytes"] / adamw_state["projected_state_bytes"],
            "step_ms_median": med, "step_ms_mean": statistics.fmean(e.times),
            "step_ms_min": min(e.times), "step_ms": e.times,
            "cpu_ms_median": statistics.median(e.cpu),
            "ratio_vs_adamw": med / adamw_med,
            "refresh_step_ms": e.refresh_times,
            "refresh_step_ms_median": (statistics.median(e.refresh_times) if e.refresh_times
                                       else med if e.has_refresh == "every" else None),
            "refreshes_every_step": e.has_refresh == "every",
            "first_step_ms": e.first_ms,
        }
        rows.append(row)
    # sanity: every weight stayed finite (no step was silently skipped)
    for e in entries:
        bad = [n for n, p in e.params if not bool(torch.isfinite(p).all())]
        if bad:
            print(f"WARNING: {e.name} produced non-finite weights in {bad[:3]}")

    hdr = ("| optimizer | kind | state MiB | state bytes | % AdamW | projected weights % AdamW | basis bytes "
           "| step ms median (n) | ratio vs AdamW | CPU ms median | refresh step ms (n) | first step ms |")
    print(hdr)
    print("|" + "---|" * 12)
    for r in rows:
        ref = (f"{r['refresh_step_ms_median']:.1f} ({len(r['refresh_step_ms'])})" if r["refresh_step_ms"]
               else "every step" if r["refreshes_every_step"] else "-")
        print(f"| {r['name']} | {r['kind']} | {r['state_bytes'] / MiB:.2f} | {r['state_bytes']:,} | "
              f"{r['state_pct_adamw']:.1f}% | {r['projected_pct_adamw']:.1f}% | {r['basis_bytes']:,} | "
              f"{r['step_ms_median']:.1f} ({len(r['step_ms'])}) | {r['ratio_vs_adamw']:.2f}x | "
              f"{r['cpu_ms_median']:.1f} | {ref} | "
              f"{r['first_step_ms']:.1f} |")
    views = [r for r in rows if r["state_bytes"] > 1.05 * r["tensor_logical_bytes"]]
    if views:
        detail = "; ".join(f"{r['name']} {r['state_bytes']:,} B stored vs {r['tensor_logical_bytes']:,} B of tensor "
                           "elements" for r in views)
        print("\nState bytes count each tensor's whole storage (the memory it keeps alive). These rows hold views of "
              f"larger storages: {detail}.")
    print(f"\nTimed: up to {args.repeats} rounds after {args.warmup} warm-up rounds ({t_timed:.1f} s; per-optimizer "
          f"budget {args.budget_s:g} s, at least 3 steps). Configs:")
    for r in rows:
        print(f"- {r['name']}: {r['config']}")
    return {
        "shape": {"layers": L, "hidden": H, "mlp": F, "rank": R, "refresh_every": T, "dtype": "float32",
                  "n_params": n_params, "n_projected_params": n_proj, "n_projected_matrices": len(projected)},
        "method": ("each optimizer on its own deepcopy of the same weights with the same fixed random gradients "
                   "(randn*1e-2, seed 1); round-robin with a rotating start; step 0 is 'first_step_ms'; "
                   f"{args.warmup} warm-up rounds then up to {args.repeats} timed non-refresh rounds (an optimizer "
                   f"stops once its timed steps exceed {args.budget_s:g} s, with at least 3 timed); then "
                   f"{args.refresh_repeats} forced-refresh round(s) (refresh_every/update_proj_gap set to 1 for one "
                   "step)"),
        "adamw_state_bytes": adamw_state["state_bytes"],
        "adamw_projected_state_bytes": adamw_state["projected_state_bytes"],
        "adamw_step_ms_median": adamw_med,
        "timed_wall_s": t_timed,
        "rows": rows,
    }, entries


# --------------------------------------------------------------------------------------------------------- part b
def part_b(args: argparse.Namespace) -> dict:
    m, n = args.refresh_shape
    R = args.refresh_rank
    reps = args.refresh_cost_repeats
    print(f"\n## b) Refresh cost at {m}×{n} fp32, rank {R}\n")
    gen = torch.Generator().manual_seed(2)
    G = torch.randn(m, n, generator=gen)
    group = dict(DEFAULTS)
    group.update(rank=R)
    transpose = transposes(m, n, group["side"])
    x = (G.T if transpose else G).float()  # the fp32 oriented gradient a × b (b = projected side), as the optimizer has
    threads = torch.get_num_threads()

    def direct_calls(nthreads: int) -> tuple[dict[str, list[float]], dict[str, float], dict[str, dict]]:
        """Interleaved direct refresh() calls; the first call of each is reported apart (randomized is cold there)."""
        torch.set_num_threads(nthreads)
        times: dict[str, list[float]] = {}
        first: dict[str, float] = {}
        states = {name: {"step": 0, "proj.seed": 7, "proj.count": 0} for name in ("svd", "randomized")}
        try:
            for rep in range(reps + 1):
                for name in ("svd", "randomized"):
                    st = states[name]
                    t0 = time.perf_counter()
                    PROJECTORS[name].refresh(x, R, st, group)
                    ms = (time.perf_counter() - t0) * 1e3
                    st["proj.count"] += 1
                    if rep == 0:
                        first[name] = ms
                    else:
                        times.setdefault(name, []).append(ms)
        finally:
            torch.set_num_threads(threads)
        return times, first, states

    direct, firsts, states = direct_calls(threads)
    direct1, firsts1, _ = direct_calls(1) if threads != 1 else (direct, firsts, states)
    q_svd, q_rand = states["svd"]["proj.basis"], states["randomized"]["proj.basis"]
    # captured energy ‖X Q‖²/‖X‖² of each basis (how good the randomized one is)
    energy = {k: float((x @ q).square().sum() / x.square().sum()) for k, q in (("svd", q_svd), ("randomized", q_rand))}
    med = {k: statistics.median(v) for k, v in direct.items()}
    med1 = {k: statistics.median(v) for k, v in direct1.items()}
    ratio = med["svd"] / med["randomized"]
    ratio1 = med1["svd"] / med1["randomized"]

    # alongside: whole optimizer steps on one weight, refresh_every=1 (every step refreshes) vs 10**9 (only step 0)
    step_ms: dict[str, list[float]] = {}
    opts = {}
    for proj in ("svd", "randomized"):
        for T in (1, 10**9):
            w = nn.Parameter(torch.zeros(m, n))
            w.grad = G.clone()
            opts[(proj, T)] = (gradspace.SubspaceOptimizer([w], lr=1e-3, projector=proj, rank=R, refresh_every=T), w)
            opts[(proj, T)][0].step()  # step 0: state + first refresh
    for rep in range(max(2, reps - 1)):
        for key, (opt, _) in opts.items():
            t0 = time.perf_counter()
            opt.step()
            step_ms.setdefault(f"{key[0]}_{'refresh' if key[1] == 1 else 'normal'}", []).append(
                (time.perf_counter() - t0) * 1e3)
    step_med = {k: statistics.median(v) for k, v in step_ms.items()}
    step_refresh_cost = {p: step_med[f"{p}_refresh"] - step_med[f"{p}_normal"] for p in ("svd", "randomized")}
    step_ratio = step_refresh_cost["svd"] / max(step_refresh_cost["randomized"], 1e-6)

    print("Primary: the projector's refresh() called directly on the fp32 oriented gradient "
          f"({x.shape[0]}×{x.shape[1]}, projected side {x.shape[1]}); median of {reps} interleaved calls after a first "
          "call that is reported apart (randomized is warm-started from its previous basis after it). Measured with "
          f"torch.set_num_threads({threads}) and again with 1 thread.\n")
    print("| projector | threads | refresh ms median | all (ms) | first call ms | captured energy ‖XQ‖²/‖X‖² |")
    print("|---|---|---|---|---|---|")
    for nt, d, f in ((threads, direct, firsts), (1, direct1, firsts1)):
        for k in ("svd", "randomized"):
            all_ms = ", ".join(f"{v:.1f}" for v in d[k])
            print(f"| {k} | {nt} | {statistics.median(d[k]):.1f} | {all_ms} | {f[k]:.1f} | "
                  f"{energy[k]:.4f} |")
    print(f"\nsvd / randomized refresh time: **{ratio:.1f}×** with {threads} threads, {ratio1:.1f}× with 1 thread "
          "(target ≥ 5×)\n")
    print("Alongside: whole SubspaceOptimizer steps on this one weight, refresh_every=1 vs non-refresh "
          f"(median of {len(next(iter(step_ms.values())))}):\n")
    print("| projector | refresh step ms | non-refresh step ms | refresh cost (difference) ms |")
    print("|---|---|---|---|")
    for p in ("svd", "randomized"):
        print(f"| {p} | {step_med[p + '_refresh']:.1f} | {step_med[p + '_normal']:.1f} | {step_refresh_cost[p]:.1f} |")
    print(f"\nsvd / randomized refresh cost from steps: {step_ratio:.1f}×")
    return {
        "shape": [m, n], "rank": R, "oriented_shape": list(x.shape),
        "method": "direct projector.refresh() call on the fp32 oriented gradient (primary); "
                  "plus refresh_every=1 steps minus non-refresh steps (secondary)",
        "threads": threads, "direct_ms": direct, "direct_first_call_ms": firsts, "direct_median_ms": med,
        "ratio_svd_over_randomized": ratio,
        "direct_1thread_ms": direct1, "direct_1thread_first_call_ms": firsts1, "direct_1thread_median_ms": med1,
        "ratio_svd_over_randomized_1thread": ratio1,
        "captured_energy": energy,
        "step_ms": step_ms, "step_median_ms": step_med, "step_refresh_cost_ms": step_refresh_cost,
        "step_ratio_svd_over_randomized": step_ratio,
    }


# --------------------------------------------------------------------------------------------------------- profile
def profile(entries: list[Entry], names: list[str], steps: int) -> dict:
    """torch.profiler over ``steps`` non-refresh steps: the top entries by inclusive CPU time (Python frames with their
    file and line, and aten ops), per step."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    out = {}
    for e in entries:
        if e.name not in names:
            continue
        e.step()
        with tprofile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
            for _ in range(steps):
                e.opt.step()
        rows = sorted(prof.key_averages(), key=lambda a: -a.cpu_time_total)
        rows = [a for a in rows if not any(k in a.key for k in ("step_memory.py", "_contextlib", "optimizer.py(5",
                                                               "Optimizer.step#"))][:25]
        lines = [f"{a.cpu_time_total / steps / 1e3:9.1f} {a.self_cpu_time_total / steps / 1e3:9.1f} "
                 f"{a.count / steps:7.0f}  {a.key[:100]}" for a in rows]
        text = "incl ms   self ms   calls  (per step)\n" + "\n".join(lines)
        print(f"\n### profile of {e.name} ({steps} steps)\n\n```\n{text}\n```")
        out[e.name] = text
    return out


# --------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/step_memory.json", help="JSON output path")
    ap.add_argument("--quick", action="store_true", help="smoke mode: small shapes, few repeats (< 30 s)")
    ap.add_argument("--repeats", type=int, default=None, help="timed non-refresh rounds (default 8; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds after the first step (default 1)")
    ap.add_argument("--refresh-repeats", type=int, default=None, help="forced refresh rounds (default 1)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="per-optimizer cap on timed-step seconds (>= 3 steps are always timed; default 5, quick 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--only", default=None, help="comma-separated optimizer names (AdamW is always kept)")
    ap.add_argument("--no-peers", action="store_true", help="skip galore_torch / apollo_torch / fira")
    ap.add_argument("--skip-refresh-cost", action="store_true", help="skip part b")
    ap.add_argument("--profile", default=None, help="comma-separated optimizer names to profile after part a")
    ap.add_argument("--profile-steps", type=int, default=5)
    args = ap.parse_args(argv)
    q = args.quick
    args.layers, args.hidden, args.mlp = (2, 128, 344) if q else (8, 512, 1376)
    args.rank = args.hidden // 4
    args.refresh_every = 200
    args.repeats = args.repeats if args.repeats is not None else (3 if q else 8)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.budget_s = args.budget_s if args.budget_s is not None else (2.0 if q else 5.0)
    args.refresh_repeats = args.refresh_repeats if args.refresh_repeats is not None else 1
    args.refresh_shape = (256, 1024) if q else (1024, 4096)
    args.refresh_rank = 32 if q else 128
    args.refresh_cost_repeats = 3

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    meta = {
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "gradspace": gradspace.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_start": list(load_start),
        "quick": q, "argv": sys.argv[1:] if argv is None else list(argv), "git": _git_state(),
    }
    peers = {} if args.no_peers else import_peers()
    meta["peers"] = {k: _pkg_version({"galore_torch": "galore-torch", "apollo_torch": "apollo-torch"}.get(k, k))
                     for k in peers}
    print(f"# gradspace step/memory benchmark{' (quick)' if q else ''}\n")
    print(f"torch {torch.__version__}, {platform.platform()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={meta['omp_wait_policy']}, loadavg at start {load_start[0]:.2f}/{load_start[1]:.2f}/"
          f"{load_start[2]:.2f}; peers: {meta['peers'] or 'none'}")

    a, entries = part_a(args, peers)
    prof = profile(entries, args.profile.split(","), args.profile_steps) if args.profile else None
    del entries
    b = None if args.skip_refresh_cost else part_b(args)

    # ---------------------------------------------------------------- c) peers and targets
    by = {r["name"]: r for r in a["rows"]}
    peer_cmp = []
    print("\n## c) gradspace presets vs the peer libraries (same stack, same round-robin)\n")
    print("| gradspace | peer | gradspace step ms | peer step ms | ratio | gradspace state bytes | peer state bytes |")
    print("|---|---|---|---|---|---|---|")
    for ours, theirs in (("GaLoreAdamW", "galore_torch.GaLoreAdamW"), ("APOLLO", "apollo_torch.APOLLOAdamW"),
                         ("APOLLOMini", "apollo_torch.APOLLOAdamW(mini)"), ("Fira", "fira.FiraAdamW")):
        if ours in by and theirs in by:
            o, t = by[ours], by[theirs]
            ratio = o["step_ms_median"] / t["step_ms_median"]
            peer_cmp.append({"gradspace": ours, "peer": theirs, "gradspace_ms": o["step_ms_median"],
                             "peer_ms": t["step_ms_median"], "ratio": ratio,
                             "gradspace_state_bytes": o["state_bytes"], "peer_state_bytes": t["state_bytes"]})
            print(f"| {ours} | {theirs} | {o['step_ms_median']:.1f} | {t['step_ms_median']:.1f} | {ratio:.2f}x | "
                  f"{o['state_bytes']:,} | {t['state_bytes']:,} |")
    if not peer_cmp:
        print("(no peer library importable)")

    targets = []
    if "GaLoreAdamW" in by:
        g = by["GaLoreAdamW"]
        targets.append({"target": "GaLoreAdamW state at rank hidden/4 <= 40% of AdamW's (projected weights)",
                        "value": round(g["projected_pct_adamw"], 2), "threshold": 40.0,
                        "passed": g["projected_pct_adamw"] <= 40.0,
                        "note": f"whole model: {g['state_pct_adamw']:.1f}%"})
    random_rows = [r for r in a["rows"] if r["name"] in ("FloraAdam", "GoLore", "APOLLO", "APOLLOMini")]
    if random_rows:
        targets.append({"target": "random projectors store 0 basis bytes (FloraAdam, GoLore, APOLLO, APOLLOMini)",
                        "value": {r["name"]: r["basis_bytes"] for r in random_rows}, "threshold": 0,
                        "passed": all(r["basis_bytes"] == 0 for r in random_rows)})
    if b is not None:
        targets.append({"target": f"randomized refresh >= 5x faster than svd at {b['shape'][0]}x{b['shape'][1]}, "
                                  f"rank {b['rank']} (direct refresh call, {b['threads']} threads)",
                        "value": round(b["ratio_svd_over_randomized"], 2), "threshold": 5.0,
                        "passed": b["ratio_svd_over_randomized"] >= 5.0,
                        "note": f"1 thread: {b['ratio_svd_over_randomized_1thread']:.1f}x"})
    gal = next((c for c in peer_cmp if c["peer"] == "galore_torch.GaLoreAdamW"), None)
    if gal is not None:
        targets.append({"target": "gradspace.GaLoreAdamW / galore_torch.GaLoreAdamW non-refresh step time <= 1.1",
                        "value": round(gal["ratio"], 3), "threshold": 1.1, "passed": gal["ratio"] <= 1.1})
    print("\n## Targets\n")
    print("| target | value | threshold | result |")
    print("|---|---|---|---|")
    for t in targets:
        val = t["value"] if not isinstance(t["value"], dict) else ", ".join(f"{k} {v}" for k, v in t["value"].items())
        print(f"| {t['target']} | {val}{' (' + t['note'] + ')' if t.get('note') else ''} | {t['threshold']} | "
              f"{'PASS' if t['passed'] else 'FAIL'} |")

    load_end = os.getloadavg()
    meta["loadavg_end"] = list(load_end)
    meta["wall_s"] = time.perf_counter() - t0
    print(f"\nloadavg start {load_start[0]:.2f} end {load_end[0]:.2f}; wall {meta['wall_s']:.1f} s")
    result = {"meta": meta, "stack": a, "refresh_cost": b, "peer_comparison": peer_cmp, "targets": targets}
    if prof is not None:
        result["profile"] = prof
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
