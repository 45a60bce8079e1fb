"""Run directories: naming, lookup, loading a trained model, and the recorder that writes a run's files.

What a run directory holds, and the names of its files: drawcli/runs/names.py. The run lock:
drawcli/runs/lock.py.

A model to draw with or evaluate is named by a run (a name under the runs folder or a run
directory), a checkpoint or weights file (FILE.pt), a model folder (config.json + model.safetensors,
drawcli/runs/folder.py), a Hugging Face Hub repository written ``hf:OWNER/NAME`` (the hub extra) or
a built-in model written ``@NAME`` (drawcli/runs/builtin.py). :func:`locate` is the one place that
resolves such a reference, and answers every mistake in it without torch; :func:`load_run` then
loads it.

This module must not import torch at module level: run lookups and their errors stay fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drawcli.core.errors import DrawError
from drawcli.core.files import write_text_atomically
from drawcli.runs import checkpoint as ckpt_io
from drawcli.runs import folder as folders
from drawcli.runs import names
from drawcli.runs.lock import describe_holder, lock_holder, run_lock
from drawcli.runs.names import has_checkpoints
from drawcli.settings import from_dict, validate_run_name

validate_name = validate_run_name  # the rule lives with the settings (run.name); lookups use it here


def existing_runs(runs_dir: Path) -> list[str]:
    if not runs_dir.is_dir():
        return []
    runs = [p.name for p in runs_dir.iterdir() if p.is_dir() and (p / names.CONFIG).is_file()]
    key = lambda n: (0, int(n[3:]), n) if re.fullmatch(r"run\d+", n) else (1, 0, n)  # noqa: E731
    return sorted(runs, key=key)


def new_run_dir(runs_dir: Path, name: str | None) -> Path:
    """Create RUNS_DIR/NAME (auto-named run1, run2, ... when name is None)."""
    runs_dir = Path(runs_dir)
    if name is None:
        taken = {int(m.group(1)) for p in (runs_dir.iterdir() if runs_dir.is_dir() else []) if (m := re.fullmatch(r"run(\d+)", p.name))}
        number = max(taken, default=0) + 1
        name = f"run{number}"
    validate_name(name)
    path = runs_dir / name
    if path.exists():
        raise DrawError(existing_run_message(path))
    try:
        (path / names.CHECKPOINTS).mkdir(parents=True)
    except OSError as e:
        raise DrawError(f"cannot create run directory {path}: {e.strerror or e}") from None
    return path


def file_identity(path: Path) -> tuple | None:
    """What changes when a file is replaced (inode, size, mtime); None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def existing_run_message(path: Path) -> str:
    """Why --name NAME cannot be used again, and what to do instead."""
    name, runs_dir = path.name, path.parent
    holder = lock_holder(path) if path.is_dir() else None
    if holder is not None:
        return f"run {name!r} already exists in {runs_dir} and is being trained by {describe_holder(holder)}; pick another --name"
    if path.is_dir() and not has_checkpoints(path):
        # Stopped before its first checkpoint (e.g. a double Ctrl-C): nothing in it to resume.
        return (
            f"run {name!r} already exists in {runs_dir} but has no checkpoint to resume (it stopped before "
            f"its first one) and holds files draw train did not write; delete {path.absolute()} to start it again, "
            f"or pick another --name"
        )
    return f"run {name!r} already exists in {runs_dir}; pick another --name or continue it with --resume {name}"


def remove_unfinished(path: Path) -> bool:
    """Remove a run directory left without any checkpoint (a run killed before its first one: out of
    memory, kill -9), so that its name can be used again; True when it was removed.

    Nothing is removed while a process holds the run's lock, when it has a checkpoint, or when it
    holds anything `draw train` did not write there."""
    path = Path(path)
    try:
        entries = {p.name for p in path.iterdir()} if path.is_dir() else None
    except OSError:
        return False
    if not entries or not (path / names.CONFIG).is_file() or entries - names.RUN_ENTRIES:
        return False
    if has_checkpoints(path) or lock_holder(path) is not None:
        return False
    trash = path.with_name(f".{path.name}.removing-{os.getpid()}")
    try:
        with run_lock(path):
            if has_checkpoints(path):
                return False
            os.rename(path, trash)
    except DrawError:
        return False  # another process took the lock meanwhile
    except OSError as e:
        raise DrawError(f"cannot remove the unfinished run {path}: {e.strerror or e}") from None
    import shutil

    shutil.rmtree(trash, ignore_errors=True)
    return True


