"""The names of the files in a run directory, and the rules that read them back: one place for
every module that writes or reads a run (store, checkpoint, listing, training, evaluation, plot).

Layout of ``RUNS_DIR/NAME/``::

    config.yaml          the settings the run was started with (reproduce with ``draw train --config``)
    metrics.jsonl        one JSON object per logged step, per epoch and per resume
    checkpoints/         epoch_NNN.pt after each complete epoch, last.pt, best.pt
    tb/                  TensorBoard event files, when asked for
    .lock                held (flock) by the process that trains the run (drawcli/runs/lock.py)
    eval-....json        what `draw evaluate` found (drawcli/evaluation/evaluate.py names them)

No torch here: `draw runs` reads runs with these alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
TB_DIR = "tb"
LOCK = ".lock"
EVAL_PREFIX = "eval"  # eval-[DATASET-]SPLIT-kK...json
EVAL_GLOB = f"{EVAL_PREFIX}*.json"

# Where run names are looked up and new runs are made when --runs-dir (run.runs_dir) is not given.
RUNS_DIR_ENV = "DRAW_RUNS_DIR"
RUNS_DIR_DEFAULT = "runs"


def default_runs_dir() -> str:
    """$DRAW_RUNS_DIR when set, else ``runs`` (in the current folder)."""
    return os.environ.get(RUNS_DIR_ENV) or RUNS_DIR_DEFAULT


# What `draw train` puts in a run directory: a run left with nothing else and no checkpoint may be
# removed to free its name (anything else in it is the user's, and stays).
RUN_ENTRIES = {CONFIG, METRICS, CHECKPOINTS, TB_DIR, LOCK}

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


def epoch_file(epoch: int) -> str:
    """The checkpoint written after epoch ``epoch`` is complete: epoch_NNN.pt."""
    return f"epoch_{epoch:03d}.pt"


def list_epochs(ckpt_dir: str | Path) -> list[int]:
    """The epochs that have an epoch file in ``ckpt_dir``, ascending; [] when it cannot be read."""
    try:
        names = [p.name for p in Path(ckpt_dir).iterdir()]
    except OSError:
        return []
    return sorted(int(m.group(1)) for name in names if (m := _EPOCH_FILE.fullmatch(name)))


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether RUN_DIR/checkpoints holds any checkpoint file (not counting hidden temporary files)."""
    try:
        return any(p.suffix == ".pt" and not p.name.startswith(".") for p in (Path(run_dir) / CHECKPOINTS).iterdir())
    except OSError:
        return False
