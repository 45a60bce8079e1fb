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
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from drawcli.checkpoint import build_model, make_checkpoint, model_from_checkpoint, rng_state  # noqa: F401 - also imported from here
from drawcli.data import to_input
from drawcli.device import autocast, resolve_precision
from drawcli.distributed import DistEnv
from drawcli.errors import DrawError
from drawcli.model import DRAW
from drawcli.settings import Settings


class Interrupted(DrawError):
    """Training stopped on request (SIGINT/SIGTERM) after a checkpoint was written."""

    exit_code = 130  # the shell's convention for SIGINT

    def __init__(self, step: int, detail: str = "last.pt written"):
        super().__init__(f"interrupted at step {step}; {detail}")
        self.step = step


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
    epoch: int
    eval: dict = field(default_factory=dict)  # last evaluation: lx, lz, loss
    best_loss: float | None = None
    seconds: float = 0.0
    images_per_second: float = 0.0


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
    acc = torch.zeros(2, dtype=torch.float64, device=device if device.type != "mps" else "cpu")
    blocks = math.ceil(len(images) / batch_size)
    for block in range(env.rank, blocks, env.world):
        data_gen, noise_gen = _block_generators(device, seed, block)
        x = to_input(images[block * batch_size : (block + 1) * batch_size], binarize, data_gen)
        out = model(x, generator=noise_gen)
        acc += torch.stack([out.lx.sum(), out.lz.sum()]).to(acc)
    if env.active:
        import torch.distributed as dist

        dist.all_reduce(acc)
    model.train(was_training)
    n = len(images)
    lx_mean, lz_mean = (acc / n).tolist()
    return {"lx": lx_mean, "lz": lz_mean, "loss": lx_mean + lz_mean}