def check_new_run(runs_dir: Path, name: str | None) -> str | None:
    """Fail fast (before torch and data are loaded) when --name names an existing run; a run left
    without any checkpoint is removed instead, and the line that says so is returned."""
    if name is not None:
        validate_name(name)
        path = Path(runs_dir) / name
        if path.exists():
            if remove_unfinished(path):
                return f"removed {path}, left by a run that stopped before its first checkpoint (nothing in it to resume)"
            raise DrawError(existing_run_message(path))
    return None


def checkpoint_ref(ref: str) -> Path | None:
    """The checkpoint file a reference names (a path ending in .pt, e.g. runs/x/checkpoints/epoch_002.pt),
    or None when it names a run."""
    if not ref.lower().endswith(".pt"):
        return None
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if "/" in ref or "\\" in ref:
        raise DrawError(f"checkpoint not found: {ref}")
    return None  # a run named like a file: looked up as a run


def run_of_checkpoint(path: Path) -> Path | None:
    """The run directory holding a checkpoint file (RUN/checkpoints/FILE.pt), or None."""
    run = Path(path).parent.parent
    if Path(path).parent.name == names.CHECKPOINTS and (run / names.CONFIG).is_file():
        return run
    return None


def resolve_run(ref: str, runs_dir: Path) -> Path:
    """A run name under runs_dir, a path to a run directory, or a checkpoint file in one (its run)."""
    ckpt_file = checkpoint_ref(ref)
    if ckpt_file is not None:
        run = run_of_checkpoint(ckpt_file)
        if run is None:
            raise DrawError(f"{ref} is a checkpoint file outside a run directory (RUN/checkpoints/FILE.pt); "
                            "this command needs its run")
        return run
    candidate = Path(ref)
    # A path (it has a separator, or is . or ..) names a run directory; anything else is a name.
    pathlike = "/" in ref or "\\" in ref or ref in (".", "..")
    if pathlike and (candidate / names.CONFIG).is_file():
        return candidate
    if pathlike:
        if candidate.is_dir():
            raise DrawError(f"{ref} is not a run directory (no config.yaml in it)")
        raise DrawError(f"run directory not found: {ref}")
    validate_name(ref)
    path = Path(runs_dir) / ref
    if not (path / names.CONFIG).is_file():
        runs = existing_runs(Path(runs_dir))
        where = Path(runs_dir).absolute()  # the folder it looked in, whatever the working directory
        listing = f"existing runs: {', '.join(runs)}" if runs else "no runs there yet"
        raise DrawError(f"run {ref!r} not found in {where} ({listing}); runs elsewhere: --runs-dir DIR or "
                        f"{names.RUNS_DIR_ENV}=DIR")
    return path


