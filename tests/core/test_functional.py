"""The one update path: frames, the fused write against a dense reference, rounding, records, hand edits, loading."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

import gradspace
from gradspace.frame import frame_of
from gradspace.functional import subspace_update
from gradspace.registry import DEFAULTS, fill
from gradspace.testing import optim_db


def _group(**kw):
    return fill(dict(DEFAULTS, **kw))


def _state(seed=1):
    return {"step": 0, "proj.seed": seed, "proj.count": 0, "proj.fallbacks": 0}


def test_frame_orients_the_projected_side_and_caps_the_rank():
    g = _group(rank=4)
    f = frame_of((24, 16), g)
    assert (f.projected, f.transposed, f.a, f.b, f.rank) == (True, False, 24, 16, 4)
    f = frame_of((6, 12), g)
    assert (f.transposed, f.a, f.b, f.rank) == (True, 12, 6, 4)
    f = frame_of((3, 12), _group(rank=8, side="right"))  # rank above the other side: only null-space directions
    assert (f.b, f.rank) == (12, 3)
    assert not frame_of((8,), g).projected and not frame_of((8, 8), _group(projector="identity")).projected
    assert frame_of((8, 3, 3, 3), g).matrix == (8, 27)


@pytest.mark.parametrize("shape, side", [((24, 16), "smaller"), ((6, 12), "smaller"), ((12, 10), "left")])
def test_fused_write_equals_a_dense_galore_step(shape, side):
    """W ← (1 − lr·wd)W − lr·α·up(Adam(down(G))) (torch bias correction) by hand, against the fused addmm_."""
    gen = torch.Generator().manual_seed(0)
    w0, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    lr, wd, alpha, rank = 0.05, 0.1, 0.5, 3
    group = _group(rank=rank, side=side, scale=alpha, weight_decay=wd)
    w = w0.clone()
    subspace_update(w, g, _state(), group, lr)
    f = frame_of(shape, group)
    x = g.T if f.transposed else g
    q = torch.linalg.svd(g, full_matrices=False)[0][:, :rank] if f.transposed else \
        torch.linalg.svd(g, full_matrices=False)[2][:rank].T
    r = x @ q
    m, v = 0.1 * r, 0.001 * r * r
    d = (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)
    u = alpha * d @ q.T
    ref = w0 * (1 - lr * wd) - lr * (u.T if f.transposed else u)
    torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-6)


def test_unaligned_and_aligned_weights_update_identically():
    gen = torch.Generator().manual_seed(1)
    w0, g = torch.randn(24, 16, generator=gen), torch.randn(24, 16, generator=gen)
    group = _group(rank=4, weight_decay=0.1, residual="fira")
    aligned = w0.clone()
    buf = torch.zeros(24 * 16 + 3)
    unaligned = buf[3:].view(24, 16)
    unaligned.copy_(w0)
    s1, s2 = _state(), _state()
    for _ in range(3):
        subspace_update(aligned, g, s1, group, 0.01)
        subspace_update(unaligned, g, s2, group, 0.01)
    torch.testing.assert_close(aligned, unaligned, rtol=0, atol=1e-7)


def test_bf16_weights_are_rounded_once_from_fp32_math():
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(24, 16, generator=gen).bfloat16()
    g = torch.randn(24, 16, generator=gen).bfloat16()
    group = _group(rank=4, weight_decay=0.1)
    w, w32 = w0.clone(), w0.float()
    subspace_update(w, g, _state(), group, 0.01)
    subspace_update(w32, g.float(), _state(), fill(dict(group, state_dtype=torch.bfloat16)), 0.01)
    assert torch.equal(w, w32.bfloat16())


def test_stochastic_rounding_keeps_updates_below_a_bf16_ulp():
    """1000 steps of a 1e-4 update on bf16 weights at 1.0 (ulp 2⁻⁷): nearest rounding loses all of it."""
    results = {}
    for sr in (False, True):
        w = torch.nn.Parameter(torch.ones(64, 32, dtype=torch.bfloat16))
        opt = gradspace.SubspaceOptimizer([w], lr=1e-4, projector="identity", rule="sgdm", momentum=0.0,
                                          stochastic_rounding=sr)
        for _ in range(1000):
            w.grad = torch.ones_like(w)
            opt.step()
        results[sr] = w.float().mean().item()
    assert results[False] == 1.0
    assert results[True] == pytest.approx(0.9, abs=0.01)  # unbiased: 1 − 1000·1e-4


def test_records_measure_the_gradient_the_update_projected():
    """With error feedback the projected gradient is G + e; the record's captured energy is of that."""
    w = torch.nn.Parameter(torch.randn(16, 12))
    opt = gradspace.SubspaceOptimizer([w], lr=1e-2, rank=2, residual="error_feedback", refresh_every=100)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        w.grad = torch.randn(16, 12, generator=gen)
        err = opt.state[w].get("resid.error")
        assert not frame_of(w.shape, opt.param_groups[0]).transposed  # 16 × 12: X = G, a right basis
        x = w.grad + (0 if err is None else err)
        opt.observe_next_step()
        opt.step()
        rec = opt.last_records[w]
        q = rec["basis"]
        want = (x @ q).square().sum() / x.square().sum()
        assert float(rec["energy"]) == pytest.approx(float(want), rel=1e-5), step


