"""What the training loop carries between steps and epochs: one :class:`TrainState`.

drawcli.training.loop builds it (``start``) and passes it to each of its sections (the steps of an
epoch, a stop request, the end of an epoch); it holds the model and its optimizer, the run's two
generators, the images, where training stands (step, epoch, images of the epoch), the best loss,
the latest evaluation, the clocks, the log window, the divergence watch, the callbacks, this
process's place in a job and the engine. No printing and no files here either.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from drawcli.core.errors import DrawError
from drawcli.model import DRAW
from drawcli.runs.checkpoint import make_checkpoint, rng_state
from drawcli.settings import Settings
from drawcli.training.distributed import DistEnv


def emit(callbacks: Sequence, name: str, *args) -> None:
    """Call ``name`` on every callback that has it (every callback method is optional)."""
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


class Callback(Protocol):
    """What train() tells the objects in ``callbacks``: each may have any of these methods (a missing
    one is skipped), e.g. the run directory's checkpoints, metrics and TensorBoard logs."""

    def on_start(self, info: dict) -> None: ...
    def on_step(self, step: int, epoch: int) -> None: ...
    def on_log(self, row: dict) -> None: ...
    def on_epoch(self, row: dict) -> None: ...
    def on_checkpoint(self, ckpt: dict, is_best: bool) -> None: ...
    def on_interrupt(self, ckpt: dict) -> None: ...  # mid-epoch checkpoint: becomes last.pt only
    def on_end(self, summary: dict) -> None: ...


@dataclass
class TrainResult:
    model: DRAW
    step: int
    epoch: int  # the last epoch trained in, complete or not (see epoch_images)
    eval: dict = field(default_factory=dict)  # last evaluation: lx, lz, loss
    epoch_images: int = 0  # 0: ``epoch`` is complete; else the images of it trained on (a stop inside it)
    train_images: int = 0  # images in an epoch
    best_loss: float | None = None
    seconds: float = 0.0  # wall time of the call: training, evaluations, checkpoints
    train_seconds: float = 0.0  # training steps alone
    images_per_second: float = 0.0  # training images over training time


