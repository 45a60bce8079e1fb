"""`draw train`: from resolved settings to a finished run directory.

Resolves the device, data and run directory (new or resumed), then calls
:func:`drawcli.training.loop.train` with the recorder and progress callbacks.
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

from rich.console import Console

from drawcli.core.errors import DrawError, Interrupted
from drawcli.core.files import environment
from drawcli.core.progress import make_console
from drawcli.data.catalogue import FOLDER_PREFIX, is_folder
from drawcli.data.folders import folder_path
from drawcli.runs import checkpoint as ckpt_io
from drawcli.runs import names
from drawcli.runs import store as runs
from drawcli.runs.lock import check_not_locked, run_lock
from drawcli.runs.names import has_checkpoints
from drawcli.settings import ModelSettings, Settings, build_settings, changed_settings, check_against_image, from_dict, spell
from drawcli.training import distributed

# Settings a resumed run may not change, and why: with them the continued run would no longer
# be the run its config.yaml describes.
FIXED_ON_RESUME = {
    "train.seed": "the data order, binarisation and noise streams derive from it",
    "data.binarize": "the model would be trained on differently binarised images from here on",
    "data.validation": "best.pt would compare losses on different evaluation splits",
}


@dataclasses.dataclass
class ResumeFrom:
    """What a resume continues: the run, the checkpoint file and its contents, and a line to show
    when the file is not the run's last.pt (an unreadable last.pt, or a file named with --resume)."""

    run_dir: Path
    source: Path
    ckpt: dict
    note: str | None = None

    @property
    def from_last(self) -> bool:
        return self.source.name == names.LAST and self.source.parent == self.run_dir / names.CHECKPOINTS


def resume_source(run_ref: str, runs_dir: str) -> ResumeFrom:
    """The checkpoint --resume continues from: a checkpoint file named with --resume
    (RUN/checkpoints/epoch_002.pt), else the run's last.pt, else, when that is missing, unreadable or
    without the training state, its readable checkpoint with the most steps that holds the full
    training state, whatever its kind (best.pt, epoch_NNN.pt; said in one line)."""
    run_dir = runs.resolve_run(run_ref, Path(runs_dir))
    named = runs.checkpoint_ref(run_ref)
    if named is not None:
        return ResumeFrom(run_dir, named, ckpt_io.load(named))
    if not has_checkpoints(run_dir):
        raise DrawError(
            f"run {run_dir.name!r} has no checkpoint to resume from (it stopped before its first one); "
            f"start it again with --name {run_dir.name} instead of --resume (its folder {run_dir.absolute()} is then replaced)"
        )
    source, ckpt, note = runs.load_readable(run_dir, run_dir / names.CHECKPOINTS / names.LAST, full_state=True)
    if note is not None:
        note += "; unreadable and newer checkpoints are moved aside, not overwritten"
    return ResumeFrom(run_dir, source, ckpt, note)


def settings_for_resume(run_ref: str, runs_dir: str, config, flags, sets) -> tuple[Settings, ResumeFrom]:
    """Saved settings of a run < --config < flags < --set; model shape may not change.

    ``train.max_steps`` is not inherited: a resumed run trains to its epochs
    unless --max-steps is given again (as a global step count).
    """
    found = resume_source(run_ref, runs_dir)
    run_dir, ckpt = found.run_dir, found.ckpt
    for key in ("optimizer", "rng"):  # optional for sampling and evaluation, needed to continue training
        if key not in ckpt:
            raise DrawError(f"{found.source}: checkpoint lacks {key!r}, so the run cannot be resumed")
    saved = from_dict(ckpt["settings"])
    saved = dataclasses.replace(saved, train=dataclasses.replace(saved.train, max_steps=None))
    settings = build_settings(config, flags, sets, base=saved)
    if settings.model != saved.model:
        changed = [
            f"{f.name} {spell(getattr(saved.model, f.name))} -> {spell(getattr(settings.model, f.name))}"
            for f in dataclasses.fields(saved.model)
            if getattr(saved.model, f.name) != getattr(settings.model, f.name)
        ]
        raise DrawError(f"--resume {run_dir.name}: cannot change the model shape ({'; '.join(changed)})")
    settings = same_data_set(settings, saved, run_dir.name)
    name = settings.run.name
    # A run is its folder: one copied or renamed (to branch an experiment) continues under its
    # folder's name; only a --name that differs from both is a contradiction.
    if name is not None and name not in (run_dir.name, saved.run.name):
        raise DrawError(f"--resume {run_dir.name} cannot be combined with --name {name}")
    changes = changed_settings(saved, settings)
    for key, why in FIXED_ON_RESUME.items():
        if key in changes:
            old, new = changes[key]
            raise DrawError(
                f"--resume {run_dir.name}: {key} cannot change ({spell(old)} -> {spell(new)}): {why}, so the run would no "
                f"longer be reproducible; start a new run for that"
            )
    settings = dataclasses.replace(settings, run=dataclasses.replace(settings.run, name=run_dir.name))
    return settings, found