def test_a_hand_edited_rank_takes_effect_at_the_next_refresh():
    w = torch.nn.Parameter(torch.randn(16, 12))
    opt = gradspace.SubspaceOptimizer([w], lr=1e-2, rank=4, refresh_every=3)
    gen = torch.Generator().manual_seed(0)
    for step in range(7):
        if step == 1:
            opt.param_groups[0]["rank"] = 8
        w.grad = torch.randn(16, 12, generator=gen)
        opt.step()
        rank = opt.state[w]["proj.basis"].shape[1]
        assert rank == (4 if step < 3 else 8), (step, rank)
        assert opt.state[w]["rule.exp_avg"].shape == (16, rank)
    assert bool(w.isfinite().all())


def test_a_bad_hand_edit_is_refused_before_any_weight_changes():
    a, b = torch.nn.Parameter(torch.randn(8, 6)), torch.nn.Parameter(torch.randn(8, 6))
    opt = gradspace.SubspaceOptimizer([{"params": [a]}, {"params": [b]}], lr=1e-2, rank=2)
    opt.param_groups[1]["rank"] = -1
    a.grad, b.grad = torch.randn(8, 6), torch.randn(8, 6)
    before = a.detach().clone()
    with pytest.raises(ValueError, match="rank=-1"):
        opt.step()
    assert torch.equal(a, before) and not opt.state.get(a)


def test_nan_check_has_no_false_positives_on_huge_finite_gradients():
    for grad in (torch.full((8, 6), 1e36), torch.tensor([1e300, 1.0], dtype=torch.float64)):
        w = torch.nn.Parameter(torch.zeros(grad.shape, dtype=grad.dtype))
        opt = gradspace.SubspaceOptimizer([w], lr=0.0, rank=2, projector="identity")
        w.grad = grad
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            opt.step()
        assert "nonfinite_skips" not in opt.state[w]


def test_loading_maps_state_by_name_and_refuses_what_cannot_belong():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(24, 16)), torch.nn.Parameter(torch.randn(16, 24))
    opt = gradspace.SubspaceOptimizer([{"params": [("a", a)]}, {"params": [("b", b)]}], lr=1e-2, rank=4)
    for _ in range(2):
        a.grad, b.grad = torch.randn(24, 16, generator=gen), torch.randn(16, 24, generator=gen)
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    # the same weights, groups built in the other order: same frame shapes (24×16 vs 16×24), so only names tell
    swapped = gradspace.SubspaceOptimizer([{"params": [("b", b)]}, {"params": [("a", a)]}], lr=1e-2, rank=4)
    swapped.load_state_dict(copy.deepcopy(saved))
    for p in (a, b):
        assert torch.equal(swapped.state[p]["proj.basis"], opt.state[p]["proj.basis"])
    other = torch.nn.Parameter(torch.randn(10, 6))
    wrong = gradspace.SubspaceOptimizer([{"params": [("a", other)]}, {"params": [("b", b)]}], lr=1e-2, rank=4)
    with pytest.raises(ValueError, match="cannot belong"):
        wrong.load_state_dict(copy.deepcopy(saved))
    assert not wrong.state  # nothing was loaded
    renamed = gradspace.SubspaceOptimizer([{"params": [("x", a)]}, {"params": [("b", b)]}], lr=1e-2, rank=4)
    with pytest.raises(ValueError, match="other parameters"):
        renamed.load_state_dict(copy.deepcopy(saved))


