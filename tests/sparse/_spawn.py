"""Run a function on 2 gloo ranks on 127.0.0.1 (spawned, 1 thread each, hard exit, overall timeout)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # gloo can abort during interpreter teardown after a clean run


def spawn(fn: Callable[[int, int], Any], out_dir: str, world: int = 2, timeout: float = 90.0) -> list[Any]:
    """``fn(rank, world)`` on ``world`` ranks; each rank's return value, or TimeoutError."""
    os.environ["OMP_NUM_THREADS"] = "1"
    ctx = mp.start_processes(_entry, args=(world, _port(), fn, out_dir), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=0.5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            raise TimeoutError(f"gloo workers did not finish within {timeout} s")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world)]
