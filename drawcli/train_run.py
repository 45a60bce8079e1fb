"""`draw train`: from resolved settings to a finished run directory.

Resolves the device, data and run directory (new or resumed), then calls
:func:`drawcli.train.train` with the recorder and progress callbacks.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path

from rich.console import Console

from drawcli import checkpoint as ckpt_io
from drawcli import distributed, runs
from drawcli.errors import DrawError
from drawcli.settings import Settings, build_settings, check_against_image, from_dict


def settings_for_resume(run_ref: str, runs_dir: str, config, flags, sets) -> tuple[Settings, Path, dict]:
    """Saved settings of a run < --config < flags < --set; model shape may not change.

    ``train.max_steps`` is not inherited: a resumed run trains to its epochs
    unless --max-steps is given again (as a global step count).
    """
    run_dir = runs.resolve_run(run_ref, Path(runs_dir))
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise DrawError(f"run {run_dir.name!r} has no last.pt checkpoint to resume from")
    ckpt = ckpt_io.load(last)
    for key in ("optimizer", "rng"):  # optional for sampling and evaluation, needed to continue training
        if key not in ckpt:
            raise DrawError(f"{last}: checkpoint lacks {key!r}, so the run cannot be resumed")
    saved = from_dict(ckpt["settings"])
    saved = dataclasses.replace(saved, train=dataclasses.replace(saved.train, max_steps=None))
    settings = build_settings(config, flags, sets, base=saved)
    if settings.model != saved.model:
        changed = [
            f"{f.name} {getattr(saved.model, f.name)!r} -> {getattr(settings.model, f.name)!r}"
            for f in dataclasses.fields(saved.model)
            if getattr(saved.model, f.name) != getattr(settings.model, f.name)
        ]
        raise DrawError(f"--resume {run_dir.name}: cannot change the model shape ({'; '.join(changed)})")
    if settings.data.dataset != saved.data.dataset:
        raise DrawError(f"--resume {run_dir.name}: cannot change the data set ({saved.data.dataset} -> {settings.data.dataset})")
    name = settings.run.name
    if name is not None and name != run_dir.name:
        raise DrawError(f"--resume {run_dir.name} cannot be combined with --name {name}")
    settings = dataclasses.replace(settings, run=dataclasses.replace(settings.run, name=run_dir.name))
    return settings, run_dir, ckpt


def apply_threads(settings: Settings, device, env: distributed.DistEnv, console: Console) -> None:
    """Set this process's CPU threads from run.threads or the policy in drawcli.device."""
    import torch

    from drawcli.device import thread_policy

    threads, why = thread_policy(settings.run.threads, device, env.world)
    if threads is None:
        return
    torch.set_num_threads(threads)
    console.print(f"threads: {threads} per process ({why})", highlight=False)


class StopOnSignal:
    """SIGINT or SIGTERM asks training to stop after the current step (and checkpoint).

    The handler only sets a flag; a second SIGINT raises KeyboardInterrupt at once,
    which still never leaves a partial checkpoint (every write is an atomic replace).
    """

    def __init__(self, announce: bool = True):
        self.flag = False
        self.announce = announce
        self._old = {}

    def requested(self) -> bool:
        return self.flag

    def _handle(self, signum, frame):
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True
        if not self.announce:
            return
        # os.write: safe inside a signal handler, unlike buffered or rich output.
        os.write(2, b"\nstopping after this step to save last.pt (press Ctrl-C again to quit at once)\n")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def run_train(settings: Settings, resume: tuple[Path, dict] | None = None, console: Console | None = None) -> Path:
    """Train according to ``settings`` (in a torchrun job when WORLD_SIZE > 1); returns the run directory."""
    env = distributed.env_from_os()
    try:
        run_dir = _run(settings, resume, console, env)
        if env.active:
            # Leave together: a rank that tears its process group down while rank 0 is still
            # writing files can abort in gloo's threads ("terminate called without an active exception").
            distributed.barrier()
        return run_dir
    finally:
        if env.active:
            distributed.shutdown()


