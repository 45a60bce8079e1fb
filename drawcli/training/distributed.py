"""Multi-process training on torch.distributed (torchrun + DistributedDataParallel).

A process belongs to a job when torchrun set WORLD_SIZE > 1 in its environment.
Backend: nccl on CUDA, gloo otherwise; each process uses its LOCAL_RANK device.
Rank 0 alone downloads, writes files and prints; the others compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from drawcli.core.errors import DrawError, RankError

# How long a rank waits in a collective (nccl's default is 10 minutes): the other ranks wait at one
# while rank 0 alone downloads a data set or computes the final importance-weighted bound
# (train.eval_samples), which can take longer. DRAWCLI_DIST_TIMEOUT (seconds) overrides it.
DIST_TIMEOUT_S = 3 * 3600


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


def check_global_batch(batch_size: int, world: int, launcher: bool = False) -> None:
    """The one check that the global batch divides among the processes (each trains an equal slice).

    ``launcher``: said in the words of `draw train --nproc N` (before any process starts).
    """
    if world > 1 and batch_size % world:
        if launcher:
            raise DrawError(f"--batch-size {batch_size} (the global batch) must be divisible by --nproc {world}")
        raise DrawError(f"train.batch_size {batch_size} is the global batch and must be divisible by the {world} processes")


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


def dist_timeout_s() -> float:
    """Seconds a rank waits in a collective: DRAWCLI_DIST_TIMEOUT, else DIST_TIMEOUT_S."""
    raw = os.environ.get("DRAWCLI_DIST_TIMEOUT")
    if raw is None:
        return DIST_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise DrawError(f"DRAWCLI_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def check_launch(nproc: int, device_spec: str) -> None:
    """`draw train --nproc N`: refuse, before any process starts, what the processes could not run.

    One process per GPU on CUDA (so N may not exceed the visible GPUs); none on MPS (a Mac has
    one GPU, and gloo, the only other backend, cannot carry MPS tensors).
    """
    from drawcli.core.device import resolve_device

    device = resolve_device(device_spec)
    if device.type == "cuda":
        import torch

        count = torch.cuda.device_count()
        if nproc > count:
            raise DrawError(f"--nproc {nproc}: one process per GPU, and {count} CUDA device(s) are visible; "
                            f"use --nproc {count} or fewer, or --device cpu")
    if device.type == "mps":
        raise DrawError(f"--nproc {nproc} cannot run on MPS (one GPU; torch.distributed cannot carry MPS tensors); "
                        "train without --nproc, or with --device cpu")


def init(env: DistEnv, device_spec: str):
    """Join the process group; return this rank's device."""
    import datetime

    import torch
    import torch.distributed as dist

    from drawcli.core.device import resolve_device

    device = resolve_device(device_spec)
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise RankError(f"LOCAL_RANK {env.local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if device.type == "mps":
        raise DrawError("multi-process training cannot run on MPS (torch.distributed cannot carry MPS tensors)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None,
                                timeout=datetime.timedelta(seconds=dist_timeout_s()))
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


# How long the launcher waits for workers to stop after Ctrl-C before killing them. They stop at
# the next log step (train.log_every steps at most) once rank 0 has written last.pt.
SHUTDOWN_TIMEOUT = 600
INTERRUPTED = 130  # a worker's exit code after an interrupt (drawcli.training.loop.Interrupted)


def _interrupted(error) -> bool:
    """A ChildFailedError whose workers ended by an interrupt (130), or were stopped after one."""
    import signal

    codes = [f.exitcode for f in getattr(error, "failures", {}).values()]
    ok = {INTERRUPTED, -signal.SIGINT, -signal.SIGTERM}
    return INTERRUPTED in codes and all(c in ok for c in codes)


def launch(nproc: int, argv: list[str]) -> None:
    """`draw train --nproc N ...`: run the same command in N local processes via torchrun.

    Ctrl-C goes to every process of the terminal's group, so each worker has it already;
    torchrun would pass SIGINT on once more, and a second SIGINT means "quit at once" to a
    worker. So the launcher handles SIGINT itself (also one sent to it alone) and asks the
    workers with SIGTERM, which only ever means "stop after this step". The workers save
    last.pt and say so in one line (rank 0); the launcher adds nothing and exits 130.
    """
    import logging
    import signal

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    options = {o for action in torchrun.get_args_parser()._actions for o in action.option_strings}
    args = ["--standalone", f"--nproc-per-node={nproc}"]
    if "--signals-to-handle" in options:  # recent torch; older versions pass SIGINT on themselves
        args.append("--signals-to-handle=SIGTERM,SIGHUP,SIGQUIT")
    if "--shutdown-timeout" in options:
        args.append(f"--shutdown-timeout={SHUTDOWN_TIMEOUT}")
    args += ["-m", "drawcli", *argv]

    def on_sigint(signum, frame):
        raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signal.SIGTERM)

    # torchrun's own log lines ("Received 15 death signal, shutting down workers", ...) would
    # come on top of the one line that says what happened. Its loggers each set their own level.
    quiet = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
             if name.startswith("torch.distributed.elastic")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        torchrun.main(args)
    except SignalException:
        raise SystemExit(INTERRUPTED) from None  # rank 0 has said where last.pt is
    except SystemExit as e:  # torchrun exits with the failing worker's code
        if e.code not in (0, None):
            raise DrawError(f"distributed training failed (exit code {e.code}); see the messages above") from None
    except Exception as e:  # ChildFailedError: the failing rank's error was already printed
        name = type(e).__name__
        if name == "ChildFailedError":
            if _interrupted(e):
                raise SystemExit(INTERRUPTED) from None
            raise DrawError("distributed training failed; the failing rank's message is above") from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


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

