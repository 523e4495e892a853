"""``gradspace bench``: memory saved, quality lost and time spent by each optimizer, measured in one run on real data.

Three modes of the LM task, one contract (``docs/benchmark-notes.md``):

* **standard** (``--task lm``): every method, peers included, sweeps the same lr grid on the first seed (extended while
  the best lr is at an edge, :mod:`~gradspace.bench.sweep`), then runs every seed at its best lr; AdamW also runs with
  per-group lrs (``adamw-lrsplit``); 3 seeds; on tiny-shakespeare (when present or downloadable) and on the Python
  standard library's source (always there). Writes ``lrs.json``, the lrs it chose;
* **quick** (``--quick``, ``make demo``): the same model and steps, at the lrs the committed standard run chose
  (``configs/standard_lrs.json``, shipped with the package), 3 seeds, on whichever corpus is available;
* **scaling** (``--scaling``): a few methods at three model sizes and two run lengths, at the standard run's lrs;
  ``scaling.png`` plots the val-loss ratio to AdamW against size and steps.

Every comparison is paired per seed (same initial weights, same batches in the same order) with a 95 % t interval;
verdicts are "better"/"worse" only when the interval excludes zero; targets print PASS / FAIL / TIE per corpus
(:mod:`~gradspace.bench.stats`). Each optimizer's runs execute in their own subprocess (``python -m
gradspace.bench.train``) so imports and peak memory do not leak between them. Results go to ``--out/<corpus>/``:
``results.json`` (every number, the config, versions, machine), ``summary.json`` and ``runs.csv`` (the small files the
docs are built from), ``results.md`` (tables and targets) and PNG plots.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .data import CORPUS_KINDS, corpus_key, resolve_corpus
from .memory import plan_state
from .model import TinyLlama
from .optimizers import BUILTINS, available, builtin, load_config, lowrank_split, parse_optimizer_arg
from .report import (console_table, scaling_lines, table_rows, targets_brief, targets_lines, write_markdown, write_plots,
                     write_scaling_plot)
from .stats import add_comparisons, add_ratios, evaluate_targets, paired, summarize
from .sweep import MAX_EXTENSIONS, STANDARD_GRID
from .train import TaskConfig, build_model, run_job

#: the standard comparison: AdamW (one lr; per-group lrs), the peers, gradspace's reproduction of each plus its own
#: configurations
DEFAULT_LM = ["adamw", "adamw-lrsplit", "galore", "fira", "apollo", "apollo-mini", "gs-galore", "gs-fira", "gs-apollo",
              "gs-apollo-mini", "gs-fira-bf16", "gs-frugal-r1"]
#: ``--quick``: every reference a verdict needs (tuned AdamW, every peer) and the target candidates; 30 runs of 100
#: steps, 2 at a time: about 5 minutes on 2 cores
QUICK_LM_OPTIMIZERS = ["adamw", "adamw-lrsplit", "galore", "fira", "apollo", "apollo-mini", "gs-galore", "gs-fira-bf16",
                       "gs-apollo-mini", "gs-frugal-r1"]
#: ``--scaling``: AdamW, the strongest peer at this size and gradspace's two target configurations
SCALING_OPTIMIZERS = ["adamw", "galore", "gs-fira-bf16", "gs-frugal-r1"]
SCALING_SIZES = [128, 256, 512]
SCALING_LENGTHS = [100, 300]
DEFAULT_DIGITS = ["adamw", "galore", "gs-galore", "gs-fira", "gs-apollo"]
#: the LM configuration of the standard and quick modes (the same, so the standard run's lrs carry over): sized so the
#: standard mode (12 methods × ≥ 6 runs × 2 corpora) runs in about an hour on one core
STANDARD_LM = {"steps": 100, "batch": 8, "seq": 64, "val_batches": 8, "eval_every": 25}
QUICK_DIGITS = {"steps": 150, "batch": 64}
FULL_DIGITS = {"steps": 300, "batch": 64}
#: the lrs the committed standard run chose, read by ``--quick`` and ``--scaling`` (package data)
LRS_FILE = Path(__file__).with_name("configs") / "standard_lrs.json"
PEERS = ("galore_torch", "apollo_torch", "fira", "transformers", "bitsandbytes")


class UsageError(Exception):
    """A user error that ``main`` reports with ``parser.error`` (one line, exit status 2)."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, memory, GPU, versions and load of this machine (no host name)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    versions = {d: _version(d) for d in ("torch", "gradspace", "numpy", "galore-torch", "apollo-torch", "fira",
                                           "transformers", "bitsandbytes", "matplotlib", "scikit-learn")}
    versions["torch"] = torch.__version__
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "ram_gib": mem,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (set by gradspace bench for its workers)"),
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