class DivergenceWatch:
    """The first step whose L_x, L_z or gradient norm was not finite, and which of them it was.

    Tracked on the device (no host sync per step); read at log steps only.
    """

    TERMS = {1: "L_x", 2: "L_z", 3: "the gradient norm"}

    def __init__(self, device: torch.device):
        self.steps_run = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_term = torch.zeros((), dtype=torch.int64, device=device)

    def record(self, lx: torch.Tensor, lz: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.steps_run += 1
        # 1 = L_x, 2 = L_z, 3 = gradient norm: the first non-finite of the three (0 if none).
        finite = torch.isfinite(torch.stack([lx, lz, grad_norm.to(lx)]))
        term = torch.where(finite.all(), 0, (~finite).int().argmax() + 1)
        newly_bad = (self.first_bad < 0) & (term > 0)
        self.first_bad = torch.where(newly_bad, self.steps_run, self.first_bad)
        self.bad_term = torch.where(newly_bad, term, self.bad_term)

    def diverged_here(self) -> bool:
        """Whether this process saw a non-finite step (a host sync)."""
        return self.first_bad.item() >= 0

    def error(self, step: int, here: bool) -> DrawError:
        """The one-line error for a run that diverged by global step ``step`` (here or on another rank)."""
        if here:
            bad_step = step - int(self.steps_run.item()) + int(self.first_bad.item())
            where = f"{self.TERMS[int(self.bad_term.item())]} was not finite at step {bad_step}"
        else:
            where = f"a loss or gradient was not finite on another process before step {step}"
        return DrawError(
            f"training diverged: {where}; the last good checkpoint is kept (resume it with --resume, perhaps with a lower --lr)"
        )


class LogWindow:
    """The steps since the last log row: summed losses and gradient norms on the device, images, time.

    Its clock counts training only: :meth:`restart` after an evaluation and checkpoint, so that
    images per second are training images over training time, in every row and in the summary
    (``seconds``: all training time so far)."""

    def __init__(self, device: torch.device):
        self.lx = torch.zeros((), device=device)
        self.lz = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.steps, self.images, self.started = 0, 0, time.perf_counter()
        self.seconds = 0.0

    def restart(self) -> None:
        """Start the clock again (after work that is not training: evaluation, checkpoints)."""
        self.started = time.perf_counter()

    def add(self, lx: torch.Tensor, lz: torch.Tensor, grad_norm: torch.Tensor, images: int) -> None:
        self.lx += lx
        self.lz += lz
        self.grad_norm += grad_norm.detach().to(self.grad_norm)
        self.steps += 1
        self.images += images

    def row(self, step: int, epoch: int, lr: float, lx_total: float, lz_total: float) -> dict:
        """The metrics.jsonl row (kind "train"): losses per image over all ranks, throughput, lr, gradient norm."""
        lx, lz = lx_total / self.images, lz_total / self.images
        now = time.perf_counter()
        self.seconds += now - self.started
        row = {
            "kind": "train",
            "step": step,
            "epoch": epoch,
            "lx": lx,
            "lz": lz,
            "loss": lx + lz,
            "img_per_s": self.images / max(now - self.started, 1e-9),
            "lr": lr,
            "grad_norm": self.grad_norm.item() / max(self.steps, 1),  # before clipping, mean over the rows' steps
            "time": time.time(),
        }
        self.lx.zero_()
        self.lz.zero_()
        self.grad_norm.zero_()
        self.steps, self.images, self.started = 0, 0, now
        return row


@dataclass
class TrainState:
    """One training call in progress, on this process of a job (see the module's docstring).

    Where training stands is counted in images, not steps (``epoch``: 0-based, the epoch in
    progress; ``pos``: the images of it trained on), so that a new batch size on resume continues
    the same epoch. Checkpoints and rows number epochs from 1 (``epoch + 1``).
    """

    settings: Settings
    model: DRAW
    net: torch.nn.Module  # what a step runs: the model, or the model in DistributedDataParallel in a job
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator  # binarisation
    noise_gen: torch.Generator  # posterior noise
    train_x: torch.Tensor  # uint8 images on the device: (N, H, W) grey, (N, C, H, W) colour
    eval_x: torch.Tensor
    eval_split: str  # the evaluation split's name in the rows: "test" or "valid"
    device: torch.device
    env: DistEnv
    engine: Any  # what every model call runs: a name, or a drawcli.model.Resolved engine
    precision: str  # resolved (drawcli.core.device.resolve_precision)
    callbacks: Sequence[Callback]  # each with any of Callback's methods
    step: int  # global steps done
    epoch: int
    pos: int
    total_steps: int  # the global step training stops at (drawcli.training.loop.planned_steps)
    best_loss: float | None
    last_metrics: dict  # the latest evaluation, which a checkpoint at a stop inside an epoch carries
    result: TrainResult  # what the call returns, filled in at each epoch's end and at the end
    window: LogWindow
    watch: DivergenceWatch
    started: float = field(default_factory=time.perf_counter)  # the call's clock (result.seconds)
    images_done: int = 0  # training images logged so far (result.images_per_second)
    params: list[torch.nn.Parameter] = field(init=False)  # the model's, in order (gradient clipping)

    def __post_init__(self) -> None:
        self.params = list(self.model.parameters())

    @property
    def n(self) -> int:
        """Images in an epoch."""
        return len(self.train_x)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.settings.train.batch_size)

    def emit(self, name: str, *args) -> None:
        emit(self.callbacks, name, *args)

    def checkpoint(self, metrics: dict, epoch_images: int) -> dict:
        """The checkpoint of where training stands, in epoch ``epoch + 1``: complete (``epoch_images``
        0) or with that many of its images trained on (drawcli/runs/checkpoint.py)."""
        return make_checkpoint(self.model, self.optimizer, self.settings, self.epoch + 1, self.step,
                               rng_state(self.data_gen, self.noise_gen), metrics, self.best_loss, epoch_images=epoch_images)