def fallback_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints: last.pt, the epoch files from the last, best.pt."""
    ckpts = Path(run_dir) / names.CHECKPOINTS
    epochs = [ckpts / names.epoch_file(e) for e in reversed(names.list_epochs(ckpts))]
    return [p for p in [ckpts / names.LAST, *epochs, ckpts / names.BEST] if p.is_file()]


TRAINING_STATE = ("optimizer", "rng")  # what a checkpoint needs beyond the weights to continue training


def _usable(path: Path, full_state: bool) -> dict | None:
    """The checkpoint at ``path`` when it is readable (and, with ``full_state``, holds the optimizer
    and random state a resume needs), else None."""
    try:
        ckpt = ckpt_io.load(path)
    except DrawError:
        return None
    if full_state and any(key not in ckpt for key in TRAINING_STATE):
        return None
    return ckpt


def newest_usable(run_dir: Path, tried: set, full_state: bool = False) -> tuple[Path, dict] | None:
    """The run's readable checkpoint with the most optimizer steps, whatever its kind (last.pt,
    best.pt, epoch_NNN.pt), leaving out the files in ``tried`` (file identities); with ``full_state``
    only one that can continue training. Epoch files are read from the newest until one is usable
    (an older one has fewer steps); on equal steps last.pt, then the epoch file, then best.pt."""
    found = []
    epochs_done = False
    for rank, candidate in enumerate(fallback_checkpoints(run_dir)):
        is_epoch = candidate.name not in (names.LAST, names.BEST)
        if is_epoch and epochs_done:
            continue
        identity = file_identity(candidate)
        if identity in tried:  # the same file (a hard link) or one already refused
            continue
        tried.add(identity)
        ckpt = _usable(candidate, full_state)
        if ckpt is None:
            continue
        epochs_done = epochs_done or is_epoch
        found.append((int(ckpt["step"]), -rank, candidate, ckpt))
    if not found:
        return None
    _, _, path, ckpt = max(found, key=lambda f: f[:2])
    return path, ckpt


def load_readable(run_dir: Path, wanted: Path, full_state: bool = False) -> tuple[Path, dict, str | None]:
    """(path, checkpoint, note): ``wanted`` loaded; when it is missing or not readable (truncated,
    corrupt), or with ``full_state`` lacks the training state, the run's newest usable checkpoint
    instead (:func:`newest_usable`), and a one-line note that says which (the unreadable file is
    left as it is). The first error when no checkpoint is usable."""
    try:
        ckpt = ckpt_io.load(wanted)
        missing = [key for key in TRAINING_STATE if key not in ckpt] if full_state else []
        if not missing:
            return wanted, ckpt, None
        first = DrawError(f"{wanted}: checkpoint lacks {', '.join(map(repr, missing))}, so the run cannot be resumed from it")
    except DrawError as e:
        first = e
    found = newest_usable(run_dir, {file_identity(wanted)}, full_state)
    if found is None:
        raise first
    candidate, ckpt = found
    what = "newest readable checkpoint" + (" with the full training state" if full_state else "")
    note = (f"warning: {first}; using {candidate.name} instead (epoch {ckpt['epoch']}, step {ckpt['step']}), "
            f"the {what} of run {Path(run_dir).name!r}")
    return candidate, ckpt, note


def set_aside_newer(run_dir: Path, source: Path, ckpt: dict) -> str | None:
    """Before a run continues from an older checkpoint than last.pt (last.pt unreadable, or a file
    named with --resume), move the checkpoints it would overwrite into checkpoints/set-aside-TIME/:
    last.pt, the epoch files after ``ckpt``'s epochs, and best.pt when it is unreadable or newer.
    Nothing is deleted. Returns the line that says what moved, or None."""
    ckpts = Path(run_dir) / names.CHECKPOINTS
    keep = file_identity(source)
    complete = int(ckpt["epoch"]) - (1 if ckpt.get("epoch_images", 0) else 0)
    moving = []
    last = ckpts / names.LAST
    if last.is_file() and file_identity(last) != keep:
        moving.append(last)
    moving += [ckpts / names.epoch_file(e) for e in names.list_epochs(ckpts) if e > complete]
    best = ckpts / names.BEST
    if best.is_file() and file_identity(best) != keep:
        try:
            newer = int(ckpt_io.load(best)["step"]) > int(ckpt["step"])
        except DrawError:
            newer = True  # unreadable: kept as evidence, out of the way
        if newer:
            moving.append(best)
    if not moving:
        return None
    base = "set-aside-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = ckpts / base
    try:
        for i in range(2, 100):
            try:
                folder.mkdir()
                break
            except FileExistsError:
                folder = ckpts / f"{base}-{i}"
        for path in moving:
            os.rename(path, folder / path.name)
    except OSError as e:
        raise DrawError(f"cannot move the newer checkpoints of run {Path(run_dir).name!r} aside into {folder}: {e.strerror or e}") from None
    moved = ", ".join(p.name for p in moving)
    return f"moved {moved} (unreadable, or newer than {source.name}) to {folder}, so that nothing is overwritten"


def resolve_checkpoint(run_dir: Path, load: str | None) -> Path:
    """--load EPOCH|last|best; default best, else last, else the newest epoch file."""
    ckpts = run_dir / names.CHECKPOINTS
    if load is None:
        for name in (names.BEST, names.LAST):
            if (ckpts / name).is_file():
                return ckpts / name
        epochs = names.list_epochs(ckpts)
        if epochs:  # best.pt and last.pt deleted or moved: the newest epoch file
            return ckpts / names.epoch_file(epochs[-1])
        raise DrawError(f"run {run_dir.name!r} has no checkpoints yet (looked in {ckpts})")
    if load in ("best", "last"):
        path = ckpts / f"{load}.pt"
        if not path.is_file():
            raise DrawError(f"run {run_dir.name!r} has no {load}.pt checkpoint")
        return path
    if not load.isdigit():
        raise DrawError(f"--load: expected an epoch number, 'last' or 'best', got {load!r}")
    path = ckpts / names.epoch_file(int(load))
    if not path.is_file():
        epochs = names.list_epochs(ckpts)
        have = ", ".join(map(str, epochs)) if epochs else "none"
        raise DrawError(f"run {run_dir.name!r} has no checkpoint for epoch {int(load)} (epochs with checkpoints: {have})")
    return path


# ----------------------------------------------------------------------------- loading a model
@dataclass(frozen=True)
class Located:
    """What a model reference names, found without torch: a run's checkpoint, a checkpoint or weights
    file, a model folder, a Hub repository or a built-in model."""

    ref: str
    run_dir: Path | None  # None for a built-in model, a model folder or a checkpoint file outside a run
    checkpoint: Path | None  # None for a built-in model or a model folder (found and verified when loaded)
    builtin: Any = None  # drawcli.runs.builtin.BuiltinModel for @NAME
    chosen: bool = False  # the checkpoint was named (--load or a file): no other one is used in its place
    folder: Path | None = None  # a model folder (for hf:OWNER/NAME, once downloaded)
    hub: str | None = None  # hf:OWNER/NAME[@REVISION]

    @property
    def label(self) -> str:
        """How messages name it: the run's name, @NAME, hf:OWNER/NAME, the model folder's or the checkpoint file's name."""
        if self.builtin is not None:
            return f"@{self.builtin.name}"
        if self.hub is not None:
            return self.hub
        if self.folder is not None:
            return self.folder.resolve().name
        return self.run_dir.name if self.run_dir is not None else self.checkpoint.name

    @property
    def stem(self) -> str | None:
        """The first part of its default output files' names when they go to the current directory
        (no run directory): the built-in model's, the folder's, the Hub repository's or the file's name."""
        if self.builtin is not None:
            return self.builtin.name
        if self.hub is not None:
            return self.hub.split("/", 1)[1].split("@")[0]
        if self.folder is not None:
            return self.folder.resolve().name
        return self.checkpoint.stem if self.run_dir is None else None

    def output(self, kind: str, suffix: str, *parts: str) -> Path:
        """A default output file whose name says what it holds, so that outputs made with other options
        never replace each other: RUN_DIR/KIND-CHECKPOINT-PARTS.SUFFIX (e.g. samples-best-n64-seed0.png),
        or NAME-KIND-PARTS.SUFFIX in the current directory for a built-in model, a model folder, a Hub
        model or a checkpoint file outside a run (its file name)."""
        if self.stem is not None:
            return Path("-".join([self.stem, kind, *(p for p in parts if p)]) + suffix)
        return self.run_dir / ("-".join([kind, self.checkpoint.stem, *(p for p in parts if p)]) + suffix)


