"""Presets are pinned subclasses: one table translates the anchors' names for the constructor and add_param_group."""

from __future__ import annotations

import pytest
import torch

import gradspace
from gradspace.presets import ANCHOR_NAMES, PRESETS, Preset


def _w(*shape):
    return torch.nn.Parameter(torch.randn(*shape))


def test_every_preset_is_a_pinned_subclass_without_its_own_translation():
    for name, cls in PRESETS.items():
        assert issubclass(cls, Preset), name
        assert "_group_options" not in vars(cls) and "add_param_group" not in vars(cls), name


@pytest.mark.parametrize("cls, group, expect", [
    (gradspace.APOLLO, {"rank": 2, "proj": "svd", "scale_type": "tensor", "scale": 4.0, "update_proj_gap": 5},
     {"projector": "svd", "residual": "apollo", "residual_scale_type": "tensor", "scale": 2.0, "refresh_every": 5}),
    (gradspace.Fira, {"rank": 2, "alpha": 0.5, "update_proj_gap": 7, "proj_type": "reverse_std"},
     {"projector": "svd", "residual": "fira", "scale": 0.5, "refresh_every": 7, "side": "larger"}),
    (gradspace.FRUGAL, {"is_proj_params": True, "density": 0.5, "proj_type": "random", "proj_side": "right"},
     {"projector": "random", "random_dist": "stiefel", "rank": 0.5, "side": "right", "residual": "sign"}),
])
def test_add_param_group_translates_as_the_constructor_does(cls, group, expect):
    first = {"params": [_w(8, 6)], **group}
    via_ctor = cls([first], lr=1e-2).param_groups[0]
    opt = cls([{"params": [_w(3)]}], lr=1e-2)  # a full-space group first: the preset is not "GaLore by default"
    opt.add_param_group({"params": [_w(8, 6)], **group})
    added = opt.param_groups[-1]
    for key, value in expect.items():
        assert via_ctor[key] == value and added[key] == value, (key, via_ctor[key], added[key])
    assert opt.param_groups[0]["projector"] == "identity"


def test_errors_name_the_argument_the_caller_passed():
    with pytest.raises(ValueError, match=r"^update_proj_gap=0"):
        gradspace.GaLoreAdamW([_w(8, 6)], rank=2, update_proj_gap=0)
    opt = gradspace.GaLoreAdamW([_w(8, 6)], rank=2)
    with pytest.raises(ValueError, match=r"^update_proj_gap=-1"):
        opt.add_param_group({"params": [_w(4, 4)], "rank": 2, "update_proj_gap": -1})
    assert len(opt.param_groups) == 1  # refused before anything was installed
    opt.add_param_group({"params": [_w(4, 4)], "rank": 2, "update_proj_gap": 3})  # the corrected retry works
    with pytest.raises(ValueError, match=r"^scale=-1"):
        gradspace.APOLLO([_w(8, 6)], rank=2, scale=-1.0)
    with pytest.raises(ValueError, match=r"^density=1\.5"):
        gradspace.FRUGAL([_w(8, 6)], rank=2, density=1.5)
    with pytest.raises(ValueError, match=r"proj_type='full'.*two-sided"):
        gradspace.GaLoreAdamW([_w(8, 6)], rank=2, proj_type="full")


def test_drop_in_arguments_of_the_anchors_are_accepted():
    gradspace.GaLoreAdamW([_w(8, 6)], rank=2, no_deprecation_warning=True)
    gradspace.APOLLO([_w(8, 6)], rank=2, scale_front=True)
    opt = gradspace.GaLoreAdamW([_w(8, 6)], 1e-2, (0.8, 0.9), 1e-7, 0.1, False, rank=2)  # torch-style positionals
    g = opt.param_groups[0]
    assert (g["betas"], g["eps"], g["weight_decay"], g["bias_correction"]) == ((0.8, 0.9), 1e-7, 0.1, "none")


def test_sgdp_translates_weight_decay_with_its_momentum_and_schedulers_cycle_momentum():
    opt = gradspace.SGDP([_w(4, 4)], lr=0.1, momentum=0.5, weight_decay=0.1)
    g = opt.param_groups[0]
    assert g["weight_decay"] == pytest.approx(0.2) and g["momentum"] == 0.5 and "betas" not in g
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10, cycle_momentum=True)
    assert "betas" not in opt.param_groups[0]
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)  # OneCycleLR starts at max_momentum
    del sched


def test_the_table_is_the_one_place_that_knows_anchor_names():
    for name in ("update_proj_gap", "alpha", "proj_type", "kappa", "density", "correct_bias"):
        assert name in ANCHOR_NAMES
    assert ("FRUGAL", "proj_type") in ANCHOR_NAMES  # FRUGAL's proj_type is the projector kind; its side is proj_side


def test_a_module_is_routed_as_param_groups_routes_it():
    model = torch.nn.Sequential(torch.nn.Embedding(2000, 32), torch.nn.Linear(32, 64), torch.nn.GELU(),
                                torch.nn.Linear(64, 32), torch.nn.Linear(32, 2000))
    for opt in (gradspace.GaLoreAdamW(model, rank=8), gradspace.SubspaceOptimizer(model, rank=8)):
        projected = [p for g in opt.param_groups if g["projector"] != "identity" for p in g["params"]]
        assert {id(p) for p in projected} == {id(model[1].weight), id(model[3].weight)}
    with pytest.warns(UserWarning, match=r"\(2000, 32\)"):  # bare tensors with rank: the embedding would be projected
        gradspace.SubspaceOptimizer(model.parameters(), rank=8)
