"""What `draw runs` says about each run in a runs folder (run_info, list_runs), as plain data.

Fast and torch-free: it reads config.yaml, metrics.jsonl, any eval*.json and the names and
times of files, never a checkpoint. A run's status:

* ``locked``: a process holds RUN_DIR/.lock (training now); its JSON (pid, host, started)
  is shown when present;
* ``finished``: an evaluation at the end of train.epochs (a whole epoch), as the run's resumes
  last set them;
* ``stopped at max-steps``: an evaluation at train.max_steps (as the run's resumes last set it)
  before the end of train.epochs: `draw train --resume NAME` trains on to its epochs;
* ``empty``: no metrics and no checkpoints yet;
* ``failed``: metrics but no checkpoint: it stopped (was killed) before its first one, so there
  is nothing to resume (``draw train --name NAME`` starts it again);
* ``interrupted``: anything else (it has checkpoints and can be resumed).

Unreadable last.pt or best.pt files are named beside the status.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.runs import names
from drawcli.runs.lock import lock_holder
from drawcli.runs.metrics import current_rows, read_config, read_metrics, steps_per_epoch


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def unreadable_checkpoints(run_dir: Path) -> list[str]:
    """last.pt and best.pt when they cannot be opened as the zip archives torch writes (a truncated
    file has lost its central directory): a cheap look, without torch, at the files that resume and
    the picture commands read first. (They fall back to the newest readable checkpoint.)"""
    bad = []
    for name in (names.LAST, names.BEST):
        path = run_dir / names.CHECKPOINTS / name
        if not path.is_file():
            continue
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            bad.append(name)
    return bad


def _last_change(run_dir: Path) -> float:
    """The newest modification time of the run directory and the files in it (one level into
    checkpoints/ and tb/)."""
    newest = 0.0
    for folder in (run_dir, run_dir / names.CHECKPOINTS, run_dir / names.TB_DIR):
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        pass
        except OSError:
            pass
    try:
        newest = max(newest, run_dir.stat().st_mtime)
    except OSError:
        pass
    return newest


def _iwae_results(run_dir: Path, rows: list[dict]) -> list[dict]:
    """IWAE bounds from metrics rows of kind iwae and from eval*.json files, oldest first."""
    found = []
    for row in rows:
        if row.get("kind") == "iwae" and _finite(row.get("iwae")):
            found.append({"iwae": row["iwae"], "stderr": row.get("iwae_stderr"), "samples": row.get("samples"),
                          "split": row.get("split"), "images": row.get("images"), "limit": None, "step": row.get("step"),
                          "time": row.get("time") if _finite(row.get("time")) else None,
                          "source": names.METRICS})
    for path in sorted(run_dir.glob(names.EVAL_GLOB)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            when = path.stat().st_mtime
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and _finite(data.get("iwae")):
            found.append({"iwae": data["iwae"], "stderr": data.get("iwae_stderr"), "samples": data.get("samples"),
                          "split": data.get("split"), "images": data.get("images"), "limit": data.get("limit"),
                          "step": data.get("step"), "time": when, "source": path.name})
    found.sort(key=lambda r: r["time"] or 0.0)
    return found


def tightest(results: list[dict]) -> dict | None:
    """The tightest (lowest) IWAE bound measured, among those over a whole split when there are
    any (a bound on the first N images is not comparable), on the test split when there are any."""
    pool = [r for r in results if r.get("limit") is None] or results
    pool = [r for r in pool if r.get("split") in (None, "test")] or pool
    return min(pool, key=lambda r: r["iwae"], default=None)


def targets(train: dict, rows: list[dict]) -> tuple:
    """(train.epochs, train.max_steps) in effect now: config.yaml's, as the resumes changed them (a
    resume records its changes; train.max_steps is never inherited, so a resume without
    --max-steps has none)."""
    epochs, max_steps = train.get("epochs"), train.get("max_steps")
    for row in rows:
        if row.get("kind") != "resume":
            continue
        changes = row.get("changes") if isinstance(row.get("changes"), dict) else {}
        if isinstance(changes.get("train.epochs"), list) and len(changes["train.epochs"]) == 2:
            epochs = changes["train.epochs"][1]
        new_max = changes.get("train.max_steps")
        max_steps = new_max[1] if isinstance(new_max, list) and len(new_max) == 2 else None
    return epochs, max_steps


def epochs_done(evals: list[dict], ckpt_epochs: list[int], has_checkpoints: bool, spe: int | None) -> int:
    """Complete epochs: epoch_NNN.pt files are written only after complete ones; an evaluation row
    counts when it says its epoch was complete (rows written before that flag existed: when the
    run's checkpoints are gone, or its step fills the epoch). A stop inside an epoch counts not."""
    done = list(ckpt_epochs)
    for row in evals:
        epoch = row.get("epoch")
        if not isinstance(epoch, int):
            continue
        flag = row.get("epoch_complete")
        if flag is True or (flag is None and (not has_checkpoints or (spe is not None and row["step"] >= epoch * spe))):
            done.append(epoch)
    return max(done, default=0)


def run_info(run_dir: str | Path) -> dict:
    """Everything `draw runs` shows about one run directory, as plain JSON-ready data."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    model, data, train = _section(config, "model"), _section(config, "data"), _section(config, "train")
    rows = current_rows(read_metrics(run_dir / names.METRICS))
    curve = [r for r in rows if r.get("kind") in ("train", "eval")]
    evals = [r for r in curve if r["kind"] == "eval"]
    ckpt_epochs = names.list_epochs(run_dir / names.CHECKPOINTS)
    epochs_target, max_steps = targets(train, rows)
    has_checkpoints = names.has_checkpoints(run_dir)
    spe = steps_per_epoch(curve)

    steps_done = max((r["step"] for r in curve), default=0)
    done = epochs_done(evals, ckpt_epochs, has_checkpoints, spe)
    best = min((r for r in evals), key=lambda r: r["loss"], default=None)

    finished = capped = False
    if evals:
        last = evals[-1]
        if isinstance(epochs_target, int) and isinstance(last.get("epoch"), int) and last["epoch"] >= epochs_target:
            complete = last.get("epoch_complete")
            # a whole epoch, not an early stop inside it
            finished = complete if isinstance(complete, bool) else (spe is None or last["step"] >= last["epoch"] * spe)
        capped = not finished and isinstance(max_steps, int) and last["step"] >= max_steps
    elif isinstance(epochs_target, int) and ckpt_epochs and ckpt_epochs[-1] >= epochs_target:
        finished = True  # metrics lost, but the checkpoint of the last epoch is there

    lock = lock_holder(run_dir)
    if lock is not None:
        status = "locked"
    elif finished:
        status = "finished"
    elif capped:
        status = "stopped at max-steps"
    elif not has_checkpoints:
        # Nothing to resume: never trained, or stopped (killed) before its first checkpoint.
        status = "empty" if not curve else "failed"
    else:
        status = "interrupted"

    changed = _last_change(run_dir)
    iwae = _iwae_results(run_dir, rows)
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "status": status,
        "lock": lock,
        "unreadable": unreadable_checkpoints(run_dir),
        "dataset": data.get("dataset"),
        # config.yaml of runs made before the rename says steps and embed (drawcli.settings.ALIASES)
        "model": {"glimpses": model.get("glimpses", model.get("steps")), "read_n": model.get("read_n"),
                  "write_n": model.get("write_n"), "hidden": model.get("hidden"),
                  "latent": model.get("latent", model.get("embed")), "attention": model.get("attention")},
        "epochs": done,
        "epochs_target": epochs_target,
        "steps": steps_done,
        "max_steps": max_steps,
        "best_eval": None if best is None else {k: best.get(k) for k in ("loss", "lx", "lz", "split", "epoch", "step")},
        "iwae": tightest(iwae),
        "iwae_all": iwae,
        "last_change": datetime.fromtimestamp(changed, timezone.utc).isoformat(timespec="seconds") if changed else None,
        "last_change_unix": changed or None,
    }


def _is_run(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and any(
        (path / f).exists() for f in (names.CONFIG, names.METRICS, names.CHECKPOINTS)
    )


def _order(name: str):
    m = re.fullmatch(r"run(\d+)", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def list_runs(runs_dir: str | Path) -> list[dict]:
    """run_info for every run directory in runs_dir: run1, run2, ... first, then by name."""
    runs_dir = Path(runs_dir)
    if not runs_dir.exists():
        return []
    if not runs_dir.is_dir():
        raise DrawError(f"--runs-dir {runs_dir}: not a directory")
    try:
        paths = [p for p in runs_dir.iterdir() if _is_run(p)]
    except OSError as e:
        raise DrawError(f"cannot read {runs_dir}: {e.strerror or e}") from None
    return [run_info(p) for p in sorted(paths, key=lambda p: _order(p.name))]
