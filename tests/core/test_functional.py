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