@dataclass
class LoadedRun:
    """A trained model ready to draw or evaluate, and where it came from."""

    located: Located
    epoch: int
    step: int
    settings: Any  # drawcli.settings.Settings: the ones it was trained with
    saved_settings: dict  # the same, as saved in the file
    model: Any  # drawcli.model.DRAW, in eval mode on ``device``
    device: Any  # torch.device
    precision: str = "float32"  # resolved: float32 or bfloat16 (run the model under drawcli.core.device.autocast)
    precision_reason: str = "as set"
    note: str | None = None  # a line to show: the checkpoint asked for was unreadable, and which one was used
    training: dict | None = None  # the whole history where it is recorded (config.json's training: cycles)

    @property
    def trained(self) -> str:
        """How long it trained, for messages: 'epoch 12, step 5628', or every cycle of a model trained
        in several ('400 epochs in 4 cycles: 160 + 90 + 85 + 65, 375200 steps')."""
        if self.training is None and self.located.checkpoint is None:
            return "training not recorded"
        return folders.describe_training(self.training, self.epoch, self.step)

    @property
    def run_dir(self) -> Path | None:
        return self.located.run_dir

    @property
    def checkpoint(self) -> Path | None:
        return self.located.checkpoint

    @property
    def label(self) -> str:
        return self.located.label

    def output(self, kind: str, suffix: str, *parts: str) -> Path:
        return self.located.output(kind, suffix, *parts)


