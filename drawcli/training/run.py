"""`draw train`: from resolved settings to a finished run directory.

Resolves the device, data and run directory (new, or resumed: drawcli/training/resume.py decides
what a resume continues), then calls :func:`drawcli.training.loop.train` with the recorder and
progress callbacks. What a run gathers on the way travels in one :class:`TrainingRun`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from drawcli.core.errors import DrawError, Interrupted
from drawcli.core.files import environment
from drawcli.core.progress import make_console
from drawcli.data.catalogue import FOLDER_PREFIX, is_folder
from drawcli.data.folders import folder_path
from drawcli.runs import names
from drawcli.runs import store as runs
from drawcli.runs.lock import check_not_locked, run_lock
from drawcli.runs.names import has_checkpoints
from drawcli.settings import ModelSettings, Settings, check_against_image, spell
from drawcli.training import distributed
from drawcli.training.resume import ResumeFrom, nothing_to_do, resume_changes, settings_for_resume

# Set by `draw train --nproc N` for its processes: the CPU threads each uses, decided once (and said
# once) by the launcher, so that N processes do not each measure the others' load.
LAUNCHER_THREADS = "DRAWCLI_LAUNCHER_THREADS"


@contextlib.contextmanager
def launcher_threads(settings: Settings, nproc: int):
    """`--nproc N`: decide the processes' CPU threads here, once (run.threads, or the cores idle now
    shared among them), say it in one line, and hand it to them in OMP_NUM_THREADS (torchrun would
    otherwise set 1 with a warning) and MKL_NUM_THREADS. The environment is restored afterwards."""
    import torch

    from drawcli.core.device import resolve_device, thread_policy, thread_warning

    device = resolve_device(settings.run.device)
    threads, why = thread_policy(settings.run.threads, device, nproc)
    if threads is None:  # GPUs: each process's CPU threads only feed its device
        threads, why = max(1, torch.get_num_threads() // nproc), f"{device.type}: the CPU cores shared among the processes"
    make_console().print(f"threads: {threads} per process x {nproc} processes ({why})", highlight=False)
    if settings.run.threads is not None and device.type == "cpu" and (warning := thread_warning(threads, nproc)):
        make_console().print(warning, highlight=False)
    with environment(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **{LAUNCHER_THREADS: str(threads)}):
        yield


def apply_threads(settings: Settings, device, env: distributed.DistEnv, console: Console) -> None:
    """Set this process's CPU threads from run.threads or the policy in drawcli.core.device (in a job
    launched by --nproc: as its launcher decided and said)."""
    import torch

    from drawcli.core.device import thread_policy, thread_warning

    launched = os.environ.get(LAUNCHER_THREADS)
    if env.active and launched and launched.isdigit():
        torch.set_num_threads(int(launched))
        return
    threads, why = thread_policy(settings.run.threads, device, env.world)
    if threads is None:
        return
    torch.set_num_threads(threads)
    console.print(f"threads: {threads} per process ({why})", highlight=False)
    if settings.run.threads is not None and device.type == "cpu" and (warning := thread_warning(threads, env.world)):
        console.print(warning, highlight=False)


def apply_engine(settings: Settings, device, console: Console):
    """run.engine resolved for training on this device (drawcli.model.engine.resolve), said in one
    line; the Resolved engine goes to every model call.

    The native engine's library is built once per machine (20-40 s; a line says so first).
    Without a C++ compiler, or with DRAWCLI_NATIVE=0, `auto` runs the Python engine: the same
    numbers, slower; an explicit `native` that cannot run ends the command in one line."""
    from drawcli.model.engine import resolve_for

    say = lambda line: console.print(line, highlight=False)
    engine = resolve_for(settings.run.engine, settings.model, device, "train", flag="--engine", say=say)
    say(engine.line)
    return engine


def resume_run(run_ref: str, runs_dir: str, config, flags, sets, notes: list[str] | None = None) -> Path:
    """`draw train --resume`: continue a run, holding its lock (rank 0 of a job holds it for all).

    The lock is taken once the checkpoint has been read and checked, so that a refused resume
    writes nothing; the checkpoint is then checked to be the file that was read.
    """
    run_dir = runs.resolve_run(run_ref, Path(runs_dir))
    if distributed.is_quiet_rank():  # rank 0 of the job holds the lock (and may hold it already)
        settings, found = settings_for_resume(run_ref, runs_dir, config, flags, sets)
        if nothing_to_do(settings, found.ckpt, run_dir.name):
            return run_dir
        return run_train(settings, resume=found, notes=notes)
    check_not_locked(run_dir)  # the usual case answered at once, before torch is imported
    last = run_dir / names.CHECKPOINTS / names.LAST
    before = runs.file_identity(last)
    settings, found = settings_for_resume(run_ref, runs_dir, config, flags, sets)
    idle = nothing_to_do(settings, found.ckpt, run_dir.name)
    if idle:  # before data, lock and a resume row: nothing would change
        make_console().print(idle, highlight=False)
        return run_dir
    with run_lock(run_dir):
        if runs.file_identity(last) != before:
            raise DrawError(
                f"run {run_dir.name!r}: last.pt changed while it was being read (another process trained the run); "
                "run the command again"
            )
        return run_train(settings, resume=found, notes=notes)


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


def run_train(settings: Settings, resume: ResumeFrom | None = None, console: Console | None = None,
              notes: list[str] | None = None, given: dict[str, str] | None = None) -> Path:
    """Train according to ``settings`` (in a torchrun job when WORLD_SIZE > 1); returns the run directory.

    ``given``: the settings the command set explicitly, ``{"section.key": where}`` (e.g.
    ``{"model.hidden": "--hidden"}``); a new run from weights (train.init_from) takes the other model
    settings from them (:func:`adopt_model_settings`). None: every model setting is taken as given."""
    env = distributed.env_from_os()
    try:
        run_dir = _run(settings, resume, console, env, notes or [], given)
        if env.active:
            # Leave together: a rank that tears its process group down while rank 0 is still
            # writing files can abort in gloo's threads ("terminate called without an active exception").
            distributed.barrier()
        return run_dir
    except Interrupted:
        if env.active:  # every rank stops at the same step (the stop flag is summed over ranks): leave together too
            distributed.barrier()
        raise
    finally:
        if env.active:
            distributed.shutdown()


@dataclasses.dataclass
class TrainingRun:
    """A training run on this process, as :func:`_run` gathers it: the settings it trains with, its
    place in a job, its console (quiet on ranks other than 0), and step by step the device, engine,
    data, starting weights and run directory; :func:`_train_in` trains it."""

    settings: Settings
    env: distributed.DistEnv
    console: Console
    resume: ResumeFrom | None = None
    init_from: Any = None  # train.init_from loaded (drawcli.runs.store.LoadedRun) for a new run, else None
    tensorboard: bool = False
    device: Any = None  # torch.device
    engine: Any = None  # drawcli.model.Resolved: what every model call runs
    splits: Any = None  # drawcli.data.arrays.Splits
    changes: dict = dataclasses.field(default_factory=dict)  # what a resume changes (resume_changes)
    init_weights: dict | None = None  # the state dict a new run starts from (train.init_from)
    run_dir: Path | None = None  # None on ranks other than 0 of a new run
    created: bool = False  # run_dir was made by this process for a new run

    @property
    def ckpt(self) -> dict | None:
        """The checkpoint a resume continues from, else None."""
        return self.resume.ckpt if self.resume is not None else None

    def say(self, line: str) -> None:
        self.console.print(line, highlight=False)


def _run(settings: Settings, resume: ResumeFrom | None, console: Console | None, env: distributed.DistEnv,
         notes: list[str], given: dict[str, str] | None = None) -> Path:
    """One process's run, in order: settings, device, data, the checks, the run directory, training."""
    from drawcli.training.tensorboard_log import use_tensorboard

    source, note = None, None
    if resume is None:
        settings, source = _new_run_settings(settings, given)
        if env.is_main:
            note = runs.check_new_run(Path(settings.run.runs_dir), settings.run.name)  # before torch and minutes of setup
    tensorboard = use_tensorboard(settings.run.tensorboard)  # run.tensorboard=true without the package: refused here
    # Rank 0 alone speaks; the others compute.
    job = TrainingRun(settings, env, console or make_console(quiet=not env.is_main), resume, source, tensorboard)
    for line in [*notes, note] if note else notes:
        job.say(line)
    _use_device(job)
    _load_data(job)
    _check_start(job)
    with contextlib.ExitStack() as held:
        _open_run_dir(job, held)
        try:
            return _train_in(job)
        except KeyboardInterrupt:
            if job.created and not has_checkpoints(job.run_dir):
                # A second Ctrl-C before the first checkpoint: nothing in the run to resume, so
                # leave no half-made run behind to block --name (other failures say what to do).
                _remove_unfinished(job.run_dir)
                err = DrawError(f"interrupted before the first checkpoint; removed the unfinished run {job.run_dir}")
                err.exit_code = 130
                raise err from None
            raise


