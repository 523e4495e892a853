"""Masks agree across DDP ranks: rank 0's masks are broadcast at construction and after every event (2 gloo ranks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gradspace.sparse import SparseMomentum

from tests.distributed._harness import run_workers

pytestmark = pytest.mark.dist


def _worker(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    # different seeds per rank: without the broadcast, initial masks and random growth would disagree
    sm = SparseMomentum(ddp, opt, density=0.2, total_steps=12, update_every=3, growth="random", layers="all",
                        seed=100 + rank, verbose=False)
    initial = {n: m.clone() for n, m in sm.masks.items()}
    g = torch.Generator().manual_seed(rank)  # each rank sees its own data; DDP averages the gradients
    for _ in range(12):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    return {"initial": initial, "masks": dict(sm.masks), "params": {n: p.detach() for n, p in model.named_parameters()},
            "generator": sm._generator.get_state(), "events": torch.tensor(len(sm.log)),
            "active": torch.tensor([r["active"] for r in sm.log])}


def test_masks_are_identical_across_two_gloo_ranks(tmp_path):
    r0, r1 = run_workers(_worker, str(tmp_path), timeout=90)
    assert int(r0["events"]) == int(r1["events"]) == 3
    assert not torch.equal(r0["generator"], r1["generator"])  # the ranks' own random streams differ …
    for name in r0["masks"]:  # … yet every mask is rank 0's
        assert torch.equal(r0["initial"][name], r1["initial"][name]), name
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    assert r0["masks"]["module.0.weight"].shape == (16, 6)
    total = sum(m.numel() for m in r0["masks"].values())
    assert r0["active"].tolist() == [round(0.2 * total)] * 3