def locate(ref: str, load: str | None, device: str, runs_dir: str | Path) -> Located:
    """A run name, run directory or @NAME, with --load and --device checked: every mistake in them
    is answered here, before torch is imported (which takes seconds)."""
    from drawcli.core.device import check_spec
    from drawcli.runs import builtin, hub

    if ref.startswith(hub.HUB_PREFIX):
        hub.hub_repo(ref)
        if load is not None:
            raise DrawError(f"--load picks a run's checkpoint; the Hub model {ref} has one set of weights")
        if not hub.hub_available():
            raise DrawError(f"{ref}: a model on the Hugging Face Hub needs the hub extra: {hub.INSTALL_HUB}")
        check_spec(device)
        return Located(ref, None, None, hub=ref)
    if builtin.is_builtin_ref(ref):
        entry = builtin.get_builtin(ref)
        if load is not None:
            raise DrawError(f"--load picks a run's checkpoint; the built-in model {ref} has one set of weights")
        check_spec(device)
        return Located(ref, None, None, entry)
    ckpt_file = checkpoint_ref(ref)
    if ckpt_file is not None:
        if load is not None:
            raise DrawError(f"--load picks a run's checkpoint; {ref} is a checkpoint file already")
        check_spec(device)
        return Located(ref, run_of_checkpoint(ckpt_file), ckpt_file, chosen=True)
    folder = model_folder_ref(ref, Path(runs_dir))
    if folder is not None:
        if load is not None:
            raise DrawError(f"--load picks a run's checkpoint; {ref} is a model folder with one set of weights")
        folders.check_folder(folder)
        check_spec(device)
        return Located(ref, None, None, folder=folder)
    run_dir = resolve_run(ref, Path(runs_dir))
    path = resolve_checkpoint(run_dir, load)
    check_spec(device)
    return Located(ref, run_dir, path, chosen=load is not None)


def model_folder_ref(ref: str, runs_dir: Path) -> Path | None:
    """The model folder a reference names, or None when it names a run: a path (with a separator) to a
    folder holding config.json or model.safetensors, or a bare name of such a folder in the current
    directory when no run under runs_dir has that name (a run wins)."""
    path = Path(ref).expanduser()
    looks = path.is_dir() and ((path / folders.CONFIG).is_file() or (path / folders.WEIGHTS).is_file())
    if not looks or (path / names.CONFIG).is_file():  # a run directory has config.yaml
        return None
    pathlike = "/" in ref or "\\" in ref or ref in (".", "..") or ref.startswith("~")
    if pathlike or not (Path(runs_dir) / ref / names.CONFIG).is_file():
        return path
    return None


def read_checkpoint(located: Located) -> tuple[Located, dict, str | None]:
    """The checkpoint (or weights file) a located run or file names, as a dict: a named one as it is,
    the default choice (best, else last) replaced by the newest readable one when it cannot be read.
    Returns the located reference with the file used, the dict, and a line saying so (or None)."""
    if located.chosen or located.run_dir is None:
        try:
            return located, ckpt_io.load(located.checkpoint, weights=True), None
        except DrawError as e:
            named_file = located.ref.lower().endswith(".pt")
            if named_file or located.run_dir is None or len(fallback_checkpoints(located.run_dir)) < 2:
                raise
            raise DrawError(f"{e} (without --load, the run's newest readable checkpoint is used)") from None
    path, ckpt, note = load_readable(located.run_dir, located.checkpoint)
    return dataclasses.replace(located, checkpoint=path), ckpt, note


