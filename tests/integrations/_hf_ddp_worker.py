"""Worker for test_hf.test_trainer_under_ddp (run by torchrun): Trainer + create_optimizer on 2 gloo ranks."""

from __future__ import annotations

import hashlib
import os
import sys

import torch.distributed as dist


def main(out: str) -> None:
    # imported here: pytest --doctest-modules imports this file during collection, even without transformers
    import transformers

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_hf import TokenDataset, tiny_llama

    from gradspace.integrations.hf import create_optimizer

    args = transformers.TrainingArguments(
        out, use_cpu=True, report_to=[], save_strategy="no", max_steps=6, seed=0, learning_rate=1e-2, weight_decay=0.1,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, logging_steps=1, disable_tqdm=True,
        ddp_backend="gloo",
    )
    model = tiny_llama()
    # no process_group argument: the optimizer finds the default group the Trainer (accelerate) initialized;
    # verify_sync=True raises if bases or weights ever differ across ranks after a refresh
    opt = create_optimizer(model, args, "GaLoreAdamW", rank=4, update_proj_gap=4, verify_sync=True, verbose=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(), optimizers=(opt, None))
    trainer.train()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]
    state = opt.state[model.model.layers[0].mlp.up_proj.weight]
    # one write per line: both ranks share stdout, and print() may write the text and its newline separately
    sys.stdout.write(f"RESULT rank={dist.get_rank()} world={dist.get_world_size()} mode={args.parallel_mode.value} "
                     f"hash={digest} step={state['step']} refreshes={state['proj.count']}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    code = 0
    try:
        main(sys.argv[1])
    except BaseException as err:
        print(f"FAILED {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
    os._exit(code)
