"""`draw train`: settings from the file, flags and --set, then a new run, a resumed one, or --nproc
worker processes (drawcli/training/ does the work).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.core.progress import make_console
from drawcli.runs import store as runs
from drawcli.runs.lock import check_not_locked
from drawcli.runs.names import RUNS_DIR_ENV
from drawcli.settings import ALIASES, build_settings, parse_set
from drawcli.training import distributed
from drawcli.training.run import launcher_threads, resume_run, run_train, settings_for_resume


def train_command(config: str | None, flags: dict, sets: list[str] | None, resume: str | None = None,
                  nproc: int | None = None, argv: list[str] | None = None, notes: list[str] | None = None) -> Path | None:
    """`draw train`: a new run, a resumed one (--resume), or N processes of either (--nproc N > 1).

    Settings are checked once, before anything starts; with --nproc the answers one process would
    give (batch divisibility, a locked or existing run) come before the N processes are launched.
    ``notes``: lines (warnings about the command line) that training prints first, on rank 0.
    """
    if nproc is not None and nproc < 1:
        raise DrawError(f"--nproc must be at least 1, got {nproc}")
    # Refuse bad settings once, before touching a run or launching; a resume's rules between keys
    # are checked against the run's own settings (settings_for_resume).
    origins: dict[str, str] = {}
    base = build_settings(config, flags, sets, together=resume is None, given=origins)
    if "run.runs_dir" not in origins and os.environ.get(RUNS_DIR_ENV):  # $DRAW_RUNS_DIR: below the config and flags
        flags = {**(flags or {}), "run": {**(flags or {}).get("run", {}), "runs_dir": os.environ[RUNS_DIR_ENV]}}
        origins = {}
        base = build_settings(config, flags, sets, together=resume is None, given=origins)
    given = {key: where_given(key, origin, flags, sets) for key, origin in origins.items()}
    notes = [*(notes or []), *unused_settings(base, given)]
    if nproc is not None and nproc > 1:
        distributed.check_global_batch(base.train.batch_size, nproc, launcher=True)
        distributed.dist_timeout_s()  # a malformed DRAWCLI_DIST_TIMEOUT, said once
        # The device the processes will use: a resumed run's own unless the command changes it.
        spec = base.run.device if resume is None else settings_for_resume(resume, base.run.runs_dir, config, flags, sets)[0].run.device
        distributed.check_launch(nproc, spec)
        if resume is not None:
            check_not_locked(runs.resolve_run(resume, Path(base.run.runs_dir)))
        else:
            note = runs.check_new_run(Path(base.run.runs_dir), base.run.name)
            if note:
                make_console().print(note, highlight=False)
        argv = list(sys.argv if argv is None else argv)
        with launcher_threads(base, nproc):
            distributed.launch(nproc, ["train", *distributed.strip_nproc(argv[argv.index("train") + 1 :])])
        return None
    if resume is not None:
        return resume_run(resume, base.run.runs_dir, config, flags, sets, notes=notes)
    return run_train(base, notes=notes, given=given)


def unused_settings(settings, given: dict[str, str]) -> list[str]:
    """Warnings about settings given explicitly that change nothing: read and write windows without attention."""
    if settings.model.attention:
        return []
    return [f"warning: {given[key]} has no effect without attention (--no-attention): the model reads and writes whole images"
            for key in ("model.read_n", "model.write_n") if key in given]


FLAGS = {"model.glimpses": "--glimpses", "model.latent": "--latent", "model.hidden": "--hidden", "model.read_n": "--read-n",
         "model.write_n": "--write-n", "model.attention": "--attention", "run.runs_dir": "--runs-dir"}


def where_given(key: str, origin: str, flags: dict | None, sets: list[str] | None) -> str:
    """How a message names where ``key`` ("section.key") was set: its flag (``--glimpses``), the
    config file (``model.glimpses in c.yaml``) or the --set item as written (``--set model.steps=5``)."""
    section, name = key.split(".", 1)
    if origin == "--set ":
        for written, value in parse_set(sets).get(section, {}).items():
            if ALIASES.get((section, written), written) == name:
                raw = next((item.split("=", 1)[1] for item in sets or [] if item.startswith(f"{section}.{written}=")), value)
                return f"--set {section}.{written}={raw}"
        return f"--set {key}"
    if origin:
        return f"{key} in {origin.removesuffix(': ')}"
    flag = FLAGS.get(key, f"--{name.replace('_', '-')}")
    if key == "model.attention" and flags and (flags.get("model") or {}).get("attention") is False:
        flag = "--no-attention"
    return flag
