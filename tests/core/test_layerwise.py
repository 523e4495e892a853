"""LayerwiseStepper ≡ optimizer.step() at accumulation boundaries, with schedulers, norms and state intact."""

from __future__ import annotations

import math

import pytest
import torch

import gradspace

ACCUM, STEPS = 3, 5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 6))


def _batches():
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(4, 12, generator=g), torch.randn(4, 6, generator=g)) for _ in range(STEPS * ACCUM)]


def _opt(model, **kw):
    return gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, rank=4, refresh_every=2, residual="fira",
                                       on_refresh="rotate", **kw)


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y) / ACCUM


def _normal(scheduler: bool = False, clip: float | None = None):
    model = _model()
    opt = _opt(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    norms = []
    batches = _batches()
    for s in range(STEPS):
        for x, y in batches[s * ACCUM:(s + 1) * ACCUM]:
            _loss(model, x, y).backward()
        norms.append(math.sqrt(sum(float(p.grad.norm()) ** 2 for p in model.parameters())))
        if clip is not None:
            for p in model.parameters():
                n = float(p.grad.norm())
                if n > clip:
                    p.grad.mul_(clip / (n + 1e-6))
        opt.step()
        opt.zero_grad()
        if sched:
            sched.step()
    return model, opt, norms


def _layerwise(scheduler: bool = False, clip: float | None = None):
    model = _model()
    opt = _opt(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    stepper = gradspace.LayerwiseStepper(opt, accumulation_steps=ACCUM, max_grad_norm=clip)
    norms = []
    for i, (x, y) in enumerate(_batches()):
        _loss(model, x, y).backward()
        if (i + 1) % ACCUM == 0:
            assert all(p.grad is None for p in model.parameters()), "gradients must be freed after their update"
            norms.append(stepper.grad_norm)
            if sched:
                sched.step()
        else:
            assert all(p.grad is not None for p in model.parameters())
    return model, opt, norms, stepper


@pytest.mark.parametrize("scheduler", [False, True])
def test_layerwise_equals_step_at_accumulation_boundaries(scheduler):
    ref, ref_opt, ref_norms = _normal(scheduler)
    model, opt, norms, stepper = _layerwise(scheduler)
    assert stepper.steps == STEPS
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), ref.parameters()):
        for key, value in ref_opt.state[q].items():
            other = opt.state[p][key]
            assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value
    assert norms == pytest.approx(ref_norms, rel=1e-6)


def test_scheduler_reaches_every_layer():
    with_sched, _, _, _ = _layerwise(scheduler=True)
    without, _, _, _ = _layerwise(scheduler=False)
    start = _model()
    for a, b, s in zip(with_sched.parameters(), without.parameters(), start.parameters()):
        # halving lr every step shrinks the total movement of every tensor
        assert float((a - s).detach().norm()) < float((b - s).detach().norm())


def test_per_parameter_clipping_matches_manual_clip():
    ref, _, _ = _normal(clip=0.05)
    model, _, _, _ = _layerwise(clip=0.05)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_state_dict_holds_real_state_and_resumes():
    model, opt, _, stepper = _layerwise()
    sd = opt.state_dict()
    assert all("rule.exp_avg" in st for st in sd["state"].values())
    assert stepper.state_dict() == {"steps": STEPS, "accumulation_steps": ACCUM}


def test_bad_input_and_distributed_refusal(monkeypatch):
    model = _model()
    opt = _opt(model)
    with pytest.raises(ValueError, match="accumulation_steps"):
        gradspace.LayerwiseStepper(opt, accumulation_steps=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        gradspace.LayerwiseStepper(opt, max_grad_norm=-1.0)
    with pytest.raises(TypeError, match="SubspaceOptimizer"):
        gradspace.LayerwiseStepper(torch.optim.AdamW(model.parameters()))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    with pytest.raises(RuntimeError, match="single-process"):
        gradspace.LayerwiseStepper(opt)
