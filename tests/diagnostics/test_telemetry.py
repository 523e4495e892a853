"""Telemetry against independent references: energies from explicit projectors, drift from bases captured by a
separate hook, Fira's residual scale recovered from the actual parameter change, and no effect on training."""

from __future__ import annotations

import csv
import copy
import json

import numpy as np
import pytest
import scipy.linalg
import torch

import gradspace
from gradspace.diagnostics import FIELDS, Telemetry
from gradspace.functional import transposes


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 6))


def _train(model, opt, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 12, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


class Capture:
    """An independent post hook: clones of every matrix weight's gradient and basis after each step."""

    def __init__(self, opt, model):
        self.rows = []
        self.names = {p: n for n, p in model.named_parameters()}
        opt.register_step_post_hook(self)

    def __call__(self, opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    continue
                state = opt.state[p]
                projector = gradspace.registry.PROJECTORS[group["projector"]]
                shape = tuple(p.shape)
                b = shape[0] if transposes(*shape, group["side"]) else shape[1]
                rank = min(group["rank"], b)
                q = projector.basis(state, b, rank, group, p.device)
                self.rows.append({"name": self.names[p], "step": state["step"] - 1, "grad": p.grad.clone(),
                                  "basis": q.clone(), "count": state["proj.count"]})


def _projected_energy(grad: torch.Tensor, q: torch.Tensor) -> float:
    """‖G P‖²/‖G‖² with P the orthogonal projector onto span(Q) on whichever side of G has Q's length."""
    g = grad.double().numpy()
    proj = q.double().numpy() @ np.linalg.pinv(q.double().numpy())
    inside = g @ proj if g.shape[1] == q.shape[0] else proj @ g
    return float(np.linalg.norm(inside) ** 2 / np.linalg.norm(g) ** 2)


@pytest.mark.parametrize("projector,extra", [("svd", {}), ("random", {"random_dist": "gaussian"}), ("randomized", {})])
def test_energy_and_drift_match_independent_references(projector, extra):
    model = _model()
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, projector=projector, rank=3, refresh_every=4, **extra)
    cap = Capture(opt, model)
    tel = Telemetry(opt, every=1, names=model, spectra_every=0)
    _train(model, opt, 10)
    steps = [r for r in tel.records if r["kind"] == "step"]
    refreshes = [r for r in tel.records if r["kind"] == "refresh"]
    by_key = {(r["name"], r["step"]): r for r in cap.rows}
    assert len(steps) == 10 * 2
    for row in steps:
        ref = by_key[(row["param"], row["step"])]
        assert row["energy"] == pytest.approx(_projected_energy(ref["grad"], ref["basis"]), rel=1e-4, abs=1e-6)
    # refreshes are logged exactly where proj.count changed: steps 0, 4, 8
    assert sorted({r["step"] for r in refreshes}) == [0, 4, 8]
    for row in refreshes:
        if row["step"] == 0:
            assert "overlap" not in row  # nothing to compare with
            continue
        old = by_key[(row["param"], row["step"] - 1)]["basis"]
        new = by_key[(row["param"], row["step"])]["basis"]
        angles = np.sort(scipy.linalg.subspace_angles(old.double().numpy(), new.double().numpy()))
        assert row["overlap"] == pytest.approx(float(np.mean(np.cos(angles) ** 2)), abs=1e-5)
        assert row["angle_max_deg"] == pytest.approx(float(np.degrees(angles.max())), abs=1e-3)
        assert row["angle_min_deg"] == pytest.approx(float(np.degrees(angles.min())), abs=1e-2)
        grad = by_key[(row["param"], row["step"])]["grad"]
        assert row["energy_old_basis"] == pytest.approx(_projected_energy(grad, old), rel=1e-4, abs=1e-6)
    tel.close()


@pytest.mark.parametrize("on_refresh", ["keep", "rotate", "reset"])
def test_fira_residual_scale_matches_the_parameter_change(on_refresh):
    # Fira: U = up(d) + φ ⊙ (X − X Q Qᵀ) / shrink, so per row ‖U (I − QQᵀ)‖ / ‖X (I − QQᵀ)‖ = φ_row / shrink.
    model = _model()
    lr = 1e-2
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=lr, projector="svd", rank=3, refresh_every=3,
                                      residual="fira", on_refresh=on_refresh)
    tel = Telemetry(opt, every=1, names=model, spectra_every=0)
    weight = model[0].weight  # 20 × 12: smaller side 12 = columns, so X = G (not transposed)
    before = {"w": weight.detach().clone()}

    def pre(o, a, k):
        before["w"] = weight.detach().clone()

    checked = []

    def post(o, a, k):
        state = o.state[weight]
        q = state["proj.basis"].double()
        x = weight.grad.double()
        u = (before["w"].double() - weight.detach().double()) / lr
        comp = torch.eye(q.shape[0], dtype=torch.float64) - q @ q.T
        ratio = (u @ comp).norm(dim=1) / (x @ comp).norm(dim=1)
        checked.append((state["step"] - 1, float(ratio.mean())))

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    _train(model, opt, 7)
    rows = {r["step"]: r for r in tel.records if r["kind"] == "step" and r["param"] == "0.weight"}
    assert len(checked) == 7
    for step, ratio in checked:
        row = rows[step]
        assert row["resid_limiter"] >= 1.0
        assert row["resid_scale_mean"] / row["resid_limiter"] == pytest.approx(ratio, rel=2e-3), step
    assert rows[0]["resid_limiter"] == 1.0  # the limiter has no previous norm at the first step


