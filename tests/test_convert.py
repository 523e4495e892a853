"""gradspace.convert: a galore-torch / apollo-torch checkpoint loaded into the gradspace preset continues the run as
the anchor does (they agree to 1e-5 step for step from scratch, tests/reference/test_presets.py)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import gradspace
from gradspace.convert import from_apollo_torch, from_galore_torch

SHAPES = ((12, 8), (8, 12), (12,))  # a tall and a wide matrix (right / left projection) and a full-space vector
GAP, BEFORE, AFTER = 3, 4, 6  # converted mid-period (after step 4); the continued run refreshes at steps 6 and 9


def _problem(steps: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    signal = {s: torch.linalg.qr(torch.randn(s[0], 3, generator=gen)).Q
              @ torch.diag(torch.tensor([6.0, 4.0, 2.5]))
              @ torch.linalg.qr(torch.randn(s[1], 3, generator=gen)).Q.T for s in SHAPES if len(s) == 2}
    grads = [[(1 + 0.5 * (t % 3)) * (signal.get(s, 0.0) + 0.3 * torch.randn(s, generator=gen)) for s in SHAPES]
             for t in range(steps)]
    return init, grads


def _steps(opt, params, grads):
    out = []
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def _groups(params, keys):
    return [{"params": params[:2], **keys}, {"params": params[2:]}]


def _resume_and_compare(make_theirs, make_ours, convert, *, exact_after: int = AFTER):
    init, grads = _problem(BEFORE + AFTER)
    theirs_params = [torch.nn.Parameter(w.clone()) for w in init]
    theirs = make_theirs(theirs_params)
    _steps(theirs, theirs_params, grads[:BEFORE])
    # a real checkpoint round trip: the anchors pickle their projector objects
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    buf.seek(0)
    checkpoint = torch.load(buf, weights_only=False)
    ours_params = [torch.nn.Parameter(p.detach().clone()) for p in theirs_params]
    ours = make_ours(ours_params)
    converted = convert(checkpoint, ours)
    buf = io.BytesIO()
    torch.save(converted, buf)  # the converted state is plain tensors and ints
    buf.seek(0)
    ours.load_state_dict(torch.load(buf, weights_only=True))
    want = _steps(theirs, theirs_params, grads[BEFORE:])
    got = _steps(ours, ours_params, grads[BEFORE:])
    for t in range(exact_after):
        for i, (g, w) in enumerate(zip(got[t], want[t])):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=lambda m: f"step {BEFORE + t} param {i}: {m}")
    return ours, got, want


@pytest.mark.parametrize("proj_type", ["std", "reverse_std"])
def test_galore_torch_checkpoint_continues_in_gradspace(proj_type):
    galore_torch = pytest.importorskip("galore_torch")
    keys = dict(rank=3, update_proj_gap=GAP, scale=0.25, proj_type=proj_type)
    ours, _, _ = _resume_and_compare(
        lambda ps: galore_torch.GaLoreAdamW(_groups(ps, keys), lr=0.02, no_deprecation_warning=True),
        lambda ps: gradspace.GaLoreAdamW(_groups(ps, keys), lr=0.02),
        from_galore_torch,
    )
    state = ours.state[ours.param_groups[0]["params"][1]]  # the wide weight
    assert state["step"] == BEFORE + AFTER and state["proj.count"] == 4  # refreshes at 0, 3 (converted), 6, 9


def test_galore_torch_state_converts_to_what_gradspace_itself_holds():
    """Same gradients from scratch: the converted state equals gradspace's own, key for key (bases up to 1e-5)."""
    galore_torch = pytest.importorskip("galore_torch")
    keys = dict(rank=3, update_proj_gap=GAP, scale=0.25, proj_type="std")
    init, grads = _problem(BEFORE)
    a = [torch.nn.Parameter(w.clone()) for w in init]
    b = [torch.nn.Parameter(w.clone()) for w in init]
    theirs = galore_torch.GaLoreAdamW(_groups(a, keys), lr=0.02, no_deprecation_warning=True)
    ours = gradspace.GaLoreAdamW(_groups(b, keys), lr=0.02)
    _steps(theirs, a, grads)
    _steps(ours, b, grads)
    converted = from_galore_torch(theirs.state_dict(), ours)["state"]
    own = ours.state_dict()["state"]
    assert converted.keys() == own.keys()
    for i in own:
        assert converted[i].keys() == own[i].keys(), i
        for k, v in own[i].items():
            if isinstance(v, torch.Tensor):
                assert converted[i][k].dtype == v.dtype and converted[i][k].shape == v.shape, (i, k)
                torch.testing.assert_close(converted[i][k], v, rtol=1e-5, atol=1e-6)
            else:
                assert converted[i][k] == v, (i, k)