def same_data_set(settings: Settings, saved: Settings, name: str) -> Settings:
    """The data set may not change on resume, but a folder:PATH that names the run's own folder by
    another spelling (relative from elsewhere, or absolute) is no change: the run's recorded
    spelling is kept. Runs made before folders were recorded absolute hold a relative path, which
    resolves only from where they were started: from elsewhere, an absolute path to an existing
    folder replaces it (recorded among the resume's changes)."""
    new, old = settings.data.dataset, saved.data.dataset
    if new == old:
        return settings
    if is_folder(new) and is_folder(old):
        new_path, old_path = folder_path(new), folder_path(old)
        if new_path.resolve() == old_path.resolve():
            return dataclasses.replace(settings, data=dataclasses.replace(settings.data, dataset=old))
        if not old_path.is_absolute() and not old_path.is_dir() and new_path.is_absolute() and new_path.is_dir():
            return settings
    raise DrawError(f"--resume {name}: cannot change the data set ({old} -> {new})")


def nothing_to_do(settings: Settings, ckpt: dict, name: str) -> str | None:
    """The line to show instead of resuming a run that has nothing left to train, or None."""
    ts, step, epoch = settings.train, int(ckpt["step"]), int(ckpt["epoch"])
    complete = epoch if not ckpt.get("epoch_images", 0) else epoch - 1
    if ts.max_steps is not None and ts.max_steps <= step:
        return (f"nothing to do: run {name} is already at step {step} (--max-steps {ts.max_steps}); "
                f"give a larger --max-steps, or none to train to its {ts.epochs} epochs")
    if ts.max_steps is None and complete >= ts.epochs:
        done = f"has finished its {ts.epochs} epochs" if complete == ts.epochs else f"has already trained {complete} epochs (--epochs {ts.epochs})"
        return (f"nothing to do: run {name} {done} (step {step}); to train it further, give more: "
                f"draw train --resume {name} --epochs {complete + 10}")
    return None


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


