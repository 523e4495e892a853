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


# --------------------------------------------------------------------------- issue 11, case 9
class _Partial(torch.nn.Module):
    """A trunk always used, a branch used only on some micro-batches, and a layer never used."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Linear(12, 6)
        self.branch = torch.nn.Linear(12, 6)
        self.unused = torch.nn.Linear(5, 5)

    def forward(self, x, use_branch):
        out = self.trunk(x)
        return out + self.branch(x) if use_branch else out


def _partial_run(layerwise: bool, accum: int, n_backward: int):
    model = _Partial()
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, rank=2, refresh_every=2)
    stepper = gradspace.LayerwiseStepper(opt, accumulation_steps=accum) if layerwise else None
    g = torch.Generator().manual_seed(3)
    for i in range(n_backward):
        x, y = torch.randn(4, 12, generator=g), torch.randn(4, 6, generator=g)
        torch.nn.functional.mse_loss(model(x, use_branch=i % 3 == 0), y).backward()
        if not layerwise and (i + 1) % accum == 0:
            opt.step()
            opt.zero_grad()
    return model, opt, stepper


@pytest.mark.parametrize("accum", [1, 2, 3])
def test_unused_and_sometimes_used_parameters_step_like_optimizer_step(accum):
    """Reference: the plain backward × accum; step(); zero_grad() loop. Before the fix a parameter without a gradient
    made the stepper count a step every other backward (and never update the sometimes-used branch correctly)."""
    ref, ref_opt, _ = _partial_run(False, accum, 12)
    model, opt, stepper = _partial_run(True, accum, 12)
    assert stepper.steps == 12 // accum
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
        assert a.grad is None, name
    assert not opt.state.get(model.unused.weight) and not ref_opt.state.get(ref.unused.weight)
    assert torch.equal(model.unused.weight, _Partial().unused.weight)  # never updated


def test_a_second_stepper_is_refused_and_the_first_keeps_working():
    model = _model()
    opt = _opt(model)
    first = gradspace.LayerwiseStepper(opt)
    with pytest.raises(RuntimeError, match="already attached.*remove\\(\\)"):
        gradspace.LayerwiseStepper(opt, accumulation_steps=2)
    x, y = _batches()[0]
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        torch.nn.functional.mse_loss(model(x), y).backward()
    assert first.steps == 3 and all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), before))
    first.remove()
    second = gradspace.LayerwiseStepper(opt)  # allowed once the first is removed
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert (first.steps, second.steps) == (3, 1)


def test_step_param_on_a_tensor_the_optimizer_does_not_hold_raises():
    model = _model()
    opt = _opt(model)
    stranger = torch.nn.Parameter(torch.randn(20, 12))
    stranger.grad = torch.randn(20, 12)
    before = stranger.detach().clone()
    with pytest.raises(ValueError, match="not a parameter of this optimizer"):
        opt.step_param(stranger)
    assert torch.equal(stranger, before)


def _sparse_run(layerwise: bool, accum: int = 1, n_backward: int = 24):
    from gradspace.sparse import SparseMomentum

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 2))
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, projector="identity", rule="sgdm")
    sm = SparseMomentum(model, opt, density=0.25, total_steps=n_backward // accum, update_every=3, verbose=False)
    stepper = gradspace.LayerwiseStepper(opt, accumulation_steps=accum) if layerwise else None
    g = torch.Generator().manual_seed(1)
    outside = []
    for i in range(n_backward):
        model(torch.randn(16, 8, generator=g)).square().mean().backward()
        if not layerwise and (i + 1) % accum == 0:
            opt.step()
            opt.zero_grad()
        if (i + 1) % accum == 0:
            outside.append(int(model[2].weight[~sm.masks["2.weight"]].count_nonzero()))
    return model, sm, stepper, outside


@pytest.mark.parametrize("accum", [1, 2])
def test_sparse_momentum_is_driven_by_the_stepper(accum):
    """Reference: the same SparseMomentum run driven by optimizer.step(). Before the fix the masks were never applied
    under the stepper (hundreds of nonzeros outside a 256-weight mask)."""
    ref, ref_sm, _, _ = _sparse_run(False, accum)
    model, sm, stepper, outside = _sparse_run(True, accum)
    assert outside == [0] * (24 // accum)  # no nonzero outside the mask after any step
    assert stepper.steps == sm.step_count == ref_sm.step_count == 24 // accum
    assert len(sm.log) == len(ref_sm.log) > 0
    for n in sm.masks:
        assert torch.equal(sm.masks[n], ref_sm.masks[n]), n
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_sparse_momentum_with_gradient_growth_is_refused_in_either_order():
    from gradspace.sparse import SparseMomentum

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 2))
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, projector="identity", rule="sgdm")
    SparseMomentum(model, opt, density=0.5, total_steps=10, update_every=2, growth="gradient", verbose=False)
    with pytest.raises(ValueError, match="growth='gradient'.*frees every gradient"):
        gradspace.LayerwiseStepper(opt)
    opt2 = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, projector="identity", rule="sgdm")
    gradspace.LayerwiseStepper(opt2)
    with pytest.raises(ValueError, match="growth='gradient'.*LayerwiseStepper"):
        SparseMomentum(model, opt2, density=0.5, total_steps=10, update_every=2, growth="gradient", verbose=False)