def _new_run_settings(settings: Settings, given: dict[str, str] | None) -> tuple[Settings, Any]:
    """A new run's settings: its folders absolute, and with train.init_from the model settings of the
    weights it starts from (loaded here, before anything reads settings.model); (settings, loaded or None)."""
    settings = absolute_folders(settings)
    if not settings.train.init_from:
        return settings, None
    source = init_source(settings)
    return adopt_model_settings(settings, source.settings.model, given, settings.train.init_from), source


def _use_device(job: TrainingRun) -> None:
    """The device (joining the job's process group in a job), the CPU threads and the engine, each said in a line."""
    from drawcli.core.device import describe, resolve_device

    settings, env = job.settings, job.env
    if env.active:
        job.device = distributed.init(env, settings.run.device)
        job.say(f"device: {describe(job.device)} x {env.world} processes")
    else:
        job.device = resolve_device(settings.run.device)
        job.say(f"device: {describe(job.device)}")
    apply_threads(settings, job.device, env, job.console)
    job.engine = apply_engine(settings, job.device, job.console)


def _load_data(job: TrainingRun) -> None:
    """The data set's splits (downloaded first when missing), its notes said, checked against the model."""
    from drawcli.data.loading import MissingDataset, resolve_data_dir
    from drawcli.settings import load_data

    data, data_dir = job.settings.data, resolve_data_dir(job.settings.data.data_dir)
    try:
        job.splits = load_data(data, data_dir)
    except MissingDataset:
        from drawcli.data.download import ensure_dataset

        ensure_dataset(data.dataset, data_dir, console=job.console)
        job.splits = load_data(data, data_dir)
    for note in job.splits.notes:
        job.say(note)
    check_against_image(job.settings, job.splits.spec.height, job.splits.spec.width)