def learning_rate(ts, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step ``step`` (0-based: the step about to be taken).

    A function of the step and the settings alone, so a resumed run continues the schedule
    exactly where it stopped. Warm-up rises linearly to ``lr`` over ``warmup_steps``; then
    ``constant`` keeps it, ``cosine`` follows half a cosine from ``lr`` down to ``min_lr`` at the
    last step of ``train.epochs`` (max_steps only stops early, it does not shorten the curve), and
    ``step`` multiplies it by ``lr_decay`` every ``lr_step_epochs`` epochs.
    """
    if step < ts.warmup_steps:
        return ts.lr * (step + 1) / ts.warmup_steps
    if ts.lr_schedule == "cosine":
        total = ts.epochs * steps_per_epoch
        span = max(total - ts.warmup_steps, 1)
        progress = min(max(step - ts.warmup_steps, 0) / span, 1.0)
        return ts.min_lr + (ts.lr - ts.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if ts.lr_schedule == "step":
        return ts.lr * ts.lr_decay ** (step // (ts.lr_step_epochs * steps_per_epoch))
    return ts.lr


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


def make_adam(params, lr: float, betas: tuple[float, float]):
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
    state = dict(state, param_groups=[{**group, "fused": fused} for group in state["param_groups"]])
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr


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
) -> TrainResult:
    """Train DRAW on uint8 images (N, H, W); evaluate on ``eval_images`` after each epoch.

    Stops after ``settings.train.epochs`` epochs or at global step
    ``settings.train.max_steps``; either way the evaluation runs and a checkpoint
    is handed to the callbacks. ``resume`` is a checkpoint dict from a previous call.
    ``should_stop()`` is polled after every step (a signal handler sets it); when it
    turns true the finished step is checkpointed (``on_interrupt``) and
    :class:`Interrupted` is raised.

    Distributed (``env.active``): ``batch_size`` is the global batch. Every rank
    draws the binarisation and noise of the whole global batch from identical
    generators and trains on its contiguous slice, so W processes x B/W images
    follow exactly the trajectory of one process x B images (up to float sums).
    Callbacks should be given to rank 0 only. The stop flag is agreed on at log steps.
    """
    ts = settings.train
    train_x = torch.as_tensor(np.asarray(train_images)).to(device)
    eval_x = torch.as_tensor(np.asarray(eval_images)).to(device)
    n, height, width = train_x.shape
    if n == 0:
        raise DrawError("the training set is empty")
    if env.active and ts.batch_size % env.world:
        raise DrawError(
            f"train.batch_size {ts.batch_size} is the global batch and must be divisible by the {env.world} processes"
        )

    torch.manual_seed(ts.seed)  # parameter initialisation
    model = build_model(settings, height, width).to(device)
    optimizer = make_adam(model.parameters(), ts.lr, (ts.beta1, ts.beta2))
    data_gen, noise_gen = _generator(device, ts.seed + 1), _generator(device, ts.seed + 2)
    step, best_loss = 0, None
    if resume is not None:
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

    precision, precision_why = resolve_precision(ts.precision, device)
    batch = ts.batch_size
    steps_per_epoch = math.ceil(n / batch)
    # Where training stands: epoch (0-based, in progress) and images of it done. Counted in
    # images, not steps, so that a new batch size on resume continues the same epoch.
    epoch, pos = resume_position(resume, n, batch) if resume is not None else (0, 0)
    if epoch >= ts.epochs:
        total_steps = step
    else:
        total_steps = step + math.ceil((n - pos) / batch) + (ts.epochs - epoch - 1) * steps_per_epoch
    if ts.max_steps is not None:
        total_steps = min(total_steps, max(ts.max_steps, step))
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

        # Gradients are averaged over ranks during backward; the loss below is scaled to match.
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = list(model.parameters())
    lx_sum = torch.zeros((), device=device)
    lz_sum = torch.zeros((), device=device)
    grad_norm_sum, window_steps = torch.zeros((), device=device), 0  # mean gradient norm per log row
    # Divergence is tracked on the device (no host sync per step): the first step whose
    # L_x, L_z or gradient norm was not finite, and which of them it was (1, 2, 3).
    steps_run = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    bad_term = torch.zeros((), dtype=torch.int64, device=device)
    last_metrics = dict(resume.get("metrics", {})) if resume is not None else {}
    seen, t_log, t_start, images_done = 0, time.perf_counter(), time.perf_counter(), 0
    result = TrainResult(model=model, step=step, epoch=epoch + (pos > 0), best_loss=best_loss)
    model.train()

    while step < total_steps or (pos >= n and epoch < ts.epochs):
        order = epoch_order(n, ts.seed, epoch).to(device)
        while pos < n and step < total_steps:
            idx = order[pos : pos + batch]
            m = len(idx)
            # Binarisation and noise of the whole global batch, from the same generators on every
            # rank; each rank keeps its slice (with one process: all of it).
            x = to_input(train_x[idx], settings.data.binarize, data_gen)
            eps = torch.randn(model.steps, m, model.embed, device=device, generator=noise_gen)
            lo, hi = m * env.rank // env.world, m * (env.rank + 1) // env.world
            with autocast(device, precision):  # bfloat16: the LSTM products (see drawcli/model/fused.py)
                out = net(x[lo:hi], eps=eps[:, lo:hi].contiguous())
            # Mean over the global batch; DDP divides the summed gradients by the world size.
            loss = out.loss.sum() * (env.world / m)
            optimizer.zero_grad(set_to_none=True)
            lr = learning_rate(ts, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss.backward()
            # max_norm=inf still returns the norm: the divergence check below needs it.
            grad_norm = torch.nn.utils.clip_grad_norm_(params, ts.grad_clip if ts.grad_clip > 0 else math.inf)
            optimizer.step()
            # Running sums stay on the device: no host sync except when a log line is due.
            lx_step, lz_step = out.lx.detach().sum(), out.lz.detach().sum()
            lx_sum += lx_step
            lz_sum += lz_step
            grad_norm_sum += grad_norm.detach().to(grad_norm_sum)
            window_steps += 1
            steps_run += 1
            # 1 = L_x, 2 = L_z, 3 = gradient norm: the first non-finite of the three (0 if none).
            finite = torch.isfinite(torch.stack([lx_step, lz_step, grad_norm.to(lx_step)]))
            term = torch.where(finite.all(), 0, (~finite).int().argmax() + 1)
            newly_bad = (first_bad < 0) & (term > 0)
            first_bad = torch.where(newly_bad, steps_run, first_bad)
            bad_term = torch.where(newly_bad, term, bad_term)
            seen += m
            pos += m
            step += 1
            _emit(callbacks, "on_step", step, epoch + 1)
            at_log = step % ts.log_every == 0 or pos >= n or step == total_steps
            stopping = should_stop is not None and should_stop()
            if env.active:
                # Ranks agree at log steps only (one small all-reduce), so they stop together.
                stopping = stopping and at_log
            if at_log or stopping:
                local_bad = first_bad.item() >= 0
                totals = [lx_sum.item(), lz_sum.item(), float(stopping), float(local_bad)]
                if env.active:
                    import torch.distributed as dist

                    packed = torch.tensor(totals, dtype=torch.float64, device=device)
                    dist.all_reduce(packed)
                    totals = packed.tolist()
                    stopping = stopping or totals[2] > 0
                if totals[3] > 0:
                    # Parameters after the bad step are unusable: nothing is saved from here on.
                    if local_bad:
                        bad_step = step - int(steps_run.item()) + int(first_bad.item())
                        what = {1: "L_x", 2: "L_z", 3: "the gradient norm"}[int(bad_term.item())]
                        where = f"{what} was not finite at step {bad_step}"
                    else:
                        where = f"a loss or gradient was not finite on another process before step {step}"
                    raise DrawError(
                        f"training diverged: {where}; the last good checkpoint is kept "
                        "(resume it with --resume, perhaps with a lower --lr)"
                    )
                lx, lz = totals[0] / seen, totals[1] / seen
                now = time.perf_counter()
                row = {
                    "kind": "train",
                    "step": step,
                    "epoch": epoch + 1,
                    "lx": lx,
                    "lz": lz,
                    "loss": lx + lz,
                    "img_per_s": seen / max(now - t_log, 1e-9),
                    "lr": lr,
                    "grad_norm": grad_norm_sum.item() / max(window_steps, 1),  # before clipping, mean over the rows' steps
                    "time": time.time(),
                }
                _emit(callbacks, "on_log", row)
                images_done += seen
                lx_sum.zero_()
                lz_sum.zero_()
                grad_norm_sum.zero_()
                seen, t_log, window_steps = 0, now, 0
            if stopping:
                ckpt = make_checkpoint(
                    model, optimizer, settings, epoch + 1, step, rng_state(data_gen, noise_gen), last_metrics, best_loss,
                    epoch_images=pos,
                )
                _emit(callbacks, "on_interrupt", ckpt)
                if env.active:
                    import torch.distributed as dist

                    dist.barrier()  # nobody exits (and gets the job torn down) before rank 0 has saved
                raise Interrupted(step)

        # End of an epoch, or an early stop at max_steps: evaluate and checkpoint as usual.
        # A stop inside an epoch checkpoints with epoch_images > 0 (last.pt, not an epoch file).
        complete = pos >= n
        metrics = evaluate(model, eval_x, settings.data.binarize, ts.eval_batch_size, env=env)
        is_best = best_loss is None or metrics["loss"] < best_loss
        if is_best:
            best_loss = metrics["loss"]
        row = {"kind": "eval", "split": eval_split, "step": step, "epoch": epoch + 1, **metrics, "time": time.time()}
        _emit(callbacks, "on_epoch", row)
        ckpt = make_checkpoint(
            model, optimizer, settings, epoch + 1, step, rng_state(data_gen, noise_gen), metrics, best_loss,
            epoch_images=0 if complete else pos,
        )
        _emit(callbacks, "on_checkpoint", ckpt, is_best)
        result.eval, result.epoch = metrics, epoch + 1
        last_metrics = metrics
        if complete:
            epoch, pos = epoch + 1, 0

    elapsed = time.perf_counter() - t_start
    result.step, result.best_loss, result.seconds = step, best_loss, elapsed
    result.images_per_second = images_done / elapsed if elapsed > 0 else 0.0
    _emit(callbacks, "on_end", {"step": step, "epoch": result.epoch, "eval": result.eval, "best_loss": best_loss,
                                "seconds": elapsed, "img_per_s": result.images_per_second})
    return result
