"""Worker for test_hf_routes.test_trainer_under_fsdp2 (run by torchrun): stock Trainer + optimizer_cls_and_kwargs under
accelerate's FSDP2 on 2 gloo ranks, with optim_target_modules and optim_args from TrainingArguments.

accelerate enables FSDP only on accelerator devices: on CPU its ``AcceleratorState`` silently becomes
``DistributedType.MULTI_CPU`` (plain DDP) although ``fsdp_config={"version": 2}`` is set. The worker therefore switches
the Trainer's accelerator state to FSDP2 after the Trainer is built (the two attributes accelerate would have set, and
``Trainer.is_fsdp_enabled``); everything after that — the Trainer's FSDP2 path (optimizer built before sharding),
accelerate's ``fully_shard`` and its swap of the optimizer's parameters for the sharded DTensors, DTensor gradient
clipping, gradspace's sharded update, FSDP checkpoint save and resume — runs as on GPUs.
"""

from __future__ import annotations

import hashlib
import os
import sys

import torch.distributed as dist


def main(out: str, mode: str) -> None:
    # imported here: pytest --doctest-modules imports this file during collection, even without transformers
    import torch
    import transformers
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_hf_routes import TokenDataset, fsdp_args, tiny_llama

    from gradspace.integrations.hf import optimizer_cls_and_kwargs

    torch.set_num_threads(1)
    args = fsdp_args(os.path.join(out, mode))
    model = tiny_llama()
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=TokenDataset(),
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("GaLoreAdamW", model, args, verify_sync=True, verbose=False))
    state = trainer.accelerator.state
    was = state.distributed_type
    if was != DistributedType.FSDP:  # CPU: see the module docstring
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
        state.distributed_type = DistributedType.FSDP
        PartialState().distributed_type = DistributedType.FSDP  # AcceleratorState() re-reads it when constructed again
        trainer.is_fsdp_enabled = True
    resume = os.path.join(out, "train", "checkpoint-3") if mode == "resume" else None
    trainer.train(resume_from_checkpoint=resume)

    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    from torch.distributed.tensor import DTensor

    params = dict(trainer.model.named_parameters())
    full = {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach() for n, p in params.items()}
    if dist.get_rank() == 0:
        torch.save(full, os.path.join(out, f"{mode}.pt"))
    digest = hashlib.sha256(b"".join(full[n].numpy().tobytes() for n in sorted(full))).hexdigest()[:16]
    up = params["model.layers.0.mlp.up_proj.weight"]
    st = opt.state[up]
    projected = sorted(n for g in opt.param_groups if g["projector"] != "identity" for n in g["param_names"])
    sharded = all(isinstance(p, DTensor) for g in opt.param_groups for p in g["params"])
    moments = sorted(k for k, v in st.items() if isinstance(v, DTensor))
    norms = [round(h["grad_norm"], 6) for h in trainer.state.log_history if "grad_norm" in h]
    # one write per line: both ranks share stdout
    sys.stdout.write(
        f"RESULT rank={dist.get_rank()} world={dist.get_world_size()} accelerate={was.value} "
        f"fsdp2={int(trainer.accelerator.is_fsdp2)} sharded={int(sharded)} class={type(opt).__name__} "
        f"hash={digest} step={st['step']} refreshes={st['proj.count']} scale={opt.param_groups[0]['scale']} "
        f"rank_r={opt.param_groups[0]['rank']} dtensor_state={','.join(moments)} projected={','.join(projected)} "
        f"grad_norms={','.join(map(str, norms))}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    code = 0
    try:
        main(sys.argv[1], sys.argv[2])
    except BaseException as err:
        import traceback

        traceback.print_exc()
        print(f"FAILED {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
    os._exit(code)
