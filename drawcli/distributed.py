"""Multi-process training on torch.distributed (torchrun + DistributedDataParallel).

A process belongs to a job when torchrun set WORLD_SIZE > 1 in its environment.
Backend: nccl on CUDA, gloo otherwise; each process uses its LOCAL_RANK device.
Rank 0 alone downloads, writes files and prints; the others compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from drawcli.errors import DrawError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def env_from_os() -> DistEnv:
    """What torchrun says about this process (a single process when nothing is set)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DrawError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    return DistEnv(rank=rank, world=world, local_rank=local)


def is_quiet_rank() -> bool:
    """Ranks other than 0 of a job keep quiet: user errors are shown once, by rank 0."""
    env = env_from_os()
    return env.active and not env.is_main


def init(env: DistEnv, device_spec: str):
    """Join the process group; return this rank's device."""
    import torch
    import torch.distributed as dist

    from drawcli.device import resolve_device

    device = resolve_device(device_spec)
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise DrawError(f"LOCAL_RANK {env.local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return device


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def agree(error: str | None, env: DistEnv) -> None:
    """Rank 0 tells every rank whether its setup succeeded, so nobody waits forever."""
    if not env.active:
        return
    import torch.distributed as dist

    box = [error]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None and not env.is_main:
        raise DrawError(box[0])


def launch(nproc: int, argv: list[str]) -> None:
    """`draw train --nproc N ...`: run the same command in N local processes via torchrun."""
    from torch.distributed import run as torchrun

    args = ["--standalone", f"--nproc-per-node={nproc}", "-m", "drawcli", *argv]
    try:
        torchrun.main(args)
    except SystemExit as e:  # torchrun exits with the failing worker's code
        if e.code not in (0, None):
            raise DrawError(f"distributed training failed (exit code {e.code}); see the messages above") from None
    except Exception as e:  # ChildFailedError: the failing rank's error was already printed
        name = type(e).__name__
        if name == "ChildFailedError":
            raise DrawError("distributed training failed; the failing rank's message is above") from None
        raise


def strip_nproc(argv: list[str]) -> list[str]:
    """Remove --nproc N / --nproc=N from a command line."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out