def _check_start(job: TrainingRun) -> None:
    """What the run starts from, checked before its directory is touched: a resume's changes, a new
    run's initial weights, the binarisation a pre-binarised set really gets, the batch size."""
    spec = job.splits.spec
    job.changes = resume_changes(job.settings, job.ckpt) if job.resume is not None else {}
    if job.init_from is not None:
        job.init_weights, line = initial_weights(job.settings, spec.height, spec.width, spec.channels, job.init_from)
        job.say(line)
    binarize = job.settings.data.binarize
    if spec.prebinarized and binarize != "none":
        # Already 0/1: every binarisation is the identity; record what really happens.
        job.settings = dataclasses.replace(job.settings, data=dataclasses.replace(job.settings.data, binarize="none"))
        job.say(f"{spec.name} is already binarised: data.binarize={binarize} has no effect")
    distributed.check_global_batch(job.settings.train.batch_size, job.env.world)
    check_batch_fits_split(job.settings.train.batch_size, len(job.splits.train), spec.name)


def _open_run_dir(job: TrainingRun, held: contextlib.ExitStack) -> None:
    """Rank 0 alone creates the run directory (or continues a resumed one), holds its lock in
    ``held`` and writes its files; it tells the others how that went. config.yaml is written once,
    when the run is created: a resume records its changes in metrics.jsonl instead, so the file
    keeps reproducing the run."""
    resume, error = job.resume, None
    if resume is not None:
        job.run_dir = resume.run_dir
        if resume.note:
            job.say(resume.note)
    if job.env.is_main:
        try:
            check_step_memory(job.settings, job.splits, job.device, job.env)
            if resume is None:
                job.run_dir = runs.new_run_dir(Path(job.settings.run.runs_dir), job.settings.run.name)
                job.created = True
                held.enter_context(run_lock(job.run_dir))
                job.settings = dataclasses.replace(job.settings, run=dataclasses.replace(job.settings.run, name=job.run_dir.name))
                runs.write_config(job.run_dir, job.settings)
            else:
                held.enter_context(run_lock(job.run_dir))
                if not resume.from_last:  # continuing from an older file: the newer ones are kept aside
                    moved = runs.set_aside_newer(job.run_dir, resume.source, resume.ckpt)
                    if moved:
                        job.say(moved)
                ckpt = resume.ckpt
                runs.append_resume(
                    job.run_dir, {"step": int(ckpt["step"]), "epoch": int(ckpt["epoch"]), "changes": job.changes, "time": time.time()}
                )
        except DrawError as e:
            error = str(e)
            if job.created:
                _remove_unfinished(job.run_dir)
    distributed.agree(error, job.env)
    if error is not None:
        raise DrawError(error)


