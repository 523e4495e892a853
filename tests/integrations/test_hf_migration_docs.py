"""The migration from ``optim="galore_adamw"`` in docs/guide/integrations.md runs as written, block after block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import gradspace

pytest.importorskip("transformers", reason="transformers is not installed (pip install gradspace[hf])")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install gradspace[hf])")

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "integrations.md"


def _blocks() -> list[str]:
    text = GUIDE.read_text()
    section = text[text.index("### Migrating from"):text.index("## Lightning")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_migration_snippets_run_and_each_route_trains_a_gradspace_optimizer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # TrainingArguments("out", ...) writes there
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    blocks = _blocks()
    assert len(blocks) == 5, "setup, before, and the three routes"
    ns: dict = {}
    trained = []
    try:
        for code in blocks:
            torch.manual_seed(0)
            exec(compile(code, f"{GUIDE.name} block", "exec"), ns)
            if "trainer.train()" in code:
                opt = getattr(ns["trainer"].optimizer, "optimizer", ns["trainer"].optimizer)
                logs = [h for h in ns["trainer"].state.log_history if "loss" in h]
                trained.append((type(opt).__name__, gradspace.layerwise.attached_stepper(opt) is not None,
                                ns["trainer"].state.global_step, all(h["grad_norm"] > 0 for h in logs)))
                assert isinstance(opt, gradspace.GaLoreAdamW)
                ranks = {g["rank"] for g in opt.param_groups if g["projector"] != "identity"}
                assert ranks == {8} and {g["scale"] for g in opt.param_groups if g["projector"] != "identity"} == {0.25}
    finally:
        torch.set_num_threads(threads)
    assert trained == [("GaLoreAdamW", False, 4, True), ("GaLoreAdamW", False, 4, True),
                       ("GaLoreAdamW", True, 4, True)]