def test_a_copy_keeps_working_and_the_default_group():
    w = torch.nn.Parameter(torch.randn(8, 6))
    opt = gradspace.SubspaceOptimizer([w], lr=1e-2, rank=2)
    twin = copy.deepcopy(opt)
    assert twin._process_group is None and twin.last_records == {}
    w2 = twin.param_groups[0]["params"][0]
    w2.grad = torch.randn(8, 6)
    twin.step()


def test_float8_state_is_refused_at_construction():
    with pytest.raises(TypeError, match="state_dtype"):
        gradspace.SubspaceOptimizer([torch.nn.Parameter(torch.randn(4, 4))], state_dtype=torch.float8_e4m3fn)


def test_deepspeed_flat_partitions_are_refused_pointing_to_fsdp2():
    flat = [torch.nn.Parameter(torch.zeros(40_000)), torch.nn.Parameter(torch.zeros(30_000))]
    with pytest.raises(ValueError, match="flattened partitions.*FSDP2"):
        gradspace.GaLoreAdamW(flat, rank=8)
    gradspace.SubspaceOptimizer(flat, projector="identity")  # full space was asked for: fine
    gradspace.SubspaceOptimizer([torch.nn.Parameter(torch.zeros(64))], rank=8)  # a small 1-D model is no partition


def test_switching_momentum_on_by_hand_starts_the_buffer():
    w = torch.nn.Parameter(torch.randn(8, 6))
    opt = gradspace.SGDP([w], lr=0.1, momentum=0.0)
    w.grad = torch.randn(8, 6)
    opt.step()
    opt.param_groups[0]["momentum"] = 0.9
    w.grad = torch.randn(8, 6)
    opt.step()  # was a KeyError: the buffer did not exist
    assert "rule.momentum_buffer" in opt.state[w]


def _unfused(opt):
    for group in opt.param_groups:
        group["fused"] = False
    return opt


@pytest.mark.parametrize("info", optim_db, ids=lambda i: i.name)
def test_fused_full_space_equals_the_reference_path(info, monkeypatch):
    """torch's fused AdamW kernel on full-space Adam weights computes what subspace_update computes (whole table)."""
    from gradspace import functional, optimizer
    from gradspace.testing import make_params, run_steps
    from gradspace.testing.contract import clone_params

    params = make_params()
    calls = []
    real = functional.fused_full_space
    monkeypatch.setattr(optimizer, "fused_full_space", lambda items, records=None: (calls.append(len(items)), real(items, records)))
    pa, pb = clone_params(params), clone_params(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = info.make(pa), _unfused(info.make(pb))
        run_steps(a, pa, 6)
        n_fused = sum(calls)
        run_steps(b, pb, 6)
    assert sum(calls) == n_fused  # the reference run never took the fused kernel
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=2e-7)
    for x, y in zip(pa, pb):
        for key, value in b.state[y].items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                # rounding-level (an SVD of a gradient that moved by an ulp): relative to the tensor's scale
                scale = float(value.abs().max()) if value.numel() else 0.0
                torch.testing.assert_close(a.state[x][key], value, rtol=1e-5, atol=1e-5 * scale + 1e-12, msg=key)
            elif isinstance(value, torch.Tensor):
                assert torch.equal(a.state[x][key], value), key
            else:
                assert a.state[x][key] == value, key
    group = a.param_groups[0]
    full_rule = group.get("fallback_rule") if group["rule"] == "orthogonal" else group["rule"]
    expect = full_rule == "adam" and group["bias_correction"] != "none" or full_rule == "sgdm"
    if expect and not group["radial_projection"] \
            and group["state_dtype"] in (None, torch.float32, "float32") and all(p.dtype == torch.float32 for p in pa):
        assert n_fused > 0, "no full-space weight took the fused kernel"