def init_source(settings: Settings):
    """train.init_from loaded (drawcli.runs.store.LoadedRun, on the CPU): a run, a checkpoint or weights file,
    a model folder, hf:OWNER/NAME, @NAME."""
    try:
        return runs.load_run(settings.train.init_from, device="cpu", runs_dir=settings.run.runs_dir)
    except DrawError as e:
        raise DrawError(f"train.init_from: {e}") from None


def adopt_model_settings(settings: Settings, carried: ModelSettings, given: dict[str, str] | None, ref: str) -> Settings:
    """A new run from weights takes the model settings they carry (``carried``: a checkpoint's or weights
    file's, a built-in model's). A model setting given explicitly (``given``: ``{"model.hidden": "--hidden"}``,
    None for all of them) must agree; one that does not is refused in one line naming where it was
    given and the fix."""
    differ = []
    for f in dataclasses.fields(carried):
        key = f"model.{f.name}"
        mine, theirs = getattr(settings.model, f.name), getattr(carried, f.name)
        if mine != theirs and (given is None or key in given):
            differ.append((key, theirs, mine, None if given is None else given[key]))
    if differ:
        shown = "; ".join(f"{key} is {spell(theirs)} there and {spell(mine)} here" + (f", from {where}" if where else "")
                          for key, theirs, mine, where in differ)
        wheres = [where for *_, where in differ if where]
        fix = ("use the same model settings" if not wheres else
               "a new run from these weights takes the model settings they carry: leave out "
               + (", ".join(wheres[:-1]) + " and " + wheres[-1] if len(wheres) > 1 else wheres[0]))
        raise DrawError(f"train.init_from {ref}: another model ({shown}); {fix}")
    return dataclasses.replace(settings, model=carried)


def initial_weights(settings: Settings, height: int, width: int, channels: int, loaded=None) -> tuple[dict, str]:
    """train.init_from: the weights a new run starts from (``loaded``, else loaded here: :func:`init_source`),
    on the CPU, and a line saying where they come from. The model settings (see :func:`adopt_model_settings`)
    and the image shape must be the run's; the data set may differ (fine-tuning on other pictures)."""
    ref = settings.train.init_from
    loaded = loaded if loaded is not None else init_source(settings)
    adopt_model_settings(settings, loaded.settings.model, None, ref)
    model = loaded.model
    if (model.channels, model.height, model.width) != (channels, height, width):
        raise DrawError(f"train.init_from {ref}: another model (its images are {model.channels}x{model.height}x{model.width} "
                        f"(CxHxW), these are {channels}x{height}x{width}); use the same model settings")
    state = model.state_dict()  # the model was built for this alone: its tensors need no copy
    # @NAME's weights change between releases: the line names the ones used (the sha256 of its model.safetensors).
    which = f" (sha256 {loaded.located.builtin.sha256[:16]})" if loaded.located.builtin is not None else ""
    return state, (f"initial weights: {loaded.label}{which}, {loaded.trained}; "
                   "a fresh optimizer and learning-rate schedule")


def absolute_folders(settings: Settings) -> Settings:
    """A new run records its folders resolved: folder:PATH and data.data_dir as absolute paths, so that
    it resumes, samples and evaluates the same from any working directory."""
    data = settings.data
    if is_folder(data.dataset):
        data = dataclasses.replace(data, dataset=FOLDER_PREFIX + str(folder_path(data.dataset).resolve()))
    if data.data_dir:
        data = dataclasses.replace(data, data_dir=str(Path(data.data_dir).expanduser().resolve()))
    return dataclasses.replace(settings, data=data)


def check_batch_fits_split(batch: int, images: int, dataset: str) -> None:
    """A batch larger than the training split would train on every image more than once per step."""
    if batch > images:
        raise DrawError(
            f"train.batch_size {batch} is larger than the training split of {dataset} ({images} images); "
            f"use --batch-size {images} or less"
        )


