"""The docs generators: the benchmarks page names the producing command when a result file is absent and embeds the
command's own output when present; the mistakes page shows the library's real messages."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_page_without_results_names_the_commands(tmp_path):
    page, images = _load("gen_benchmarks").render(tmp_path)
    assert images == {}
    assert "python -m gradspace bench --task lm --quick --out bench_out/lm_quick" in page
    assert "gradspace analyze trajectory-pca" in page
    assert "Not run in this build: `bench_out/lm_quick/*/results.md` is absent" in page


def test_benchmarks_page_embeds_result_files(tmp_path):
    lm = tmp_path / "bench_out" / "lm_quick" / "tinyshakespeare"  # one folder per corpus
    lm.mkdir(parents=True)
    (lm / "results.md").write_text("# title\n\n## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[val_loss.png](val_loss.png)\n")
    (lm / "val_loss.png").write_bytes(b"\x89PNG")
    an = tmp_path / "runs" / "analyze" / "trajectory-pca"
    an.mkdir(parents=True)
    (an / "results.json").write_text(json.dumps({"analysis": "trajectory-pca", "quick": True, "top2_variance": 0.99}))
    page, images = _load("gen_benchmarks").render(tmp_path)
    assert "#### Results" in page and "| 1 | 2 |" in page and "# title" not in page
    image = "assets/generated/bench_out-lm_quick-tinyshakespeare-val_loss.png"
    assert f"[val_loss.png]({image})" in page
    assert images[image] == lm / "val_loss.png"
    assert "| `top2_variance` | 0.99 |" in page and "--quick" in page


def test_mistakes_page_shows_real_messages():
    page = _load("gen_errors").render()
    assert "UserWarning: rank=32 >= the projected side" in page
    assert "RuntimeError: LayerwiseStepper is single-process only" in page
    assert "FloatingPointError: non-finite gradient (NaN or Inf) in parameter 'weight'" in page
    assert "RuntimeWarning: gradspace: a gradient has NaN/Inf values" in page
    assert "'rule.exp_avg': (1000, 8)" in page  # an embedding forced into a rank group is projected as a matrix
    assert "TypeError: SubspaceOptimizer: unknown option(s) ['refresh_evry']" in page
