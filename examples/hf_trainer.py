"""Hugging Face ``Trainer`` with a gradspace optimizer: a tiny Llama learns a synthetic pattern on CPU.

The stock ``transformers.Trainer`` takes the optimizer through its own ``optimizer_cls_and_kwargs`` argument:
``optimizer_cls_and_kwargs("GaLoreAdamW", model, args)`` reads lr, weight decay, betas and eps from
``TrainingArguments``, the weights to project from ``optim_target_modules`` and the rank and refresh gap from
``optim_args`` (typed as transformers types them), with transformers' GaLore defaults for the rest (scale 0.25).
The Trainer keeps clipping, ``grad_norm`` logging, its LR schedule, gradient accumulation and checkpointing (and, on
GPUs, accelerate's FSDP2). ``--route trainer`` uses ``GradspaceTrainer`` instead, ``--route optimizers`` the
``optimizers=(create_optimizer(...), None)`` route; ``--layerwise`` updates each weight inside backward (no full
gradient buffer) with the same accumulation, schedule and resume. The script then resumes from the mid-run
checkpoint with a fresh model and optimizer and checks that the result equals the uninterrupted run bitwise.

Run::

    pip install gradspace[hf]         # transformers + accelerate
    python examples/hf_trainer.py --quick                       # 12 steps, a few seconds after imports
    python examples/hf_trainer.py --quick --layerwise --route trainer
    python examples/hf_trainer.py --optimizer Fira --rank 16    # any preset name, 200 steps
    torchrun --standalone --nproc_per_node=2 examples/hf_trainer.py --quick   # DDP: no extra argument needed
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

try:
    import transformers
except ImportError:  # pragma: no cover
    sys.exit("examples/hf_trainer.py needs Hugging Face transformers: pip install -e \".[hf]\" (from a gradspace checkout)")

from gradspace.integrations.hf import GradspaceTrainer, create_optimizer, layerwise_grad_norm, optimizer_cls_and_kwargs

VOCAB, SEQ = 64, 32


class CountingDataset(torch.utils.data.Dataset):
    """Sequences ``a, a+k, a+2k, … (mod VOCAB)``: the next token follows from the previous two."""

    def __init__(self, n: int = 512) -> None:
        g = torch.Generator().manual_seed(0)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        step = torch.randint(1, 5, (n, 1), generator=g)
        self.ids = (start + step * torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def build_model() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)
    return transformers.LlamaForCausalLM(config)


def run(out: str, cli: argparse.Namespace, resume: str | None = None) -> tuple[torch.nn.Module, object, object]:
    steps = 12 if cli.quick else cli.steps
    # refresh every steps//3+1: the mid-run checkpoint is not a refresh boundary
    args = transformers.TrainingArguments(
        out, use_cpu=True, report_to=[], seed=0, max_steps=steps, save_steps=steps // 2, learning_rate=3e-3,
        weight_decay=0.1, warmup_steps=2, lr_scheduler_type="cosine", per_device_train_batch_size=8,
        gradient_accumulation_steps=2, logging_steps=max(1, steps // 6), disable_tqdm=True, dataloader_num_workers=0,
        log_level="warning", optim_target_modules="all-linear",
        optim_args=f"rank={cli.rank},update_proj_gap={max(2, steps // 3 + 1)}",
        max_grad_norm=0.0 if cli.layerwise else 1.0,  # layer-wise updates cannot clip by the global norm
    )
    model = build_model()
    verbose = resume is None and args.process_index == 0
    data = CountingDataset()
    if cli.route == "optimizer_cls_and_kwargs":  # the stock Trainer's own argument
        hook = optimizer_cls_and_kwargs(cli.optimizer, model, args, layerwise=cli.layerwise, verbose=verbose)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizer_cls_and_kwargs=hook)
    elif cli.route == "trainer":  # a Trainer subclass; logs the real grad_norm of layer-wise updates
        trainer = GradspaceTrainer(model=model, args=args, train_dataset=data, gradspace_optimizer=cli.optimizer,
                                   gradspace_layerwise=cli.layerwise, gradspace_options={"verbose": verbose})
    else:  # optimizers=(opt, None): not under FSDP
        opt = create_optimizer(model, args, cli.optimizer, layerwise=cli.layerwise, verbose=verbose)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    trainer.train(resume_from_checkpoint=resume)
    return model, getattr(trainer.optimizer, "optimizer", trainer.optimizer), trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HF Trainer + gradspace on a tiny Llama (CPU).")
    parser.add_argument("--quick", action="store_true", help="12 steps")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", default="GaLoreAdamW", help="SubspaceOptimizer or a preset name")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--route", default="optimizer_cls_and_kwargs", choices=["optimizer_cls_and_kwargs", "trainer",
                                                                                "optimizers"],
                        help="how the Trainer gets the optimizer (default: %(default)s)")
    parser.add_argument("--layerwise", action="store_true", help="update each weight inside backward")
    parser.add_argument("--output-dir", default=None,
                        help="default: a temporary directory (under torchrun: runs/hf_trainer_example, shared by ranks)")
    cli = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: more threads only add overhead (and spin when cores are shared)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # ranks must see the same checkpoint directory
    with tempfile.TemporaryDirectory() as tmp:
        out = cli.output_dir or (os.path.join("runs", "hf_trainer_example") if distributed else tmp)
        model, opt, trainer = run(os.path.join(out, "full"), cli)
        main_process = trainer.args.process_index == 0
        logs = [h for h in trainer.state.log_history if "loss" in h]
        state_mib = opt.state_bytes() / 2**20
        adamw_mib = 2 * sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        norm = layerwise_grad_norm(opt) if cli.route == "optimizer_cls_and_kwargs" else None
        note = f" (the stock Trainer sees no layer-wise gradient; the stepper's: {norm:.3f})" if norm else ""
        if main_process:
            print(f"loss {logs[0]['loss']:.3f} -> {logs[-1]['loss']:.3f} in {trainer.state.global_step} steps; "
                  f"grad_norm {logs[-1]['grad_norm']:.3f}{note}; optimizer state {state_mib:.3f} MiB "
                  f"(AdamW: {adamw_mib:.3f} MiB)")
        half = trainer.state.global_step // 2
        checkpoint = os.path.join(out, "full", f"checkpoint-{half}")
        resumed, _, _ = run(os.path.join(out, "resumed"), cli, resume=checkpoint)
        same = all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
        if main_process:
            print(f"resumed from {os.path.basename(checkpoint)} with a fresh model and optimizer: "
                  f"weights equal the uninterrupted run bitwise: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