def _run(settings: Settings, resume, console: Console | None, env: distributed.DistEnv, notes: list[str],
         given: dict[str, str] | None = None) -> Path:
    from drawcli.core.device import describe, resolve_device
    from drawcli.data.loading import MissingDataset, resolve_data_dir
    from drawcli.settings import load_data
    from drawcli.training.tensorboard_log import use_tensorboard

    note = None
    if resume is None:
        settings = absolute_folders(settings)
    source = None
    if resume is None and settings.train.init_from:  # before anything reads settings.model
        source = init_source(settings)
        settings = adopt_model_settings(settings, source.settings.model, given, settings.train.init_from)
    if resume is None and env.is_main:
        note = runs.check_new_run(Path(settings.run.runs_dir), settings.run.name)  # before torch and minutes of setup
    tensorboard = use_tensorboard(settings.run.tensorboard)  # run.tensorboard=true without the package: refused here
    # Rank 0 alone speaks; the others compute.
    console = console or make_console(quiet=not env.is_main)
    for line in [*notes, note] if note else notes:
        console.print(line, highlight=False)
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
        from drawcli.data.download import ensure_dataset

        ensure_dataset(settings.data.dataset, data_dir, console=console)
        splits = load_data(settings.data, data_dir)
    for note in splits.notes:
        console.print(note, highlight=False)
    check_against_image(settings, splits.spec.height, splits.spec.width)
    changes = resume_changes(settings, resume.ckpt) if resume is not None else {}
    if "train.init_from" in changes:
        raise DrawError("train.init_from sets the weights a run starts from; a resumed run continues from its checkpoint, so it cannot change")
    init = None
    if source is not None:
        init = initial_weights(settings, splits.spec.height, splits.spec.width, splits.spec.channels, source)
        console.print(init[1], highlight=False)
    binarize = settings.data.binarize
    if splits.spec.prebinarized and binarize != "none":
        # Already 0/1: every binarisation is the identity; record what really happens.
        settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, binarize="none"))
        console.print(f"{splits.spec.name} is already binarised: data.binarize={binarize} has no effect", highlight=False)

    distributed.check_global_batch(settings.train.batch_size, env.world)
    check_batch_fits_split(settings.train.batch_size, len(splits.train), splits.spec.name)
    # Rank 0 alone creates the run directory, holds its lock and writes its files; it tells the
    # others how that went. config.yaml is written once, when the run is created: a resume
    # records its changes in metrics.jsonl instead, so the file keeps reproducing the run.
    run_dir, ckpt, error = None, None, None
    if resume is not None:
        run_dir, ckpt = resume.run_dir, resume.ckpt
        if resume.note:
            console.print(resume.note, highlight=False)
    with contextlib.ExitStack() as held:
        created = False
        if env.is_main:
            try:
                check_step_memory(settings, splits, device, env)
                if run_dir is None:
                    run_dir = runs.new_run_dir(Path(settings.run.runs_dir), settings.run.name)
                    created = True
                    held.enter_context(run_lock(run_dir))
                    settings = dataclasses.replace(settings, run=dataclasses.replace(settings.run, name=run_dir.name))
                    runs.write_config(run_dir, settings)
                else:
                    held.enter_context(run_lock(run_dir))
                    if not resume.from_last:  # continuing from an older file: the newer ones are kept aside
                        moved = runs.set_aside_newer(run_dir, resume.source, ckpt)
                        if moved:
                            console.print(moved, highlight=False)
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
            return _train_in(settings, splits, device, run_dir, ckpt, changes, console, env, tensorboard, engine,
                             init_weights=init[0] if init else None)
        except KeyboardInterrupt:
            if created and not has_checkpoints(run_dir):
                # A second Ctrl-C before the first checkpoint: nothing in the run to resume, so
                # leave no half-made run behind to block --name (other failures say what to do).
                _remove_unfinished(run_dir)
                err = DrawError(f"interrupted before the first checkpoint; removed the unfinished run {run_dir}")
                err.exit_code = 130
                raise err from None
            raise


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
    from drawcli.runs.checkpoint import build_model

    spec = splits.spec
    with torch.device("meta"):  # shapes only: nothing is allocated
        parameters = sum(p.numel() for p in build_model(settings, spec.height, spec.width, spec.channels).parameters())
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


def _train_in(settings, splits, device, run_dir, ckpt, changes, console, env, tensorboard: bool, engine: str,
              init_weights: dict | None = None) -> Path:
    """Train with the run directory ready (and locked, on rank 0); print the summary."""
    from drawcli.core.progress import TrainProgress, summary_table
    from drawcli.training.loop import train
    from drawcli.training.tensorboard_log import TensorBoardLogger

    if env.is_main:
        console.print(f"run: {run_dir}" + (f" (resuming at step {ckpt['step']})" if ckpt else ""), highlight=False)
        if ckpt is not None:
            shown = "; ".join(f"{key} {spell(old)} -> {spell(new)}" for key, (old, new) in changes.items())
            console.print(f"changed on resume: {shown}" if shown else "no settings changed on resume", highlight=False)
            if "train.batch_size" in changes:
                console.print(
                    "warning: a new train.batch_size continues the same epochs image by image, but the run is no "
                    "longer bit-identical to one trained without the change, nor reproducible from config.yaml",
                    highlight=False,
                )

    progress = TrainProgress(console)
    callbacks = [runs.RunRecorder(run_dir), progress] if env.is_main else []
    tb = TensorBoardLogger(run_dir / names.TB_DIR, seed=settings.train.seed) if tensorboard and env.is_main else None
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
                init_weights=init_weights,
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
        from drawcli.evaluation.bounds import iwae_report, report_line

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
            "epoch_images": result.epoch_images,
            "train_images": result.train_images,
            "epochs_target": settings.train.epochs,
            "eval": result.eval,
            "best_loss": result.best_loss,
            "seconds": result.seconds,
            "train_seconds": result.train_seconds,
            "img_per_s": result.images_per_second,
        }
        console.print(summary_table(run_dir, summary, splits.eval_name))
    else:
        console.print(f"nothing to do: run {run_dir.name} is already at step {result.step}", highlight=False)
    return run_dir
