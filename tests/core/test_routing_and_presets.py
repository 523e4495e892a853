"""Option precedence in presets (param_groups' own tests: tests/core/test_routing.py)."""

from __future__ import annotations

import pytest
import torch

import gradspace


def test_constructor_options_reach_projected_groups_of_presets():
    w = torch.nn.Parameter(torch.randn(8, 6))
    opt = gradspace.GaLoreAdamW([{"params": [w], "rank": 4}], refresh_every=2)
    assert opt.param_groups[0]["refresh_every"] == 2
    opt = gradspace.APOLLO([{"params": [w], "rank": 4}], residual_scale_type="tensor", limiter_gamma=0.0)
    assert opt.param_groups[0]["residual_scale_type"] == "tensor" and opt.param_groups[0]["limiter_gamma"] == 0.0
    # a group's own key still wins over both
    opt = gradspace.GaLoreAdamW([{"params": [w], "rank": 4, "refresh_every": 7}], refresh_every=2)
    assert opt.param_groups[0]["refresh_every"] == 7
    # and without any override the anchor's argument is used
    assert gradspace.GaLoreAdamW([{"params": [w], "rank": 4}], update_proj_gap=9).param_groups[0]["refresh_every"] == 9


def test_apollo_mini_without_rank_warns_and_stays_in_full_space():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8))
    with pytest.warns(UserWarning, match="no param group has a 'rank'"):
        opt = gradspace.APOLLOMini(model.parameters())
    assert all(g["projector"] == "identity" for g in opt.param_groups)
    opt = gradspace.APOLLOMini(gradspace.param_groups(model, rank=1, exclude_last_linear=False, verbose=False))
    assert opt.param_groups[0]["rank"] == 1 and opt.param_groups[0]["residual_scale_type"] == "tensor"