@pytest.mark.parametrize("fused", [True, False])
def test_full_space_sgd_follows_torch_sgd_through_a_momentum_hand_edit(fused, monkeypatch):
    """Full-space SGD (torch's fused SGD kernel, or the reference) equals ``torch.optim.SGD`` with decoupled decay,
    also when momentum is switched on mid-run (the buffer starts at g, as torch's does)."""
    calls = []
    real = torch._fused_sgd_
    monkeypatch.setattr(torch, "_fused_sgd_", lambda *a, **k: (calls.append(1), real(*a, **k)))
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(7))]
    ref = [torch.nn.Parameter(w.detach().clone()) for w in ws]
    opt = gradspace.SubspaceOptimizer(ws, projector="identity", rule="sgdm", lr=0.1, momentum=0.0,
                                      weight_decay=0.05, fused=fused, dampening=0.0)
    sgd = torch.optim.SGD(ref, lr=0.1, momentum=0.0)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        if step == 2:
            opt.param_groups[0]["momentum"] = sgd.param_groups[0]["momentum"] = 0.9
        for w, r in zip(ws, ref):
            w.grad = torch.randn(w.shape, generator=gen)
            r.grad = w.grad.clone()
        opt.step()
        with torch.no_grad():
            for r in ref:
                r.mul_(1 - 0.1 * 0.05)  # decoupled decay first, as gradspace applies it
        sgd.step()
        for w, r in zip(ws, ref):
            torch.testing.assert_close(w, r, rtol=1e-6, atol=1e-7)
    assert len(calls) == (6 if fused else 0)


def test_fused_full_space_is_refused_where_it_would_differ():
    from gradspace.functional import FUSED_GRAD_LIMIT, fusable

    w = torch.nn.Parameter(torch.zeros(8))
    w.grad = torch.ones(8)
    g = _group(projector="identity")
    f = frame_of(w.shape, g)
    assert fusable(w, {}, g, f, 1.0)
    assert not fusable(w, {}, g, f, None)  # the bound is unknown (a memory plan)
    assert not fusable(w, {}, g, f, FUSED_GRAD_LIMIT)  # v could saturate: the reference clamps it
    for edit in (dict(fused=False), dict(bias_correction="none"), dict(state_dtype="int8"), dict(rule="lion"),
                 dict(state_dtype=torch.bfloat16), dict(radial_projection=True)):
        assert not fusable(w, {}, _group(projector="identity", **edit), f, 1.0), edit
    m = torch.nn.Parameter(torch.zeros(8, 6))
    m.grad = torch.ones(8, 6)
    assert not fusable(m, {}, _group(rank=2), frame_of(m.shape, _group(rank=2)), 1.0)  # projected: subspace_update
    h = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    h.grad = torch.ones(8, dtype=torch.bfloat16)
    assert not fusable(h, {}, g, f, 1.0)


def test_a_finite_spike_takes_the_reference_path_and_is_exact():
    """|g| ≥ FUSED_GRAD_LIMIT: the NaN check's bound sends the weight to subspace_update, whose v saturates."""
    w = torch.nn.Parameter(torch.zeros(16))
    opt = gradspace.SubspaceOptimizer([w], lr=1e-3, projector="identity")
    w.grad = torch.full((16,), 1e30)
    opt.step()
    assert torch.isfinite(opt.state[w]["rule.exp_avg_sq"]).all() and torch.isfinite(w).all()
    assert "nonfinite_skips" not in opt.state[w]


