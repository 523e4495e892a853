"""param_groups: which weights get a subspace (Linear, MultiheadAttention, conv), patterns, printing, options on
every group; resolve_params for what an optimizer constructor is given."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradspace
from gradspace.routing import compact_names, resolve_params


def _names(group):
    return [n for n, _ in group["params"]]


class _Encoder(nn.Module):
    def __init__(self, layers: int = 2, d: int = 32, vocab: int = 1200):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 64, batch_first=True), layers,
                                         enable_nested_tensor=False)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, x):
        return self.lm_head(self.enc(self.emb(x)))


def test_transformer_encoder_layer_is_projected_whole_including_in_proj():
    layer = nn.TransformerEncoderLayer(32, 4, 64)
    for target in ("linear", "matrices"):
        sub, full = gradspace.param_groups(layer, rank=8, target=target, verbose=False)
        # a Linear inside torch's own block is never taken for the output layer
        assert _names(sub) == ["self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight",
                               "linear2.weight"]
        assert all(p.dim() == 1 for _, p in full["params"])
    model = _Encoder()
    sub, full = gradspace.param_groups(model, rank=8, verbose=False)
    assert [n for n in _names(sub) if "in_proj" in n] == ["enc.layers.0.self_attn.in_proj_weight",
                                                          "enc.layers.1.self_attn.in_proj_weight"]
    assert "emb.weight" in _names(full) and "lm_head.weight" in _names(full)
    # the optimizer accepts the groups and the packed QKV weight gets a rank-8 basis
    opt = gradspace.GaLoreAdamW([sub, full], lr=1e-3)
    model(torch.randint(0, 1200, (2, 5))).sum().backward()
    opt.step()
    qkv = model.enc.layers[0].self_attn.in_proj_weight
    assert opt.state[qkv]["proj.basis"].shape == (32, 8)  # 96 × 32: the smaller side (32) is projected


def test_separate_qkv_weights_of_attention_with_kdim_are_routed():
    mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=12)
    sub, _ = gradspace.param_groups(nn.ModuleDict({"attn": mha, "out": nn.Linear(16, 3)}), rank=4, verbose=False)
    assert _names(sub) == ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"]


def test_name_patterns_search_parameter_names_and_empty_patterns_raise():
    model = _Encoder()
    sub, _ = gradspace.param_groups(model, rank=4, target=["in_proj"], verbose=False)
    assert _names(sub) == ["enc.layers.0.self_attn.in_proj_weight", "enc.layers.1.self_attn.in_proj_weight"]
    sub, _ = gradspace.param_groups(model, rank=4, target=["self_attn"], verbose=False)
    assert len(_names(sub)) == 4  # in_proj_weight + out_proj.weight per layer
    with pytest.raises(ValueError, match=r"target pattern 'q_proj' selects no weight.*Candidates \(9\): "
                                         r"enc\.layers\.0\.self_attn\.in_proj_weight, .*lm_head\.weight\."):
        gradspace.param_groups(model, rank=4, target=["self_attn", "q_proj"], verbose=False)
    with pytest.raises(ValueError, match=r"pattern '\(' is not a valid regular expression"):
        gradspace.param_groups(model, rank=4, target=["("], verbose=False)
    with pytest.raises(ValueError, match=r"target='attn' must be .*target=\['attn'\]"):
        gradspace.param_groups(model, target="attn", verbose=False)


def test_default_head_exclusion_matches_whole_name_components_only():
    model = nn.ModuleDict({
        "multihead_proj": nn.Linear(8, 8), "scores_mlp": nn.Linear(8, 8), "mid": nn.Linear(8, 8),
        "head": nn.Linear(8, 8), "out": nn.Linear(8, 8),
    })
    groups = gradspace.param_groups(model, rank=2, verbose=False)
    assert _names(groups[0]) == ["multihead_proj.weight", "scores_mlp.weight", "mid.weight"]  # out = last Linear


def test_target_regexes_select_by_substring_and_exclude_by_whole_name():
    model = nn.ModuleDict({"attn": nn.Linear(8, 8), "mlp": nn.Linear(8, 8), "other": nn.Linear(8, 8),
                           "z": nn.Linear(8, 2)})
    groups = gradspace.param_groups(model, rank=2, target=["att", "ml"], exclude=[r"ml.*"], verbose=False)
    assert _names(groups[0]) == ["attn.weight"]
    with pytest.raises(ValueError, match="target"):
        gradspace.param_groups(model, target="convs", verbose=False)


def test_param_groups_on_meta_device_and_tied_heads():
    with torch.device("meta"):
        model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 10))
    assert _names(gradspace.param_groups(model, rank=2, verbose=False)[0]) == ["1.weight", "2.weight"]
    emb, head = nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)
    head.weight = emb.weight  # a tied output head is never projected
    model = nn.Sequential(emb, nn.Linear(8, 8), head, nn.Linear(10, 3))
    assert _names(gradspace.param_groups(model, rank=2, verbose=False)[0]) == ["1.weight"]


def test_printout_shows_effective_ranks_and_every_full_space_name(capsys):
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)], nn.Linear(64, 16), nn.Linear(16, 4))
    gradspace.param_groups(model, rank=0.25)
    out = capsys.readouterr().out
    assert "rank-0.25" not in out and "…" not in out
    assert "rank 16: {0-7}.weight" in out and "rank 4: 8.weight" in out  # 0.25 × 64 and 0.25 × 16
    assert "stay in full space: {0-9}.bias, 9.weight" in out
    gradspace.param_groups(model, rank=32)
    assert "rank 32: {0-7}.weight\n  rank 16: 8.weight" not in capsys.readouterr().out  # sorted by rank
    gradspace.param_groups(model, rank=32)
    assert "rank 16: 8.weight\n  rank 32: {0-7}.weight" in capsys.readouterr().out  # clamped to the 16-wide side


def test_compact_names_folds_only_full_grids():
    assert compact_names([f"h.{i}.attn.weight" for i in (0, 1, 2, 5)]) == "h.{0-2,5}.attn.weight"
    grid = [f"b.{i}.m.{j}.w" for i in range(2) for j in range(3)]
    assert compact_names(grid) == "b.{0-1}.m.{0-2}.w"
    assert compact_names(grid[:-1]) == ", ".join(grid[:-1])  # not a full grid: every name is listed
    assert compact_names(["a.0.w", "a.1.w"]) == "a.0.w, a.1.w"


def test_options_reach_every_group_when_they_are_not_subspace_only():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    sub, full = gradspace.param_groups(model, rank=2, weight_decay=0.1, lr=3e-4, maximize=True, betas=(0.8, 0.9),
                                       refresh_every=5, scale=0.25, residual="fira", verbose=False)
    for key, value in {"weight_decay": 0.1, "lr": 3e-4, "maximize": True, "betas": (0.8, 0.9)}.items():
        assert sub[key] == value and full[key] == value, key
    assert sub["refresh_every"] == 5 and sub["scale"] == 0.25 and sub["residual"] == "fira"
    assert full["projector"] == "identity" and not {"refresh_every", "scale", "residual", "rank"} & set(full)
    opt = gradspace.SubspaceOptimizer([sub, full])
    assert opt.param_groups[1]["weight_decay"] == 0.1  # the effect: decay reaches the full-space group


def test_resolve_params_module_and_named_parameters_route_like_param_groups():
    model = _Encoder()
    groups = resolve_params(model, rank=8, caller="GaLoreAdamW", verbose=False)
    assert groups is not None and groups[0]["rank"] == 8
    assert _names(groups[0]) == _names(gradspace.param_groups(model, rank=8, verbose=False)[0])
    named = resolve_params(model.named_parameters(), rank=8, caller="GaLoreAdamW", verbose=False)
    assert _names(named[0]) == _names(groups[0])  # embedding, head, biases and norms stay in full space
    assert resolve_params([{"params": list(model.parameters())}], rank=8, caller="X") is None
    assert resolve_params(model.lm_head.weight, rank=8, caller="X") is None


def test_resolve_params_bare_tensors_warn_naming_embedding_and_head_shapes():
    model = _Encoder()
    with pytest.warns(UserWarning, match=r"GaLoreAdamW: bare parameters with rank=8 .*tensor 0 \(1200, 32\), "
                                         r"tensor \d+ \(1200, 32\);"):
        assert resolve_params(list(model.parameters()), rank=8, caller="GaLoreAdamW") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rank given, or no head-shaped tensor: silent
        assert resolve_params(list(model.parameters()), rank=None, caller="X") is None
        assert resolve_params(list(model.enc.parameters()), rank=8, caller="X") is None


def test_head_shape_rule_catches_llama_vocab_but_not_its_mlp():
    from gradspace.routing import _head_shaped

    llama = [(32000, 4096)] + [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)] + [(4096,)] + [(32000, 4096)]
    assert _head_shaped(llama) == [True] + [False] * 8 + [True]
    assert _head_shaped([(50257, 768), (768, 2304), (3072, 768)]) == [True, False, False]
    # one size of matrix only, or a LLaMA body without its embedding: nothing is head-shaped
    assert _head_shaped([(4096, 4096)] * 3) == [False] * 3
    assert _head_shaped([(4096, 4096), (11008, 4096), (4096, 11008)]) == [False] * 3
