"""The ```python blocks of the migration and getting-started pages run, in order, in one namespace per page; each
optimizer a block builds takes a real step that moves the weights it holds."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from _markdown import python_blocks

PAGES = {"docs/migrating.md": ("galore_torch", "apollo_torch", "fira"), "docs/getting-started.md": ()}


def _step_moves_weights(optimizer: torch.optim.Optimizer, where: str) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    optimizer.zero_grad()
    sum((p.float() ** 2).sum() for p in params).backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params)), f"{where}: the step moved no weight"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_snippets_run(page, tmp_path, monkeypatch, capsys):
    missing = [m for m in PAGES[page] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{page} needs the peer libraries {missing} (make peers)")
    monkeypatch.chdir(tmp_path)  # snippets may write checkpoints
    blocks = python_blocks(page)
    assert blocks, page
    torch.manual_seed(0)
    scope: dict = {"__name__": "snippets"}
    for line, code in blocks:
        where = f"{page}:{line}"
        scope.pop("optimizer", None)
        scope.pop("opt", None)
        exec(compile(code, where, "exec"), scope)
        for name in ("optimizer", "opt"):
            if isinstance(scope.get(name), torch.optim.Optimizer):
                _step_moves_weights(scope[name], where)


def test_migration_page_conversion_snippet_left_a_loadable_checkpoint(tmp_path, monkeypatch):
    if any(importlib.util.find_spec(m) is None for m in PAGES["docs/migrating.md"]):
        pytest.skip("needs the peer libraries (make peers)")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "snippets"}
    for line, code in python_blocks("docs/migrating.md"):
        exec(compile(code, f"docs/migrating.md:{line}", "exec"), scope)
        if "from_galore_torch" in code:
            break
    sd = torch.load("gradspace_optimizer.pt", weights_only=True)
    projected = [s for s in sd["state"].values() if "proj.basis" in s]
    assert projected and all(s["step"] == 2 and s["proj.count"] == 1 for s in projected)


def _roles_module():
    spec = importlib.util.spec_from_file_location("griffe_roles", "docs/griffe_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sphinx_roles_become_optional_cross_references(monkeypatch):
    pytest.importorskip("griffe")
    import griffe

    from _markdown import ROOT

    monkeypatch.chdir(ROOT)
    roles = _roles_module()
    pkg = griffe.load("gradspace", search_paths=["src"], resolve_aliases=False)
    obj = pkg.get_member("presets")
    text = "See :class:`SubspaceOptimizer`, :func:`~gradspace.routing.param_groups` and :meth:`nowhere.at_all`."
    assert roles.rewrite(text, obj, pkg) == (
        'See <autoref identifier="gradspace.optimizer.SubspaceOptimizer" optional><code>SubspaceOptimizer</code>'
        '</autoref>, <autoref identifier="gradspace.routing.param_groups" optional><code>param_groups</code></autoref>'
        " and <code>nowhere.at_all</code>.")
    doc = "Args:\n    a, *b: the first\n        continued.\n    c: other\n\nReturns:\n    x"
    assert roles.split_combined_params(doc) == (
        "Args:\n    a: the first\n        continued.\n    *b: as `a`.\n    c: other\n\nReturns:\n    x")