@pytest.mark.parametrize("fira_residual", ["paper", "code"])
@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_fira_with_one_up_projection_equals_the_explicit_residual(fira_residual, scale_type, alpha, monkeypatch):
    """Fira's U = α·up(d) + limit(φ ⊙ (G − β·up(r))) written with one up-projection equals forming the residual."""
    from gradspace.residuals import base

    def run(explicit):
        torch.manual_seed(0)
        ws = [torch.nn.Parameter(torch.randn(24, 16)), torch.nn.Parameter(torch.randn(12, 20))]
        opt = gradspace.SubspaceOptimizer(ws, lr=1e-2, rank=4, residual="fira", scale=alpha, refresh_every=3,
                                          fira_residual=fira_residual, residual_scale_type=scale_type,
                                          weight_decay=0.1, limiter_gamma=1.01)
        gen = torch.Generator().manual_seed(1)
        for step in range(7):
            for w in ws:
                w.grad = torch.randn(w.shape, generator=gen) * (1 + 3 * (step == 4))  # a jump: the limiter acts
            opt.step()
        return ws, opt

    fast, opt = run(False)
    real_init = base.Up.__init__
    monkeypatch.setattr(base.Up, "__init__", lambda self, q, whole=False, orthonormal=False, grad_norm=None,
                        grad_rows=None: real_init(self, q, whole, False, grad_norm))
    slow, ref = run(True)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(opt.state[a]["resid.prev_norm"], ref.state[b]["resid.prev_norm"], rtol=1e-5, atol=0)


def test_apollo_tensor_norm_from_the_nan_check_equals_the_fp64_norm():
    """APOLLO-Mini's limiter reads ‖G‖ from the NaN check's dot; the fp64 norm of each layer gives the same steps."""
    from gradspace.residuals import base

    def run(hint):
        torch.manual_seed(0)
        ws = [torch.nn.Parameter(torch.randn(32, 16)), torch.nn.Parameter(torch.randn(16, 40))]
        opt = gradspace.APOLLOMini([{"params": ws, "rank": 1}], lr=1e-2, weight_decay=0.0)
        gen = torch.Generator().manual_seed(2)
        for step in range(6):
            for w in ws:
                w.grad = torch.randn(w.shape, generator=gen) * (1 + 5 * (step == 3))
            opt.step()
        return ws, opt

    fast, opt = run(True)
    norms = []
    real_norm = base.Up.norm
    monkeypatch_norm = lambda self, x, comm=base.LOCAL: norms.append(1) or base.tensor_norm(x, comm)  # noqa: E731
    base.Up.norm = monkeypatch_norm
    try:
        slow, ref = run(False)
    finally:
        base.Up.norm = real_norm
    assert norms, "the reference run did not compute the norm"
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("preset,opts", [
    ("Fira", {}), ("Fira", {"residual_scale_type": "tensor"}), ("Fira", {"scale": 0.5, "fira_residual": "code"}),
    ("APOLLO", {}), ("APOLLO", {"proj": "svd"}), ("SubspaceOptimizer", {"residual": "apollo", "side": "left"}),
])
def test_row_norms_from_the_nan_check_equal_the_updates_own(preset, opts, monkeypatch):
    """Fira/APOLLO (channel) read ‖G_i‖ per row from the NaN check's pass (tall, wide and square weights, so plain
    and transposed frames); recomputing them in fp64 inside the update gives the same steps, and the check did pass
    them on."""
    from gradspace.residuals import base

    def run():
        torch.manual_seed(0)
        ws = [torch.nn.Parameter(torch.randn(24, 16)), torch.nn.Parameter(torch.randn(12, 20)),
              torch.nn.Parameter(torch.randn(16, 16))]
        cls = getattr(gradspace, preset)
        opt = cls(ws, lr=1e-2, rank=4, weight_decay=0.1, **({"update_proj_gap": 3} if preset != "SubspaceOptimizer"
                                                            else {"refresh_every": 3}), **opts)
        gen = torch.Generator().manual_seed(3)
        for step in range(6):
            for w in ws:
                w.grad = torch.randn(w.shape, generator=gen) * (1 + 4 * (step == 3))
            opt.step()
        return ws

    seen = []
    real = base.Up.gradient_row_norms
    monkeypatch.setattr(base.Up, "gradient_row_norms",
                        lambda self, x: seen.append(self.grad_rows is not None) or real(self, x))
    fast = run()
    assert seen and all(seen), "the NaN check's row norms were not passed to the update"
    monkeypatch.setattr(base.Up, "gradient_row_norms",
                        lambda self, x: torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float64))
    slow = run()
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("b,rank", [(16, 16), (1376, 1), (512, 128)])
def test_gaussian_basis_coordinates_are_bounded_by_the_projectors_gain(b, rank):
    """max|X Q| ≤ coordinate_gain · ‖X‖ for the random projector's Gaussian bases, also for an X aligned with Q's
    largest column (the worst case): what lets their Adam direction take the fused kernel below 1e18 / gain."""
    from gradspace.registry import PROJECTORS, fill

    random = PROJECTORS["random"]
    group = fill({"params": [], "projector": "random", "rank": rank})
    gain = random.coordinate_gain(group, b, rank)
    assert PROJECTORS["svd"].coordinate_gain(fill({"params": []}), b, rank) == 1.0
    for seed in range(20):
        q = random.basis({"proj.seed": seed, "proj.count": 0, "step": 0}, b, rank, group, torch.device("cpu"))
        worst = q[:, q.norm(dim=0).argmax()]
        x = torch.stack([worst, torch.randn(b)])
        assert float((x @ q).abs().max()) <= gain * float(x.norm())
    assert float(torch.randn(10_000_000, generator=torch.Generator().manual_seed(0)).abs().max()) < 9.5


