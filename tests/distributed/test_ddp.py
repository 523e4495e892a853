"""DDP on 2 gloo ranks: bases and weights agree bitwise across ranks and match a single-process reference."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import gradspace

from ._harness import run_workers

pytestmark = pytest.mark.dist

STEPS, REFRESH = 20, 5  # 4 refreshes


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 8, 24, generator=g), torch.randn(STEPS, 8, 4, generator=g)


def _optimizer(model: torch.nn.Module, **kw) -> gradspace.SubspaceOptimizer:
    groups = [{"params": [model[0].weight, model[2].weight], "rank": 4},
              {"params": [model[0].bias, model[2].bias, model[4].weight, model[4].bias], "projector": "identity"}]
    return gradspace.SubspaceOptimizer(groups, lr=1e-2, projector=kw.pop("projector", "svd"), refresh_every=REFRESH,
                                       on_refresh="rotate", residual="fira", **kw)


def _perturb_svd_on(rank_to_perturb: int, rank: int) -> None:
    """Simulate a replica whose LAPACK/threads give a slightly different SVD (research B3)."""
    if rank != rank_to_perturb:
        return
    svd = torch.linalg.svd

    def noisy(a, *args, **kwargs):
        u, s, vh = svd(a, *args, **kwargs)
        return u, s, vh + 1e-6

    torch.linalg.svd = noisy


def _train_ddp(rank: int, world: int, sync: str, verify: bool, projector: str) -> dict:
    _perturb_svd_on(1, rank)
    if rank == 1:
        torch.set_num_threads(2)
    model = _model()
    ddp = DDP(model)
    opt = _optimizer(model, projector_sync=sync, verify_sync=verify, projector=projector)
    xs, ys = _data()
    error = None
    try:
        for i in range(STEPS):
            x = xs[i].chunk(world)[rank]
            y = ys[i].chunk(world)[rank]
            opt.zero_grad()
            torch.nn.functional.mse_loss(ddp(x), y).backward()
            opt.step()
    except RuntimeError as err:
        error = str(err)
    bases = {i: opt.state[p]["proj.basis"].clone() for i, p in enumerate((model[0].weight, model[2].weight))
             if "proj.basis" in opt.state[p]}
    return {"params": [p.detach().clone() for p in model.parameters()], "bases": bases, "error": error,
            "fallbacks": [opt.state[p].get("proj.fallbacks", 0) for p in model.parameters()]}


def _reference(projector: str) -> list[torch.Tensor]:
    model = _model()
    opt = _optimizer(model, projector=projector)
    xs, ys = _data()
    for i in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs[i]), ys[i]).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("projector", ["svd", "randomized"])
def test_broadcast_keeps_replicas_bitwise_equal(tmp_path, projector):
    r0, r1 = run_workers(_train_ddp, str(tmp_path), args=("broadcast", True, projector))
    assert r0["error"] is None and r1["error"] is None
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    assert r0["bases"].keys() == r1["bases"].keys() == {0, 1}
    for k in r0["bases"]:
        assert torch.equal(r0["bases"][k], r1["bases"][k])
    # matches the single-process full-batch run (the perturbed replica owns one weight's basis: ~1e-6 changes)
    for a, ref in zip(r0["params"], _reference(projector)):
        torch.testing.assert_close(a, ref, rtol=1e-4, atol=1e-4)


def test_redundant_with_verify_sync_detects_divergence(tmp_path):
    r0, r1 = run_workers(_train_ddp, str(tmp_path), args=("redundant", True, "svd"))
    assert r0["error"] is not None and "verify_sync" in r0["error"]
    assert r1["error"] is not None and "verify_sync" in r1["error"]


def _fail_on_owner(rank: int, world: int) -> dict:
    """The owner of weight 0 (rank 0) fails its second refresh: both replicas keep the previous basis."""
    calls = {"n": 0}
    svd = torch.linalg.svd

    def flaky(a, *args, **kwargs):
        calls["n"] += 1
        if rank == 0 and calls["n"] == 2:
            raise torch.linalg.LinAlgError("injected")
        return svd(a, *args, **kwargs)

    torch.linalg.svd = flaky
    model = _model()
    ddp = DDP(model)
    opt = _optimizer(model)
    xs, ys = _data()
    seen = []
    for i in range(2 * REFRESH):
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(xs[i].chunk(world)[rank]), ys[i].chunk(world)[rank]).backward()
        opt.step()
        seen.append(opt.state[model[0].weight]["proj.basis"].clone())
    return {"first": seen[0], "after": seen[REFRESH], "fallbacks": opt.state[model[0].weight].get("proj.fallbacks", 0),
            "params": [p.detach().clone() for p in model.parameters()]}


def test_failed_refresh_on_owner_is_agreed(tmp_path):
    r0, r1 = run_workers(_fail_on_owner, str(tmp_path))
    for r in (r0, r1):
        assert r["fallbacks"] == 1
        assert torch.equal(r["first"], r["after"])
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)