def test_telemetry_does_not_change_training():
    runs = []
    for attach in (False, True):
        model = _model()
        opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, projector="random", rank=3, refresh_every=3,
                                          residual="apollo", on_refresh="rotate")
        tel = Telemetry(opt, every=1, spectra_every=1) if attach else None
        _train(model, opt, 8)
        runs.append([p.detach().clone() for p in model.parameters()])
        if tel:
            assert len(tel.records) > 0
            tel.close()
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_files_rows_and_close(tmp_path):
    model = _model()
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, rank=3, refresh_every=5)
    tel = Telemetry(opt, every=2, path=tmp_path, names=model, tensorboard=False)
    _train(model, opt, 6)
    tel.close()
    n = len(tel.records)
    with open(tmp_path / "telemetry.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == FIELDS and len(rows) == n
    lines = [json.loads(line) for line in (tmp_path / "telemetry.jsonl").read_text().splitlines()]
    assert len(lines) == n and lines[0]["kind"] in ("step", "refresh")
    assert {r["step"] for r in lines if r["kind"] == "step"} == {0, 2, 4}
    steps = [r for r in lines if r["kind"] == "step"]
    assert all("grad_erank" in r for r in steps if r["step"] == 0)  # default cadence: every 10·every steps
    assert not any("grad_erank" in r for r in steps if r["step"] in (2, 4))
    _train(model, opt, 3)  # detached: nothing more is recorded
    assert len(tel.records) == n


def test_effective_ranks_against_numpy_and_plain_torch_optimizers():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tel = Telemetry(opt, every=1, spectra_every=1, names=model)
    _train(model, opt, 2)
    row = [r for r in tel.records if r["kind"] == "step" and r["param"] == "2.weight"][-1]
    g = model[2].weight.grad.double().numpy()
    s = np.linalg.svd(g, compute_uv=False)
    p = s / s.sum()
    assert row["energy"] == 1.0  # a full-space optimizer captures everything
    assert row["grad_erank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-4)
    m = opt.state[model[2].weight]["exp_avg"].double().numpy()
    sm = np.linalg.svd(m, compute_uv=False)
    pm = sm / sm.sum()
    assert row["momentum_erank"] == pytest.approx(float(np.exp(-(pm * np.log(pm)).sum())), rel=1e-4)
    tel.close()


def test_momentum_erank_in_weight_space_for_gaussian_bases():
    model = _model()
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, projector="random", rank=4, rule="sgdm")
    tel = Telemetry(opt, every=1, spectra_every=1, names=model)
    cap = Capture(opt, model)
    _train(model, opt, 3)
    row = [r for r in tel.records if r["kind"] == "step" and r["param"] == "0.weight"][-1]
    q = cap.rows[-2]["basis"].double() if cap.rows[-2]["name"] == "0.weight" else cap.rows[-1]["basis"].double()
    m = opt.state[model[0].weight]["rule.momentum_buffer"].double()
    s = torch.linalg.svdvals(m @ q.T)  # the momentum mapped back to the weight's space
    p = s / s.sum()
    assert row["momentum_erank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-4)
    tel.close()


def test_bad_arguments():
    opt = gradspace.SubspaceOptimizer(_model().parameters(), lr=1e-2, rank=2)
    with pytest.raises(ValueError, match="every"):
        Telemetry(opt, every=0)
    with pytest.raises(ValueError, match="formats"):
        Telemetry(opt, formats=("xml",))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            Telemetry(opt, tensorboard=True)


def test_deepcopy_of_state_unaffected_by_telemetry_references():
    # Telemetry holds references to bases between the hooks, never copies them into the optimizer state.
    model = _model()
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, rank=3, refresh_every=2)
    tel = Telemetry(opt, every=1)
    _train(model, opt, 3)
    sd = copy.deepcopy(opt.state_dict())
    assert all(not k.startswith("tel") for s in sd["state"].values() for k in s)
    tel.close()


def test_pause_and_resume():
    model = _model()
    opt = gradspace.SubspaceOptimizer(model.parameters(), lr=1e-2, rank=3, refresh_every=2)
    tel = Telemetry(opt, every=1, names=model)
    _train(model, opt, 2)
    n = len(tel.records)
    tel.pause()
    _train(model, opt, 3)  # refreshes happen while paused: no rows
    assert len(tel.records) == n
    tel.resume()
    _train(model, opt, 1)
    new = list(tel.records)[n:]
    assert [r["kind"] for r in new] == ["step", "step"]  # step 5 is not a refresh step; no spurious drift rows
    tel.close()