def test_row_norms_of_a_transposed_frame_equal_torchs():
    from gradspace.residuals.base import row_norms_fp32

    gen = torch.Generator().manual_seed(0)
    for shape in [(7, 5), (5, 7), (64, 33)]:
        m = torch.randn(shape, generator=gen)
        for x in (m, m.T):
            torch.testing.assert_close(row_norms_fp32(x), torch.linalg.vector_norm(x.double(), dim=1, keepdim=True)
                                       .float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", ["torch", "hf", "none"])
def test_adam_fused_direction_equals_direction(mode):
    """Adam's subspace direction by torch's fused kernel equals the eight-pass reference, moments included."""
    from gradspace.registry import RULES

    adam = RULES["adam"]
    group = _group(bias_correction=mode, betas=(0.9, 0.99), eps=1e-6)
    gen = torch.Generator().manual_seed(5)
    a, b = {}, {}
    adam.init(torch.zeros(7, 3), a, group)
    adam.init(torch.zeros(7, 3), b, group)
    for _ in range(5):
        r = torch.randn(7, 3, generator=gen) * 1e-3
        (da, fa), (db, fb) = adam.fused_direction(r, a, group), adam.direction(r, b, group)
        torch.testing.assert_close(da, db, rtol=1e-6, atol=1e-7)
        assert fa == pytest.approx(fb, rel=1e-12)
    for key in ("rule.exp_avg", "rule.exp_avg_sq"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-12)
    assert a["rule.step"] == b["rule.step"] == 5


def test_adam_direction_is_bounded_where_it_says_so():
    """Adam.bounded: |m̂|/√v̂ ≤ (1 − β1²/β2)^(−½) for EMAs of one sequence (heavy-tailed, with spikes); Fira and APOLLO
    then take d's norms in fp32. Refused after a rotation, for quantized moments and for β1² ≥ β2."""
    from gradspace.registry import RULES

    adam = RULES["adam"]
    group = _group(betas=(0.9, 0.999))
    assert adam.bounded(group)
    assert not adam.bounded(_group(betas=(0.99, 0.9))) and not adam.bounded(_group(on_refresh="rotate"))
    assert not adam.bounded(_group(state_dtype="int8"))
    bound = (1 - 0.9**2 / 0.999) ** -0.5
    gen = torch.Generator().manual_seed(0)
    state = {}
    adam.init(torch.zeros(4096), state, group)
    worst = 0.0
    for t in range(300):
        r = torch.randn(4096, generator=gen) ** 3 * (1e6 if t % 97 == 5 else 1.0)
        d, _ = adam.direction(r, state, group)
        worst = max(worst, float(d.abs().max()))
    assert worst <= bound