def check_step_memory(settings: Settings, splits, device, env: distributed.DistEnv) -> None:
    """Refuse, before the run directory is made, a batch whose training step cannot fit in memory
    (drawcli/core/memory.py): one line with the estimate and the largest batch that fits, instead of a
    process killed by the kernel without a word."""
    import torch

    from drawcli.core.device import resolve_precision
    from drawcli.core.memory import available_memory, check_step_fits, model_step_memory
    from drawcli.model import count_parameters
    from drawcli.runs.checkpoint import build_model

    spec = splits.spec
    with torch.device("meta"):  # shapes only: nothing is allocated
        parameters = count_parameters(build_model(settings, spec.height, spec.width, spec.channels))
    precision, _ = resolve_precision(settings.train.precision, device)
    need = model_step_memory(settings.model, spec.height, spec.width, spec.channels, parameters, precision)
    if device.type != "cpu":  # the images are copied to the device
        need = dataclasses.replace(need, fixed=need.fixed + splits.train.nbytes + splits.eval.nbytes)
    available, source = available_memory(device)
    # Processes of this machine share its memory on the CPU; on GPUs each has its own device.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world)) if device.type == "cpu" else 1
    check_step_fits(need, settings.train.batch_size // env.world, available, source, processes=local, world=env.world)


def _remove_unfinished(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)



def _train_in(job: TrainingRun) -> Path:
    """Train with the run directory ready (and locked, on rank 0); print the summary."""
    if job.env.is_main:
        _say_start(job)
    result = _fit(job)
    if job.env.is_main:
        _report(job, result)
    return job.run_dir


def _say_start(job: TrainingRun) -> None:
    """The run's folder, and what a resume changes."""
    ckpt, changes = job.ckpt, job.changes
    job.say(f"run: {job.run_dir}" + (f" (resuming at step {ckpt['step']})" if ckpt else ""))
    if ckpt is not None:
        shown = "; ".join(f"{key} {spell(old)} -> {spell(new)}" for key, (old, new) in changes.items())
        job.say(f"changed on resume: {shown}" if shown else "no settings changed on resume")
        if "train.batch_size" in changes:
            job.say("warning: a new train.batch_size continues the same epochs image by image, but the run is no "
                    "longer bit-identical to one trained without the change, nor reproducible from config.yaml")


def _fit(job: TrainingRun):
    """drawcli.training.loop.train with the recorder, the progress bar and TensorBoard (rank 0), stopping
    after the step in flight at SIGINT or SIGTERM; an interrupt says where last.pt is and how to continue."""
    from drawcli.core.progress import TrainProgress
    from drawcli.training.loop import train
    from drawcli.training.tensorboard_log import TensorBoardLogger

    settings, env, run_dir = job.settings, job.env, job.run_dir
    progress = TrainProgress(job.console)
    callbacks = [runs.RunRecorder(run_dir), progress] if env.is_main else []
    tb = TensorBoardLogger(run_dir / names.TB_DIR, seed=settings.train.seed) if job.tensorboard and env.is_main else None
    callbacks += [tb] if tb is not None else []
    try:
        with StopOnSignal(announce=env.is_main) as stop:
            return train(settings, job.splits.train, job.splits.eval, job.device, callbacks=callbacks, resume=job.ckpt,
                         should_stop=stop.requested, env=env, engine=job.engine, init_weights=job.init_weights)
    except Interrupted as e:
        if run_dir is None:  # ranks other than 0 do not know the run directory, and stay quiet anyway
            raise
        hint = f"saved {run_dir / 'checkpoints' / 'last.pt'}; continue with: draw train --resume {run_dir.name}"
        raise Interrupted(e.step, hint) from None
    finally:
        progress.close()
        if tb is not None:
            tb.close()  # readable event files however training ended


def _report(job: TrainingRun, result) -> None:
    """After training: the importance-weighted bound (train.eval_samples, also a metrics.jsonl row) and the summary table."""
    from drawcli.core.progress import summary_table

    settings, splits, run_dir = job.settings, job.splits, job.run_dir
    if result.eval and settings.train.eval_samples:
        from drawcli.evaluation.bounds import iwae_report, report_line

        job.say(f"importance-weighted bound with K={settings.train.eval_samples} on {splits.eval_name}...")
        report = iwae_report(result.model, splits.eval, settings.data.binarize, settings.train.eval_samples, seed=settings.train.seed,
                             engine=job.engine)
        job.say(report_line(report, splits.eval_name))
        row = {k: v for k, v in report.items() if k != "binarization"}
        runs.RunRecorder(run_dir).on_epoch(
            {"kind": "iwae", "split": splits.eval_name, "step": result.step, "epoch": result.epoch, **row,
             "binarization": report["binarization"]["description"]}
        )
    if result.eval:
        summary = {
            "step": result.step,
            "epoch": result.epoch,
            "epoch_images": result.epoch_images,
            "train_images": result.train_images,
            "epochs_target": settings.train.epochs,
            "eval": result.eval,
            "best_loss": result.best_loss,
            "seconds": result.seconds,
            "train_seconds": result.train_seconds,
            "img_per_s": result.images_per_second,
        }
        job.console.print(summary_table(run_dir, summary, splits.eval_name))
    else:
        job.say(f"nothing to do: run {run_dir.name} is already at step {result.step}")
