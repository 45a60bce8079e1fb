"""Training and evaluation loops. No printing and no files here: callbacks do that.

``train`` receives everything it needs (settings, images, device, callbacks,
an optional checkpoint to resume from), so tests call it directly.

Determinism: data order for epoch e is a permutation drawn from a generator
seeded with (seed, e); binarisation and the model's noise use their own
generators whose states travel in every checkpoint. Every checkpoint also says
how far training got in epoch terms (``epoch`` and ``epoch_images``), so a run
resumed with another batch size continues the same epoch at the same image and
its epoch numbers never go back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from drawcli.core.device import autocast, resolve_precision
from drawcli.core.errors import DrawError, Interrupted
from drawcli.data.loading import to_input
from drawcli.model import DRAW
from drawcli.runs.checkpoint import build_model, make_checkpoint, rng_state
from drawcli.settings import Settings, TrainSettings
from drawcli.training.distributed import DistEnv, check_global_batch


class Callback(Protocol):  # every method optional
    def on_start(self, info: dict) -> None: ...
    def on_step(self, step: int, epoch: int) -> None: ...
    def on_log(self, row: dict) -> None: ...
    def on_epoch(self, row: dict) -> None: ...
    def on_checkpoint(self, ckpt: dict, is_best: bool) -> None: ...
    def on_interrupt(self, ckpt: dict) -> None: ...  # mid-epoch checkpoint: becomes last.pt only
    def on_end(self, summary: dict) -> None: ...


def _emit(callbacks, name: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


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


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: reproducible from (seed, epoch) alone."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _block_generators(device: torch.device, seed: int, block: int) -> tuple[torch.Generator, torch.Generator]:
    base = seed * 1_000_003 + 2 * block
    return _generator(device, base), _generator(device, base + 1)


@torch.no_grad()
def evaluate(
    model: DRAW,
    images: torch.Tensor,
    binarize: str,
    batch_size: int,
    seed: int = 1234,
    env: DistEnv = DistEnv(),
    engine: str = "auto",
) -> dict[str, float]:
    """Mean L_x, L_z and L in nats per image over ``images`` (uint8, on the model's device).

    Uses a fixed binarisation and fixed posterior noise, seeded per block of
    ``batch_size`` images, so numbers from different epochs, runs and numbers of
    processes are comparable: in a distributed job block j goes to rank j mod world
    and the sums are all-reduced, giving the single-process value. Sums are float64.
    """
    device = images.device
    was_training = model.training
    model.eval()
    # The sums are float64 on the CPU: MPS has no float64, and a copy that changes device and
    # dtype at once does the dtype change on the source device (one small copy per block).
    acc = torch.zeros(2, dtype=torch.float64)
    blocks = math.ceil(len(images) / batch_size)
    for block in range(env.rank, blocks, env.world):
        data_gen, noise_gen = _block_generators(device, seed, block)
        x = to_input(images[block * batch_size : (block + 1) * batch_size], binarize, data_gen)
        out = model(x, generator=noise_gen, engine=engine)
        acc += torch.stack([out.lx.sum(), out.lz.sum()]).cpu().double()
    if env.active:
        import torch.distributed as dist

        # nccl reduces device tensors only; gloo (CPU) takes the CPU sums as they are.
        on_device = acc.to(device) if device.type == "cuda" else acc
        dist.all_reduce(on_device)
        acc = on_device.cpu()
    model.train(was_training)
    n = len(images)
    lx_mean, lz_mean = (acc / n).tolist()
    return {"lx": lx_mean, "lz": lz_mean, "loss": lx_mean + lz_mean}


def learning_rate(ts: TrainSettings, step: int, steps_per_epoch: int, epochs_done: float | None = None) -> float:
    """The learning rate of global step ``step`` (0-based: the step about to be taken).

    A function of the training position and the settings alone, so a resumed run continues the
    schedule exactly where it stopped. Warm-up rises linearly to ``lr`` over ``warmup_steps``; then
    ``constant`` keeps it, ``cosine`` follows half a cosine from ``lr`` down to ``min_lr`` at the
    last step of ``train.epochs`` (max_steps only stops early, it does not shorten the curve),
    ``step`` multiplies it by ``lr_decay`` every ``lr_step_epochs`` epochs, and ``wsd``
    (warm-up, stable, decay) keeps ``lr`` until ``decay_start`` epochs are done, then follows half
    a cosine down to ``min_lr`` over ``decay_epochs`` epochs and stays there. With ``decay_start``
    unset, wsd is constant: the decay can be chosen late, on a resume.

    ``epochs_done`` is the position in epochs (complete epochs plus the finished share of the
    current one); wsd counts in it, so a batch size changed on resume keeps the decay where it
    was. Without it, ``step / steps_per_epoch``.
    """
    if step < ts.warmup_steps:
        return ts.lr * (step + 1) / ts.warmup_steps
    if ts.lr_schedule == "cosine":
        total = ts.epochs * steps_per_epoch
        span = max(total - ts.warmup_steps, 1)
        progress = min(max(step - ts.warmup_steps, 0) / span, 1.0)
        return _half_cosine(ts.lr, ts.min_lr, progress)
    if ts.lr_schedule == "step":
        return ts.lr * ts.lr_decay ** (step // (ts.lr_step_epochs * steps_per_epoch))
    if ts.lr_schedule == "wsd" and ts.decay_start is not None:
        done = step / steps_per_epoch if epochs_done is None else epochs_done
        progress = min(max(done - ts.decay_start, 0.0) / ts.decay_epochs, 1.0)
        return _half_cosine(ts.lr, ts.min_lr, progress)
    return ts.lr


def _half_cosine(high: float, low: float, progress: float) -> float:
    """From ``high`` at progress 0 to ``low`` at progress 1, flat at both ends."""
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resume_position(ckpt: dict, n: int, batch: int) -> tuple[int, int]:
    """(0-based epoch in progress, images of it already trained on) after checkpoint ``ckpt``.

    Checkpoints before ``epoch_images`` existed are placed by their step count, as they were
    written: with this batch size (the same as theirs unless it was changed on resume).
    """
    step = int(ckpt["step"])
    if "epoch_images" not in ckpt:
        spe = math.ceil(n / batch)
        epoch = step // spe
        return epoch, min((step - epoch * spe) * batch, n)
    done = int(ckpt["epoch_images"])
    if done == 0:
        return int(ckpt["epoch"]), 0
    return int(ckpt["epoch"]) - 1, min(done, n)


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel where this build has one for these parameters' device
    (one pass over all parameters instead of several; CPU needs torch >= 2.4), else the default."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr, betas=betas)


def load_optimizer_state(optimizer, state: dict, lr: float) -> None:
    """Load a saved Adam state into this machine's optimizer, with learning rate lr.

    The kernel stays this machine's choice (fused or not), not the saving machine's. It is set in
    the state before loading because torch places each parameter's step counter by the loaded
    group's "fused" flag: on the parameter's device when fused, which CUDA's fused kernel requires.
    """
    fused = optimizer.param_groups[0].get("fused")
    # torch keeps the loaded tensors where they already have the right device and dtype, and Adam then
    # updates them in place: copies, so that training never changes the checkpoint it resumed from.
    moments = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for i, s in state["state"].items()}
    state = dict(state, state=moments, param_groups=[{**group, "fused": fused} for group in state["param_groups"]])
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr


def restore(resume: dict, model: DRAW, optimizer, data_gen: torch.Generator, noise_gen: torch.Generator, ts) -> tuple[int, float | None]:
    """Load a checkpoint's weights, optimizer and generator states; returns (step, best_loss)."""
    model.load_state_dict(resume["model"])
    load_optimizer_state(optimizer, resume["optimizer"], ts.lr)  # a resumed run may change the learning rate
    step, best_loss = int(resume["step"]), resume.get("best_loss")
    try:
        data_gen.set_state(resume["rng"]["data"].cpu())
        noise_gen.set_state(resume["rng"]["noise"].cpu())
    except (RuntimeError, KeyError):
        # Generator states are device-specific (a CUDA checkpoint resumed on the CPU):
        # continue with fresh, still deterministic streams.
        data_gen.manual_seed(ts.seed * 7919 + step)
        noise_gen.manual_seed(ts.seed * 7919 + step + 1)
    return step, best_loss


def planned_steps(ts, step: int, epoch: int, pos: int, n: int) -> int:
    """The global step training stops at: the end of train.epochs, or train.max_steps if sooner."""
    steps_per_epoch = math.ceil(n / ts.batch_size)
    if epoch >= ts.epochs:
        total = step
    else:
        total = step + math.ceil((n - pos) / ts.batch_size) + (ts.epochs - epoch - 1) * steps_per_epoch
    if ts.max_steps is not None:
        total = min(total, max(ts.max_steps, step))
    return total


def draw_batch(images: torch.Tensor, idx: torch.Tensor, binarize: str, model: DRAW, data_gen: torch.Generator,
               noise_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The model input and posterior noise of one (global) batch, from the run's two generators."""
    x = to_input(images[idx], binarize, data_gen)
    eps = torch.randn(model.steps, len(idx), model.embed, device=images.device, generator=noise_gen)
    return x, eps


def train_step(net, optimizer, params: list, x: torch.Tensor, eps: torch.Tensor, lr: float, grad_clip: float,
               precision: str, env: DistEnv, engine: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on this rank's slice of the global batch.

    Returns the slice's summed L_x and L_z and the gradient norm before clipping, as device
    tensors (no host sync).
    """
    m = len(x)
    lo, hi = m * env.rank // env.world, m * (env.rank + 1) // env.world
    with autocast(x.device, precision):  # bfloat16: the LSTM products (see drawcli/model/fast.py)
        out = net(x[lo:hi], eps=eps[:, lo:hi].contiguous(), engine=engine)
    # Mean over the global batch; DDP divides the summed gradients by the world size.
    loss = out.loss.sum() * (env.world / m)
    optimizer.zero_grad(set_to_none=True)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss.backward()
    # max_norm=inf still returns the norm: the divergence check needs it.
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    return out.lx.detach().sum(), out.lz.detach().sum(), grad_norm


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


def agree_at_log(window: LogWindow, watch: DivergenceWatch, stopping: bool, env: DistEnv) -> tuple[float, float, bool, bool, bool]:
    """Host sync at a log step: (L_x sum, L_z sum, stop?, diverged anywhere?, diverged here?), summed over ranks."""
    here = watch.diverged_here()
    totals = [window.lx.item(), window.lz.item(), float(stopping), float(here)]
    if env.active:
        import torch.distributed as dist

        device = window.lx.device
        packed = torch.tensor(totals, dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
        dist.all_reduce(packed)
        totals = packed.tolist()
        stopping = stopping or totals[2] > 0
    return totals[0], totals[1], stopping, totals[3] > 0, here


def stop_now(model: DRAW, optimizer, settings: Settings, epoch: int, step: int, pos: int, rng: dict, metrics: dict,
             best_loss: float | None, callbacks, env: DistEnv) -> Interrupted:
    """A stop request inside an epoch: checkpoint the finished step (``on_interrupt``); returns the exception to raise."""
    ckpt = make_checkpoint(model, optimizer, settings, epoch, step, rng, metrics, best_loss, epoch_images=pos)
    _emit(callbacks, "on_interrupt", ckpt)
    if env.active:
        import torch.distributed as dist

        dist.barrier()  # nobody exits (and gets the job torn down) before rank 0 has saved
    return Interrupted(step)


def end_epoch(model: DRAW, optimizer, settings: Settings, eval_x: torch.Tensor, eval_split: str, epoch: int, step: int,
              pos: int, n: int, rng: dict, best_loss: float | None, last: bool, callbacks, env: DistEnv,
              engine: str = "auto") -> tuple[dict | None, float, bool]:
    """End of an epoch, or an early stop at max_steps: evaluate (when due), report, checkpoint.

    The evaluation runs every ``train.eval_every`` epochs, after the run's last step and at a
    stop inside an epoch; a checkpoint without one carries no metrics and is never best.pt.
    A stop inside an epoch checkpoints with epoch_images > 0 (last.pt, not an epoch file).
    Returns (metrics or None when not evaluated, best_loss, whether the epoch is complete).
    """
    complete = pos >= n
    metrics, is_best = None, False
    if last or not complete or epoch % settings.train.eval_every == 0:
        metrics = evaluate(model, eval_x, settings.data.binarize, settings.train.eval_batch_size, env=env, engine=engine)
        is_best = best_loss is None or metrics["loss"] < best_loss
        if is_best:
            best_loss = metrics["loss"]
        _emit(callbacks, "on_epoch", {"kind": "eval", "split": eval_split, "step": step, "epoch": epoch, **metrics,
                                      "epoch_complete": complete, "time": time.time()})
    ckpt = make_checkpoint(model, optimizer, settings, epoch, step, rng, metrics or {}, best_loss, epoch_images=0 if complete else pos)
    _emit(callbacks, "on_checkpoint", ckpt, is_best)
    return metrics, best_loss, complete


def _as_device_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images as a tensor on ``device``: a tensor (on any device) as it is, anything else through numpy."""
    if isinstance(images, torch.Tensor):
        return images.to(device)
    return torch.as_tensor(np.asarray(images)).to(device)


def train(
    settings: Settings,
    train_images: np.ndarray | torch.Tensor,
    eval_images: np.ndarray | torch.Tensor,
    device: torch.device,
    callbacks: list | tuple = (),
    resume: dict | None = None,
    eval_split: str = "test",
    should_stop=None,
    env: DistEnv = DistEnv(),
    engine: str | None = None,
    init_weights: dict | None = None,
) -> TrainResult:
    """Train DRAW on uint8 images (N, H, W); evaluate on ``eval_images`` every
    ``train.eval_every`` epochs and at the end.

    Stops after ``settings.train.epochs`` epochs or at global step
    ``settings.train.max_steps``; either way the evaluation runs and a checkpoint
    is handed to the callbacks (one after every epoch). ``resume`` is a checkpoint dict from a previous call.
    ``should_stop()`` is polled after every step (a signal handler sets it); when it
    turns true the finished step is checkpointed (``on_interrupt``) and
    :class:`Interrupted` is raised.

    Distributed (``env.active``): ``batch_size`` is the global batch. Every rank
    draws the binarisation and noise of the whole global batch from identical
    generators and trains on its contiguous slice, so W processes x B/W images
    follow exactly the trajectory of one process x B images (up to float sums).
    Callbacks should be given to rank 0 only. The stop flag is agreed on at log steps.
    ``engine``: the engine every model call runs (default: ``settings.run.engine`` as the model
    reads it; `draw train` passes the one it resolved and printed, see drawcli/model/engine.py).
    ``init_weights``: a state dict a new run starts from (train.init_from) in place of the seeded
    initialisation; the optimizer, schedule and step count start fresh. Ignored on resume.
    """
    ts = settings.train
    engine = engine or settings.run.engine
    train_x, eval_x = _as_device_tensor(train_images, device), _as_device_tensor(eval_images, device)
    n, *shape = train_x.shape  # (N, H, W) grey, (N, C, H, W) colour
    channels, height, width = (1, *shape) if len(shape) == 2 else shape
    if n == 0:
        raise DrawError("the training set is empty")
    check_global_batch(ts.batch_size, env.world)

    # -- set up: model, optimizer, generators; a resumed run continues from its checkpoint
    torch.manual_seed(ts.seed)  # parameter initialisation
    model = build_model(settings, height, width, channels).to(device)
    if init_weights is not None and resume is None:
        model.load_state_dict(init_weights)
    optimizer = make_adam(model.parameters(), ts.lr, (ts.beta1, ts.beta2))
    data_gen, noise_gen = _generator(device, ts.seed + 1), _generator(device, ts.seed + 2)
    step, best_loss = restore(resume, model, optimizer, data_gen, noise_gen, ts) if resume is not None else (0, None)
    precision, precision_why = resolve_precision(ts.precision, device)
    batch = ts.batch_size
    steps_per_epoch = math.ceil(n / batch)
    # Where training stands: epoch (0-based, in progress) and images of it done. Counted in
    # images, not steps, so that a new batch size on resume continues the same epoch.
    epoch, pos = resume_position(resume, n, batch) if resume is not None else (0, 0)
    total_steps = planned_steps(ts, step, epoch, pos, n)
    info = {
        "start_step": step,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "train_images": n,
        "eval_images": len(eval_x),
        "eval_split": eval_split,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "precision": precision,
        "precision_reason": precision_why,
        "model": model,  # for callbacks that sample from it (TensorBoard images); they must not change it
    }
    _emit(callbacks, "on_start", info)

    net = model
    if env.active:
        from torch.nn.parallel import DistributedDataParallel

        # Gradients are averaged over ranks during backward; the loss is scaled to match (train_step).
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = list(model.parameters())
    window, watch = LogWindow(device), DivergenceWatch(device)
    last_metrics = dict(resume.get("metrics", {})) if resume is not None else {}
    t_start, images_done = time.perf_counter(), 0
    result = TrainResult(model=model, step=step, epoch=epoch + (pos > 0), best_loss=best_loss, epoch_images=pos, train_images=n)
    model.train()

    # -- the loop: epochs of seeded orders, steps of global batches
    while step < total_steps or (pos >= n and epoch < ts.epochs):
        order = epoch_order(n, ts.seed, epoch).to(device)
        while pos < n and step < total_steps:
            # Binarisation and noise of the whole global batch, from the same generators on every
            # rank; each rank trains on its slice (with one process: all of it).
            x, eps = draw_batch(train_x, order[pos : pos + batch], settings.data.binarize, model, data_gen, noise_gen)
            lr = learning_rate(ts, step, steps_per_epoch, epochs_done=epoch + pos / n)
            lx_step, lz_step, grad_norm = train_step(net, optimizer, params, x, eps, lr, ts.grad_clip, precision, env, engine)
            window.add(lx_step, lz_step, grad_norm, len(x))
            watch.record(lx_step, lz_step, grad_norm)
            pos += len(x)
            step += 1
            _emit(callbacks, "on_step", step, epoch + 1)

            # -- a log row, and the stop and divergence checks (host syncs at log steps only)
            at_log = step % ts.log_every == 0 or pos >= n or step == total_steps
            stopping = should_stop is not None and should_stop()
            if env.active:
                stopping = stopping and at_log  # ranks agree at log steps only (one small all-reduce)
            if at_log or stopping:
                lx_total, lz_total, stopping, diverged, here = agree_at_log(window, watch, stopping, env)
                if diverged:
                    # Parameters after the bad step are unusable: nothing is saved from here on.
                    raise watch.error(step, here)
                images_done += window.images
                _emit(callbacks, "on_log", window.row(step, epoch + 1, lr, lx_total, lz_total))
            if stopping:
                rng = rng_state(data_gen, noise_gen)
                raise stop_now(model, optimizer, settings, epoch + 1, step, pos, rng, last_metrics, best_loss, callbacks, env)

        # -- end of an epoch (or an early stop at max_steps): evaluate and checkpoint
        metrics, best_loss, complete = end_epoch(
            model, optimizer, settings, eval_x, eval_split, epoch + 1, step, pos, n, rng_state(data_gen, noise_gen),
            best_loss, step >= total_steps, callbacks, env, engine,
        )
        result.epoch, result.epoch_images = epoch + 1, 0 if complete else pos
        if metrics is not None:
            result.eval = last_metrics = metrics
        if complete:
            epoch, pos = epoch + 1, 0
        window.restart()  # the evaluation and checkpoint are not training time

    elapsed = time.perf_counter() - t_start
    result.step, result.best_loss, result.seconds = step, best_loss, elapsed
    result.train_seconds = window.seconds
    result.images_per_second = images_done / window.seconds if window.seconds > 0 else 0.0
    _emit(callbacks, "on_end", {"step": step, "epoch": result.epoch, "eval": result.eval, "best_loss": best_loss,
                                "seconds": elapsed, "train_seconds": window.seconds, "img_per_s": result.images_per_second})
    return result
