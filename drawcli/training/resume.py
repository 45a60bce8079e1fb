"""`draw train --resume`: the checkpoint a run continues from, the settings it continues with, what
they change, and what a resume refuses (another model shape, data set, seed, binarisation or
evaluation split, a --name of another run, train.init_from).

drawcli.training.run takes the run's lock and trains (``resume_run``); nothing here writes a file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.data.catalogue import is_folder
from drawcli.data.folders import folder_path
from drawcli.runs import checkpoint as ckpt_io
from drawcli.runs import names
from drawcli.runs import store as runs
from drawcli.runs.names import has_checkpoints
from drawcli.settings import Settings, build_settings, changed_settings, from_dict, spell

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


def saved_settings(ckpt: dict, name: str | None = None) -> Settings:
    """The settings checkpoint ``ckpt`` was trained with, as a resume inherits them: without
    ``train.max_steps`` (a resumed run trains to its epochs unless --max-steps is given again, as a
    global step count); with run.name ``name`` when one is given (the run's folder name)."""
    saved = from_dict(ckpt["settings"])
    run = saved.run if name is None else dataclasses.replace(saved.run, name=name)
    return dataclasses.replace(saved, train=dataclasses.replace(saved.train, max_steps=None), run=run)


def settings_for_resume(run_ref: str, runs_dir: str, config, flags, sets) -> tuple[Settings, ResumeFrom]:
    """Saved settings of a run < --config < flags < --set; model shape may not change.

    ``train.max_steps`` is not inherited (:func:`saved_settings`).
    """
    found = resume_source(run_ref, runs_dir)
    run_dir, ckpt = found.run_dir, found.ckpt
    for key in ("optimizer", "rng"):  # optional for sampling and evaluation, needed to continue training
        if key not in ckpt:
            raise DrawError(f"{found.source}: checkpoint lacks {key!r}, so the run cannot be resumed")
    saved = saved_settings(ckpt)
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


def resume_changes(settings: Settings, ckpt: dict) -> dict[str, list]:
    """What this resume changes against the checkpoint's settings, ``{"section.key": [old, new]}``
    (recorded in the run's resume row); train.init_from may not change."""
    changes = changed_settings(saved_settings(ckpt, name=settings.run.name), settings)
    if "train.init_from" in changes:
        raise DrawError("train.init_from sets the weights a run starts from; a resumed run continues from its checkpoint, so it cannot change")
    return changes


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
