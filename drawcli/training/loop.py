"""Training and evaluation loops. No printing and no files here: callbacks do that.

``train`` receives everything it needs (settings, images, device, callbacks,
an optional checkpoint to resume from), so tests call it directly. It builds one
:class:`~drawcli.training.state.TrainState` (``start``) and hands it to the loop's sections:
``train_epoch`` (its steps, each followed by ``check_in``: log rows, stop and divergence checks),
``stop_now`` and ``end_epoch``; ``finish`` makes the result.

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

import numpy as np
import torch

from drawcli.core.device import autocast, resolve_precision
from drawcli.core.errors import DrawError, Interrupted
from drawcli.data.arrays import eval_split_name
from drawcli.data.loading import to_input
from drawcli.model import DRAW, count_parameters
from drawcli.runs.checkpoint import build_model
from drawcli.settings import Settings, TrainSettings
from drawcli.training.distributed import DistEnv, check_global_batch
from drawcli.training.state import DivergenceWatch, LogWindow, TrainResult, TrainState, emit


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


def stop_now(state: TrainState) -> Interrupted:
    """A stop request inside an epoch: checkpoint the finished step (``on_interrupt``); returns the exception to raise."""
    state.emit("on_interrupt", state.checkpoint(state.last_metrics, epoch_images=state.pos))
    if state.env.active:
        import torch.distributed as dist

        dist.barrier()  # nobody exits (and gets the job torn down) before rank 0 has saved
    return Interrupted(state.step)


def end_epoch(state: TrainState) -> None:
    """End of an epoch, or an early stop at max_steps: evaluate (when due), report, checkpoint.

    The evaluation runs every ``train.eval_every`` epochs, after the run's last step and at a
    stop inside an epoch; a checkpoint without one carries no metrics and is never best.pt.
    A stop inside an epoch checkpoints with epoch_images > 0 (last.pt, not an epoch file).
    Then the state moves on: the result says how far training got, the next epoch starts when
    this one is complete, and the log window's clock restarts.
    """
    settings, epoch, pos = state.settings, state.epoch + 1, state.pos
    complete = pos >= state.n
    metrics, is_best = None, False
    if state.step >= state.total_steps or not complete or epoch % settings.train.eval_every == 0:
        metrics = evaluate(state.model, state.eval_x, settings.data.binarize, settings.train.eval_batch_size, env=state.env,
                           engine=state.engine)
        is_best = state.best_loss is None or metrics["loss"] < state.best_loss
        if is_best:
            state.best_loss = metrics["loss"]
        state.emit("on_epoch", {"kind": "eval", "split": state.eval_split, "step": state.step, "epoch": epoch, **metrics,
                                "epoch_complete": complete, "time": time.time()})
    state.emit("on_checkpoint", state.checkpoint(metrics or {}, epoch_images=0 if complete else pos), is_best)
    state.result.epoch, state.result.epoch_images = epoch, 0 if complete else pos
    if metrics is not None:
        state.result.eval = state.last_metrics = metrics
    if complete:
        state.epoch, state.pos = epoch, 0
    state.window.restart()  # the evaluation and checkpoint are not training time


def _as_device_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images as a tensor on ``device``: a tensor (on any device) as it is, anything else through numpy."""
    if isinstance(images, torch.Tensor):
        return images.to(device)
    return torch.as_tensor(np.asarray(images)).to(device)


def start(settings: Settings, train_x: torch.Tensor, eval_x: torch.Tensor, device: torch.device, callbacks,
          resume: dict | None, env: DistEnv, engine, init_weights: dict | None) -> TrainState:
    """The state training starts from (see :func:`train` for the arguments): the model, optimizer and
    generators, fresh or continued from checkpoint ``resume``; the callbacks have had ``on_start``."""
    ts = settings.train
    n, *shape = train_x.shape  # (N, H, W) grey, (N, C, H, W) colour
    channels, height, width = (1, *shape) if len(shape) == 2 else shape
    if n == 0:
        raise DrawError("the training set is empty")
    check_global_batch(ts.batch_size, env.world)

    torch.manual_seed(ts.seed)  # parameter initialisation
    model = build_model(settings, height, width, channels).to(device)
    if init_weights is not None and resume is None:
        model.load_state_dict(init_weights)
    optimizer = make_adam(model.parameters(), ts.lr, (ts.beta1, ts.beta2))
    data_gen, noise_gen = _generator(device, ts.seed + 1), _generator(device, ts.seed + 2)
    step, best_loss = restore(resume, model, optimizer, data_gen, noise_gen, ts) if resume is not None else (0, None)
    precision, precision_why = resolve_precision(ts.precision, device)
    # Where training stands: epoch (0-based, in progress) and images of it done.
    epoch, pos = resume_position(resume, n, ts.batch_size) if resume is not None else (0, 0)
    total_steps = planned_steps(ts, step, epoch, pos, n)
    eval_split = eval_split_name(settings.data.validation)
    emit(callbacks, "on_start", {
        "start_step": step,
        "total_steps": total_steps,
        "steps_per_epoch": math.ceil(n / ts.batch_size),
        "train_images": n,
        "eval_images": len(eval_x),
        "eval_split": eval_split,
        "parameters": count_parameters(model),
        "device": str(device),
        "precision": precision,
        "precision_reason": precision_why,
        "model": model,  # for callbacks that sample from it (TensorBoard images); they must not change it
    })

    net = model
    if env.active:
        from torch.nn.parallel import DistributedDataParallel

        # Gradients are averaged over ranks during backward; the loss is scaled to match (train_step).
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return TrainState(
        settings=settings, model=model, net=net, optimizer=optimizer, data_gen=data_gen, noise_gen=noise_gen,
        train_x=train_x, eval_x=eval_x, eval_split=eval_split, device=device, env=env, engine=engine,
        precision=precision, callbacks=callbacks, step=step, epoch=epoch, pos=pos, total_steps=total_steps,
        best_loss=best_loss, last_metrics=dict(resume.get("metrics", {})) if resume is not None else {},
        window=LogWindow(device), watch=DivergenceWatch(device), started=time.perf_counter(),
        result=TrainResult(model=model, step=step, epoch=epoch + (pos > 0), best_loss=best_loss, epoch_images=pos, train_images=n),
    )


