"""Writing the benchmark's results: the Markdown table, the console table, and the PNG plots (matplotlib, lazily)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

MiB = 2**20


def _fmt_val(v: dict[str, Any]) -> str:
    if v["mean"] is None:
        return "diverged"
    return f"{v['mean']:.4f} ± {v['sd']:.4f}" if v["n"] > 1 else f"{v['mean']:.4f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_interval(pair: dict[str, Any] | None, digits: int = 4) -> str:
    """``+0.0123 [−0.0040, +0.0286] tie`` for a paired comparison (``-`` when there is none)."""
    if not pair or pair.get("mean") is None:
        return "-"
    iv = pair["interval"]
    if iv.get("low") is None:
        return f"{pair['mean']:+.{digits}f} (1 seed) tie"
    if pair.get("kind") == "ratio":
        return f"{pair['mean']:.{digits}f} [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"
    return f"{pair['mean']:+.{digits}f} [{iv['low']:+.{digits}f}, {iv['high']:+.{digits}f}] {pair['verdict']}"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """The main table (one row per method at its best lr), as strings."""
    from .stats import tuned_adamw

    rate = "tokens/s" if results["config"].get("task", "lm") == "lm" else "samples/s"
    rows = [["method", "optimizer", "lr", "rank", "val loss (mean ± sd)", "seeds", "× tuned AdamW",
             "Δ vs tuned AdamW [95% CI]", "Δ vs best peer [95% CI]", "state MiB", "state % AdamW", "step ms",
             "step × AdamW", rate, "peak RSS MiB"]]
    bases = {m: tuned_adamw(results["summary"], m) for m in {r["model"] for r in results["summary"]}}
    for r in results["summary"]:
        base = bases.get(r["model"])
        ratio = r["val_loss"]["mean"] / base["val_loss"]["mean"] if base and r["val_loss"]["mean"] is not None else None
        label = r["name"] if r["model"] == "llama" else f"{r['name']} ({r['model']})"
        if r["val_acc"]:
            label += f" acc {100 * r['val_acc']['mean']:.1f}%"
        rows.append([
            label, r["optimizer"], f"{r['lr']:g}" + (" (edge)" if r["best_lr_at_grid_edge"] else ""),
            "-" if r["rank"] is None else str(r["rank"]), _fmt_val(r["val_loss"]), str(len(r["seeds"])),
            "-" if ratio is None else f"{ratio:.3f}",
            "(tuned AdamW)" if base is r else fmt_interval(r.get("vs_tuned_adamw")),
            "(best peer)" if r.get("vs_best_peer") is None and r["family"] == "peer" else fmt_interval(r.get("vs_best_peer")),
            f"{r['state_bytes'] / MiB:.2f}", _pct(r["state_ratio_vs_adamw"]),
            f"{r['step_ms']:.2f}", _x(r["step_ratio_vs_adamw"]), f"{r['tokens_per_s']:.0f}", f"{r['peak_rss_mb']:.0f}",
        ])
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(out)


def console_table(rows: list[list[str]]) -> str:
    keep = [0, 2, 4, 6, 7, 8, 10, 12]
    rows = [[row[i] for i in keep] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets_brief(targets: dict[str, Any]) -> dict[str, str]:
    """``{"T1": "TIE (gs-frugal-r1: ratio 1.004 [0.990, 1.018] vs ≤ 1.01; vs galore-torch +0.01 [...] tie)", …}``."""
    out = {}
    for key in ("T1", "T2"):
        t = targets.get(key)
        if not t:
            continue
        if t["status"] == "NOT RUN" and "detail" not in t:
            out[key] = f"NOT RUN ({t['reason']})"
            continue
        d = t["detail"]
        text = (f"{t['status']} ({d['name']}, state {_pct(d['state_ratio_vs_adamw'])}: val/tuned AdamW "
                f"{fmt_interval(d['vs_tuned_adamw_ratio'])} vs ≤ {t['max_val_ratio']:g}")
        if "vs_peer" in d:
            text += f"; vs {t.get('peer') or 'galore-torch'} " + ("not run" if d["vs_peer"] is None else fmt_interval(d["vs_peer"]))
        out[key] = text + ")"
    return out


def targets_lines(targets: dict[str, Any]) -> list[str]:
    lines = []
    base = targets.get("tuned_adamw")
    if base:
        lines.append(f"- Tuned AdamW: `{base['name']}` at lr {base['lr']:g}, val loss {base['val_loss']:.4f}.")
    g = targets.get("best_peer")
    if g:
        lines.append(f"- Best peer: `{g['name']}` at lr {g['lr']:g}, val loss {g['val_loss']:.4f}.")
    for key in ("T1", "T2"):
        t = targets.get(key)
        if not t:
            continue
        planned = (f" Planned candidate(s) not available yet: {', '.join(t['planned_missing'])}."
                   if t.get("planned_missing") else "")
        if "detail" not in t:
            lines.append(f"- **{key} {t['status']}** ({t['target']}): {t['reason']}.{planned}")
            continue
        d = t["detail"]
        lines.append(f"- **{key} {t['status']}** ({t['target']}): best candidate `{d['name']}` at lr {d['lr']:g}, state "
                     f"{_pct(d['state_ratio_vs_adamw'])} of AdamW's, val {d['val_loss']:.4f}; per-seed val / tuned AdamW "
                     f"{fmt_interval(d['vs_tuned_adamw_ratio'])} against ≤ {t['max_val_ratio']:g} → {d['quality']}"
                     + (f"; paired Δ vs {t.get('peer') or 'the peer'}: " + ("not run" if d["vs_peer"] is None else
                        fmt_interval(d["vs_peer"])) + f" → {d['peer_clause']}" if "vs_peer" in d else "") + "." + planned)
        pair = d["vs_tuned_adamw"]
        if pair and pair["values"]:
            lines.append(f"  Per-seed Δ vs tuned AdamW: {', '.join(f'{v:+.4f}' for v in pair['values'])} "
                         f"(seeds {', '.join(pair['seeds'])}).")
        others = [f"`{n}` {v}" for n, v in t["candidates"].items() if n != d["name"]]
        if others:
            lines.append("  Other candidates within the state budget: " + "; ".join(others) + ".")
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    cfg, machine, corpus = results["config"], results["machine"], results.get("corpus")
    lines = [f"# gradspace bench — task `{cfg['task']}`{' (quick)' if cfg.get('quick') else ''}", ""]
    lines.append(f"Run {results['date']} on {machine['cpu']} ({machine['cpu_count']} logical CPUs, {machine['threads']} "
                 f"torch threads per worker, {machine.get('parallel_workers', 1)} worker(s) in parallel, {'GPU: ' + machine['gpu'] if machine.get('gpu') else 'no GPU'}), torch "
                 f"{machine['versions'].get('torch')}, Python {machine['python']}; load average "
                 f"{machine['loadavg_start']} → {machine['loadavg_end']}; OMP_WAIT_POLICY={machine.get('omp_wait_policy')}; "
                 f"wall time {results['wall_s']:.0f} s.")
    lines.append("")
    if corpus:
        lines.append(f"Data: `{corpus['name']}` ({corpus['source']}; {corpus['bytes']:,} bytes, sha256 "
                     f"`{corpus['sha256'][:12]}…`), byte tokens (vocab 256), 90/10 train/validation split.")
    model = results.get("model_info", {})
    if model:
        lines.append(f"Model: {model['description']}.")
    lines.append(f"Training: {cfg['steps']} steps, batch {cfg['batch']}" + (f" × seq {cfg['seq']}" if cfg["task"] == "lm" else "")
                 + f", warm-up {cfg['warmup']} then cosine to 10 %, grad-clip {cfg['clip']}, weight decay 0, one lr for "
                 f"all param groups; routed weights: {model.get('routed', '?')}; rank {model.get('rank', '?')}, refresh "
                 f"gap {cfg['gap']}; validation on {cfg['val_batches']} fixed batches. Seeds: {results['seeds']}."
                 + (f" lr sweep: the grid {', '.join(f'{x:g}' for x in cfg.get('grid') or [])} (unless a spec has its own) on "
                    f"the first seed, extended by up to {cfg.get('max_extensions', 0)} lrs while the best is at an edge; "
                    "the best lr on every seed." if cfg.get("lr_sweep") else ""))
    lines.append(f"Learning rates: {results.get('lr_source', '?')}.")
    if results.get("command"):
        lines.append(f"Command: `{results['command']}`.")
    lines.append("")
    lines.append("## Results (each method at its best lr)")
    lines.append("")
    lines.append(markdown_table(table_rows(results)))
    lines.append("")
    lines.append("val loss: nats per byte (mean ± sample sd over seeds). state: exact optimizer-state bytes (projection "
                 "matrices inside peers' projector objects included, shared storage counted once). step ms: median of "
                 "`optimizer.step()` alone after the first 10 steps; × AdamW is relative to torch AdamW (foreach) in this "
                 "run. tokens/s: training loop (forward+backward+clip+step). peak RSS: the process's peak during the run. "
                 "Δ: mean per-seed difference of val loss (same seeds, same data order) with its 95 % Student-t "
                 "interval; better/worse only when the interval excludes 0, else tie. (edge): the best lr is the "
                 "lowest or highest tried, even after the sweep's extensions.")
    specs = results["config"].get("optimizers") or []
    ran = {r["name"] for r in results["summary"]}
    if specs:
        lines += ["", "## Configurations", "", "| method | optimizer | lr (grid) | constructor | low-rank group | note |",
                  "|---|---|---|---|---|---|"]
        for sp in specs:
            if sp["name"] not in ran:
                continue
            grid = f" ({', '.join(f'{x:g}' for x in sp['lr_grid'])})" if sp.get("lr_grid") and results["config"].get("lr_sweep") else ""
            group = "-" if sp.get("group") is None else ", ".join(f"{k}={v}" for k, v in sp["group"].items())
            if sp.get("lowrank_lr_scale") is not None:
                group = f"attn/mlp lr × {sp['lowrank_lr_scale']:g}"
            kwargs = ", ".join(f"{k}={v}" for k, v in sp["kwargs"].items()) or "-"
            lines.append(f"| {sp['name']} | `{sp['optimizer']}` | {sp['lr']:g}{grid} | {kwargs} | {group} | {sp.get('note', '')} |")
        lines.append("")
        lines.append("`auto`: rank = ¼ of each routed weight's smaller side; gaps = a third of the steps.")
    sweeps = [r for r in results["summary"] if r["sweep"]]
    if sweeps:
        lines += ["", "## Learning-rate sweep (first seed)", "", "| method | " + " | ".join(["lr → val loss"]) + " |", "|---|---|"]
        for r in sweeps:
            cells = ", ".join(f"{lr}: {'diverged' if v is None else f'{v:.4f}'}" for lr, v in r["sweep"].items())
            edge = " (still at the edge after the extensions)" if r["best_lr_at_grid_edge"] else ""
            lines.append(f"| {r['name']} | {cells}; best {r['lr']:g}{edge} |")
    if results.get("targets"):
        lines += ["", "## Targets (computed from the numbers above)", ""] + targets_lines(results["targets"])
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    if results.get("failed"):
        lines += ["", "Failed: " + "; ".join(f"`{k}` ({v})" for k, v in results["failed"].items()) + "."]
    if results.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in results["skipped"].items()) + "."]
    if results.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in results["plots"]) + "."]
    path.write_text("\n".join(lines) + "\n")


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    """val_loss.png (mean validation curve per method at its best lr), state_memory.png, step_time.png."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    best = {(r["name"], r["model"]): r["lr"] for r in results["summary"]}
    families = {(r["name"], r["model"]): r["family"] for r in results["summary"]}
    curves: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in results["runs"]:
        if best.get((run["name"], run["model"])) != run["lr"]:
            continue
        for step, _, val in run["curve"]:
            if val is not None and math.isfinite(val):
                curves[(run["name"], run["model"])][step].append(val)
    models = sorted({m for _, m in curves})
    fig, axes = plt.subplots(1, len(models) or 1, figsize=(7 * max(1, len(models)), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for (name, m), pts in sorted(curves.items()):
            if m != model:
                continue
            steps = sorted(pts)
            family = families.get((name, m), "gradspace")
            ax.plot(steps, [sum(pts[s]) / len(pts[s]) for s in steps], marker="o", ms=3, label=f"{name} ({family})",
                    ls={"peer": "--", "torch": ":"}.get(family, "-"), lw=2 if family == "torch" else 1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats)")
        ax.set_title(f"validation loss ({model}; mean over seeds, each method at its best lr)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "val_loss.png", dpi=110)
    plt.close(fig)
    files.append("val_loss.png")

    rows = [r for r in results["summary"] if r["model"] == (models[0] if models else "llama")]
    names = [r["name"] for r in rows]
    for fname, values, xlabel, labels in (
        ("state_memory.png", [r["state_bytes"] / MiB for r in rows], "optimizer state (MiB)",
         [_pct(r["state_ratio_vs_adamw"]) for r in rows]),
        ("step_time.png", [r["step_ms"] for r in rows], "median optimizer.step() time (ms)",
         [_x(r["step_ratio_vs_adamw"]) for r in rows]),
    ):
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
        colors = ["tab:blue" if r["family"] == "gradspace" else "tab:gray" if r["family"] == "torch" else "tab:orange" for r in rows]
        ax.barh(names, values, color=colors)
        for y, (v, lab) in enumerate(zip(values, labels)):
            ax.text(v, y, f" {lab}", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.18 * max(values + [1e-9]))
        ax.set_xlabel(xlabel)
        ax.set_title(f"{xlabel.split(' (')[0]}\nblue: gradspace, orange: peers, grey: torch", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        files.append(fname)
    return files


def scaling_lines(data: dict[str, Any]) -> list[str]:
    """The scaling mode's Markdown: one table per run length, val-loss ratio to AdamW per size with its interval."""
    c = data["corpus"]
    lines = [f"Scaling run {data['date']}: corpus `{c['name']}` ({c['source']}), seeds {data['seeds']}; lrs: "
             f"{data['lr_source']} (not re-tuned per size or length).", "",
             f"Command: `{data['command']}`.", "",
             "Each cell: mean over seeds of val(method)/val(AdamW) on the same seed, with its 95 % Student-t interval; "
             "< 1 means lower loss than AdamW. Verdict on the paired difference: better/worse only when its interval "
             "excludes 0."]
    names = list(dict.fromkeys(x["name"] for x in data["cells"] if x["name"] != "adamw"))
    for steps in data["lengths"]:
        lines += ["", f"**{steps} steps**", "", "| method | " + " | ".join(f"hidden {h}" for h in data["sizes"]) + " |",
                  "|---|" + "---|" * len(data["sizes"])]
        adam = {x["hidden"]: x for x in data["cells"] if x["name"] == "adamw" and x["steps"] == steps}
        lines.append("| adamw (val loss) | " + " | ".join(
            f"{adam[h]['val_loss']:.4f} (lr {adam[h]['lr']:g})" if h in adam and adam[h]["val_loss"] is not None else "-"
            for h in data["sizes"]) + " |")
        for name in names:
            cells = {x["hidden"]: x for x in data["cells"] if x["name"] == name and x["steps"] == steps}
            row = []
            for h in data["sizes"]:
                x = cells.get(h)
                if not x or not x["ratio_vs_adamw"]:
                    row.append("-")
                    continue
                row.append(fmt_interval(x["ratio_vs_adamw"], 3) + f" {x['diff_vs_adamw']['verdict']}")
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def write_scaling_plot(data: dict[str, Any], out: Path) -> list[str]:
    """scaling.png: val-loss ratio to AdamW (mean, 95 % interval) against model size (one panel per run length) and
    against run length (one panel per size)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = list(dict.fromkeys(x["name"] for x in data["cells"] if x["name"] != "adamw"))
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    sizes, lengths = data["sizes"], data["lengths"]
    fig, axes = plt.subplots(2, max(len(lengths), len(sizes)), figsize=(4.2 * max(len(lengths), len(sizes)), 7.5),
                             squeeze=False)

    def point(name: str, h: int, s: int) -> tuple[float, float, float] | None:
        x = next((c for c in data["cells"] if c["name"] == name and c["hidden"] == h and c["steps"] == s), None)
        if not x or not x["ratio_vs_adamw"] or x["ratio_vs_adamw"]["mean"] is None:
            return None
        iv = x["ratio_vs_adamw"]["interval"]
        m = iv["mean"]
        return m, m - (iv["low"] if iv["low"] is not None else m), (iv["high"] if iv["high"] is not None else m) - m

    for row, (outer, inner, xlabel) in enumerate(((lengths, sizes, "hidden size"), (sizes, lengths, "steps"))):
        for col in range(axes.shape[1]):
            ax = axes[row][col]
            if col >= len(outer):
                ax.axis("off")
                continue
            for name in names:
                xs, ys, lo, hi = [], [], [], []
                for v in inner:
                    h, s = (v, outer[col]) if row == 0 else (outer[col], v)
                    p = point(name, h, s)
                    if p:
                        xs.append(v)
                        ys.append(p[0])
                        lo.append(p[1])
                        hi.append(p[2])
                if xs:
                    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=3, color=colors[name], label=name)
            ax.axhline(1.0, color="k", lw=1, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_xticks(inner)
            ax.set_xticklabels([str(v) for v in inner])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("val loss / AdamW's (same seed)")
            ax.set_title(f"{outer[col]} steps" if row == 0 else f"hidden {outer[col]}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"val-loss ratio to AdamW (mean, 95% t interval over seeds {data['seeds']}); "
                 f"{data['corpus']['key']}; below 1 = lower loss than AdamW", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    return ["scaling.png"]
