"""The meta-device memory planner must equal the measured optimizer state, for every preset and for AdamW."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from gradspace.bench.memory import plan_memory, plan_optimizer, plan_state
from gradspace.testing import DEFAULT_SHAPES, optim_db
from gradspace.bench.model import LlamaConfig, TinyLlama, load_config
from gradspace.bench.optimizers import BUILTINS, build_optimizer, builtin, measure_state_bytes, normalize
from gradspace.cli import main as cli_main
from gradspace.presets import PRESETS

CFG = LlamaConfig(hidden_size=48, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16)
STEPS, GAP = 5, 3  # refreshes at steps 0 and 3: the state after a second refresh is planned too

COMPOSITIONS = [
    {"name": "ef-lion-randomized", "optimizer": "gradspace.SubspaceOptimizer", "lr": 1e-3,
     "group": {"rank": "auto", "projector": "randomized", "residual": "error_feedback", "rule": "lion", "refresh_every": "auto"}},
    {"name": "fira-bf16-states", "optimizer": "gradspace.SubspaceOptimizer", "lr": 1e-3, "kwargs": {"state_dtype": "bfloat16"},
     "group": {"rank": 0.3, "projector": "svd", "residual": "fira", "refresh_every": "auto", "side": "larger"}},
    {"name": "sgdm-online-pca", "optimizer": "gradspace.SubspaceOptimizer", "lr": 1e-3,
     "group": {"rank": 5, "projector": "online_pca", "rule": "sgdm", "residual": "sgd", "refresh_every": "auto"}},
    {"name": "orthogonal-full", "optimizer": "gradspace.SubspaceOptimizer", "lr": 1e-3,
     "kwargs": {"rule": "orthogonal", "projector": "identity"}},
    {"name": "golore-warmup", "optimizer": "gradspace.GoLore", "lr": 1e-3, "kwargs": {"total_steps": 5, "rand_ratio": 0.8},
     "group": {"rank": "auto", "update_proj_gap": "auto"}},
]
GRADSPACE = [n for n, s in BUILTINS.items() if s["optimizer"].startswith(("gradspace", "torch"))] + list(PRESETS) + COMPOSITIONS


def _measured(spec: dict, dtype: torch.dtype) -> int:
    torch.manual_seed(0)
    model = TinyLlama(CFG).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt, _ = build_optimizer(spec, model, spec["lr"], gap=GAP)
        gen = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            if dtype == torch.float16:  # the fp16 forward overflows (NaN steps are skipped): finite gradients instead
                for p in model.parameters():
                    p.grad = (1e-2 * torch.randn(p.shape, generator=gen)).to(dtype)
            else:
                model.loss(torch.randint(0, 256, (2, 17), generator=gen)).backward()
            opt.step()
            opt.zero_grad()
    measured = measure_state_bytes(opt)
    if hasattr(opt, "state_bytes"):
        assert measured == opt.state_bytes()
    return measured


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("info", optim_db, ids=repr)
def test_plan_equals_measured_for_every_contract_entry(info, dtype):
    """The planner runs the optimizer's own step on meta tensors, so it holds for every entry and dtype — including
    fp16 parameters, whose moments the optimizer keeps in fp32."""
    meta = [torch.nn.Parameter(torch.empty(s, device="meta", dtype=dtype)) for s in DEFAULT_SHAPES]
    gen = torch.Generator().manual_seed(0)
    real = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in DEFAULT_SHAPES]
    steps = 5  # refreshes at 0 and 3 (every entry refreshes every 3 steps, LDAdam every step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_optimizer(info.make(meta), steps)
        opt = info.make(real)
        for _ in range(steps):
            for p in real:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
    assert "error" not in plan, plan
    assert plan["state_bytes"] == opt.state_bytes()
    if dtype == torch.float16 and info.kwargs.get("state_dtype") is None:
        moments = [v for st in opt.state.values() for k, v in st.items() if k.startswith("rule.") and torch.is_tensor(v)]
        assert moments and all(v.dtype == torch.float32 for v in moments)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", GRADSPACE, ids=lambda n: n if isinstance(n, str) else n["name"])
def test_plan_equals_measured_state(name, dtype):
    spec = builtin(name) if isinstance(name, str) else normalize(name)
    if spec["kwargs"].get("fused"):
        pytest.skip("the fused kernel does not run on the meta device")
    meta = TinyLlama(CFG, device="meta").to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_state(spec, meta, gap=GAP, step=STEPS)
    assert "error" not in plan, plan
    assert plan["state_bytes"] == _measured(spec, dtype)


def test_plan_equals_measured_for_galore_torch():
    pytest.importorskip("galore_torch")
    spec = builtin("galore")
    meta = TinyLlama(CFG, device="meta")
    plan = plan_state(spec, meta, gap=GAP, step=STEPS)
    assert plan["state_bytes"] == _measured(spec, torch.float32)


def test_adamw_layout_is_two_moments_and_a_step_tensor_per_param():
    meta = TinyLlama(CFG, device="meta")
    params = list(meta.parameters())
    plan = plan_state("adamw", meta)
    assert plan["state_bytes"] == sum(8 * p.numel() for p in params) + 4 * len(params)
    assert set(plan["by_key"]) == {"exp_avg", "exp_avg_sq", "step"}


def test_7b_shapes_and_galore_layout():
    cfg = load_config("llama-7b")
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size) == (4096, 11008, 32, 32000)
    plan = plan_memory("llama-7b", ["adamw", "gs-galore"], ranks=[1024], dtypes=["fp32"])
    n = plan["n_params"]
    assert n == 6_738_415_616  # LLaMA-7B with an untied 32000-token head
    assert plan["methods"]["adamw"]["state_bytes"] == 8 * n + 4 * (2 + 32 * 9 + 1)
    g = plan["methods"]["gs-galore"]["by_dtype"]["fp32"]["by_key"]
    per_block = 4 * 4096 + 3 * 11008  # Σ max side of the 7 projected matrices of a block
    assert g["proj.basis"] == 32 * 7 * 4096 * 1024 * 4
    full = 2 * 32000 * 4096 + (2 * 32 + 1) * 4096  # embeddings, head, norms keep full Adam moments
    assert g["rule.exp_avg"] == (32 * 1024 * per_block + full) * 4 == g["rule.exp_avg_sq"]


def test_memory_cli_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert cli_main(["memory", "--model", "llama-60m", "--optimizer", "adamw", "gs-galore", "--rank", "128",
                     "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert isinstance(data["n_params"], int) and data["n_params"] > 50_000_000
    assert set(data["methods"]) == {"adamw", "gs-galore"}
    assert data["methods"]["gs-galore"]["state_bytes"] < data["methods"]["adamw"]["state_bytes"]
    assert "layers.0 (each of 8)" in capsys.readouterr().out
