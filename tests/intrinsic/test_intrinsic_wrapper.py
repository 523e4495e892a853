"""IntrinsicDimension: θ = θ₀ + P z against an explicit reference, gradients by the chain rule, checkpoints, errors."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from gradspace.intrinsic import IntrinsicDimension

PROJECTIONS = ["dense", "sparse", "fastfood"]


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))  # D = 42 + 24 = 66


def _reference(model: nn.Module, M: torch.Tensor, z: torch.Tensor) -> nn.Module:
    """A plain copy of the model whose parameters are θ₀ + M z (flattened in named_parameters order)."""
    ref = copy.deepcopy(model).requires_grad_(True)
    theta0 = parameters_to_vector(ref.parameters())
    vector_to_parameters(theta0 + M @ z, ref.parameters())
    return ref


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_forward_and_gradient_match_an_explicit_reparameterization(projection):
    model = _model()
    wrapped = IntrinsicDimension(model, d=9, projection=projection, seed=2)
    assert wrapped.D == 66 and [n for n, _ in wrapped.named_parameters()] == ["z"]
    x = torch.randn(4, 5)
    assert torch.equal(wrapped(x), model(x))  # z starts at 0: the wrapped model is the model
    with torch.no_grad():
        wrapped.z.copy_(torch.randn(9))
    M = wrapped.projection.matrix()
    ref = _reference(model, M, wrapped.z.detach())
    out = wrapped(x)
    assert torch.allclose(out, ref(x), atol=1e-6)
    # chain rule: ∂L/∂z = Mᵀ ∂L/∂θ
    out.square().sum().backward()
    ref(x).square().sum().backward()
    grad_theta = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
    assert torch.allclose(wrapped.z.grad, M.T @ grad_theta, atol=1e-5)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("make_opt", [lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                                      lambda ps: torch.optim.AdamW(ps, lr=1e-2)])
def test_any_optimizer_trains_only_z(make_opt):
    model = _model()
    theta0 = parameters_to_vector(model.parameters()).clone()
    wrapped = IntrinsicDimension(model, d=12, projection="fastfood", seed=0)
    opt = make_opt(wrapped.parameters())
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(wrapped(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert torch.equal(parameters_to_vector(model.parameters()), theta0)  # θ₀ untouched
    assert bool(wrapped.z.abs().sum() > 0) and losses[-1] < losses[0]
    merged = wrapped.merged_model()
    assert torch.allclose(merged(x), wrapped(x), atol=1e-6)
    assert all(p.requires_grad for p in merged.parameters())


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_state_dict_carries_seed_and_regenerates_p_on_load(projection):
    model = _model()
    options = {"sparse_density": 0.25} if projection == "sparse" else {}
    wrapped = IntrinsicDimension(model, d=8, projection=projection, seed=11, **options)
    with torch.no_grad():
        wrapped.z.normal_()
    state = wrapped.state_dict()
    assert {"z", "seed", "projection_id", "sparse_k"} <= state.keys() and "model.0.weight" in state
    assert not any(k.startswith("projection.") for k in state)  # P is never saved
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    other = IntrinsicDimension(_model(), d=8, projection="dense", seed=0)  # another seed and projection
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert int(other.seed) == 11 and other.projection_name == projection == other.projection.kind
    assert torch.equal(other.projection.matrix(), wrapped.projection.matrix())
    x = torch.randn(3, 5)
    assert torch.equal(other(x), wrapped(x))


def test_memory_of_sparse_and_fastfood_is_not_o_d_times_d():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 10))  # D = 15 010
    D, d = 15_010, 1_000
    for projection, limit in (("fastfood", 4 * 16_384), ("sparse", 3 * d * 123)):
        wrapped = IntrinsicDimension(copy.deepcopy(model), d=d, projection=projection)
        stored = sum(b.numel() for b in wrapped.projection.buffers())
        assert stored <= limit < D * d / 40, projection
    lazy = IntrinsicDimension(copy.deepcopy(model), d=d, projection="sparse", cache_projection=False)
    assert sum(b.numel() for b in lazy.projection.buffers()) == 0


def test_batchnorm_buffers_and_tied_weights():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 6)
    head = nn.Linear(6, 10, bias=False)
    head.weight = emb.weight  # tied
    model = nn.Sequential(emb, nn.Flatten(), nn.BatchNorm1d(6 * 2), nn.Unflatten(1, (2, 6)), head)
    wrapped = IntrinsicDimension(model, d=5, projection="sparse", seed=0)
    assert wrapped.D == 60 + 24  # tied weight counted once; BN affine included
    x = torch.randint(0, 10, (4, 2))
    before = model[2].running_mean.clone()
    wrapped.train()
    wrapped(x).sum().backward()
    assert not torch.equal(model[2].running_mean, before)  # BN statistics are the model's own buffers
    assert wrapped.z.grad is not None


@pytest.mark.parametrize("kwargs,match", [
    ({"d": 0}, "d=0 must be an int with 1 ≤ d < D = 66"), ({"d": 66}, "d=66"), ({"d": -3}, "d=-3"),
    ({"d": 2.5}, "d=2.5"), ({"d": 4, "projection": "gaussian"}, "projection='gaussian'.*'dense', 'sparse', 'fastfood'"),
    ({"d": 4, "seed": "x"}, "seed='x'"), ({"d": 4, "projection": "sparse", "sparse_density": 2.0}, "sparse_density"),
])
def test_bad_input_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IntrinsicDimension(_model(), **kwargs)
