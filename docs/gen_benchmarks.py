"""Write the "Benchmarks" page from result files that the benchmark commands wrote; never run a benchmark.

For each source below, if its result file exists (the committed ``docs/results/…``; this machine's ``bench_out/…``,
``runs/analyze/…``; relative to the repository root) the page shows the command's own tables and plots; otherwise it
says which command produces them. Committed results are ``summary.json`` files (rendered with
``gradspace.bench.report``, so the page shows the same tables the benchmark printed), not ``.md`` pages. Called by
the docs build (``docs/hooks.py``), which also copies the PNGs into the site. ``python docs/gen_benchmarks.py``
prints the page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (title, result file, command that writes it, PNGs next to it, renderer name); a ``*`` in the result file's path
# renders every match (one subsection per corpus folder)
SOURCES = [
    ("Language model, standard run (committed): every method lr-swept, 3 seeds, per corpus",
     "docs/results/standard/*/summary.json",
     "gradspace bench --task lm --out docs/results/standard   # then copy lrs.json to src/gradspace/bench/configs/standard_lrs.json",
     ["val_loss.png", "state_memory.png", "step_time.png"], "summary_json"),
    ("Scaling (committed): val-loss ratio to AdamW against model size and run length", "docs/results/scaling/scaling.json",
     "gradspace bench --task lm --scaling --out docs/results/scaling", ["scaling.png"], "scaling_json"),
    ("Language model, quick (this machine's latest `make demo`)", "bench_out/lm_quick/*/results.md",
     "OMP_WAIT_POLICY=PASSIVE python -m gradspace bench --task lm --quick --out bench_out/lm_quick   # or: make demo",
     ["val_loss.png", "state_memory.png", "step_time.png"], "results_md"),
    ("Language model, standard (this machine's latest run)", "bench_out/lm/*/results.md",
     "gradspace bench --task lm --out bench_out/lm", ["val_loss.png", "state_memory.png", "step_time.png"], "results_md"),
    ("Digits (MLP and CNN)", "bench_out/digits/results.md", "gradspace bench --task digits --out bench_out/digits",
     ["val_loss.png", "state_memory.png", "step_time.png"], "results_md"),
    ("Per-step time against the GEMM lower bound, refresh spikes, state (committed)", "docs/results/step/step.md",
     "OMP_NUM_THREADS=2 python benchmarks/step.py --json docs/results/step/step.json --md docs/results/step/step.md",
     [], "results_md"),
    ("Per-step time (this machine's latest `make bench-step`)", "bench_out/step.md",
     "OMP_NUM_THREADS=2 python benchmarks/step.py --json bench_out/step.json --md bench_out/step.md   # or: make bench-step",
     [], "results_md"),
    ("Layer-wise updates: gradient memory", "bench_out/layerwise_memory.json",
     "python benchmarks/layerwise_memory.py", [], "json_scalars"),
    ("Sparse momentum vs SET, RigL and dense (digits)", "bench_out/sparse_digits/results.md",
     "python examples/sparse_digits.py   # --quick for a smoke run", ["*.png"], "results_md"),
    ("Intrinsic dimension of a digits MLP", "bench_out/intrinsic/dint.json",
     "python examples/intrinsic_digits.py   # same as: gradspace intrinsic", ["accuracy_vs_d.png"], "json_scalars"),
]
ANALYSES = ["tiny-subspace", "trajectory-pca", "policy-gradient", "momentum-small-lr", "training-jacobian",
            "adaptive-refresh", "overhead"]


def _demote(md: str) -> str:
    """Drop a results file's H1 title and push its other headings two levels down, below this page's H2."""
    lines = [ln for ln in md.splitlines() if not re.match(r"^# ", ln)]
    return "\n".join("#" + ln if re.match(r"^#{2,4} ", ln) else ln for ln in lines).strip()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _scalars(data: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    rows = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 1:
            rows += _scalars(v, key + ".", depth + 1)
        elif isinstance(v, (int, float, str, bool)) and len(str(v)) < 120:
            rows.append((key, _fmt(v)))
        elif isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (int, float)) for x in v):
            rows.append((key, ", ".join(_fmt(x) for x in v)))
    return rows


def _table(rows: list[tuple[str, str]], head=("field", "value")) -> str:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| `{k}` | {str(v).replace('|', '/')} |" for k, v in rows]
    return "\n".join(out)


def render_results_md(path: Path) -> str:
    return _demote(path.read_text())


def render_json_scalars(path: Path) -> str:
    data = json.loads(path.read_text())
    out = [_table(_scalars(data))]
    for key, value in data.items():  # lists of records (e.g. one per run) become one table each
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            cols = [c for c in value[0] if all(isinstance(r.get(c), (int, float, str, bool)) for r in value)]
            out += ["", f"**{key}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            out += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in value]
    return "\n".join(out)


def _report():
    """gradspace.bench.report, which writes the same Markdown the benchmark writes (imported only when needed)."""
    import sys

    try:
        from gradspace.bench import report
    except ImportError:  # a checkout without the package installed
        sys.path.insert(0, str(ROOT / "src"))
        from gradspace.bench import report
    return report


def render_summary_json(path: Path) -> str:
    """A committed ``summary.json`` (a results file without its per-run list) as the benchmark's own results.md."""
    import tempfile

    data = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        md = Path(tmp) / "results.md"
        _report().write_markdown(data, md)
        text = md.read_text()
    extra = f"\n\nRaw numbers: `{path.parent.name}/runs.csv` (one line per run) and `summary.json`."
    return _demote(text) + extra