def _run(settings: Settings, resume, console: Console | None, env: distributed.DistEnv) -> Path:
    from drawcli.data import MissingDataset, load_splits, resolve_data_dir
    from drawcli.device import describe, resolve_device
    from drawcli.progress import TrainProgress, summary_table
    from drawcli.tensorboard_log import TB_DIR, TensorBoardLogger, use_tensorboard
    from drawcli.train import Interrupted, train

    tensorboard = use_tensorboard(settings.run.tensorboard)  # run.tensorboard=true without the package: refused here
    # Rank 0 alone speaks; the others compute.
    console = console or Console(quiet=not env.is_main)
    if env.active:
        device = distributed.init(env, settings.run.device)
        console.print(f"device: {describe(device)} x {env.world} processes", highlight=False)
    else:
        device = resolve_device(settings.run.device)
        console.print(f"device: {describe(device)}", highlight=False)
    apply_threads(settings, device, env, console)

    data_dir = resolve_data_dir(settings.data.data_dir)
    try:
        splits = load_splits(settings.data.dataset, data_dir, settings.data.validation)
    except MissingDataset:
        from drawcli.download import ensure_dataset

        ensure_dataset(settings.data.dataset, data_dir, console=console)
        splits = load_splits(settings.data.dataset, data_dir, settings.data.validation)
    check_against_image(settings, splits.spec.height, splits.spec.width)
    binarize = settings.data.binarize
    if splits.spec.prebinarized and binarize != "none":
        # Already 0/1: every binarisation is the identity; record what really happens.
        settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, binarize="none"))
        console.print(f"{splits.spec.name} is already binarised: data.binarize={binarize} has no effect", highlight=False)

    if env.active and settings.train.batch_size % env.world:
        raise DrawError(
            f"train.batch_size {settings.train.batch_size} is the global batch and must be divisible "
            f"by the {env.world} processes"
        )
    # Rank 0 alone creates the run directory and writes its files; it tells the others how that went.
    run_dir, ckpt, error = None, None, None
    if resume is not None:
        run_dir, ckpt = resume
    if env.is_main:
        try:
            if run_dir is None:
                run_dir = runs.new_run_dir(Path(settings.run.runs_dir), settings.run.name)
            settings = dataclasses.replace(settings, run=dataclasses.replace(settings.run, name=run_dir.name))
            runs.write_config(run_dir, settings)
        except DrawError as e:
            error = str(e)
    distributed.agree(error, env)
    if error is not None:
        raise DrawError(error)
    if env.is_main:
        console.print(f"run: {run_dir}" + (f" (resuming at step {ckpt['step']})" if ckpt else ""), highlight=False)

    progress = TrainProgress(console)
    callbacks = [runs.RunRecorder(run_dir), progress] if env.is_main else []
    tb = TensorBoardLogger(run_dir / TB_DIR, seed=settings.train.seed) if tensorboard and env.is_main else None
    callbacks += [tb] if tb is not None else []
    try:
        with StopOnSignal(announce=env.is_main) as stop:
            result = train(
                settings,
                splits.train,
                splits.eval,
                device,
                callbacks=callbacks,
                resume=ckpt,
                eval_split=splits.eval_name,
                should_stop=stop.requested,
                env=env,
            )
    except Interrupted as e:
        hint = f"saved {run_dir / 'checkpoints' / 'last.pt'}; continue with: draw train --resume {run_dir.name}"
        raise Interrupted(e.step, hint) from None
    finally:
        progress.close()
        if tb is not None:
            tb.close()  # readable event files however training ended
    if not env.is_main:
        return run_dir
    if result.eval and settings.train.eval_samples:
        from drawcli.evaluate import iwae_report, report_line

        console.print(f"importance-weighted bound with K={settings.train.eval_samples} on {splits.eval_name}...", highlight=False)
        report = iwae_report(result.model, splits.eval, settings.data.binarize, settings.train.eval_samples, seed=settings.train.seed)
        console.print(report_line(report, splits.eval_name), highlight=False)
        row = {k: v for k, v in report.items() if k != "binarization"}
        runs.RunRecorder(run_dir).on_epoch(
            {"kind": "iwae", "split": splits.eval_name, "step": result.step, "epoch": result.epoch, **row,
             "binarization": report["binarization"]["description"]}
        )
    if result.eval:
        summary = {
            "step": result.step,
            "epoch": result.epoch,
            "eval": result.eval,
            "best_loss": result.best_loss,
            "seconds": result.seconds,
            "img_per_s": result.images_per_second,
        }
        console.print(summary_table(run_dir, summary, splits.eval_name))
    else:
        console.print(f"nothing to do: run {run_dir.name} is already at step {result.step}", highlight=False)
    return run_dir
