"""``gradspace bench``: memory saved, quality lost and time spent by each optimizer, measured in one run on real data.

Every optimizer trains the same initial weights (``torch.manual_seed(seed)``) on the same batches in the same order;
each optimizer's runs execute in their own subprocess (``python -m gradspace.bench.train``) so imports and peak memory
do not leak between them; runs are sequential so step times are comparable. Results go to ``--out``:
``results.json`` (every number, the config, versions, machine), ``results.md`` (tables and targets) and PNG plots.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .data import resolve_corpus
from .memory import plan_state
from .model import TinyLlama
from .optimizers import BUILTINS, available, builtin, load_config, lowrank_split, parse_optimizer_arg
from .report import console_table, table_rows, targets_lines, write_markdown, write_plots
from .stats import add_ratios, evaluate_targets, summarize
from .train import TaskConfig, build_model, run_job

#: the default comparison: tuned AdamW, the peers, and gradspace's reproduction of each plus its own configurations
DEFAULT_LM = ["adamw", "adamw-lrsplit", "galore", "fira", "apollo", "apollo-mini", "gs-galore", "gs-fira", "gs-apollo",
              "gs-apollo-mini", "gs-fira-bf16", "gs-frugal-r1"]
QUICK_LM_OPTIMIZERS = ["adamw", "adamw-lrsplit", "galore", "fira", "apollo", "apollo-mini", "gs-galore", "gs-fira-bf16",
                       "gs-frugal-r1"]
DEFAULT_DIGITS = ["adamw", "galore", "gs-galore", "gs-fira", "gs-apollo"]
#: ``--quick``: 20 runs of 100 steps, 2 at a time; about 5 CPU-minutes per core, so under 10 minutes on 2 cores even
#: when other jobs take a share of them (a 150-step version took 12.8 min with the load average at 3–4)
QUICK_LM = {"steps": 100, "batch": 8, "seq": 64, "val_batches": 8, "eval_every": 25}
QUICK_DIGITS = {"steps": 150, "batch": 64}
FULL_DIGITS = {"steps": 300, "batch": 64}
#: the lr grid ``--quick --lr-sweep`` gives AdamW (the full grid adds 1e-2; peers-measured.md: best 1e-3, bracketed)
QUICK_ADAMW_GRID = [3e-4, 1e-3, 3e-3]
PEERS = ("galore_torch", "apollo_torch", "fira", "transformers", "bitsandbytes")


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
) -> dict[str, Any]:
    """Run every spec (× digits model) × lr × seed, then write ``results.json``, ``results.md`` and the plots."""
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
    corpus = resolve_corpus(cfg.data, allow_download=cfg.allow_download) if cfg.task == "lm" else None
    if corpus is not None and cfg.data is None:
        cfg.data = corpus.path if corpus.source != "stdlib" else None
        if corpus.source == "stdlib":
            cfg.allow_download = False
    models = [None] if cfg.task == "lm" else list(cfg.digits_models)
    skipped: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    work = []
    specs = [dict(spec) for spec in specs]
    for spec in specs:
        if not available(spec):
            skipped[spec["name"]] = f"{spec['optimizer'].rpartition('.')[0]} is not importable"
            continue
        lrs = spec["lr_grid"] if lr_sweep and spec["lr_grid"] else [spec["lr"]]
        if quick and cfg.task == "lm" and lr_sweep and spec["name"] == "adamw" and spec["lr_grid"] == BUILTINS["adamw"]["lr_grid"]:
            lrs = QUICK_ADAMW_GRID
        spec["lr_grid"] = lrs if len(lrs) > 1 else []  # what actually ran, for the report
        for model in models:
            job = {"config": asdict(cfg), "spec": spec, "lrs": lrs, "seeds": seed_list, "model": model}
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
            skipped[spec["name"]] = f"failed: {err}"

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
    targets = evaluate_targets(summary, cfg.hidden) if cfg.task == "lm" else {}
    machine["loadavg_end"] = _loadavg()
    results: dict[str, Any] = {
        "config": {**asdict(cfg), "quick": quick, "lr_sweep": lr_sweep, "seeds": seeds, "optimizers": specs},
        "machine": machine,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seeds": seed_list,
        "corpus": corpus.describe() if corpus else None,
        "model_info": _model_info(cfg, models),
        "adamw_state_bytes": adamw_state,
        "adamw_step_ms": ref_ms,
        "runs": runs,
        "summary": summary,
        "targets": targets,
        "skipped": skipped,
        "notes": _notes(cfg, summary, runs, machine["parallel_workers"]),
    }
    results["wall_s"] = time.time() - t0
    if plots and runs:
        results["plots"] = write_plots(results, out)
    results["wall_s"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_markdown(results, out / "results.md")
    return results


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
        text = ("lr allocation (peers-measured.md point 2): as in the anchors' scripts every method uses one lr for all of "
                "its param groups, so a method with scale α moves the attn/mlp matrices at about lr·α while embeddings, "
                "head and norms move at lr; AdamW moves everything at one lr. Part of a low-rank method's lead over AdamW "
                "can be this allocation rather than the subspace.")
        if "adamw-lrsplit" in rows and rows["adamw-lrsplit"]["val_loss"]["mean"] is not None:
            text += (f" Control `adamw-lrsplit` (AdamW, matrices at lr·0.25, the rest at lr = {rows['adamw-lrsplit']['lr']:g}): "
                     f"val {rows['adamw-lrsplit']['val_loss']['mean']:.4f}.")
        else:
            text += " Run `adamw-lrsplit` (AdamW with that allocation) to measure it."
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``gradspace bench``."""
    p = subparsers.add_parser("bench", help="memory, quality and speed of optimizers on real data, in one run",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["lm", "digits", "sparse"], default="lm")
    p.add_argument("--quick", action="store_true", help="a configuration that fits in 10 minutes on 2 CPU cores")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    p.add_argument("--optimizers", nargs="+", metavar="NAME",
                   help=f"built-in names ({', '.join(BUILTINS)}), gradspace preset names, or NAME='{{json spec}}'")
    p.add_argument("--config", type=Path, help="YAML/JSON file: {optimizers: [name | spec, ...], task settings...}")
    p.add_argument("--lr-sweep", action=argparse.BooleanOptionalAction, default=None,
                   help="try each spec's lr_grid on the first seed, then run every seed at the best lr (default on; "
                        "of the built-ins only AdamW has a grid, trimmed to 3e-4, 1e-3, 3e-3 with --quick)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 2 with --quick, else 3)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed … first-seed + seeds − 1 (default 0)")
    for name, typ in (("steps", int), ("batch", int), ("seq", int), ("hidden", int), ("intermediate", int),
                      ("layers", int), ("heads", int), ("rank", int), ("gap", int), ("val-batches", int),
                      ("eval-every", int), ("threads", int), ("warmup", int)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--rank-fraction", type=float, help="rank as a fraction of each routed weight's smaller side (0.25)")
    p.add_argument("--data", help="text file for the LM task (else $GRADSPACE_DATA, shared/data, cache, stdlib source)")
    p.add_argument("--offline", action="store_true", help="never download the corpus")
    p.add_argument("--digits-models", nargs="+", choices=["mlp", "cnn"])
    p.add_argument("--jobs", type=int, help="optimizers trained in parallel, each in its own process with threads/jobs "
                   "torch threads (default: 2 with --quick on ≥ 2 cores, else 1)")
    p.add_argument("--inline", action="store_true", help="run in this process (no worker subprocesses)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def _sparse(args: argparse.Namespace) -> int:
    try:
        from ..sparse.bench import run_sparse_benchmark  # lazy: provided by gradspace.sparse
    except ImportError as err:
        print(f"gradspace bench --task sparse: the sparse benchmark is not available in this install "
              f"(gradspace.sparse.bench.run_sparse_benchmark could not be imported: {err}).", file=sys.stderr)
        return 2
    result = run_sparse_benchmark(args.out, quick=args.quick, seeds=args.seeds or (2 if args.quick else 3))
    print(f"sparse benchmark done; results in {args.out}" + (f" (keys: {', '.join(map(str, result))})" if isinstance(result, dict) else ""))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.task == "sparse":
        return _sparse(args)
    cfg = TaskConfig(task=args.task)
    file_cfg: dict[str, Any] = {}
    specs: list[dict[str, Any]] = []
    if args.config:
        file_cfg = load_config(args.config)
        specs = file_cfg.pop("optimizers")
    preset = (QUICK_LM if args.quick else {}) if args.task == "lm" else (QUICK_DIGITS if args.quick else FULL_DIGITS)
    for k, v in preset.items():
        setattr(cfg, k, v)
    for k, v in file_cfg.items():
        if k in ("seeds", "lr_sweep", "quick"):
            continue
        if not hasattr(cfg, k):
            raise SystemExit(f"{args.config}: unknown setting {k!r}")
        setattr(cfg, k, v)
    for k in ("steps", "batch", "seq", "hidden", "intermediate", "layers", "heads", "rank", "gap", "val_batches",
              "eval_every", "threads", "warmup", "rank_fraction", "data", "digits_models"):
        v = getattr(args, k)
        if v is not None:
            setattr(cfg, k, v)
    cfg.allow_download = not args.offline
    if args.optimizers:
        specs += [parse_optimizer_arg(o) for o in args.optimizers]
    if not specs:
        names = (QUICK_LM_OPTIMIZERS if args.quick else DEFAULT_LM) if args.task == "lm" else DEFAULT_DIGITS
        specs = [builtin(n) for n in names]
    seeds = args.seeds or file_cfg.get("seeds") or (2 if args.quick else 3)
    lr_sweep = args.lr_sweep if args.lr_sweep is not None else file_cfg.get("lr_sweep", True)
    jobs = args.jobs or (2 if args.quick and (os.cpu_count() or 1) >= 2 else 1)
    results = run_benchmark(cfg, specs, seeds=seeds, lr_sweep=lr_sweep, out=args.out, quick=args.quick,
                            first_seed=args.first_seed, jobs=jobs, inline=args.inline, quiet=args.quiet, plots=not args.no_plots)
    print()
    if results.get("corpus"):
        c = results["corpus"]
        print(f"corpus: {c['name']} ({c['source']}, {c['bytes']:,} bytes)")
    print(console_table(table_rows(results)))
    if results.get("targets"):
        print()
        print("\n".join(targets_lines(results["targets"])))
    if results["skipped"]:
        print("\nskipped: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items()))
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}"
          + (", " + ", ".join(str(args.out / p) for p in results.get("plots", [])) if results.get("plots") else "")
          + f" in {results['wall_s']:.0f} s")
    return 0