def load_run(ref: str, load: str | None = None, device: str = "auto", runs_dir: str | Path = "runs",
             located: Located | None = None, precision: str = "float32") -> LoadedRun:
    """Run name, run directory or @NAME (+ --load) -> the model in eval mode on the device, with its
    settings and the precision (float32, bfloat16 or auto) resolved for that device."""
    from drawcli.core.device import resolve_device, resolve_precision
    from drawcli.runs import builtin, hub, pretrained

    located = located or locate(ref, load, device, runs_dir)
    dev = resolve_device(device)
    how = resolve_precision(precision, dev)
    if located.hub is not None:
        located = dataclasses.replace(located, folder=hub.download(*hub.hub_repo(located.hub)))
    if located.builtin is not None or located.folder is not None:
        if located.builtin is not None:
            model, settings, config = builtin.build(located.builtin, dev)
        else:
            model, config = pretrained.load_folder(located.folder, dev)
            settings = config.settings
        # A model folder holds no data folder (data.data_dir): this machine's default is used.
        return LoadedRun(located, config.epochs or 0, config.steps or 0, settings, config.saved_settings, model, dev, *how,
                         training=config.training)
    located, ckpt, note = read_checkpoint(located)
    settings = from_dict(ckpt["settings"])
    model = ckpt_io.model_from_checkpoint(ckpt, dev).eval()
    return LoadedRun(located, int(ckpt["epoch"]), int(ckpt["step"]), settings, ckpt["settings"], model, dev, *how, note=note)


class RunRecorder:
    """Training callback that writes metrics.jsonl and the checkpoints of one run."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / names.CHECKPOINTS
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / names.METRICS

    def _append(self, row: dict) -> None:
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise DrawError(f"cannot write {self.metrics_path}: {e.strerror or e}") from None

    def on_log(self, row: dict) -> None:
        self._append(row)

    def on_epoch(self, row: dict) -> None:
        self._append(row)

    def on_checkpoint(self, ckpt: dict, is_best: bool) -> None:
        last = self.ckpt_dir / names.LAST
        if ckpt.get("epoch_images", 0):
            # A stop inside an epoch (--max-steps): last.pt only, so that epoch_NNN.pt always
            # means "after NNN complete epochs" and is never written twice.
            ckpt_io.atomic_save(ckpt, last)
            if is_best:
                ckpt_io.atomic_link(last, self.ckpt_dir / names.BEST)
            return
        epoch_path = self.ckpt_dir / names.epoch_file(ckpt["epoch"])
        if epoch_path.exists():
            # Another training state already holds this name (e.g. last.pt was replaced by an
            # older checkpoint): keep both, the new one as last.pt, and say so.
            ckpt_io.atomic_save(ckpt, last)
            raise DrawError(
                f"{epoch_path} already exists; it was not replaced by this run's epoch {ckpt['epoch']} "
                f"(step {ckpt['step']}), which is saved as {last} instead"
            )
        ckpt_io.atomic_save(ckpt, epoch_path)
        # last.pt and best.pt are hard links to the epoch file: no extra disk, same atomicity.
        ckpt_io.atomic_link(epoch_path, last)
        if is_best:
            ckpt_io.atomic_link(epoch_path, self.ckpt_dir / names.BEST)

    def on_interrupt(self, ckpt: dict) -> None:
        # Mid-epoch: only last.pt moves on (a new file replaces the link; epoch files stay).
        ckpt_io.atomic_save(ckpt, self.ckpt_dir / names.LAST)


def write_config(run_dir: Path, settings) -> None:
    header = "# drawcli resolved settings; reproduce with: draw train --config THIS_FILE --name NEW\n"
    write_text_atomically(Path(run_dir) / names.CONFIG, header + settings.to_yaml())


def append_resume(run_dir: Path, row: dict) -> None:
    """One ``"kind": "resume"`` row in metrics.jsonl: what changed when the run was continued."""
    RunRecorder(run_dir)._append({"kind": "resume", **row})
