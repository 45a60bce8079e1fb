"""Training and evaluation loops. No printing and no files here: callbacks do that.

``train`` receives everything it needs (settings, images, device, callbacks,
an optional checkpoint to resume from), so tests call it directly.

Determinism: data order for epoch e is a permutation drawn from a generator
seeded with (seed, e); binarisation and the model's noise use their own
generators whose states travel in every checkpoint. The step counter alone
then says where in an epoch to continue.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from drawcli import __version__
from drawcli.checkpoint import FORMAT, FORMAT_VERSION
from drawcli.data import to_input
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


def build_model(settings: Settings, height: int, width: int) -> DRAW:
    m = settings.model
    return DRAW(
        height=height,
        width=width,
        steps=m.steps,
        hidden=m.hidden,
        embed=m.embed,
        attention=m.attention,
        read_n=m.read_n,
        write_n=m.write_n,
    )


def model_from_checkpoint(ckpt: dict, device) -> DRAW:
    """Rebuild the model a checkpoint describes and load its weights."""
    try:
        model = DRAW(**ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DrawError(f"checkpoint does not match the DRAW model it describes: {first[:200]}") from None
    return model.to(device)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: reproducible from (seed, epoch) alone."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@torch.no_grad()
def evaluate(
    model: DRAW,
    images: torch.Tensor,
    binarize: str,
    batch_size: int,
    seed: int = 1234,
) -> dict[str, float]:
    """Mean L_x, L_z and L in nats per image over ``images`` (uint8, on the model's device).

    Uses a fixed binarisation and fixed posterior noise (seeded), so numbers from
    different epochs and runs are comparable. Sums accumulate in float64.
    """
    device = images.device
    was_training = model.training
    model.eval()
    data_gen, noise_gen = _generator(device, seed), _generator(device, seed + 1)
    lx = torch.zeros((), dtype=torch.float64, device=device if device.type != "mps" else "cpu")
    lz = torch.zeros_like(lx)
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size], binarize, data_gen)
        out = model(x, generator=noise_gen)
        lx += out.lx.sum().to(lx)
        lz += out.lz.sum().to(lz)
    model.train(was_training)
    n = len(images)
    lx_mean, lz_mean = lx.item() / n, lz.item() / n
    return {"lx": lx_mean, "lz": lz_mean, "loss": lx_mean + lz_mean}


def rng_state(data_gen: torch.Generator, noise_gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"data": data_gen.get_state(), "noise": noise_gen.get_state()}


def make_checkpoint(
    model: DRAW, optimizer, settings: Settings, epoch: int, step: int, rng: dict, metrics: dict, best_loss
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_config": model.config(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "settings": settings.to_dict(),
        "rng": {k: v.cpu() for k, v in rng.items()},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "best_loss": None if best_loss is None else float(best_loss),
    }


def train(
    settings: Settings,
    train_images: np.ndarray | torch.Tensor,
    eval_images: np.ndarray | torch.Tensor,
    device: torch.device,
    callbacks: list | tuple = (),
    resume: dict | None = None,
    eval_split: str = "test",
    should_stop=None,
) -> TrainResult:
    """Train DRAW on uint8 images (N, H, W); evaluate on ``eval_images`` after each epoch.

    Stops after ``settings.train.epochs`` epochs or at global step
    ``settings.train.max_steps``; either way the evaluation runs and a checkpoint
    is handed to the callbacks. ``resume`` is a checkpoint dict from a previous call.
    ``should_stop()`` is polled after every step (a signal handler sets it); when it
    turns true the finished step is checkpointed (``on_interrupt``) and
    :class:`Interrupted` is raised.
    """
    ts = settings.train
    train_x = torch.as_tensor(np.asarray(train_images)).to(device)
    eval_x = torch.as_tensor(np.asarray(eval_images)).to(device)
    n, height, width = train_x.shape
    if n == 0:
        raise DrawError("the training set is empty")

    torch.manual_seed(ts.seed)  # parameter initialisation
    model = build_model(settings, height, width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=ts.lr, betas=(ts.beta1, ts.beta2))
    data_gen, noise_gen = _generator(device, ts.seed + 1), _generator(device, ts.seed + 2)
    step, best_loss = 0, None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        for group in optimizer.param_groups:  # a resumed run may change the learning rate
            group["lr"] = ts.lr
        data_gen.set_state(resume["rng"]["data"].cpu())
        noise_gen.set_state(resume["rng"]["noise"].cpu())
        step, best_loss = int(resume["step"]), resume.get("best_loss")

    batch = ts.batch_size
    steps_per_epoch = math.ceil(n / batch)
    total_steps = ts.epochs * steps_per_epoch
    if ts.max_steps is not None:
        total_steps = min(total_steps, ts.max_steps)
    info = {
        "start_step": step,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "train_images": n,
        "eval_images": len(eval_x),
        "eval_split": eval_split,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
    }
    _emit(callbacks, "on_start", info)

    params = list(model.parameters())
    lx_sum = torch.zeros((), device=device)
    lz_sum = torch.zeros((), device=device)
    # Divergence is tracked on the device (no host sync per step): the first step whose
    # L_x, L_z or gradient norm was not finite, and which of them it was (1, 2, 3).
    steps_run = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    bad_term = torch.zeros((), dtype=torch.int64, device=device)
    last_metrics = dict(resume.get("metrics", {})) if resume is not None else {}
    seen, t_log, t_start, images_done = 0, time.perf_counter(), time.perf_counter(), 0
    result = TrainResult(model=model, step=step, epoch=step // steps_per_epoch, best_loss=best_loss)
    model.train()

    while step < total_steps:
        epoch = step // steps_per_epoch  # 0-based epoch in progress
        order = epoch_order(n, ts.seed, epoch).to(device)
        stop_in_epoch = min((epoch + 1) * steps_per_epoch, total_steps)
        while step < stop_in_epoch:
            i = step - epoch * steps_per_epoch
            idx = order[i * batch : (i + 1) * batch]
            x = to_input(train_x[idx], settings.data.binarize, data_gen)
            out = model(x, generator=noise_gen)
            loss = out.loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # max_norm=inf still returns the norm: the divergence check below needs it.
            grad_norm = torch.nn.utils.clip_grad_norm_(params, ts.grad_clip if ts.grad_clip > 0 else math.inf)
            optimizer.step()
            # Running sums stay on the device: no host sync except when a log line is due.
            lx_step, lz_step = out.lx.detach().sum(), out.lz.detach().sum()
            lx_sum += lx_step
            lz_sum += lz_step
            steps_run += 1
            term = torch.where(
                ~torch.isfinite(lx_step), 1, torch.where(~torch.isfinite(lz_step), 2, torch.where(~torch.isfinite(grad_norm), 3, 0))
            )
            newly_bad = (first_bad < 0) & (term > 0)
            first_bad = torch.where(newly_bad, steps_run, first_bad)
            bad_term = torch.where(newly_bad, term, bad_term)
            seen += len(idx)
            step += 1
            _emit(callbacks, "on_step", step, epoch + 1)
            stopping = should_stop is not None and should_stop()
            if step % ts.log_every == 0 or step == stop_in_epoch or stopping:
                if first_bad.item() >= 0:
                    # Parameters after the bad step are unusable: nothing is saved from here on.
                    bad_step = step - int(steps_run.item()) + int(first_bad.item())
                    what = {1: "L_x", 2: "L_z", 3: "the gradient norm"}[int(bad_term.item())]
                    raise DrawError(
                        f"training diverged: {what} was not finite at step {bad_step}; the last good "
                        "checkpoint is kept (resume it with --resume, perhaps with a lower --lr)"
                    )
                lx, lz = lx_sum.item() / seen, lz_sum.item() / seen
                now = time.perf_counter()
                row = {
                    "kind": "train",
                    "step": step,
                    "epoch": epoch + 1,
                    "lx": lx,
                    "lz": lz,
                    "loss": lx + lz,
                    "img_per_s": seen / max(now - t_log, 1e-9),
                    "lr": optimizer.param_groups[0]["lr"],
                    "time": time.time(),
                }
                _emit(callbacks, "on_log", row)
                images_done += seen
                lx_sum.zero_()
                lz_sum.zero_()
                seen, t_log = 0, now
            if stopping:
                ckpt = make_checkpoint(
                    model, optimizer, settings, epoch + 1, step, rng_state(data_gen, noise_gen), last_metrics, best_loss
                )
                _emit(callbacks, "on_interrupt", ckpt)
                raise Interrupted(step)

        # End of an epoch, or an early stop at max_steps: evaluate and checkpoint as usual.
        metrics = evaluate(model, eval_x, settings.data.binarize, ts.eval_batch_size)
        is_best = best_loss is None or metrics["loss"] < best_loss
        if is_best:
            best_loss = metrics["loss"]
        row = {"kind": "eval", "split": eval_split, "step": step, "epoch": epoch + 1, **metrics, "time": time.time()}
        _emit(callbacks, "on_epoch", row)
        ckpt = make_checkpoint(
            model, optimizer, settings, epoch + 1, step, rng_state(data_gen, noise_gen), metrics, best_loss
        )
        _emit(callbacks, "on_checkpoint", ckpt, is_best)
        result.eval, result.epoch = metrics, epoch + 1
        last_metrics = metrics

    elapsed = time.perf_counter() - t_start
    result.step, result.best_loss, result.seconds = step, best_loss, elapsed
    result.images_per_second = images_done / elapsed if elapsed > 0 else 0.0
    _emit(callbacks, "on_end", {"step": step, "epoch": result.epoch, "eval": result.eval, "best_loss": best_loss,
                                "seconds": elapsed, "img_per_s": result.images_per_second})
    return result
