"""torch.compile with a gradspace optimizer on CPU: what works, and what does not (yet).

Findings (torch 2.13, CPU):

* Compiling the **model** and stepping the optimizer eagerly works: bitwise equal to eager with
  ``backend="aot_eager"``; within ~1e-7 with the default inductor backend (fused kernels round differently).
* Compiling ``opt.step`` itself (``torch.compile(opt.step)``, graph breaks allowed), or a training step that calls
  it, runs and matches eager to ~3e-8 (not bitwise), but it is not useful: the non-finite check
  (``bool(finite.all())``, a ``.item()``) is a data-dependent graph break, and the per-weight function
  ``functional.subspace_update`` is specialized on each parameter (object identity, dim, shape) and on which state
  keys exist, so a model with more than a few weights hits dynamo's ``recompile_limit`` (8) and the rest runs
  eagerly; with inductor every specialization is a C++ build (8 steps of this 6-tensor MLP: ~50 s instead of < 1 s).
* ``torch.compile(opt.step, fullgraph=True)`` fails (data-dependent guard at the non-finite check); see the xfail.
* ``torch.compile(functional.subspace_update, fullgraph=True, dynamic=True)`` on a non-refresh step traces once the
  frame is passed in and the aligned-write test is skipped while tracing (issue 13, measured, not shipped): one graph
  per weight shape, equal to eager to 3e-8. What is still in the way of a useful ``compile=True``: (1) every Python
  float that changes per step — ``lr`` under a scheduler, Adam's bias corrections from the step count — reaches an op
  as a Scalar argument (``addmm_(alpha=…)``, ``div_(bc1)``), which dynamo specializes, so each new value recompiles
  (the recompile limit is hit after 8 steps); torch.optim's answer is tensor ``lr``/``step`` throughout the rule code
  (``capturable``); (2) the per-weight ints in ``state`` (``step``, ``proj.seed``) need ``dynamic=True``; (3) seeded
  random bases regenerate through a ``torch.Generator`` (a graph break; ``cache_random_basis=True`` avoids it). On
  this CPU, inductor with dynamic shapes was slower than eager: Fira 1.35× (2 layers at hidden 512: 97 vs 72 ms per
  step), GaLore 1.8× at hidden 64 (9.2 vs 5.2 ms: guard and call overhead per weight), so nothing here is worth a
  default.
* A compiled function that runs forward, backward and ``opt.step()`` graph-breaks at ``backward()``, at the
  optimizer's ``.item()`` and at generator expressions (~18 graphs for this 3-layer model).
"""

from __future__ import annotations

import pytest
import torch

import gradspace

STEPS = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest and keeps timings stable when the CPU is shared (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 32), torch.nn.GELU(),
                               torch.nn.Linear(32, 4))


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)) for _ in range(STEPS)]


def _train(compile_model: str | None = None, compile_step: dict | None = None, compile_train_step: str | None = None
           ) -> tuple[list[torch.Tensor], gradspace.SubspaceOptimizer]:
    model = _model()
    opt = gradspace.Fira(gradspace.param_groups(model, rank=4, verbose=False), lr=1e-2, update_proj_gap=4)
    forward = torch.compile(model, backend=compile_model) if compile_model else model
    step = torch.compile(opt.step, **compile_step) if compile_step is not None else opt.step

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(forward(x), y).backward()
        step()

    if compile_train_step:
        train_step = torch.compile(train_step, backend=compile_train_step)
    for x, y in _data():
        train_step(x, y)
    return [p.detach().clone() for p in model.parameters()], opt


@pytest.fixture(scope="module")
def eager() -> list[torch.Tensor]:
    return _train()[0]


def test_compiled_model_eager_optimizer_is_bitwise_eager(eager):
    params, opt = _train(compile_model="aot_eager")
    assert all(torch.equal(a, b) for a, b in zip(params, eager))
    assert "proj.basis" in opt.state[opt.param_groups[0]["params"][0]]


def test_compiled_model_inductor_matches_eager(eager):
    pytest.importorskip("torch._inductor")
    params, _ = _train(compile_model="inductor")
    # inductor fuses the forward/backward kernels, which rounds differently: ~1e-7 after 6 steps, not bitwise
    for a, b in zip(params, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_train_step_with_optimizer_matches_eager(eager):
    # forward + backward + opt.step() in one compiled function: graph breaks at backward(), at the optimizer's
    # non-finite check (.item()) and in generator expressions; the optimizer's tensor code between them is traced
    # and rounds like eager only to ~3e-8, so not bitwise
    params, opt = _train(compile_train_step="aot_eager")
    for a, b in zip(params, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert opt.state[opt.param_groups[0]["params"][0]]["step"] == STEPS


@pytest.mark.xfail(raises=Exception, strict=False,
                   reason="opt.step is not fullgraph-compilable: 'Could not guard on data-dependent expression' at "
                          "bool(finite.all()) in SubspaceOptimizer._check_grads (the first of several graph breaks)")
def test_optimizer_step_fullgraph():
    _train(compile_step={"backend": "aot_eager", "fullgraph": True})
