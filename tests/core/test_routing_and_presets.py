"""Option precedence in presets and the module-name matching of param_groups."""

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


def test_default_head_exclusion_matches_whole_name_components_only():
    model = torch.nn.ModuleDict({
        "multihead_proj": torch.nn.Linear(8, 8), "scores_mlp": torch.nn.Linear(8, 8), "mid": torch.nn.Linear(8, 8),
        "head": torch.nn.Linear(8, 8), "out": torch.nn.Linear(8, 8),
    })
    groups = gradspace.param_groups(model, rank=2, verbose=False)
    chosen = [name for name, _ in groups[0]["params"]]
    assert chosen == ["multihead_proj.weight", "scores_mlp.weight", "mid.weight"]  # head excluded, out = last Linear


def test_target_regexes_select_by_substring_and_exclude_by_whole_name():
    model = torch.nn.ModuleDict({"attn": torch.nn.Linear(8, 8), "mlp": torch.nn.Linear(8, 8),
                                 "other": torch.nn.Linear(8, 8), "z": torch.nn.Linear(8, 2)})
    groups = gradspace.param_groups(model, rank=2, target=["att", "ml"], exclude=[r"ml.*"], verbose=False)
    assert [n for n, _ in groups[0]["params"]] == ["attn.weight"]
    with pytest.raises(ValueError, match="target"):
        gradspace.param_groups(model, target="convs", verbose=False)


def test_param_groups_on_meta_device_and_tied_heads():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8),
                                    torch.nn.Linear(8, 10))
    assert [n for n, _ in gradspace.param_groups(model, rank=2, verbose=False)[0]["params"]] == ["1.weight", "2.weight"]
    emb, head = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10, bias=False)
    head.weight = emb.weight  # a tied output head is never projected
    model = torch.nn.Sequential(emb, torch.nn.Linear(8, 8), head, torch.nn.Linear(10, 3))
    assert [n for n, _ in gradspace.param_groups(model, rank=2, verbose=False)[0]["params"]] == ["1.weight"]


def test_apollo_mini_without_rank_warns_and_stays_in_full_space():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8))
    with pytest.warns(UserWarning, match="no param group has a 'rank'"):
        opt = gradspace.APOLLOMini(model.parameters())
    assert all(g["projector"] == "identity" for g in opt.param_groups)
    opt = gradspace.APOLLOMini(gradspace.param_groups(model, rank=1, exclude_last_linear=False, verbose=False))
    assert opt.param_groups[0]["rank"] == 1 and opt.param_groups[0]["residual_scale_type"] == "tensor"
