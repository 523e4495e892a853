"""SparseMomentum: events against a brute-force recomputation, exact budgets, optimizer-state policies, errors, resume."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from torch import nn

import gradspace
from gradspace.sparse import SparseMomentum, allocate, cosine_prune_rate, find_momentum


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                         nn.Linear(12, 3))


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _train(model, opt, batches, zero_grad=True):
    for x, y in batches:
        if zero_grad:
            opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _optimizer(kind: str, model: nn.Module):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2)
    if kind == "subspace-sgdm":
        return gradspace.SubspaceOptimizer(model.parameters(), lr=0.05, projector="identity", rule="sgdm")
    if kind == "subspace-adam":
        return gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, projector="identity", rule="adam")
    raise AssertionError(kind)


# --------------------------------------------------------------------------- brute-force reference of one event
def _reference_event(sm: SparseMomentum, weights, masks, momenta, grads, generator_state):
    """Recompute the event from sparse_learning's equations with Python lists (allocation via the separately tested
    ``allocate``): p(t) = 0.005 + (p₀ − 0.005)(1 + cos(πt/T))/2 (``CosineDecay``); p_l = min(sparsity_l, p) for a
    layer with sparsity < 0.2 whose share π_l > 1/L (``adjust_prune_rate``); k_l = ⌈p_l·nnz_l⌉ (``magnitude_prune``)."""
    floor = min(0.005, sm.prune_rate)
    t = min(sm.step_count, sm.end_step)
    rate = floor + (sm.prune_rate - floor) * (1 + math.cos(math.pi * t / sm.end_step)) / 2
    names = list(masks)
    keep, n_pruned, scores, lists = {}, [], [], {}
    for n in names:
        w, m = weights[n].reshape(-1).tolist(), masks[n].reshape(-1).tolist()
        active = [i for i, a in enumerate(m) if a]
        source = momenta[n] if sm.redistribution == "momentum" else weights[n]
        src = source.reshape(-1).tolist()
        scores.append(sum(abs(src[i]) for i in active) / len(active) if active else 0.0)
        lists[n] = (w, m, active)
    for n, score in zip(names, scores):
        w, m, active = lists[n]
        layer_rate = rate
        sparsity = 1 - len(active) / len(m)
        if sm.redistribution != "none" and sparsity < 0.2 and score / sum(scores) > 1 / len(names):
            layer_rate = min(sparsity, rate)
        k = math.ceil(layer_rate * len(active))
        dropped = {i for _, i in sorted((abs(w[i]), i) for i in active)[:k]}
        keep[n] = [a and i not in dropped for i, a in enumerate(m)]
        n_pruned.append(k)
    caps = [masks[n].numel() - sum(keep[n]) for n in names]
    grow = n_pruned if sm.redistribution == "none" else allocate(sum(n_pruned), scores, caps)
    gen = torch.Generator()
    gen.set_state(generator_state)
    new_masks, regrown = {}, {}
    for n, r in zip(names, grow):
        if sm.growth == "momentum":
            score = momenta[n].abs().reshape(-1).tolist()
        elif sm.growth == "gradient":
            score = grads[n].abs().reshape(-1).tolist()
        else:
            score = torch.rand(masks[n].numel(), generator=gen).tolist() if r > 0 else []
        chosen = {i for _, i in sorted((-score[i], i) for i, a in enumerate(keep[n]) if not a)[:r]} if r else set()
        new_masks[n] = torch.tensor([a or i in chosen for i, a in enumerate(keep[n])]).view(masks[n].shape)
        regrown[n] = torch.tensor([i in chosen for i in range(len(keep[n]))]).view(masks[n].shape)
    return new_masks, regrown, {n: torch.tensor(keep[n]).view(masks[n].shape) for n in names}


@pytest.mark.parametrize("growth,redistribution", [("momentum", "momentum"), ("momentum", "magnitude"),
                                                   ("gradient", "none"), ("random", "none"), ("random", "momentum")])
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_event_matches_brute_force_recomputation(growth, redistribution, opt_kind):
    model = _model()
    opt = _optimizer(opt_kind, model)
    sm = SparseMomentum(model, opt, density=0.3, total_steps=40, growth=growth, redistribution=redistribution,
                        verbose=False)
    for round_ in range(3):
        _train(model, opt, _batches(6, seed=round_))
        weights = {n: p.detach().clone() for n, p in sm.params.items()}
        masks = {n: m.clone() for n, m in sm.masks.items()}
        momenta = {n: find_momentum(opt, p).clone() for n, p in sm.params.items()}
        grads = {n: p.grad.clone() for n, p in sm.params.items()}
        new_masks, regrown, kept = _reference_event(sm, weights, masks, momenta, grads, sm._generator.get_state())
        record = sm.prune_and_regrow()
        for n, p in sm.params.items():
            assert torch.equal(sm.masks[n], new_masks[n]), n
            expected = torch.where(kept[n], weights[n], torch.zeros_like(weights[n]))
            assert torch.equal(p.detach(), expected), n  # kept values unchanged; pruned and regrown exactly 0
            assert record["layer_regrown"][n] == int(regrown[n].sum())
        assert record["pruned"] == record["regrown"] > 0
        assert record["active"] == sm.target_active


def test_redistribution_moves_budget_between_layers_but_none_does_not():
    for redistribution, moves in (("momentum", True), ("none", False)):
        model = _model()
        opt = _optimizer("sgd", model)
        sm = SparseMomentum(model, opt, density=0.2, total_steps=60, update_every=10, redistribution=redistribution,
                            verbose=False)
        start = sm.layer_density()
        _train(model, opt, _batches(55))
        assert len(sm.log) == 5
        assert (sm.layer_density() != start) == moves


@pytest.mark.parametrize("opt_kind", ["sgd", "adamw", "subspace-sgdm", "subspace-adam"])
@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_density_is_exact_after_every_event_and_pruned_weights_stay_zero(opt_kind, distribution):
    model = _model()
    opt = _optimizer(opt_kind, model)
    sm = SparseMomentum(model, opt, density=0.15, total_steps=40, update_every=3, distribution=distribution,
                        verbose=False)
    target = round(0.15 * (144 + 144))
    assert sm.target_active == target
    for x, y in _batches(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert sum(int(m.sum()) for m in sm.masks.values()) == target
        for n, p in sm.params.items():
            assert not bool(p[~sm.masks[n]].any()), n
            assert bool(torch.isfinite(p).all())
    assert len(sm.log) == 13 and all(r["active"] == target and r["density"] == target / 288 for r in sm.log)


def test_momentum_of_pruned_positions_is_not_masked():
    """The growth signal: a zero weight's momentum keeps integrating its dense gradient (SGD's own recursion)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sm = SparseMomentum(model, opt, density=0.1, total_steps=100, verbose=False)
    p, mask = sm.params["2.weight"], sm.masks["2.weight"]
    expected = None
    for x, y in _batches(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        g = p.grad.clone()
        expected = g if expected is None else 0.9 * expected + g
        opt.step()
    buf = opt.state[p]["momentum_buffer"]
    assert torch.allclose(buf[~mask], expected[~mask], atol=1e-6, rtol=1e-5)
    assert bool(buf[~mask].abs().sum() > 0) and not bool(p[~mask].any())


@pytest.mark.parametrize("policy", ["keep", "zero", "mean"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw", "subspace-adam"])
def test_state_on_regrow_policies(policy, opt_kind):
    model = _model()
    opt = _optimizer(opt_kind, model)
    sm = SparseMomentum(model, opt, density=0.25, total_steps=50, state_on_regrow=policy, verbose=False)
    _train(model, opt, _batches(8))
    before = {n: {k: v.clone() for k, v in gradspace.sparse.coordinate_state(opt, p).items()}
              for n, p in sm.params.items()}
    assert all(len(v) == (1 if opt_kind == "sgd" else 2) for v in before.values())
    sm.prune_and_regrow()
    after = {n: gradspace.sparse.coordinate_state(opt, p) for n, p in sm.params.items()}
    for n in sm.params:
        regrown = sm.masks[n] & (sm.params[n] == 0)  # regrown weights start at 0 …
        kept = sm.masks[n] & ~regrown  # … (a kept weight is exactly 0 with probability ~0)
        assert int(regrown.sum()) == sm.log[-1]["layer_regrown"][n] > 0
        for key, old in before[n].items():
            new = after[n][key]
            assert torch.equal(new[~regrown], old[~regrown]), (n, key)  # nothing else touched
            if policy == "keep":
                assert torch.equal(new[regrown], old[regrown])
            elif policy == "zero":
                assert not bool(new[regrown].any())
            else:
                assert torch.allclose(new[regrown], old[kept].mean().expand(int(regrown.sum())))


def test_find_momentum_for_torch_and_gradspace_optimizers():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    for kind, key in (("sgd", "momentum_buffer"), ("adamw", "exp_avg"), ("subspace-sgdm", "rule.momentum_buffer"),
                      ("subspace-adam", "rule.exp_avg")):
        model = nn.Linear(5, 4)
        opt = _optimizer(kind, model)
        assert find_momentum(opt, model.weight) is None  # no step yet
        model(x).square().sum().backward()
        opt.step()
        m = find_momentum(opt, model.weight)
        assert m.shape == model.weight.shape and m.data_ptr() == opt.state[model.weight][key].data_ptr()
    plain = nn.Linear(5, 4)
    sgd = torch.optim.SGD(plain.parameters(), lr=0.1)
    plain(x).sum().backward()
    sgd.step()
    assert find_momentum(sgd, plain.weight) is None


@pytest.mark.parametrize("projector", ["svd", "random"])
@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_find_momentum_of_a_projected_weight_is_up_of_m(projector, shape):
    """Reference: with SGDM (no Nesterov, no residual, scale 1) the weight moves by exactly −lr·up(M)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(*shape))
    opt = gradspace.SubspaceOptimizer([w], lr=0.1, projector=projector, rule="sgdm", rank=3, refresh_every=2)
    for i in range(5):
        w.grad = torch.randn(*shape)
        before = w.detach().clone()
        opt.step()
        m = find_momentum(opt, w)
        assert m.shape == w.shape
        assert torch.allclose(before - w.detach(), 0.1 * m, atol=1e-6), i
    assert gradspace.sparse.is_projected(opt, w)
    with pytest.raises(ValueError, match="rank-r subspace"):
        gradspace.sparse.coordinate_state(opt, w)


def test_projected_subspace_optimizer_trains_with_keep_and_refuses_reset():
    model = _model()
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=0.05, projector="svd", rank=2, rule="sgdm",
                                      refresh_every=5)
    sm = SparseMomentum(model, opt, density=0.3, total_steps=30, update_every=6, verbose=False)
    _train(model, opt, _batches(30))
    assert len(sm.log) == 4 and all(r["active"] == sm.target_active for r in sm.log)
    with pytest.raises(ValueError, match="state_on_regrow='zero'.*projected"):
        other = _model()
        SparseMomentum(other, gradspace.SubspaceOptimizer(other.parameters(), projector="svd", rank=2),
                       density=0.3, total_steps=30, state_on_regrow="zero", verbose=False)


def test_hook_is_a_step_post_hook_and_remove_detaches():
    model = _model()
    opt = _optimizer("sgd", model)
    step = opt.step
    sm = SparseMomentum(model, opt, density=0.2, total_steps=10, verbose=False)
    assert "step" not in vars(opt) and opt.step == step  # step is not patched
    sm.remove()
    _train(model, opt, _batches(3))
    assert bool(sm.params["2.weight"][~sm.masks["2.weight"]].any())  # no longer masked after remove()


def test_default_layers_exclude_first_and_output_and_are_printed(capsys):
    model = _model()
    sm = SparseMomentum(model, _optimizer("sgd", model), density=0.5, total_steps=10)
    assert list(sm.masks) == ["2.weight", "4.weight"]
    out = capsys.readouterr().out
    assert "2.weight (12, 12)" in out and "'0.weight'" in out and "'6.weight'" in out
    sm_all = SparseMomentum(model, _optimizer("sgd", model), density=0.5, total_steps=10, layers="all", verbose=False)
    assert list(sm_all.masks) == ["0.weight", "2.weight", "4.weight", "6.weight"]
    sm_named = SparseMomentum(model, _optimizer("sgd", model), density=0.5, total_steps=10, layers=["4", "6.weight"],
                              verbose=False)
    assert list(sm_named.masks) == ["4.weight", "6.weight"]


def test_conv_layers_and_flop_estimates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sm = SparseMomentum(model, opt, density=0.1, total_steps=20, update_every=5, verbose=False)
    assert list(sm.masks) == ["2.weight", "5.weight"]
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(2, 3, 6, 6)).square().mean().backward()
        opt.step()
    flops = {"0.weight": 3 * 8 * 9 * 36, "2.weight": 8 * 8 * 9 * 36, "5.weight": 288 * 16, "7.weight": 64}
    assert sm._layer_flops == {k: float(v) for k, v in flops.items()}  # numel × output positions
    d = sm.layer_density()
    dense = sum(flops.values())
    sparse = flops["0.weight"] + flops["7.weight"] + d["2.weight"] * flops["2.weight"] + d["5.weight"] * flops["5.weight"]
    assert sm.inference_flops_ratio() == pytest.approx(sparse / dense)
    # sparse momentum needs the dense weight gradient every step: (2·sparse + dense) / (3·dense)
    assert sm.train_flops_ratio() == pytest.approx((2 * sparse + dense) / (3 * dense))
    assert sm.log[0]["train_flops_ratio_estimate"] == pytest.approx(sm.train_flops_ratio())


@pytest.mark.parametrize(
    "kwargs,match",
    [({"density": 0.0}, "density=0.0 must be in \\(0, 1\\]"), ({"density": 1.5}, "density=1.5"),
     ({"density": -0.1}, "density=-0.1"), ({"density": "0.1"}, "density='0.1'"),
     ({"prune_rate": 1.0}, "prune_rate=1.0 must be in \\[0, 1\\)"), ({"update_every": 0}, "update_every=0"),
     ({"total_steps": None, "update_every": 5}, "total_steps=None"), ({"total_steps": 0}, "total_steps=0"),
     ({"growth": "magic"}, "growth='magic'.*'momentum', 'gradient', 'random'"),
     ({"redistribution": "x"}, "redistribution='x'"), ({"distribution": "er"}, "distribution='er'.*'erk'"),
     ({"state_on_regrow": "reset"}, "state_on_regrow='reset'.*'keep', 'zero', 'mean'"),
     ({"layers": ["nope"]}, "'nope'.*eligible weights"), ({"layers": "first"}, "layers='first'")],
)
def test_bad_input_raises_value_error_naming_the_parameter(kwargs, match):
    model = _model()
    args = {"density": 0.1, "total_steps": 10, "verbose": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        SparseMomentum(model, _optimizer("sgd", model), **args)


def test_model_without_eligible_layers_and_optimizer_mismatches():
    one = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no eligible layer"):
        SparseMomentum(one, torch.optim.SGD(one.parameters(), lr=0.1, momentum=0.9), density=0.5, total_steps=5)
    none = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match="no eligible layer"):
        SparseMomentum(none, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), density=0.5, total_steps=5,
                       layers="all")
    model = _model()
    with pytest.raises(ValueError, match="growth='momentum'.*momentum=0"):
        SparseMomentum(model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.5, total_steps=5, verbose=False)
    SparseMomentum(model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.5, total_steps=5, growth="gradient",
                   redistribution="magnitude", verbose=False)  # fine without momentum
    with pytest.raises(ValueError, match="not in the optimizer"):
        SparseMomentum(model, torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9), density=0.5,
                       total_steps=5, verbose=False)


def test_gradient_growth_without_gradients_raises_clearly():
    model = _model()
    opt = _optimizer("sgd", model)
    sm = SparseMomentum(model, opt, density=0.3, total_steps=10, growth="gradient", verbose=False)
    _train(model, opt, _batches(2))
    opt.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="p.grad is None"):
        sm.prune_and_regrow()


def test_events_never_produce_nan_nor_leave_pruned_weights_nonzero():
    """Degenerate inputs: huge/inf momentum, all-zero momentum, an empty layer, a near-1 prune rate."""
    model = _model()
    opt = _optimizer("sgd", model)
    sm = SparseMomentum(model, opt, density=0.3, total_steps=100, prune_rate=0.99, verbose=False)
    _train(model, opt, _batches(2))
    opt.state[sm.params["2.weight"]]["momentum_buffer"][0, :3] = float("inf")
    opt.state[sm.params["4.weight"]]["momentum_buffer"].zero_()
    sm.prune_and_regrow()
    # a layer with no active weight: score 0, never NaN
    sm.masks["2.weight"].zero_()
    sm.masks["4.weight"].fill_(True)
    sm._apply_masks()
    record = sm.prune_and_regrow()
    for r in sm.log:
        assert all(math.isfinite(v) for v in r["layer_score"].values())
    for n, p in sm.params.items():
        assert bool(torch.isfinite(p).all()) and not bool(p[~sm.masks[n]].any())
    assert record["layer_score"]["2.weight"] == 0.0


def _run(opt_kind, growth, n_steps, ckpt_at=None, state=None):
    model = _model(3)
    opt = _optimizer(opt_kind, model)
    sm = SparseMomentum(model, opt, density=0.2, total_steps=30, update_every=7, growth=growth, seed=5, verbose=False)
    batches = _batches(30, seed=9)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sm.load_state_dict(state["sm"])
        start = int(state["sm"]["step_count"])
    saved = None
    for i in range(start, n_steps):
        x, y = batches[i]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if ckpt_at is not None and i + 1 == ckpt_at:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sm": sm.state_dict()}, buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=True)
    return model, opt, sm, saved


@pytest.mark.parametrize("opt_kind,growth", [("sgd", "momentum"), ("adamw", "random"), ("subspace-sgdm", "gradient")])
def test_resume_between_events_is_bitwise_identical(opt_kind, growth):
    ref_model, ref_opt, ref_sm, saved = _run(opt_kind, growth, 30, ckpt_at=17)  # events at 7, 14, 21, 28
    assert all(isinstance(v, torch.Tensor) for v in saved["sm"].values())
    assert saved["sm"]["masks.2.weight"].dtype == torch.bool
    model, opt, sm, _ = _run(opt_kind, growth, 30, state=saved)
    for (n, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n
    for n in ref_sm.masks:
        assert torch.equal(ref_sm.masks[n], sm.masks[n])
    assert [r["step"] for r in sm.log] == [21, 28] and ref_sm.event_count == sm.event_count == 4
    assert [r["layer_density"] for r in ref_sm.log[2:]] == [r["layer_density"] for r in sm.log]


def test_load_state_dict_rejects_mismatched_masks():
    model = _model()
    sm = SparseMomentum(model, _optimizer("sgd", model), density=0.2, total_steps=10, verbose=False)
    state = sm.state_dict()
    state.pop("masks.4.weight")
    with pytest.raises(ValueError, match="do not match"):
        sm.load_state_dict(state)


def test_log_jsonl_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    model = _model()
    opt = _optimizer("sgd", model)
    sm = SparseMomentum(model, opt, density=0.2, total_steps=20, update_every=4, verbose=False)
    _train(model, opt, _batches(20))
    assert [r["step"] for r in sm.log] == [4, 8, 12, 16]
    path = tmp_path / "events.jsonl"
    sm.write_jsonl(str(path))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["layer_density"].keys() == {"2.weight", "4.weight"}
    assert {"pruned", "regrown", "prune_rate", "train_flops_ratio_estimate", "event_seconds"} <= rows[0].keys()
    assert rows[0]["prune_rate"] == pytest.approx(cosine_prune_rate(4, 20, 0.5))
    sm.plot(str(tmp_path / "events.png"))
    assert (tmp_path / "events.png").stat().st_size > 1000
    assert sm.mask_bytes() == 288


def test_bf16_weights_and_conv_state_in_matrix_shape():
    """bf16 weights stay exactly sparse; a conv kernel's SubspaceOptimizer state (kept as an (out, in·k·k) matrix)
    is reset at the right positions."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    model = model.to(torch.bfloat16)
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=0.05, projector="identity", rule="sgdm")
    sm = SparseMomentum(model, opt, density=0.3, total_steps=20, state_on_regrow="zero", verbose=False)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(2, 2, 6, 6, dtype=torch.bfloat16)).float().square().mean().backward()
        opt.step()
    p = sm.params["2.weight"]
    assert opt.state[p]["rule.momentum_buffer"].shape == (4, 36)
    sm.prune_and_regrow()
    regrown = sm.masks["2.weight"] & (p == 0)
    assert int(regrown.sum()) == sm.log[-1]["layer_regrown"]["2.weight"] > 0
    assert not bool(opt.state[p]["rule.momentum_buffer"].view(p.shape)[regrown].any())
    assert p.dtype == torch.bfloat16 and not bool(p[~sm.masks["2.weight"]].any())
    assert int(sm.masks["2.weight"].sum()) == sm.target_active == round(0.3 * 144)


# --------------------------------------------------------------------------- issue 11: sparse_learning's schedule
def _nearly_dense_controller(**kwargs):
    """Layer 2.weight 130/144 active (sparsity 0.097 < 0.2) with 10× the weight magnitude (so it is 'growing' under
    redistribution='magnitude'), layer 4.weight 14/144 active."""
    model = _model()
    opt = _optimizer("sgd", model)
    sm = SparseMomentum(model, opt, density=0.5, total_steps=40, redistribution="magnitude", verbose=False, **kwargs)
    g = torch.Generator().manual_seed(4)
    for name, n_active in (("2.weight", 130), ("4.weight", 14)):
        flat = torch.zeros(144, dtype=torch.bool)
        flat[torch.randperm(144, generator=g)[:n_active]] = True
        sm.masks[name] = flat.view(12, 12)
    with torch.no_grad():
        model[2].weight.mul_(10)
    sm.apply_masks()
    _train(model, opt, _batches(5))
    return sm


def test_nearly_dense_growing_layer_prunes_at_most_its_sparsity():
    """sparse_learning's adjust_prune_rate: p_l = min(zeros_l/numel_l, p) for such a layer; k_l = ⌈p_l·nnz_l⌉.
    Before the fix the dense layer pruned ⌊p·nnz⌋ = 61 weights and could regrow far fewer."""
    sm = _nearly_dense_controller()
    p = 0.005 + (0.5 - 0.005) * (1 + math.cos(math.pi * 5 / 40)) / 2
    record = sm.prune_and_regrow()
    assert record["prune_rate"] == pytest.approx(p, rel=1e-12)
    assert record["layer_prune_rate"] == {"2.weight": pytest.approx(14 / 144), "4.weight": pytest.approx(p)}
    assert record["layer_pruned"] == {"2.weight": math.ceil(14 / 144 * 130), "4.weight": math.ceil(p * 14)}
    off = _nearly_dense_controller(adjust_dense_layers=False).prune_and_regrow()
    assert off["layer_pruned"] == {"2.weight": math.ceil(p * 130), "4.weight": math.ceil(p * 14)}
    assert off["layer_prune_rate"] == {"2.weight": pytest.approx(p), "4.weight": pytest.approx(p)}


def test_rigl_schedule_options_reproduce_floor_decay_to_zero():
    sm = _nearly_dense_controller(prune_rate_min=0.0, prune_rounding="floor", adjust_dense_layers=False)
    p = 0.5 * (1 + math.cos(math.pi * 5 / 40)) / 2
    record = sm.prune_and_regrow()
    assert record["prune_rate"] == pytest.approx(p, rel=1e-12)
    assert record["layer_pruned"] == {"2.weight": math.floor(p * 130), "4.weight": math.floor(p * 14)}
    assert record["active"] == 144


def test_late_events_still_prune_at_the_floor_rate():
    """Near end_step sparse_learning still prunes ⌈0.005·nnz⌉ ≥ 1 weight per layer; the old schedule pruned none."""
    model = _model()
    opt = _optimizer("sgd", model)
    sm = SparseMomentum(model, opt, density=0.2, total_steps=20, update_every=19, verbose=False)
    _train(model, opt, _batches(19))
    (record,) = sm.log
    assert record["step"] == 19 and record["prune_rate"] > 0.005
    assert all(v == math.ceil(record["prune_rate"] * round(0.2 * 144)) >= 1 for v in record["layer_pruned"].values())


@pytest.mark.parametrize("kwargs,match", [
    ({"prune_rate_min": 1.0}, "prune_rate_min=1.0 must be in \\[0, 1\\)"),
    ({"prune_rate_min": -0.1}, "prune_rate_min=-0.1"),
    ({"prune_rounding": "round"}, "prune_rounding='round'.*'ceil', 'floor'"),
    ({"adjust_dense_layers": "yes"}, "adjust_dense_layers='yes' must be True or False"),
])
def test_schedule_options_are_validated(kwargs, match):
    model = _model()
    with pytest.raises(ValueError, match=match):
        SparseMomentum(model, _optimizer("sgd", model), density=0.1, total_steps=10, verbose=False, **kwargs)


# --------------------------------------------------------------------------- issue 11, case 10: resume order
def _sparse_checkpoint():
    model = _model(3)
    opt = _optimizer("sgd", model)
    sm = SparseMomentum(model, opt, density=0.2, total_steps=30, update_every=4, seed=5, verbose=False)
    _train(model, opt, _batches(10, seed=2))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sm": sm.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True), sm


def test_building_sparse_momentum_on_a_loaded_model_destroys_no_weight():
    """The user's resume order: build model, load its checkpoint, build the optimizer and load it, build
    SparseMomentum, load its state. Before the fix the construction applied fresh random masks and zeroed active
    checkpoint weights (the events since had moved the masks)."""
    saved, trained = _sparse_checkpoint()
    fresh_model = _model(3)
    fresh = SparseMomentum(fresh_model, _optimizer("sgd", fresh_model), density=0.2, total_steps=30, seed=5,
                           verbose=False)
    assert any(not torch.equal(trained.masks[n], m) for n, m in fresh.masks.items())  # the events moved the masks
    model = _model(0)
    model.load_state_dict(saved["model"])
    opt = _optimizer("sgd", model)
    opt.load_state_dict(saved["opt"])
    sm = SparseMomentum(model, opt, density=0.2, total_steps=30, update_every=4, seed=5, verbose=False)
    for n, v in model.state_dict().items():
        assert torch.equal(v, saved["model"][n]), n  # construction touched nothing
    sm.load_state_dict(saved["sm"])
    for n, v in model.state_dict().items():
        assert torch.equal(v, saved["model"][n]), n  # every active checkpoint weight survives
    for n in sm.masks:
        assert torch.equal(sm.masks[n], trained.masks[n])
    _train(model, opt, _batches(3, seed=8))
    for n, p in sm.params.items():
        assert not bool(p[~sm.masks[n]].any())


def test_forgetting_to_load_the_controller_state_warns_at_the_first_forward():
    saved, _ = _sparse_checkpoint()
    model = _model(0)
    model.load_state_dict(saved["model"])
    SparseMomentum(model, _optimizer("sgd", model), density=0.2, total_steps=30, seed=5, verbose=False)
    with pytest.warns(RuntimeWarning, match="sm.load_state_dict"):
        model(torch.randn(2, 6))


def test_fresh_model_is_masked_before_its_first_forward():
    model = _model()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    sm = SparseMomentum(model, _optimizer("sgd", model), density=0.2, total_steps=10, verbose=False)
    assert all(torch.equal(p, dense[n]) for n, p in model.named_parameters())  # lazy: untouched until used
    x = torch.randn(4, 6)
    reference = x
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            w = dense[f"{i}.weight"] * sm.masks[f"{i}.weight"] if f"{i}.weight" in sm.masks else dense[f"{i}.weight"]
            reference = nn.functional.linear(reference, w, dense[f"{i}.bias"])
        else:
            reference = layer(reference)
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error")  # a fresh (dense) model gives no resume warning
        out = model(x)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    for n, p in sm.params.items():
        assert not bool(p[~sm.masks[n]].any())