def render_scaling_json(path: Path) -> str:
    data = json.loads(path.read_text())
    return "\n".join(_report().scaling_lines(data)) + (f"\n\nRaw numbers: `scaling.csv`; "
                                                        f"wall time {data.get('wall_s', 0) / 60:.0f} min.")


RENDERERS = {"results_md": render_results_md, "summary_json": render_summary_json, "scaling_json": render_scaling_json, "json_scalars": render_json_scalars}


def render(root: Path = ROOT) -> tuple[str, dict[str, Path]]:
    """The page's Markdown and the images it links to (site path → file on disk)."""
    images: dict[str, Path] = {}
    parts = [
        "# Benchmarks",
        "",
        "Everything on this page is generated at docs-build time by `docs/gen_benchmarks.py` from the files the "
        "benchmark commands write; no number here is typed in. A section whose results file is missing names the "
        "command that produces it. Rebuild the docs (`make docs`) after running one. Results depend on the machine "
        "and its load: compare ratios within one results file. The notes on the recorded run that the README quotes "
        "are in [Benchmark notes](benchmark-notes.md).",
        "",
    ]

    def add_images(folder: Path, patterns: list[str], tag: str) -> list[str]:
        md = []
        for pattern in patterns:
            for png in sorted(folder.glob(pattern)):
                site = f"assets/generated/{tag}-{png.name}"
                images[site] = png
                md.append(f"![{png.stem}]({site})")
        return md

    for title, rel, command, pngs, kind in SOURCES:
        parts += [f"## {title}", "", "```bash", command, "```", ""]
        paths = sorted(root.glob(rel)) if "*" in rel else [root / rel] if (root / rel).exists() else []
        if not paths:
            parts += [f"*Not run in this build: `{rel}` is absent. Run the command above, then rebuild the docs.*", ""]
        for path in paths:
            shown_rel = path.relative_to(root).as_posix()
            tag = path.parent.relative_to(root).as_posix().replace("/", "-")
            text = RENDERERS[kind](path)
            shown = add_images(path.parent, pngs, tag)
            for png in path.parent.glob("*.png"):  # links inside a results file point next to it: repoint them
                site = f"assets/generated/{tag}-{png.name}"
                images[site] = png
                text = text.replace(f"]({png.name})", f"]({site})")
            if "*" in rel:
                parts += [f"### {path.parent.name}", ""]
                text = "\n".join("#" + ln if ln.startswith("### ") else ln for ln in text.splitlines())
            parts += [f"From `{shown_rel}`:", "", text, ""] + shown + [""]

    parts += ["## Instrument reproductions (`gradspace analyze`)", "",
              "How to read these plots: [Instruments](guide/instruments.md).", ""]
    for name in ANALYSES:
        rel = f"runs/analyze/{name}/results.json"
        path = root / rel
        parts += [f"### {name}", "", "```bash", f"gradspace analyze {name} --out runs/analyze/{name}   # --quick: seconds",
                  "```", ""]
        if path.exists():
            data = json.loads(path.read_text())
            note = " (a `--quick` smoke run, not the result)" if data.get("quick") else ""
            parts += [f"From `{rel}`{note}:", "", _table(_scalars(data)), ""]
            parts += add_images(path.parent, ["*.png"], f"analyze-{name}") + [""]
        else:
            parts += [f"*Not run in this build: `{rel}` is absent.*", ""]
    return "\n".join(parts), images


if __name__ == "__main__":
    print(render()[0])