def train_epoch(state: TrainState, should_stop=None) -> None:
    """The steps of the epoch in progress, in its seeded order, up to its end or the last planned step."""
    ts, n = state.settings.train, state.n
    order = epoch_order(n, ts.seed, state.epoch).to(state.device)
    while state.pos < n and state.step < state.total_steps:
        # Binarisation and noise of the whole global batch, from the same generators on every
        # rank; each rank trains on its slice (with one process: all of it).
        x, eps = draw_batch(state.train_x, order[state.pos : state.pos + ts.batch_size], state.settings.data.binarize,
                            state.model, state.data_gen, state.noise_gen)
        lr = learning_rate(ts, state.step, state.steps_per_epoch, epochs_done=state.epoch + state.pos / n)
        lx_step, lz_step, grad_norm = train_step(state.net, state.optimizer, state.params, x, eps, lr, ts.grad_clip,
                                                 state.precision, state.env, state.engine)
        state.window.add(lx_step, lz_step, grad_norm, len(x))
        state.watch.record(lx_step, lz_step, grad_norm)
        state.pos += len(x)
        state.step += 1
        state.emit("on_step", state.step, state.epoch + 1)
        check_in(state, lr, should_stop)


def check_in(state: TrainState, lr: float, should_stop=None) -> None:
    """After a step: a log row, and the stop and divergence checks (host syncs at log steps only).
    Raises the run's divergence error, or :class:`Interrupted` once the stop's checkpoint is handed over."""
    step, env = state.step, state.env
    at_log = step % state.settings.train.log_every == 0 or state.pos >= state.n or step == state.total_steps
    stopping = should_stop is not None and should_stop()
    if env.active:
        stopping = stopping and at_log  # ranks agree at log steps only (one small all-reduce)
    if at_log or stopping:
        lx_total, lz_total, stopping, diverged, here = agree_at_log(state.window, state.watch, stopping, env)
        if diverged:
            # Parameters after the bad step are unusable: nothing is saved from here on.
            raise state.watch.error(step, here)
        state.images_done += state.window.images
        state.emit("on_log", state.window.row(step, state.epoch + 1, lr, lx_total, lz_total))
    if stopping:
        raise stop_now(state)


def finish(state: TrainState) -> TrainResult:
    """The result of the call, also handed to the callbacks (``on_end``)."""
    result, window = state.result, state.window
    result.step, result.best_loss, result.seconds = state.step, state.best_loss, time.perf_counter() - state.started
    result.train_seconds = window.seconds
    result.images_per_second = state.images_done / window.seconds if window.seconds > 0 else 0.0
    state.emit("on_end", {"step": state.step, "epoch": result.epoch, "eval": result.eval, "best_loss": state.best_loss,
                          "seconds": result.seconds, "train_seconds": window.seconds, "img_per_s": result.images_per_second})
    return result


def train(
    settings: Settings,
    train_images: np.ndarray | torch.Tensor,
    eval_images: np.ndarray | torch.Tensor,
    device: torch.device,
    callbacks: list | tuple = (),
    resume: dict | None = None,
    should_stop=None,
    env: DistEnv = DistEnv(),
    engine=None,
    init_weights: dict | None = None,
) -> TrainResult:
    """Train DRAW on uint8 images, (N, H, W) grey or (N, C, H, W) colour; evaluate on
    ``eval_images`` every ``train.eval_every`` epochs and at the end.

    Stops after ``settings.train.epochs`` epochs or at global step
    ``settings.train.max_steps``; either way the evaluation runs and a checkpoint
    is handed to the callbacks (one after every epoch). ``resume`` is a checkpoint dict from a previous call.
    ``should_stop()`` is polled after every step (a signal handler sets it); when it
    turns true the finished step is checkpointed (``on_interrupt``) and
    :class:`Interrupted` is raised. The evaluation rows name the split as data.validation
    does (drawcli.data.arrays.eval_split_name: "test" or "valid").

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
    train_x, eval_x = _as_device_tensor(train_images, device), _as_device_tensor(eval_images, device)
    state = start(settings, train_x, eval_x, device, callbacks, resume, env, engine or settings.run.engine, init_weights)
    state.model.train()
    # Epochs of seeded orders, steps of global batches; each epoch's end (or an early stop at
    # max_steps) evaluates and checkpoints.
    while state.step < state.total_steps or (state.pos >= state.n and state.epoch < settings.train.epochs):
        train_epoch(state, should_stop)
        end_epoch(state)
    return finish(state)