class _Progress:
    """One tqdm bar per run (plain lines when tqdm is missing or ``quiet``)."""

    def __init__(self, quiet: bool = False, position: int = 0) -> None:
        self.quiet = quiet
        self.position = position
        self.bar: Any = None
        try:
            from tqdm import tqdm  # lazy: the progress bar is optional

            self.tqdm = tqdm
        except ImportError:
            self.tqdm = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if self.quiet:
            return
        if kind == "start":
            if self.tqdm:
                self.bar = self.tqdm(total=event["steps"], desc=event["run"], leave=self.position == 0,
                                     dynamic_ncols=True, file=sys.stderr, mininterval=0.5, position=self.position)
            else:
                print(f"run {event['run']} ({event['steps']} steps)", file=sys.stderr)
        elif kind == "progress" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.3f}", refresh=False)
        elif kind == "end" and self.bar is not None:
            self.bar.close()
            self.bar = None


def _run_subprocess(job: dict[str, Any], progress: _Progress, log: Path, threads: int) -> list[dict[str, Any]]:
    """Run one job in ``python -m gradspace.bench.train``; events stream back as JSON lines."""
    import gradspace

    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin-waiting threads stall 2-core machines (peers-measured.md)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    src = str(Path(gradspace.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    results, error = [], None
    with open(log, "w") as errfile:
        proc = subprocess.Popen([sys.executable, "-m", "gradspace.bench.train"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errfile, text=True, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "result":
                results.append(event["result"])
            elif event.get("event") == "error":
                error = event["error"]
            else:
                progress(event)
        proc.wait()
    progress({"event": "end"})
    if proc.returncode != 0 and not results:
        raise RuntimeError(f"{job['spec']['name']}: worker failed ({error or 'exit ' + str(proc.returncode)}); see {log}")
    return results


def load_lrs(path: Path | None = None) -> dict[str, Any] | None:
    """The chosen-lrs file a standard run wrote (``lrs.json``; shipped as ``configs/standard_lrs.json``), or ``None``."""
    path = LRS_FILE if path is None else Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("corpora"), dict):
        raise UsageError(f"{path}: not a chosen-lrs file (expected a mapping with 'corpora': {{corpus: {{method: lr}}}}).")
    data["path"] = str(path)
    return data


def lrs_for(lrs_file: dict[str, Any] | None, key: str) -> tuple[dict[str, float], str]:
    """``({method: lr}, where they come from)`` for corpus ``key``; another corpus's lrs when ``key`` is missing."""
    if not lrs_file:
        return {}, "no chosen-lrs file: every method at its spec's default lr"
    corpora = lrs_file["corpora"]
    use = key if key in corpora else ("tinyshakespeare" if "tinyshakespeare" in corpora else next(iter(corpora), None))
    if use is None:
        return {}, f"{lrs_file['path']} has no lrs: every method at its spec's default lr"
    where = f"the lrs the standard run of {lrs_file.get('date', '?')} chose on {use} ({lrs_file['path']})"
    if use != key:
        where += f"; that file has none for {key}"
    return {k: float(v) for k, v in corpora[use].items()}, where


def run_benchmark(
    cfg: TaskConfig,
    specs: list[dict[str, Any]],
    *,
    seeds: int,
    lr_sweep: bool,
    out: Path,
    quick: bool = False,
    first_seed: int = 0,
    jobs: int = 1,
    inline: bool = False,
    quiet: bool = False,
    plots: bool = True,
    grid: list[float] | None = None,
    max_extensions: int = 0,
    chosen_lrs: dict[str, float] | None = None,
    lr_source: str | None = None,
    mode: str = "custom",
) -> dict[str, Any]:
    """Run every spec (× digits model) × lr × seed on one corpus, then write ``results.json``, ``summary.json``,
    ``runs.csv``, ``results.md`` and the plots into ``out``.

    With ``lr_sweep`` each spec tries its own ``lr_grid`` or else ``grid`` on the first seed (``max_extensions`` extra
    lrs beyond the edges); without, each spec runs at ``chosen_lrs[name]`` when given, else its own ``lr``."""
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    cfg = cfg.resolved()
    jobs = max(1, jobs)
    threads = cfg.threads or max(1, torch.get_num_threads() // jobs)
    cfg.threads = threads
    machine = machine_info(threads)
    machine["parallel_workers"] = 1 if inline else jobs
    seed_list = list(range(first_seed, first_seed + seeds))
    corpus = resolve_corpus(cfg.data, allow_download=cfg.allow_download, kind=cfg.corpus) if cfg.task == "lm" else None
    if corpus is not None and cfg.data is None and cfg.corpus is None:
        cfg.corpus = "stdlib" if corpus.source == "stdlib" else None
    models = [None] if cfg.task == "lm" else list(cfg.digits_models)
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    work = []
    specs = [dict(spec) for spec in specs]
    for spec in specs:
        if not available(spec):
            skipped[spec["name"]] = f"{spec['optimizer'].rpartition('.')[0]} is not importable"
            continue
        if lr_sweep:
            lrs = list(spec["lr_grid"] or grid or [spec["lr"]])
            spec["lr_source"] = "swept on the first seed" if len(lrs) > 1 else "spec"
        elif chosen_lrs and spec["name"] in chosen_lrs:
            lrs = [chosen_lrs[spec["name"]]]
            spec["lr_source"] = "standard run"
        else:
            lrs = [spec["lr"]]
            spec["lr_source"] = "spec default"
        spec["lr_grid"] = lrs if len(lrs) > 1 else []  # what actually ran, for the report
        for model in models:
            job = {"config": asdict(cfg), "spec": spec, "lrs": lrs, "seeds": seed_list, "model": model,
                   "max_extensions": max_extensions if len(lrs) > 1 else 0}
            work.append((len(lrs) + len(seed_list) - 1, len(work), job))
    # longest jobs first, so parallel workers finish together; results are reported in the order given
    work.sort(key=lambda w: (-w[0], w[1]))
    done: dict[int, list[dict[str, Any]]] = {}

    def execute(item: tuple[int, int, dict[str, Any]], slot: int) -> None:
        _, order, job = item
        spec, model = job["spec"], job["model"]
        log = out / "logs" / f"{spec['name']}{'-' + model if model else ''}.log"
        progress = _Progress(quiet, slot)
        try:
            done[order] = run_job(job, progress) if inline else _run_subprocess(job, progress, log, cfg.threads)
        except Exception as err:  # one failing optimizer must not lose the others' results
            failed[spec["name"]] = f"{err}"

    if jobs <= 1 or inline:
        for item in work:
            execute(item, 0)
    else:
        import queue
        import threading

        slots: queue.Queue[int] = queue.Queue()
        for i in range(jobs):
            slots.put(i)
        pending: queue.Queue[tuple[int, int, dict[str, Any]]] = queue.Queue()
        for item in work:
            pending.put(item)

        def worker() -> None:
            slot = slots.get()
            while True:
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    return
                execute(item, slot)

        threads_ = [threading.Thread(target=worker) for _ in range(jobs)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
    for order in sorted(done):
        runs.extend(done[order])
    adamw_state = {}
    for model in models:
        meta = TinyLlama(cfg.llama(), device="meta") if cfg.task == "lm" else build_model(cfg, model).to("meta")
        target: Any = ("attn", "mlp") if cfg.task == "lm" else "matrices"
        adamw_state[model or "llama"] = plan_state("adamw", meta, target=target)["state_bytes"]
    ref_ms = add_ratios(runs, adamw_state)
    summary = summarize(runs)
    for model in {r["model"] for r in summary}:
        add_comparisons(summary, model)
    targets = evaluate_targets(summary) if cfg.task == "lm" else {}
    machine["loadavg_end"] = _loadavg()
    results: dict[str, Any] = {
        "mode": mode,
        "config": {**asdict(cfg), "quick": quick, "lr_sweep": lr_sweep, "seeds": seeds, "optimizers": specs,
                   "grid": list(grid or []) if lr_sweep else [], "max_extensions": max_extensions if lr_sweep else 0},
        "command": "gradspace " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None,
        "lr_source": lr_source or ("each method's sweep on the first seed" if lr_sweep else "each spec's lr"),
        "machine": machine,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seeds": seed_list,
        "corpus": None if corpus is None else {**corpus.describe(), "key": corpus_key(corpus)},
        "model_info": _model_info(cfg, models),
        "adamw_state_bytes": adamw_state,
        "adamw_step_ms": ref_ms,
        "runs": runs,
        "summary": summary,
        "targets": targets,
        "skipped": skipped,
        "failed": failed,
        "notes": _notes(cfg, summary, runs, machine["parallel_workers"]),
    }
    results["wall_s"] = time.time() - t0
    if plots and runs:
        results["plots"] = write_plots(results, out)
    results["wall_s"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    small = {k: v for k, v in results.items() if k != "runs"}
    (out / "summary.json").write_text(json.dumps(small, indent=1, default=str))
    write_runs_csv(runs, out / "runs.csv")
    write_markdown(results, out / "results.md")
    return results


RUN_COLUMNS = ["name", "optimizer", "family", "model", "lr", "seed", "sweep", "val_loss", "diverged", "state_bytes",
               "state_ratio_vs_adamw", "step_ms", "step_ratio_vs_adamw", "tokens_per_s", "peak_rss_mb", "rank", "train_s"]


def write_runs_csv(runs: list[dict[str, Any]], path: Path) -> None:
    """One line per run (no curves): the raw numbers every table is computed from."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RUN_COLUMNS)
        for r in runs:
            w.writerow(["" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in RUN_COLUMNS])


def _model_info(cfg: TaskConfig, models: list[str | None]) -> dict[str, Any]:
    if cfg.task != "lm":
        descs = []
        for m in models:
            net = build_model(cfg, m)
            routed, _ = lowrank_split(net, "matrices")
            descs.append(f"digits {m}: {sum(p.numel() for p in net.parameters()):,} parameters, "
                         f"{len(routed)} routed matrices (conv kernels as (out, in·9))")
        return {"description": "; ".join(descs), "routed": "Linear/conv matrices except the output layer",
                "rank": f"{cfg.rank_fraction:g} of each routed weight's smaller side" if cfg.rank is None else cfg.rank}
    meta = TinyLlama(cfg.llama(), device="meta")
    n = sum(p.numel() for p in meta.parameters())
    routed, _ = lowrank_split(meta, ("attn", "mlp"))
    nr = sum(p.numel() for _, p in routed)
    emb = meta.embed_tokens.weight.numel() + meta.lm_head.weight.numel()
    return {
        "description": (f"LLaMA-style decoder (RMSNorm, rotary, SwiGLU, untied head; gradspace.bench.model), hidden "
                        f"{cfg.hidden}, intermediate {cfg.intermediate}, {cfg.layers} layers, {cfg.heads} heads, vocab 256: "
                        f"{n:,} parameters; embeddings + head {emb:,} ({100 * emb / n:.1f}%), attn/mlp matrices {nr:,} "
                        f"({100 * nr / n:.1f}%). With a byte vocabulary the embedding and head are small, so whole-model "
                        "state ratios are set by the routed matrices"),
        "n_params": n, "routed_params": nr, "embedding_head_params": emb,
        "routed": f"the {len(routed)} attn/mlp Linear weights (GaLore's scripts' choice)",
        "rank": cfg.rank if cfg.rank is not None else f"{cfg.rank_fraction:g} × smaller side = {round(cfg.rank_fraction * cfg.hidden)} = hidden/4",
    }


def _notes(cfg: TaskConfig, summary: list[dict[str, Any]], runs: list[dict[str, Any]], workers: int = 1) -> list[str]:
    notes = []
    rows = {r["name"]: r for r in summary}
    if cfg.task == "lm":
        text = ("lr allocation (peers-measured.md point 2): as in the anchors' scripts every low-rank method uses one lr "
                "for all of its param groups, so with scale α it moves the attn/mlp matrices at about lr·α while "
                "embeddings, head and norms move at lr. `adamw-lrsplit` gives AdamW that same allocation (matrices at "
                "lr·0.25) and is swept like every method; tuned AdamW is the better of it and `adamw`.")
        if "adamw-lrsplit" in rows and rows["adamw-lrsplit"]["val_loss"]["mean"] is not None and "adamw" in rows:
            text += (f" Here: `adamw` {rows['adamw']['val_loss']['mean']:.4f} at lr {rows['adamw']['lr']:g}, "
                     f"`adamw-lrsplit` {rows['adamw-lrsplit']['val_loss']['mean']:.4f} at lr {rows['adamw-lrsplit']['lr']:g}.")
        notes.append(text)
    if "galore" in rows and "gs-galore" in rows and rows["galore"]["state_bytes"] > rows["gs-galore"]["state_bytes"]:
        notes.append(f"galore-torch holds {rows['galore']['state_bytes'] / 2**20:.2f} MiB of state against "
                     f"{rows['gs-galore']['state_bytes'] / 2**20:.2f} MiB for gradspace's GaLoreAdamW with the same "
                     "hyper-parameters: for fp32 gradients its projector stores `U[:, :r]` / `Vh[:r]`, slices that keep "
                     "the whole SVD factor's storage alive (a bf16 gradient gets a compact copy).")
    peer_rss = [r["peak_rss_mb"] for r in runs if r["family"] == "peer"]
    own_rss = [r["peak_rss_mb"] for r in runs if r["family"] != "peer"]
    if peer_rss and own_rss:
        extra = sum(peer_rss) / len(peer_rss) - sum(own_rss) / len(own_rss)
        notes.append(f"Peak RSS: peer runs average {extra:+.0f} MiB against the others; galore-torch, apollo-torch and fira "
                     "import transformers and bitsandbytes at import time. At this model size RSS is dominated by the "
                     "runtime, not by optimizer state.")
    if workers > 1:
        notes.append(f"{workers} optimizers trained at a time, each in its own process with {cfg.threads} torch "
                     "thread(s); every step time, the AdamW reference included, was measured under that sharing.")
    notes.append("Timing: the machine may be shared (see the load average); compare step times only within one results "
                 "file. gradspace runs each weight's update as separate tensor ops (no foreach/fused kernels yet), so on "
                 "small matrices its per-step Python overhead dominates its step time.")
    if cfg.task == "digits":
        notes.append("Peers cannot project conv kernels (galore-torch's tensor path is broken, anchors-lowrank.md §2.1), so "
                     "for them conv kernels stay in the full-space group; gradspace views them as (out, in·k·k) matrices.")
    return notes


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive(float)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


#: the task settings a user may override: (flag, type, help); the defaults shown are the standard LM configuration
_SETTINGS = (
    ("steps", _positive(int), f"training steps per run (standard and quick LM: {STANDARD_LM['steps']}; digits: "
                              f"{FULL_DIGITS['steps']}, quick {QUICK_DIGITS['steps']})"),
    ("batch", _positive(int), f"sequences (LM) or images (digits) per step (LM: {STANDARD_LM['batch']}; digits: 64)"),
    ("seq", _positive(int), f"tokens per training sequence (LM: {STANDARD_LM['seq']})"),
    ("hidden", _positive(int), "model width (LM: 256)"),
    ("intermediate", _positive(int), "SwiGLU width (LM: 688; --scaling: 2.6875 × hidden)"),
    ("layers", _positive(int), "decoder layers (LM: 4)"),
    ("heads", _positive(int), "attention heads; must divide --hidden (LM: 4)"),
    ("rank", _positive(int), "subspace rank of every routed weight (default: --rank-fraction of its smaller side)"),
    ("gap", _positive(int), "steps between subspace refreshes (default: a third of --steps)"),
    ("val-batches", _positive(int), f"fixed held-out batches the final val loss averages (LM: {STANDARD_LM['val_batches']})"),
    ("eval-every", _positive(int), f"steps between validation points of the curves (LM: {STANDARD_LM['eval_every']})"),
    ("threads", _positive(int), "torch threads per worker (default: the machine's threads / --jobs)"),
    ("warmup", _nonnegative_int, "linear warm-up steps before the cosine decay (default: 10%% of --steps)"),
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` unless the help already says what the default is, or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``gradspace bench``."""
    p = subparsers.add_parser("bench", help="memory, quality and speed of optimizers on real data, in one run",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=_HelpFormatter)
    p.add_argument("--task", choices=["lm", "digits", "sparse"], default="lm", help="benchmark task")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="quick mode: the standard run's lrs, 3 seeds, one corpus; under 10 minutes on 2 CPU cores")
    mode.add_argument("--scaling", action="store_true",
                      help="scaling mode: a few methods at --sizes × --lengths, at the standard run's lrs (LM only)")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder")
    p.add_argument("--optimizers", nargs="+", metavar="NAME", default=None,
                   help=f"built-in names ({', '.join(BUILTINS)}), gradspace preset names, or NAME='{{json spec}}' "
                        f"(default: the mode's list, e.g. standard: {' '.join(DEFAULT_LM)})")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML/JSON file: {optimizers: [name | spec, ...], task settings...}")
    p.add_argument("--corpus", choices=["auto", "both", *CORPUS_KINDS], default=None,
                   help="LM corpus: 'both' runs tiny-shakespeare (when present or downloadable) and the standard-library "
                        "source; 'auto' the first found in the documented order (default: both for the standard mode, "
                        "auto otherwise)")
    p.add_argument("--lr-sweep", action=argparse.BooleanOptionalAction, default=None,
                   help="sweep each spec's lr_grid (else --lr-grid) on the first seed, then run every seed at the best "
                        "(default: on in the standard mode, off in --quick and --scaling, which use --lrs-from)")
    p.add_argument("--lr-grid", type=_positive(float), nargs="+", default=list(STANDARD_GRID), metavar="LR",
                   help="the grid every method without its own lr_grid sweeps")
    p.add_argument("--max-extensions", type=_nonnegative_int, default=MAX_EXTENSIONS,
                   help="extra lrs the sweep may add beyond the grid's edges while the best lr sits at one")
    p.add_argument("--lrs-from", type=Path, default=LRS_FILE,
                   help="chosen-lrs file of a standard run (its lrs.json), used when the sweep is off")
    p.add_argument("--seeds", type=_positive(int), default=3, help="number of seeds (≥ 2 for an interval)")
    p.add_argument("--first-seed", type=_nonnegative_int, default=0, help="seeds are first-seed … first-seed + seeds − 1")
    for name, typ, text in _SETTINGS:
        p.add_argument(f"--{name}", type=typ, default=None, help=text)
    p.add_argument("--rank-fraction", type=_fraction, default=None,
                   help="rank as a fraction of each routed weight's smaller side (0.25)")
    p.add_argument("--sizes", type=_positive(int), nargs="+", default=SCALING_SIZES, metavar="HIDDEN",
                   help="--scaling: model widths (intermediate 2.6875 × hidden, rank hidden/4)")
    p.add_argument("--lengths", type=_positive(int), nargs="+", default=SCALING_LENGTHS, metavar="STEPS",
                   help="--scaling: run lengths in steps")
    p.add_argument("--data", default=None,
                   help="text file for the LM task (else $GRADSPACE_DATA, shared/data, cache, stdlib source)")
    p.add_argument("--offline", action="store_true", help="never download the corpus")
    p.add_argument("--digits-models", nargs="+", choices=["mlp", "cnn"], default=None,
                   help="digits task: which models (default: mlp cnn)")
    p.add_argument("--jobs", type=_positive(int), default=None,
                   help="optimizers trained in parallel, each in its own process with threads/jobs torch threads "
                        "(default: 2 with --quick on ≥ 2 cores, else 1)")
    p.add_argument("--inline", action="store_true", help="run in this process (no worker subprocesses)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main, _parser=p)


def _sparse(args: argparse.Namespace) -> int:
    try:
        from ..sparse.bench import run_sparse_benchmark  # lazy: provided by gradspace.sparse
    except ImportError as err:
        print(f"gradspace bench --task sparse: the sparse benchmark is not available in this install "
              f"(gradspace.sparse.bench.run_sparse_benchmark could not be imported: {err}).", file=sys.stderr)
        return 2
    result = run_sparse_benchmark(args.out, quick=args.quick, seeds=args.seeds if args.seeds != 3 or not args.quick else 2)
    print(f"sparse benchmark done; results in {args.out}" + (f" (keys: {', '.join(map(str, result))})" if isinstance(result, dict) else ""))
    return 0


def _task_config(args: argparse.Namespace, file_cfg: dict[str, Any]) -> TaskConfig:
    cfg = TaskConfig(task=args.task)
    preset = STANDARD_LM if args.task == "lm" else (QUICK_DIGITS if args.quick else FULL_DIGITS)
    for k, v in preset.items():
        setattr(cfg, k, v)
    for k, v in file_cfg.items():
        if k in ("seeds", "lr_sweep", "quick"):
            continue
        if not hasattr(cfg, k):
            raise UsageError(f"{args.config}: unknown setting {k!r}")
        setattr(cfg, k, v)
    for k in ("steps", "batch", "seq", "hidden", "intermediate", "layers", "heads", "rank", "gap", "val_batches",
              "eval_every", "threads", "warmup", "rank_fraction", "data", "digits_models"):
        v = getattr(args, k)
        if v is not None:
            setattr(cfg, k, v)
    if cfg.hidden % cfg.heads:
        raise UsageError(f"--heads {cfg.heads} must divide --hidden {cfg.hidden}")
    cfg.allow_download = not args.offline
    return cfg


def _corpora(args: argparse.Namespace, standard: bool) -> list[str | None]:
    """The corpus kinds to run (``None``: the documented order / ``--data``)."""
    choice = args.corpus or ("both" if standard else "auto")
    if args.data is not None:
        if choice not in ("auto", "both"):
            raise UsageError(f"--corpus {choice} and --data cannot be combined; --data names the corpus")
        return [None]
    if choice == "auto":
        return [None]
    return list(CORPUS_KINDS) if choice == "both" else [choice]


def _print_corpus(results: dict[str, Any]) -> None:
    c = results.get("corpus")
    if c:
        print(f"\n=== corpus {c['key']}: {c['name']} ({c['source']}, {c['bytes']:,} bytes); seeds {results['seeds']}; "
              f"lrs: {results['lr_source']}")
    print(console_table(table_rows(results)))
    if results.get("targets"):
        print("\n".join(targets_lines(results["targets"])))
    if results["skipped"]:
        print("skipped: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items()))
    if results["failed"]:
        print("FAILED: " + "; ".join(f"{k} ({v})" for k, v in results["failed"].items()))


def write_lrs(per_corpus: dict[str, dict[str, Any]], path: Path, command: str) -> dict[str, Any]:
    """The chosen-lrs file of a standard run: per corpus, each method's best lr (and whether it is at the grid's edge),
    plus the run's target verdicts, which ``--quick`` prints as the reference."""
    first = next(iter(per_corpus.values()))
    data = {
        "written_by": "gradspace bench (standard mode)", "command": command, "date": first["date"],
        "config": {k: first["config"][k] for k in ("steps", "batch", "seq", "hidden", "intermediate", "layers", "heads",
                                                   "val_batches", "grid", "max_extensions")},
        "seeds": first["seeds"],
        "corpora": {k: {r["name"]: r["lr"] for r in res["summary"]} for k, res in per_corpus.items()},
        "best_lr_at_grid_edge": {k: [r["name"] for r in res["summary"] if r["best_lr_at_grid_edge"]]
                                 for k, res in per_corpus.items()},
        "targets": {k: targets_brief(res["targets"]) for k, res in per_corpus.items()},
    }
    if path.is_file():  # a standard run split over two invocations (one per corpus) into the same --out
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict) and old.get("config") == data["config"] and old.get("seeds") == data["seeds"]:
            for key in ("corpora", "best_lr_at_grid_edge", "targets"):
                data[key] = {**old.get(key, {}), **data[key]}
            if old.get("command") != command:
                data["command"] = f"{old.get('command')}; {command}"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def main(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    try:
        return _main(args)
    except UsageError as err:
        parser.error(str(err))
    except KeyError as err:  # an unknown optimizer name: its message lists the choices
        parser.error(str(err.args[0] if err.args else err))
    except (FileNotFoundError, ValueError) as err:  # a missing --data/--config file, a malformed spec
        parser.error(str(err))
    return 2


def _main(args: argparse.Namespace) -> int:
    if args.task == "sparse":
        return _sparse(args)
    if args.scaling and args.task != "lm":
        raise UsageError("--scaling needs --task lm")
    file_cfg: dict[str, Any] = {}
    specs: list[dict[str, Any]] = []
    if args.config:
        if not args.config.is_file():
            raise UsageError(f"--config {str(args.config)!r} is not a file")
        file_cfg = load_config(args.config)
        specs = file_cfg.pop("optimizers")
    cfg = _task_config(args, file_cfg)
    if args.optimizers:
        specs += [parse_optimizer_arg(o) for o in args.optimizers]
    if not specs:
        names = (SCALING_OPTIMIZERS if args.scaling else QUICK_LM_OPTIMIZERS if args.quick else DEFAULT_LM) \
            if args.task == "lm" else DEFAULT_DIGITS
        specs = [builtin(n) for n in names]
    standard = args.task == "lm" and not args.quick and not args.scaling
    seeds = int(file_cfg.get("seeds", args.seeds))
    default_sweep = standard or args.task != "lm" and not args.quick
    lr_sweep = args.lr_sweep if args.lr_sweep is not None else file_cfg.get("lr_sweep", default_sweep)
    jobs = args.jobs or (2 if args.quick and (os.cpu_count() or 1) >= 2 else 1)
    lrs_file = None if lr_sweep else load_lrs(args.lrs_from)
    command = "gradspace " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "gradspace bench"
    common = dict(seeds=seeds, lr_sweep=lr_sweep, quick=args.quick, first_seed=args.first_seed, jobs=jobs,
                  inline=args.inline, quiet=args.quiet, grid=args.lr_grid, max_extensions=args.max_extensions)
    t0 = time.time()
    if args.scaling:
        return _scaling(args, cfg, specs, lrs_file, common, command)
    if args.task != "lm":
        results = run_benchmark(cfg, specs, out=args.out, plots=not args.no_plots, mode="digits", **common)
        _print_corpus(results)
        return _exit_status(results)
    per_corpus: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    status = 0
    for kind in _corpora(args, standard):
        run_cfg = TaskConfig(**asdict(cfg))
        run_cfg.corpus = kind
        try:
            corpus = resolve_corpus(run_cfg.data, allow_download=run_cfg.allow_download, kind=kind)
        except FileNotFoundError as err:
            if args.corpus == kind:
                raise UsageError(str(err)) from None
            missing[kind or "auto"] = str(err)
            print(f"corpus {kind}: skipped ({err})", file=sys.stderr)
            continue
        key = corpus_key(corpus)
        chosen, source = lrs_for(lrs_file, key) if not lr_sweep else ({}, None)
        results = run_benchmark(run_cfg, specs, out=args.out / key, plots=not args.no_plots, chosen_lrs=chosen,
                                lr_source=source, mode="standard" if standard else "quick" if args.quick else "custom",
                                **common)
        per_corpus[key] = results
        _print_corpus(results)
        status = max(status, _exit_status(results))
    if not per_corpus:
        print("gradspace bench: no corpus could be loaded: " + "; ".join(missing.values()), file=sys.stderr)
        return 1
    if standard and lr_sweep:
        write_lrs(per_corpus, args.out / "lrs.json", command)
    print()
    for key, res in per_corpus.items():
        print(f"targets on {key}: " + "; ".join(f"{t} {v}" for t, v in targets_brief(res["targets"]).items()))
    if lrs_file and not lr_sweep:
        print(f"\nlrs: {lrs_file['path']} (standard run of {lrs_file.get('date', '?')}); its verdicts, for reference:")
        for key, brief in lrs_file.get("targets", {}).items():
            print(f"  standard run on {key}: " + "; ".join(f"{t} {v}" for t, v in brief.items()))
    print(f"\nwrote {', '.join(str(args.out / k) for k in per_corpus)}"
          + (f", {args.out / 'lrs.json'}" if standard and lr_sweep else "") + f" in {time.time() - t0:.0f} s")
    return status


def _exit_status(results: dict[str, Any]) -> int:
    """1 when any optimizer's worker failed or every run diverged, else 0."""
    if results["failed"]:
        return 1
    if not results["runs"] or all(r["val_loss"] is None for r in results["runs"]):
        print("gradspace bench: no run produced a validation loss.", file=sys.stderr)
        return 1
    return 0


def _scaling(args: argparse.Namespace, cfg: TaskConfig, specs: list[dict[str, Any]], lrs_file: dict[str, Any] | None,
             common: dict[str, Any], command: str) -> int:
    """Every spec at each (hidden, steps) cell, then the val-loss ratio to AdamW per seed with its interval."""
    t0 = time.time()
    kinds = _corpora(args, standard=False)
    if len(kinds) != 1:
        raise UsageError("--scaling runs one corpus: choose --corpus auto, tinyshakespeare or stdlib")
    cfg.corpus = kinds[0]
    try:
        corpus = resolve_corpus(cfg.data, allow_download=cfg.allow_download, kind=cfg.corpus)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    key = corpus_key(corpus)
    chosen, source = lrs_for(lrs_file, key) if not common["lr_sweep"] else ({}, None)
    if not any(s["optimizer"] == "torch.optim.AdamW" and s.get("lowrank_lr_scale") is None for s in specs):
        raise UsageError("--scaling needs 'adamw' among --optimizers: ratios are taken to it")
    cells, status = [], 0
    for steps in args.lengths:
        for hidden in args.sizes:
            c = TaskConfig(**asdict(cfg))
            c.hidden, c.steps = hidden, steps
            c.intermediate = args.intermediate or int(round(hidden * 2.6875))
            c.gap = args.gap
            c.eval_every = max(1, steps // 4)
            if hidden % c.heads:
                raise UsageError(f"--heads {c.heads} must divide every --sizes value ({hidden})")
            res = run_benchmark(c, specs, out=args.out / f"h{hidden}-s{steps}", plots=False, chosen_lrs=chosen,
                                lr_source=source, mode="scaling", **common)
            status = max(status, _exit_status(res))
            ref = next((r for r in res["summary"] if r["name"] == "adamw"), None)
            for r in res["summary"]:
                cell = {"hidden": hidden, "steps": steps, "name": r["name"], "family": r["family"], "lr": r["lr"],
                        "n_params": res["model_info"]["n_params"], "val_loss": r["val_loss"]["mean"],
                        "per_seed": r["per_seed"], "state_ratio_vs_adamw": r["state_ratio_vs_adamw"],
                        "step_ms": r["step_ms"], "ratio_vs_adamw": None, "diff_vs_adamw": None}
                if ref is not None and r is not ref:
                    cell["ratio_vs_adamw"] = paired(r, ref, ratio=True)
                    cell["diff_vs_adamw"] = paired(r, ref)
                cells.append(cell)
            print(f"scaling: hidden {hidden}, {steps} steps done ({time.time() - t0:.0f} s)", file=sys.stderr)
    data = {"mode": "scaling", "command": command, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "corpus": {**corpus.describe(), "key": key}, "lr_source": source or "swept per cell",
            "sizes": args.sizes, "lengths": args.lengths, "seeds": list(range(args.first_seed, args.first_seed + common["seeds"])),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("hidden", "intermediate", "steps", "data")},
            "machine": machine_info(cfg.threads or 1), "cells": cells, "wall_s": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(data, indent=1, default=str))
    with open(args.out / "scaling.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["hidden", "steps", "name", "lr", "n_params", "val_loss", "ratio_vs_adamw", "ratio_low", "ratio_high",
                    "verdict", "state_ratio_vs_adamw"])
        for c in cells:
            rv = c["ratio_vs_adamw"] or {}
            iv = rv.get("interval") or {}
            w.writerow([c["hidden"], c["steps"], c["name"], f"{c['lr']:g}", c["n_params"],
                        "" if c["val_loss"] is None else f"{c['val_loss']:.5f}",
                        "" if iv.get("mean") is None else f"{iv['mean']:.5f}",
                        "" if iv.get("low") is None else f"{iv['low']:.5f}",
                        "" if iv.get("high") is None else f"{iv['high']:.5f}", rv.get("verdict", ""),
                        "" if c["state_ratio_vs_adamw"] is None else f"{c['state_ratio_vs_adamw']:.4f}"])
    plots = [] if args.no_plots else write_scaling_plot(data, args.out)
    lines = scaling_lines(data)
    (args.out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {args.out / 'scaling.json'}, {args.out / 'scaling.csv'}, {args.out / 'scaling.md'}"
          + (", " + ", ".join(str(args.out / p) for p in plots) if plots else "") + f" in {time.time() - t0:.0f} s")
    return status
