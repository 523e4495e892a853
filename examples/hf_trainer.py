"""Hugging Face ``Trainer`` with a gradspace optimizer: a tiny Llama learns a synthetic pattern on CPU.

``create_optimizer`` reads lr, weight decay, betas and eps from ``TrainingArguments``, routes the ``nn.Linear`` weights
to a rank-r subspace like ``optim_target_modules`` (loudly: a non-Linear match or no match is an error) and prints
what it chose; the Trainer gets it through ``optimizers=(opt, None)`` and keeps clipping, ``grad_norm`` logging, its
LR schedule, gradient accumulation and checkpointing. The script then resumes from the mid-run checkpoint with a
fresh model and optimizer and checks that the result equals the uninterrupted run bitwise.

Run::

    pip install -e ".[hf]"            # from a gradspace checkout: transformers + accelerate
    python examples/hf_trainer.py --quick                       # 12 steps, a few seconds after imports
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

from gradspace.integrations.hf import create_optimizer

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
    args = transformers.TrainingArguments(
        out, use_cpu=True, report_to=[], seed=0, max_steps=steps, save_steps=steps // 2, learning_rate=3e-3,
        weight_decay=0.1, warmup_steps=2, lr_scheduler_type="cosine", per_device_train_batch_size=16,
        logging_steps=max(1, steps // 6), disable_tqdm=True, dataloader_num_workers=0, log_level="warning",
    )
    model = build_model()
    first = resume is None and args.process_index == 0
    # refresh_every: a gradspace option, honoured by every preset; mid-run checkpoint is not a refresh boundary
    opt = create_optimizer(model, args, cli.optimizer, target_modules="all-linear", rank=cli.rank,
                           refresh_every=max(2, steps // 3 + 1), verbose=first)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=CountingDataset(), optimizers=(opt, None))
    trainer.train(resume_from_checkpoint=resume)
    return model, opt, trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HF Trainer + gradspace on a tiny Llama (CPU).")
    parser.add_argument("--quick", action="store_true", help="12 steps")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", default="GaLoreAdamW", help="SubspaceOptimizer or a preset name")
    parser.add_argument("--rank", type=int, default=8)
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
        if main_process:
            print(f"loss {logs[0]['loss']:.3f} -> {logs[-1]['loss']:.3f} in {trainer.state.global_step} steps; "
                  f"grad_norm {logs[-1]['grad_norm']:.3f}; optimizer state {state_mib:.3f} MiB "
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