@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
def test_apollo_torch_svd_checkpoint_continues_in_gradspace(scale_type):
    apollo_torch = pytest.importorskip("apollo_torch")
    keys = dict(rank=3, proj="svd", scale_type=scale_type, scale=2.0, update_proj_gap=GAP, proj_type="std")
    ours, _, _ = _resume_and_compare(
        lambda ps: apollo_torch.APOLLOAdamW(_groups(ps, keys), lr=0.02),
        lambda ps: gradspace.APOLLO(_groups(ps, keys), lr=0.02),
        from_apollo_torch,
    )
    assert "resid.prev_norm" in ours.state[ours.param_groups[0]["params"][0]]  # the limiter's memory came along


def test_apollo_torch_random_basis_is_kept_until_the_next_refresh():
    apollo_torch = pytest.importorskip("apollo_torch")
    keys = dict(rank=3, proj="random", scale_type="channel", scale=2.0, update_proj_gap=GAP, proj_type="std")
    # after step 4 the next refresh is at step 6: steps 4 and 5 use the checkpoint's random basis exactly
    _, got, want = _resume_and_compare(
        lambda ps: apollo_torch.APOLLOAdamW(_groups(ps, keys), lr=0.02),
        lambda ps: gradspace.APOLLO(_groups(ps, keys), lr=0.02),
        from_apollo_torch, exact_after=2,
    )
    assert not torch.allclose(got[2][0], want[2][0], rtol=1e-5)  # then gradspace draws its own basis


def test_mismatched_optimizers_are_refused_or_warned():
    galore_torch = pytest.importorskip("galore_torch")
    keys = dict(rank=3, update_proj_gap=GAP, scale=0.25, proj_type="std")
    init, grads = _problem(2)
    ps = [torch.nn.Parameter(w.clone()) for w in init]
    theirs = galore_torch.GaLoreAdamW(_groups(ps, keys), lr=0.02, no_deprecation_warning=True)
    _steps(theirs, ps, grads)
    sd = theirs.state_dict()
    with pytest.warns(UserWarning, match="no param group has a 'rank'"):
        flat = gradspace.GaLoreAdamW(ps, lr=0.02)
    with pytest.raises(ValueError, match=r"sizes \[2, 1\], the gradspace optimizer \[3\]"):
        from_galore_torch(sd, flat)
    with pytest.raises(ValueError, match=r"at rank 2 .*basis is \(3, 8\)"):
        from_galore_torch(sd, gradspace.GaLoreAdamW(_groups(ps, {**keys, "rank": 2}), lr=0.02))
    with pytest.raises(ValueError, match=r"projects the rows \(left\).*proj_type"):
        from_galore_torch(sd, gradspace.GaLoreAdamW(_groups(ps, {**keys, "proj_type": "left"}), lr=0.02))
    with pytest.raises(ValueError, match="residual='drop'"):
        from_galore_torch(sd, gradspace.Fira([{"params": ps[:2], "rank": 3, "update_proj_gap": GAP},
                                               {"params": ps[2:]}], lr=0.02))
    with pytest.warns(UserWarning, match=r"update_proj_gap: 3 \(checkpoint\) vs 5"):
        converted = from_galore_torch(sd, gradspace.GaLoreAdamW(_groups(ps, {**keys, "update_proj_gap": 5}), lr=0.02))
    assert converted["state"][0]["proj.count"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_galore_torch(sd, gradspace.GaLoreAdamW(_groups(ps, keys), lr=0.02))  # a matching optimizer: silent
