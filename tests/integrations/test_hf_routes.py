"""The three Trainer routes of gradspace.integrations.hf: the stock Trainer's ``optimizer_cls_and_kwargs`` (also
under accelerate's FSDP2 on 2 gloo ranks), ``GradspaceTrainer``, and layer-wise updates inside the Trainer (≡ the
ordinary step with gradient accumulation and an LR schedule; bitwise resume), with ``optim_target_modules`` and
``optim_args`` read from ``TrainingArguments`` as transformers reads them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

import gradspace

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install gradspace[hf])")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install gradspace[hf])")

from gradspace.integrations.hf import (  # noqa: E402
    HF_DEFAULTS,
    create_optimizer,
    hf_target_weight_names,
    layerwise_grad_norm,
    optimizer_cls_and_kwargs,
    parse_optim_args,
)

RANK = 4
ATTN_V_AND_MLP = [r".*\.self_attn\.(q|v)_proj", "mlp"]  # a full-match regex and a substring, as transformers matches


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TokenDataset(torch.utils.data.Dataset):
    """``n`` fixed random sequences of 16 tokens (labels = inputs). 44 / batch 4 = 11 batches: with accumulation 2
    each epoch ends with a one-batch window."""

    def __init__(self, n: int = 48) -> None:
        self.ids = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def _args(out: str, **kw) -> "transformers.TrainingArguments":
    base = dict(use_cpu=True, report_to=[], seed=0, learning_rate=1e-2, weight_decay=0.1, adam_beta2=0.98,
                per_device_train_batch_size=4, logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
                save_strategy="no", max_steps=6, optim_target_modules=ATTN_V_AND_MLP,
                optim_args=f"rank={RANK},update_proj_gap=4,scale=0.5")
    base.update(kw)
    return transformers.TrainingArguments(out, **base)


def fsdp_args(out: str) -> "transformers.TrainingArguments":
    """2 ranks × batch 2 under FSDP2, checkpoint at step 3 (mid refresh period: refreshes at 0 and 4)."""
    return _args(out, per_device_train_batch_size=2, save_strategy="steps", save_steps=3, ddp_backend="gloo",
                 fsdp=True, fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                                  "state_dict_type": "SHARDED_STATE_DICT"})


def _projected(opt) -> set[str]:
    return {n for g in opt.param_groups if g["projector"] != "identity" for n in g["param_names"]}


EXPECTED = ({f"model.layers.{i}.self_attn.{k}_proj.weight" for i in (0, 1) for k in "qv"}
            | {f"model.layers.{i}.mlp.{k}_proj.weight" for i in (0, 1) for k in ("gate", "up", "down")})


# --- the stock Trainer's optimizer_cls_and_kwargs --------------------------------------------------------------------


def _stock(out: str, resume: str | None = None, **kw):
    model = tiny_llama()
    args = _args(out, **kw)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(),
                                   optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("GaLoreAdamW", model, args,
                                                                                     verbose=False))
    trainer.train(resume_from_checkpoint=resume)
    return model, getattr(trainer.optimizer, "optimizer", trainer.optimizer), trainer


def test_stock_trainer_takes_the_optimizer_with_target_modules_and_optim_args(tmp_path):
    model, opt, trainer = _stock(str(tmp_path / "a"), save_strategy="steps", save_steps=3)
    assert isinstance(opt, gradspace.GaLoreAdamW) and type(opt).__name__ == "GaLoreAdamW"
    assert _projected(opt) == EXPECTED  # k/o projections, embeddings, norms, lm_head stay in full space
    sub = [g for g in opt.param_groups if g["projector"] != "identity"]
    assert all(g["rank"] == RANK and g["refresh_every"] == 4 and g["scale"] == 0.5 for g in sub)  # optim_args, typed
    assert all(g["lr"] == pytest.approx(0.0) and g["betas"] == (0.9, 0.98) for g in opt.param_groups)  # linear decay
    decayed = {n for g in opt.param_groups if g["weight_decay"] == 0.1 for n in g["param_names"]}
    assert decayed == set(trainer.get_decay_parameter_names(model))
    state = opt.state[model.model.layers[0].mlp.up_proj.weight]
    assert state["step"] == 6 and state["proj.count"] == 2 and state["proj.basis"].shape[1] == RANK
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6 and all(h["grad_norm"] > 0 for h in logs)
    # the same routing as create_optimizer + optimizers=(opt, None): bitwise the same run
    ref = tiny_llama()
    args = _args(str(tmp_path / "b"))
    ref_opt = create_optimizer(ref, args, "GaLoreAdamW", verbose=False)
    transformers.Trainer(model=ref, args=args, train_dataset=TokenDataset(), optimizers=(ref_opt, None)).train()
    assert [g["param_names"] for g in ref_opt.param_groups] == [g["param_names"] for g in opt.param_groups]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))
    # resume from the mid-period checkpoint into a fresh model and optimizer: bitwise
    resumed, _, _ = _stock(str(tmp_path / "c"), resume=str(tmp_path / "a" / "checkpoint-3"))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


def test_model_none_uses_the_trainers_factory_hook(tmp_path):
    args = _args(str(tmp_path), max_steps=2)
    cls, kwargs = optimizer_cls_and_kwargs("Fira", None, args, verbose=False)  # transformers >= 5: cls()(model, ...)
    model = tiny_llama()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(),
                                   optimizer_cls_and_kwargs=(cls, kwargs))
    trainer.train()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(opt, gradspace.Fira) and _projected(opt) == EXPECTED


def test_hf_defaults_for_galore_and_apollo(tmp_path):
    args = _args(str(tmp_path), optim_args=None, optim_target_modules=None)
    model = tiny_llama()
    cls, kwargs = optimizer_cls_and_kwargs("galore_adamw", model, args, verbose=False)  # transformers' own name
    assert {k: kwargs[k] for k in ("update_proj_gap", "scale", "proj_type")} == {
        "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"} == {
        k: v for k, v in HF_DEFAULTS["GaLoreAdamW"].items() if k != "rank"}
    opt = cls(model.parameters(), **kwargs)
    sub = [g for g in opt.param_groups if g["projector"] != "identity"]
    assert sub[0]["rank"] == 128 and sub[0]["scale"] == 0.25 and sub[0]["refresh_every"] == 200
    assert len(_projected(opt)) == 14 and "lm_head.weight" not in _projected(opt)  # all-linear when unset
    cls, kwargs = optimizer_cls_and_kwargs("apollo_adamw", model, args, verbose=False)
    assert kwargs["proj"] == "random" and kwargs["scale_type"] == "channel" and kwargs["scale"] == 1.0
    assert isinstance(cls(model.parameters(), **kwargs), gradspace.APOLLO)
    cls, kwargs = optimizer_cls_and_kwargs("galore_adamw_8bit", model, args, rank=RANK, verbose=False)
    opt = cls(model.parameters(), **kwargs)
    assert {g["state_dtype"] for g in opt.param_groups} == {"int8"}
    with pytest.warns(UserWarning, match="override training_args.optim_args"):
        optimizer_cls_and_kwargs("GaLoreAdamW", model, _args(str(tmp_path)), update_proj_gap=9, verbose=False)
    with pytest.raises(TypeError, match="unknown option"):  # a misspelt optim_args key is refused, not ignored
        cls, kwargs = optimizer_cls_and_kwargs("GaLoreAdamW", model, _args(str(tmp_path), optim_args="rnak=4"),
                                               verbose=False)
        cls(model.parameters(), **kwargs)


def test_parse_optim_args_types_like_transformers():
    parsed = parse_optim_args("rank=64, update_proj_gap=500,scale=0.25,proj_type=reverse_std,rotate_second_moment=true,"
                              "refresh=adaptive,refresh_threshold=0.4,seed=3")
    assert parsed == {"rank": 64, "update_proj_gap": 500, "scale": 0.25, "proj_type": "reverse_std",
                      "rotate_second_moment": True, "refresh": "adaptive", "refresh_threshold": 0.4, "seed": 3}
    assert type(parsed["scale"]) is float and type(parsed["seed"]) is int
    assert parse_optim_args("rank=0.25") == {"rank": 0.25} and parse_optim_args("scale=1", "APOLLO") == {"scale": 1.0}
    assert parse_optim_args(None) == {} == parse_optim_args("")
    with pytest.raises(ValueError, match="key=value"):
        parse_optim_args("rank")


def test_optim_target_modules_follow_transformers_matching():
    model = tiny_llama()
    assert set(hf_target_weight_names(model, ATTN_V_AND_MLP)) == EXPECTED
    assert hf_target_weight_names(model, r"model\.layers\.1\.mlp\.down_proj") == ["model.layers.1.mlp.down_proj.weight"]
    assert len(hf_target_weight_names(model, r".*q_proj")) == 2
    with pytest.raises(ValueError, match=r"selects no trainable nn.Linear.*model\.layers\.N\.self_attn\.q_proj"):
        hf_target_weight_names(model, "q_proj")  # a bare string is a full-match regex (as in transformers)
    assert "lm_head.weight" not in hf_target_weight_names(model, "all-linear")
    assert hf_target_weight_names(model, ["lm_head"]) == ["lm_head.weight"]  # named: projected
    # transformers' "matched but ignored": norms under ["layers"] stay full, one warning names them; Linear projected
    with pytest.warns(UserWarning, match=r"not nn.Linear: model\.layers\.N\.input_layernorm \(LlamaRMSNorm\)"):
        names = hf_target_weight_names(model, ["layers"])
    assert len(names) == 14
    with pytest.raises(TypeError, match="optim_target_modules"):
        hf_target_weight_names(model, 3)


def test_gradspace_trainer_reads_training_args(tmp_path):
    from gradspace.integrations.hf import GradspaceTrainer

    model = tiny_llama()
    trainer = GradspaceTrainer(model=model, args=_args(str(tmp_path), max_steps=2), train_dataset=TokenDataset(),
                               gradspace_optimizer="APOLLO", gradspace_options={"verbose": False})
    trainer.train()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(opt, gradspace.APOLLO) and _projected(opt) == EXPECTED
    assert {g["rank"] for g in opt.param_groups if g["projector"] != "identity"} == {RANK}


# --- layer-wise updates inside the Trainer ----------------------------------------------------------------------------

LW_STEPS, LW_SAVE = 8, 4  # 11 batches / accumulation 2: windows 2,2,2,2,2,1 per epoch; the run crosses an epoch


def _lw_args(out: str, **kw) -> "transformers.TrainingArguments":
    base = dict(max_steps=LW_STEPS, gradient_accumulation_steps=2, lr_scheduler_type="linear", warmup_steps=2,
                max_grad_norm=0.0, save_strategy="steps", save_steps=LW_SAVE, optim_args=f"rank={RANK},update_proj_gap=3")
    return _args(out, **{**base, **kw})


def _lw_run(out: str, route: str, layerwise: bool, resume: str | None = None):
    from gradspace.integrations.hf import GradspaceTrainer

    model = tiny_llama()
    args = _lw_args(out)
    data = TokenDataset(44)
    if route == "stock":
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizer_cls_and_kwargs=(
            optimizer_cls_and_kwargs("GaLoreAdamW", model, args, layerwise=layerwise, verbose=False)))
    else:
        trainer = GradspaceTrainer(model=model, args=args, train_dataset=data, gradspace_optimizer="GaLoreAdamW",
                                   gradspace_layerwise=layerwise, gradspace_options={"verbose": False})
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


@pytest.fixture(scope="module")
def layerwise_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("layerwise")
    return {key: (str(root / "-".join(key)),) + _lw_run(str(root / "-".join(key)), key[0], key[1] == "lw")
            for key in (("stock", "step"), ("stock", "lw"), ("gradspace", "lw"))}


def test_layerwise_trainer_equals_the_ordinary_step(layerwise_runs):
    _, ref, ref_trainer = layerwise_runs["stock", "step"]
    for key in (("stock", "lw"), ("gradspace", "lw")):
        _, model, trainer = layerwise_runs[key]
        opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        assert layerwise_grad_norm(opt) is not None and trainer.state.global_step == LW_STEPS
        for (name, a), b in zip(ref.named_parameters(), model.parameters()):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)
        state = opt.state[model.model.layers[1].self_attn.q_proj.weight]
        assert state["step"] == LW_STEPS and state["proj.count"] == 3  # refreshes at 0, 3, 6
    assert layerwise_grad_norm(getattr(ref_trainer.optimizer, "optimizer", ref_trainer.optimizer)) is None
    ref_norms = [h["grad_norm"] for h in ref_trainer.state.log_history if "loss" in h]
    lr = [h["learning_rate"] for h in ref_trainer.state.log_history if "loss" in h]
    assert lr[0] < lr[1] > lr[-1]  # warm-up, then linear decay reached the layer-wise groups too
    # GradspaceTrainer logs the norm of the gradients the layer-wise step consumed: the ordinary run's norm
    norms = [h["grad_norm"] for h in layerwise_runs["gradspace", "lw"][2].state.log_history if "loss" in h]
    assert norms == pytest.approx(ref_norms, rel=1e-5) and all(n > 0 for n in norms)
    # the stock Trainer looks at p.grad after backward: gone, except in the epoch's one-batch window (step 6)
    stock = [h["grad_norm"] for h in layerwise_runs["stock", "lw"][2].state.log_history if "loss" in h]
    assert stock[5] == pytest.approx(ref_norms[5], rel=1e-5) and stock[:5] == [0.0] * 5


@pytest.mark.parametrize("route", ["gradspace", "stock"])
def test_layerwise_resume_from_checkpoint_is_bitwise(layerwise_runs, tmp_path, route):
    out, model, _ = layerwise_runs[route, "lw"]
    checkpoint = os.path.join(out, f"checkpoint-{LW_SAVE}")
    assert torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)["state"]  # not empty (HF's is)
    resumed, trainer = _lw_run(str(tmp_path), route, True, resume=checkpoint)
    assert trainer.state.global_step == LW_STEPS
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_layerwise_refuses_global_clipping_and_clips_per_tensor(tmp_path):
    model = tiny_llama()
    args = _args(str(tmp_path), max_grad_norm=1.0)
    with pytest.raises(ValueError, match=r"max_grad_norm=0.*per_tensor_clipping=True"):
        optimizer_cls_and_kwargs("galore_adamw_layerwise", model, args)
    with pytest.raises(ValueError, match="only with layerwise"):
        optimizer_cls_and_kwargs("GaLoreAdamW", model, args, per_tensor_clipping=True)
    cls, kwargs = optimizer_cls_and_kwargs("galore_adamw_layerwise", model, args, per_tensor_clipping=True,
                                           verbose=False)
    opt = cls(model.parameters(), **kwargs)
    stepper = gradspace.layerwise.attached_stepper(opt)
    assert stepper is not None and stepper.max_grad_norm == 1.0 and stepper.accumulation_steps == 1
    stepper.remove()


def test_layerwise_with_activation_checkpointing_equals_the_ordinary_step(tmp_path):
    from gradspace.integrations.hf import GradspaceTrainer

    with pytest.raises(ValueError, match="use_reentrant"):  # LayerwiseStepper would count each segment as a backward
        optimizer_cls_and_kwargs("GaLoreAdamW", tiny_llama(), _lw_args(
            str(tmp_path), gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True}),
            layerwise=True)
    models = []
    for layerwise in (False, True):
        model = tiny_llama()
        args = _lw_args(str(tmp_path / str(layerwise)), max_steps=3, save_strategy="no", gradient_checkpointing=True,
                        gradient_checkpointing_kwargs={"use_reentrant": False})
        GradspaceTrainer(model=model, args=args, train_dataset=TokenDataset(44), gradspace_optimizer="GaLoreAdamW",
                         gradspace_layerwise=layerwise, gradspace_options={"verbose": False}).train()
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_layerwise_is_single_process_only():
    from types import SimpleNamespace

    args = SimpleNamespace(learning_rate=1e-3, world_size=2, max_grad_norm=0.0, gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match="single-process only"):
        optimizer_cls_and_kwargs("GaLoreAdamW", tiny_llama(), args, layerwise=True)


# --- accelerate's FSDP2 through the stock Trainer, 2 gloo ranks -------------------------------------------------------


def _torchrun(worker: str, *argv: str, timeout: float = 180) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             worker, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s\n{out}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{out}\n{err[-4000:]}"
    return out


def _results(out: str) -> list[dict[str, str]]:
    rows = sorted(line.split()[1:] for line in out.splitlines() if line.startswith("RESULT"))
    return [dict(kv.split("=", 1) for kv in row) for row in rows]


@pytest.mark.dist
def test_trainer_under_fsdp2_with_target_modules_and_optim_args(tmp_path):
    """Stock Trainer + optimizer_cls_and_kwargs under accelerate's FSDP2 (2 gloo ranks × batch 2) ≡ one process with
    batch 4; checkpoint at step 3 (mid refresh period) resumes bitwise. See _hf_fsdp_worker.py for why the worker
    switches accelerate's state to FSDP on CPU."""
    worker = os.path.join(os.path.dirname(__file__), "_hf_fsdp_worker.py")
    runs = {}
    for mode in ("train", "resume"):
        rows = _results(_torchrun(worker, str(tmp_path), mode))
        assert [r["rank"] for r in rows] == ["0", "1"]
        for r in rows:
            assert r["world"] == "2" and r["fsdp2"] == "1" and r["sharded"] == "1" and r["class"] == "GaLoreAdamW"
            assert r["step"] == "6" and r["refreshes"] == "2" and r["scale"] == "0.5" and r["rank_r"] == str(RANK)
            assert set(r["projected"].split(",")) == EXPECTED
            assert "rule.exp_avg" in r["dtensor_state"].split(",")  # moments are sharded DTensors
        assert rows[0]["hash"] == rows[1]["hash"]
        runs[mode] = rows[0]
    fsdp = torch.load(os.path.join(tmp_path, "train.pt"), weights_only=True)
    resumed = torch.load(os.path.join(tmp_path, "resume.pt"), weights_only=True)
    assert all(torch.equal(fsdp[n], resumed[n]) for n in fsdp), "FSDP2 resume is not bitwise"
    # the single-process reference: the same 4 samples per step, in one batch (reduction order differs: not bitwise)
    model, _, trainer = _stock(str(tmp_path / "single"))
    for name, p in model.named_parameters():
        torch.testing.assert_close(fsdp[name], p.detach(), rtol=0, atol=2e-5, msg=name)  # measured 6e-6
    ref = [round(h["grad_norm"], 6) for h in trainer.state.log_history if "grad_norm" in h]
    assert [float(x) for x in runs["train"]["grad_norms"].split(",")] == pytest.approx(ref, rel=1e-4)
