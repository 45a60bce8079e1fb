"""`draw train`: from resolved settings to a finished run directory.

Resolves the device, data and run directory (new or resumed), then calls
:func:`drawcli.train.train` with the recorder and progress callbacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from drawcli import checkpoint as ckpt_io
from drawcli import distributed, runs
from drawcli.errors import DrawError
from drawcli.progress import make_console
from drawcli.settings import Settings, build_settings, changed_settings, check_against_image, from_dict

# Settings a resumed run may not change, and why: with them the continued run would no longer
# be the run its config.yaml describes.
FIXED_ON_RESUME = {
    "train.seed": "the data order, binarisation and noise streams derive from it",
    "data.binarize": "the model would be trained on differently binarised images from here on",
    "data.validation": "best.pt would compare losses on different evaluation splits",
}


def settings_for_resume(run_ref: str, runs_dir: str, config, flags, sets) -> tuple[Settings, Path, dict]:
    """Saved settings of a run < --config < flags < --set; model shape may not change.

    ``train.max_steps`` is not inherited: a resumed run trains to its epochs
    unless --max-steps is given again (as a global step count).
    """
    run_dir = runs.resolve_run(run_ref, Path(runs_dir))
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        if not runs.has_checkpoint(run_dir):
            raise DrawError(
                f"run {run_dir.name!r} has no checkpoint to resume from (it stopped before its first one); "
                f"delete {run_dir.absolute()} and train it again"
            )
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
    changes = changed_settings(saved, settings)
    for key, why in FIXED_ON_RESUME.items():
        if key in changes:
            old, new = changes[key]
            raise DrawError(
                f"--resume {run_dir.name}: {key} cannot change ({old!r} -> {new!r}): {why}, so the run would no "
                f"longer be reproducible; start a new run for that"
            )
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


def apply_engine(settings: Settings, device, console: Console) -> str:
    """run.engine resolved for training on this device (drawcli/engine_choice.py), said in one line.

    The native engine's library is built once per machine (20-40 s; a line says so first).
    Without a C++ compiler, or with DRAWCLI_NATIVE=0, `auto` runs the Python engine: the same
    numbers, slower; an explicit `native` that cannot run ends the command in one line."""
    from drawcli.engine_choice import choose_engine

    say = lambda line: console.print(line, highlight=False)
    choice = choose_engine(settings.run.engine, device, settings.model.attention, "train", say=say)
    say(choice.line)
    return choice.engine


def train_command(config: str | None, flags: dict, sets: list[str] | None, resume: str | None = None,
                  nproc: int | None = None, argv: list[str] | None = None) -> Path | None:
    """`draw train`: a new run, a resumed one (--resume), or N processes of either (--nproc N > 1).

    Settings are checked once, before anything starts; with --nproc the answers one process would
    give (batch divisibility, a locked or existing run) come before the N processes are launched.
    """
    if nproc is not None and nproc < 1:
        raise DrawError(f"--nproc must be at least 1, got {nproc}")
    # Refuse bad settings once, before touching a run or launching; a resume's rules between keys
    # are checked against the run's own settings (settings_for_resume).
    base = build_settings(config, flags, sets, together=resume is None)
    if nproc is not None and nproc > 1:
        distributed.check_global_batch(base.train.batch_size, nproc, launcher=True)
        if resume is not None:
            runs.check_not_locked(runs.resolve_run(resume, Path(base.run.runs_dir)))
        else:
            runs.check_new_run(Path(base.run.runs_dir), base.run.name)
        argv = list(sys.argv if argv is None else argv)
        distributed.launch(nproc, ["train", *distributed.strip_nproc(argv[argv.index("train") + 1 :])])
        return None
    if resume is not None:
        return resume_run(resume, base.run.runs_dir, config, flags, sets)
    return run_train(base)


def resume_run(run_ref: str, runs_dir: str, config, flags, sets) -> Path:
    """`draw train --resume`: continue a run, holding its lock (rank 0 of a job holds it for all).

    The lock is taken once the checkpoint has been read and checked, so that a refused resume
    writes nothing; last.pt is then checked to be the file that was read.
    """
    run_dir = runs.resolve_run(run_ref, Path(runs_dir))
    if distributed.is_quiet_rank():  # rank 0 of the job holds the lock (and may hold it already)
        settings, run_dir, ckpt = settings_for_resume(run_ref, runs_dir, config, flags, sets)
        return run_train(settings, resume=(run_dir, ckpt))
    runs.check_not_locked(run_dir)  # the usual case answered at once, before torch is imported
    last = run_dir / "checkpoints" / "last.pt"
    before = runs.file_identity(last)
    settings, run_dir, ckpt = settings_for_resume(run_ref, runs_dir, config, flags, sets)
    with runs.run_lock(run_dir):
        if runs.file_identity(last) != before:
            raise DrawError(
                f"run {run_dir.name!r}: last.pt changed while it was being read (another process trained the run); "
                "run the command again"
            )
        return run_train(settings, resume=(run_dir, ckpt))


def resume_changes(settings: Settings, ckpt: dict) -> dict[str, list]:
    """What this resume changes against the checkpoint's settings (max_steps is never inherited)."""
    saved = from_dict(ckpt["settings"])
    saved = dataclasses.replace(
        saved,
        train=dataclasses.replace(saved.train, max_steps=None),
        run=dataclasses.replace(saved.run, name=settings.run.name),
    )
    return changed_settings(saved, settings)


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
        first, self.flag = not self.flag, True
        if not self.announce or not first:  # a SIGTERM after the SIGINT (torchrun passing it on): said already
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
    from drawcli.data import MissingDataset, load_data, resolve_data_dir
    from drawcli.device import describe, resolve_device
    from drawcli.tensorboard_log import use_tensorboard

    if resume is None and env.is_main:
        runs.check_new_run(Path(settings.run.runs_dir), settings.run.name)  # before torch and minutes of setup
    tensorboard = use_tensorboard(settings.run.tensorboard)  # run.tensorboard=true without the package: refused here
    # Rank 0 alone speaks; the others compute.
    console = console or make_console(quiet=not env.is_main)
    if env.active:
        device = distributed.init(env, settings.run.device)
        console.print(f"device: {describe(device)} x {env.world} processes", highlight=False)
    else:
        device = resolve_device(settings.run.device)
        console.print(f"device: {describe(device)}", highlight=False)
    apply_threads(settings, device, env, console)
    engine = apply_engine(settings, device, console)

    data_dir = resolve_data_dir(settings.data.data_dir)
    try:
        splits = load_data(settings.data, data_dir)
    except MissingDataset:
        from drawcli.download import ensure_dataset

        ensure_dataset(settings.data.dataset, data_dir, console=console)
        splits = load_data(settings.data, data_dir)
    for note in splits.notes:
        console.print(note, highlight=False)
    check_against_image(settings, splits.spec.height, splits.spec.width)
    changes = resume_changes(settings, resume[1]) if resume is not None else {}
    binarize = settings.data.binarize
    if splits.spec.prebinarized and binarize != "none":
        # Already 0/1: every binarisation is the identity; record what really happens.
        settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, binarize="none"))
        console.print(f"{splits.spec.name} is already binarised: data.binarize={binarize} has no effect", highlight=False)

    distributed.check_global_batch(settings.train.batch_size, env.world)
    # Rank 0 alone creates the run directory, holds its lock and writes its files; it tells the
    # others how that went. config.yaml is written once, when the run is created: a resume
    # records its changes in metrics.jsonl instead, so the file keeps reproducing the run.
    run_dir, ckpt, error = None, None, None
    if resume is not None:
        run_dir, ckpt = resume
    with contextlib.ExitStack() as held:
        created = False
        if env.is_main:
            try:
                if run_dir is None:
                    run_dir = runs.new_run_dir(Path(settings.run.runs_dir), settings.run.name)
                    created = True
                    held.enter_context(runs.run_lock(run_dir))
                    settings = dataclasses.replace(settings, run=dataclasses.replace(settings.run, name=run_dir.name))
                    runs.write_config(run_dir, settings)
                else:
                    held.enter_context(runs.run_lock(run_dir))
                    runs.append_resume(
                        run_dir, {"step": int(ckpt["step"]), "epoch": int(ckpt["epoch"]), "changes": changes, "time": time.time()}
                    )
            except DrawError as e:
                error = str(e)
                if created:
                    _remove_unfinished(run_dir)
        distributed.agree(error, env)
        if error is not None:
            raise DrawError(error)
        try:
            return _train_in(settings, splits, device, run_dir, ckpt, changes, console, env, tensorboard, engine)
        except KeyboardInterrupt:
            if created and not runs.has_checkpoint(run_dir):
                # A second Ctrl-C before the first checkpoint: nothing in the run to resume, so
                # leave no half-made run behind to block --name (other failures say what to do).
                _remove_unfinished(run_dir)
                err = DrawError(f"interrupted before the first checkpoint; removed the unfinished run {run_dir}")
                err.exit_code = 130
                raise err from None
            raise


