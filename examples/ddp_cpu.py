"""DDP on CPU (gloo) with a gradspace preset: gradient accumulation, rank-0 checkpoint, exact resume, agreeing replicas.

Two ways to run it (2 ranks on one machine, no GPU needed)::

    torchrun --standalone --nproc_per_node=2 examples/ddp_cpu.py --quick
    python examples/ddp_cpu.py --quick          # spawns the 2 ranks itself

What it shows:

* ``gradspace.param_groups`` picks the ``nn.Linear`` weights that get a subspace; ``gradspace.GaLoreAdamW`` optimizes
  them. Under DDP the gradients are already averaged, so only the optimizer's own decompositions must agree: with the
  default ``projector_sync="broadcast"`` each refreshed basis is computed by one owner rank and broadcast over the
  default process group (pass ``process_group=`` to use another). Nothing else changes in the training loop.
* Gradient accumulation: ``ddp.no_sync()`` on the non-boundary micro-steps (no all-reduce), ``opt.step()`` only at
  the boundary (a refresh sees the full accumulated gradient).
* Checkpoint: rank 0 saves ``{"model", "optim", "step"}`` with ``torch.save`` at a step that is *not* a refresh
  boundary; every rank reloads it (``weights_only=True``: the optimizer state is tensors and ints) into a fresh model
  and optimizer and trains to the end again.
* Each rank prints a hash of its weights: the replicas agree, and the resumed run equals the uninterrupted one.

Workers end with ``dist.destroy_process_group()`` and ``os._exit(0)`` (gloo can abort at interpreter exit after a
clean run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import gradspace

ACCUM = 2  # micro-batches per optimizer step
REFRESH = 4  # bases refresh at steps 0, 4, 8, …


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)  # DDP broadcasts rank 0's initial weights anyway
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64), torch.nn.GELU(),
                               torch.nn.Linear(64, 8))


def micro_batch(step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of micro-batch ``micro`` of step ``step`` (deterministic, different on every rank)."""
    g = torch.Generator().manual_seed(10_000 * step + 100 * micro + rank)
    x = torch.randn(16, 32, generator=g)
    return x, torch.tanh(x[:, :8] * 2.0)


def build(verbose: bool = False) -> tuple[torch.nn.Module, DDP, gradspace.SubspaceOptimizer]:
    model = build_model()
    ddp = DDP(model)
    groups = gradspace.param_groups(model, rank=8, verbose=verbose)  # hidden Linear weights → rank-8 subspace
    opt = gradspace.GaLoreAdamW(groups, lr=3e-3, update_proj_gap=REFRESH, scale=0.25, weight_decay=0.01)
    return model, ddp, opt


def train(ddp: DDP, opt: torch.optim.Optimizer, rank: int, start: int, stop: int,
          on_step_end=None) -> float:
    loss_value = float("nan")
    for step in range(start, stop):
        for micro in range(ACCUM):
            x, y = micro_batch(step, micro, rank)
            boundary = micro == ACCUM - 1
            with nullcontext() if boundary else ddp.no_sync():  # all-reduce only on the last micro-step
                loss = torch.nn.functional.mse_loss(ddp(x), y) / ACCUM
                loss.backward()
            loss_value = float(loss.detach()) * ACCUM
        opt.step()
        opt.zero_grad(set_to_none=True)
        if on_step_end is not None:
            on_step_end(step + 1)
    return loss_value


def weight_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def worker(rank: int, world: int, steps: int, ckpt_dir: str | None) -> None:
    torch.set_num_threads(1)
    # the checkpoint directory must be shared: rank 0 chooses it and tells the others
    owned = None
    if rank == 0 and ckpt_dir is None:
        ckpt_dir = owned = tempfile.mkdtemp(prefix="gradspace_ddp_")
    box = [ckpt_dir]
    dist.broadcast_object_list(box, src=0)
    path = os.path.join(box[0], "checkpoint.pt")
    save_at = steps // 2 + (1 if (steps // 2) % REFRESH == 0 else 0)  # mid refresh period

    # 1) uninterrupted run; rank 0 saves a checkpoint after `save_at` steps
    model, ddp, opt = build(verbose=rank == 0)

    def save(step: int) -> None:
        if step == save_at:
            if rank == 0:
                torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step}, path)
            dist.barrier()  # the file exists before anyone reads it

    loss = train(ddp, opt, rank, 0, steps, on_step_end=save)
    full = weight_hash(model)

    # 2) fresh model + optimizer on every rank, reload rank 0's checkpoint, train to the end again
    model2, ddp2, opt2 = build()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optim"])
    train(ddp2, opt2, rank, ckpt["step"], steps)
    resumed = weight_hash(model2)

    hashes: list = [None] * world
    dist.all_gather_object(hashes, (full, resumed))
    # one write per line: two ranks share stdout, and print() may write the text and its newline separately
    sys.stdout.write(f"[rank {rank}] step {steps} local loss {loss:.4f} weights sha256 {full} (uninterrupted) "
                     f"{resumed} (resumed from rank-0 checkpoint at step {ckpt['step']})\n")
    sys.stdout.flush()
    dist.barrier()
    if rank == 0:
        agree = len({h for pair in hashes for h in pair}) == 1
        print(f"replicas agree and resume is exact: {agree}", flush=True)
        if owned:
            shutil.rmtree(owned, ignore_errors=True)


def _run_and_exit(rank: int, world: int, steps: int, ckpt_dir: str | None) -> None:
    code = 0
    try:
        worker(rank, world, steps, ckpt_dir)
    except BaseException as err:  # report, then still tear down and exit (never hang the other rank at exit)
        print(f"[rank {rank}] failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # gloo can abort at interpreter exit after a clean run


def _spawned(rank: int, world: int, port: int, steps: int, ckpt_dir: str | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    _run_and_exit(rank, world, steps, ckpt_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DDP (gloo, CPU) + gradspace: accumulation, checkpoint, resume.")
    parser.add_argument("--quick", action="store_true", help="20 steps (the CI setting)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--ckpt-dir", default=None, help="shared directory for the checkpoint (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=300.0, help="self-spawn mode: kill the ranks after this")
    args = parser.parse_args(argv)
    steps = 20 if args.quick else args.steps

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        dist.init_process_group("gloo")
        _run_and_exit(dist.get_rank(), dist.get_world_size(), steps, args.ckpt_dir)

    import torch.multiprocessing as mp  # self-spawn 2 ranks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(_spawned, args=(2, port, steps, args.ckpt_dir), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + args.timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                print(f"ranks did not finish within {args.timeout} s", file=sys.stderr)
                return 1
    except mp.ProcessExitedException as err:
        print(f"a rank failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
