"""Hugging Face Trainer end to end on CPU: a tiny Llama trains with a gradspace optimizer, checkpoints mid refresh
period, resumes into a fresh model + optimizer exactly, and the checkpoint loads with ``weights_only=True``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import gradspace

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install gradspace[hf])")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install gradspace[hf])")

from gradspace.integrations.hf import create_optimizer, decay_parameter_names, target_weight_names  # noqa: E402

MAX_STEPS, SAVE_STEPS, REFRESH = 6, 3, 4  # refreshes at optimizer steps 0 and 4: checkpoint-3 is mid-period
RANK = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest and keeps timings stable when the CPU is shared (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TokenDataset(torch.utils.data.Dataset):
    """48 fixed random sequences of 16 tokens (labels = inputs: causal LM)."""

    def __init__(self) -> None:
        self.ids = torch.randint(0, 64, (48, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def training_args(out: str, **kw) -> "transformers.TrainingArguments":
    return transformers.TrainingArguments(
        out, use_cpu=True, report_to=[], save_steps=SAVE_STEPS, max_steps=MAX_STEPS, seed=0, learning_rate=1e-2,
        weight_decay=0.1, adam_beta2=0.98, per_device_train_batch_size=4, logging_steps=1, dataloader_num_workers=0,
        disable_tqdm=True, **kw,
    )


def train(out: str, resume: str | None = None) -> tuple[torch.nn.Module, gradspace.SubspaceOptimizer, object]:
    """A fresh model, optimizer and Trainer (as a new process would build them); train, optionally resuming."""
    model = tiny_llama()
    args = training_args(out)
    opt = create_optimizer(model, args, "GaLoreAdamW", target_modules="all-linear", rank=RANK,
                           update_proj_gap=REFRESH, scale=0.25, verbose=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(), optimizers=(opt, None))
    trainer.train(resume_from_checkpoint=resume)
    return model, opt, trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hf_run"))
    model, opt, trainer = train(out)
    return out, model, opt, trainer


def test_trainer_trains_with_gradspace(uninterrupted):
    out, model, opt, trainer = uninterrupted
    # the Trainer (through accelerate's wrapper) stepped *our* optimizer: no silent fallback to AdamW
    assert getattr(trainer.optimizer, "optimizer", trainer.optimizer) is opt
    projected = [p for g in opt.param_groups if g["projector"] != "identity" for p in g["params"]]
    assert len(projected) == 14  # q,k,v,o,gate,up,down × 2 layers; lm_head and embeddings stay full
    for p in projected:
        state = opt.state[p]
        assert state["step"] == MAX_STEPS and tuple(state["proj.basis"].shape)[1] == RANK
        assert state["proj.count"] == 2  # refreshed at steps 0 and 4
    assert model.lm_head.weight not in set(projected)
    assert "proj.basis" not in opt.state[model.lm_head.weight]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == MAX_STEPS
    assert all(h["grad_norm"] > 0 for h in logs)  # gradients reach clipping/logging (unlike layer-wise GaLore)
    # the Trainer's linear schedule drives the gradspace groups
    lrs = [h["learning_rate"] for h in logs]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(1e-2)
    assert all(g["lr"] == pytest.approx(0.0) for g in opt.param_groups)
    assert os.path.isdir(os.path.join(out, "checkpoint-3")) and os.path.isdir(os.path.join(out, "checkpoint-6"))


def test_resume_mid_refresh_period_is_bitwise(uninterrupted, tmp_path):
    out, model, _, _ = uninterrupted
    resumed, opt, trainer = train(str(tmp_path), resume=os.path.join(out, "checkpoint-3"))
    assert trainer.state.global_step == MAX_STEPS
    # Bitwise: same process, same thread count, deterministic CPU kernels; the Trainer restores the RNG state, the
    # scheduler and the data position, and gradspace's state is plain tensors/ints (basis, moments, step and refresh
    # counters), so steps 4-6 — including the refresh at step 4 — recompute exactly.
    for (name, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    state = opt.state[resumed.model.layers[0].mlp.up_proj.weight]
    assert state["step"] == MAX_STEPS and state["proj.count"] == 2  # loaded at 3 (1 refresh), then 3 more steps


def test_checkpoint_optimizer_loads_weights_only(uninterrupted):
    out, _, opt, _ = uninterrupted
    sd = torch.load(os.path.join(out, "checkpoint-3", "optimizer.pt"), weights_only=True)
    states = list(sd["state"].values())
    assert any("proj.basis" in s for s in states)
    assert all(s["step"] == SAVE_STEPS for s in states)
    assert [g["param_names"] for g in sd["param_groups"]] == [g["param_names"] for g in opt.param_groups]


def test_weight_decay_and_hyperparameters_follow_training_args(uninterrupted):
    _, model, opt, trainer = uninterrupted
    decayed = {n for g in opt.param_groups if g["weight_decay"] == 0.1 for n in g["param_names"]}
    not_decayed = {n for g in opt.param_groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    # exactly the Trainer's own split (norm weights are not decayed; Llama has no biases)
    assert decayed == set(trainer.get_decay_parameter_names(model)) == decay_parameter_names(model)
    assert not_decayed and all("norm" in n for n in not_decayed)
    assert decayed | not_decayed == {n for n, _ in model.named_parameters()}
    assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-8 for g in opt.param_groups)


def test_gradspace_trainer_subclass(tmp_path):
    from gradspace.integrations.hf import GradspaceTrainer

    model = tiny_llama()
    args = training_args(str(tmp_path), save_strategy="no")
    args.max_steps = 2
    trainer = GradspaceTrainer(model=model, args=args, train_dataset=TokenDataset(), gradspace_optimizer="Fira",
                               gradspace_target_modules=["q_proj", "v_proj"], gradspace_rank=RANK,
                               gradspace_options={"update_proj_gap": REFRESH, "verbose": False})
    trainer.train()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(opt, gradspace.Fira)
    projected = {n for g in opt.param_groups if g["projector"] != "identity" for n in g["param_names"]}
    assert projected == {f"model.layers.{i}.self_attn.{k}.weight" for i in (0, 1) for k in ("q_proj", "v_proj")}
    assert "proj.basis" in opt.state[model.model.layers[0].self_attn.q_proj.weight]


# --- routing: like optim_target_modules, but loud -------------------------------------------------------------------


def test_target_patterns_select_only_linear_weights():
    model = tiny_llama()
    names = target_weight_names(model, ["attn", "mlp"])  # GaLore's scripts: containers select their Linear layers
    assert len(names) == 14 and all(n.endswith("_proj.weight") for n in names)
    assert target_weight_names(model, [r"layers\.1\..*down_proj"]) == ["model.layers.1.mlp.down_proj.weight"]
    assert target_weight_names(model, [r"layers\.0\.self_attn$"]) == [  # an anchored pattern naming a container
        f"model.layers.0.self_attn.{k}_proj.weight" for k in "qkvo"]
    assert "lm_head.weight" not in target_weight_names(model, "all-linear")
    assert target_weight_names(model, ["lm_head"]) == ["lm_head.weight"]  # explicitly asked for
    heads = torch.nn.ModuleDict({"multihead_proj": torch.nn.Linear(8, 8), "head": torch.nn.Linear(8, 2)})
    assert target_weight_names(heads, "all-linear") == ["multihead_proj.weight"]  # only the real head is excluded
    default = target_weight_names(model, None, rank=RANK)  # gradspace.param_groups' default
    assert default == [n for g in gradspace.param_groups(model, rank=RANK, verbose=False) if "rank" in g
                       for n, _ in g["params"]]


def test_non_linear_match_is_an_error_naming_the_module():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"not nn.Linear: model\.embed_tokens \(Embedding\)"):
        create_optimizer(model, None, target_modules=["embed_tokens", "q_proj"], verbose=False)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.input_layernorm \(LlamaRMSNorm\)"):
        create_optimizer(model, None, target_modules=["layers"], verbose=False)


def test_no_match_lists_candidate_modules():
    with pytest.raises(ValueError, match=r"matched no trainable nn.Linear.*model\.layers\.N\.self_attn\.q_proj"):
        create_optimizer(tiny_llama(), None, target_modules=["query_key_value"], verbose=False)


def test_optim_target_modules_and_optim_args_in_training_args_are_honoured():
    args = SimpleNamespace(learning_rate=1e-3, optim_target_modules=["attn"], optim_args=f"rank={RANK},update_proj_gap=7")
    opt = create_optimizer(tiny_llama(), args, "GaLoreAdamW", verbose=False)  # transformers' matching, substrings
    sub = [g for g in opt.param_groups if g["projector"] != "identity"]
    assert sum(len(g["params"]) for g in sub) == 8 and all("self_attn" in n for g in sub for n in g["param_names"])
    assert sub[0]["rank"] == RANK and sub[0]["refresh_every"] == 7 and sub[0]["scale"] == 0.25  # HF's GaLore scale
    # an explicit target_modules that differs wins, with a warning (no error)
    with pytest.warns(UserWarning, match="optim_target_modules=\\['attn'\\] is ignored"):
        opt = create_optimizer(tiny_llama(), args, "GaLoreAdamW", target_modules=["mlp"], verbose=False)
    assert sum(len(g["params"]) for g in opt.param_groups if g["projector"] != "identity") == 6
    with pytest.warns(UserWarning, match=r"override training_args.optim_args: rank=2 \(optim_args: 4\)"):
        opt = create_optimizer(tiny_llama(), args, "GaLoreAdamW", rank=2, verbose=False)
    assert {g["rank"] for g in opt.param_groups if g["projector"] != "identity"} == {2}


def test_tied_lm_head_is_never_projected():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not any("embed" in n or "lm_head" in n for n in target_weight_names(model, "all-linear", exclude=()))
    with pytest.raises(ValueError, match="tied to an embedding"):
        target_weight_names(model, ["lm_head", "q_proj"])


def test_optimizer_choice_and_options():
    model = tiny_llama()
    args = SimpleNamespace(learning_rate=3e-3, weight_decay=0.0, adam_beta1=0.8, adam_beta2=0.9, adam_epsilon=1e-7)
    with pytest.raises(TypeError, match="gradspace optimizer class"):
        create_optimizer(model, args, torch.optim.AdamW)  # would silently train everything in full space
    with pytest.raises(ValueError, match="GaLoreAdamW.*galore_adamw"):
        create_optimizer(model, args, "galore_adam")
    with pytest.raises(TypeError, match="training_args"):
        create_optimizer(model, args, rank=RANK, weight_decay=0.5, verbose=False)
    # a native option a preset translates from its own argument is applied, not shadowed by the preset's default
    opt = create_optimizer(model, args, "GaLoreAdamW", rank=RANK, refresh_every=7, verbose=False)
    sub = [g for g in opt.param_groups if g["projector"] != "identity"]
    assert len(sub) == 1 and sub[0]["refresh_every"] == 7 and sub[0]["rank"] == RANK
    assert len(opt.param_groups) == 2 and all(g["weight_decay"] == 0.0 for g in opt.param_groups)  # wd 0: no split
    assert all(g["lr"] == 3e-3 and g["betas"] == (0.8, 0.9) and g["eps"] == 1e-7 for g in opt.param_groups)
    sumo = create_optimizer(model, args, "SUMO", rank=RANK, verbose=False)  # no betas/eps in its signature
    assert all(g["rule"] == "orthogonal" for g in sumo.param_groups if g["projector"] != "identity")
    opt = create_optimizer(model, args, gradspace.SubspaceOptimizer, rank=RANK, projector="random", residual="apollo",
                           refresh_every=3, verbose=False)
    sub = [g for g in opt.param_groups if g["projector"] != "identity"]
    assert sub[0]["projector"] == "random" and sub[0]["residual"] == "apollo" and sub[0]["refresh_every"] == 3


def test_verbose_prints_choice(capsys):
    create_optimizer(tiny_llama(), None, "APOLLO", rank=RANK)
    out = capsys.readouterr().out
    assert "APOLLO(lr=5e-05" in out and "14 nn.Linear weight(s) get a rank-4 subspace" in out
    assert "lm_head.weight" in out.splitlines()[-1]


def test_import_is_lazy_and_missing_transformers_names_the_extra():
    code = (
        "import sys; sys.modules['transformers'] = None\n"  # makes `import transformers` raise ImportError
        "import gradspace.integrations, gradspace.integrations.hf as hf, torch\n"
        "try:\n"
        "    hf.create_optimizer(torch.nn.Linear(4, 4))\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "IMPORT-ERROR" in res.stdout and "pip install gradspace[hf]" in res.stdout


@pytest.mark.dist
def test_trainer_under_ddp_needs_no_process_group_argument(tmp_path):
    """torchrun, 2 gloo ranks, gradient accumulation 2: the replicas end bitwise equal (verify_sync checks each refresh)."""
    worker = os.path.join(os.path.dirname(__file__), "_hf_ddp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             worker, str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish within 120 s\n{out}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{out}\n{err[-3000:]}"
    results = sorted(line.split()[1:] for line in out.splitlines() if line.startswith("RESULT"))
    assert [r[0] for r in results] == ["rank=0", "rank=1"], out
    assert all(r[1] == "world=2" and r[2] == "mode=distributed" for r in results)
    assert results[0][3] == results[1][3]  # same weight hash on both replicas
    assert all(r[4:] == ["step=6", "refreshes=2"] for r in results)