def _remove_unfinished(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)


def _train_in(settings, splits, device, run_dir, ckpt, changes, console, env, tensorboard: bool, engine: str) -> Path:
    """Train with the run directory ready (and locked, on rank 0); print the summary."""
    from drawcli.progress import TrainProgress, summary_table
    from drawcli.tensorboard_log import TB_DIR, TensorBoardLogger
    from drawcli.train import Interrupted, train

    if env.is_main:
        console.print(f"run: {run_dir}" + (f" (resuming at step {ckpt['step']})" if ckpt else ""), highlight=False)
        if ckpt is not None:
            shown = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
            console.print(f"changed on resume: {shown}" if shown else "no settings changed on resume", highlight=False)
            if "train.batch_size" in changes:
                console.print(
                    "warning: a new train.batch_size continues the same epochs image by image, but the run is no "
                    "longer bit-identical to one trained without the change, nor reproducible from config.yaml",
                    highlight=False,
                )

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
                engine=engine,
            )
    except Interrupted as e:
        if run_dir is None:  # ranks other than 0 do not know the run directory, and stay quiet anyway
            raise
        hint = f"saved {run_dir / 'checkpoints' / 'last.pt'}; continue with: draw train --resume {run_dir.name}"
        raise Interrupted(e.step, hint) from None
    finally:
        progress.close()
        if tb is not None:
            tb.close()  # readable event files however training ended
    if not env.is_main:
        return run_dir
    if result.eval and settings.train.eval_samples:
        from drawcli.bounds import iwae_report, report_line

        console.print(f"importance-weighted bound with K={settings.train.eval_samples} on {splits.eval_name}...", highlight=False)
        report = iwae_report(result.model, splits.eval, settings.data.binarize, settings.train.eval_samples, seed=settings.train.seed,
                             engine=engine)
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
