"""`draw runs`: a table (or JSON) of the runs in a runs folder.

Fast and torch-free: it reads config.yaml, metrics.jsonl, any eval*.json and the names and
times of files, never a checkpoint. A run's status:

* ``locked``: a process holds RUN_DIR/.lock (training now); its JSON (pid, host, started)
  is shown when present;
* ``finished``: an evaluation at train.epochs (a whole epoch) or at train.max_steps, as the
  run's resumes last set them;
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
from drawcli.runs.metrics import current_rows, read_config, read_metrics, steps_per_epoch

LOCK_FILE = ".lock"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


def lock_holder(run_dir: str | Path) -> dict | None:
    """None when no process holds RUN_DIR/.lock; else the lock file's JSON ({} if unreadable).

    A training process holds the file with flock(LOCK_EX); a shared, non-blocking flock of ours
    then fails at once. When it succeeds nobody holds it, and it is released straight away.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock can be seen
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held by a training process
        except OSError:  # a file system without flock: no lock can be seen
            return None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        try:
            holder = json.loads(os.read(fd, 65536).decode("utf-8", errors="replace") or "{}")
        except (OSError, ValueError):
            holder = {}
        return holder if isinstance(holder, dict) else {}
    finally:
        os.close(fd)


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checkpoint_epochs(run_dir: Path) -> list[int]:
    try:
        names = os.listdir(run_dir / "checkpoints")
    except OSError:
        return []
    return sorted(int(m.group(1)) for name in names if (m := _EPOCH_FILE.match(name)))


def _has_checkpoints(run_dir: Path) -> bool:
    try:
        return any(name.endswith(".pt") and not name.startswith(".") for name in os.listdir(run_dir / "checkpoints"))
    except OSError:
        return False


def unreadable_checkpoints(run_dir: Path) -> list[str]:
    """last.pt and best.pt when they cannot be opened as the zip archives torch writes (a truncated
    file has lost its central directory): a cheap look, without torch, at the files that resume and
    the picture commands read first. (They fall back to the newest readable checkpoint.)"""
    bad = []
    for name in ("last.pt", "best.pt"):
        path = run_dir / "checkpoints" / name
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
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "tb"):
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
                          "source": "metrics.jsonl"})
    for path in sorted(run_dir.glob("eval*.json")):
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
    rows = current_rows(read_metrics(run_dir / "metrics.jsonl"))
    curve = [r for r in rows if r.get("kind") in ("train", "eval")]
    evals = [r for r in curve if r["kind"] == "eval"]
    ckpt_epochs = _checkpoint_epochs(run_dir)
    epochs_target, max_steps = targets(train, rows)
    has_checkpoints = _has_checkpoints(run_dir)
    spe = steps_per_epoch(curve)

    steps_done = max((r["step"] for r in curve), default=0)
    done = epochs_done(evals, ckpt_epochs, has_checkpoints, spe)
    best = min((r for r in evals), key=lambda r: r["loss"], default=None)

    finished = False
    if evals:
        last = evals[-1]
        if isinstance(max_steps, int) and last["step"] >= max_steps:
            finished = True
        elif isinstance(epochs_target, int) and isinstance(last.get("epoch"), int) and last["epoch"] >= epochs_target:
            complete = last.get("epoch_complete")
            # a whole epoch, not an early stop inside it
            finished = complete if isinstance(complete, bool) else (spe is None or last["step"] >= last["epoch"] * spe)
    elif isinstance(epochs_target, int) and ckpt_epochs and ckpt_epochs[-1] >= epochs_target:
        finished = True  # metrics lost, but the checkpoint of the last epoch is there

    lock = lock_holder(run_dir)
    if lock is not None:
        status = "locked"
    elif finished:
        status = "finished"
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
        "iwae": iwae[-1] if iwae else None,
        "iwae_all": iwae,
        "last_change": datetime.fromtimestamp(changed, timezone.utc).isoformat(timespec="seconds") if changed else None,
        "last_change_unix": changed or None,
    }


def _is_run(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and any(
        (path / f).exists() for f in ("config.yaml", "metrics.jsonl", "checkpoints")
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


def model_summary(model: dict) -> str:
    """T64 r2 w5 h256 z100 (read and write N with attention), or T64 no-att h256 z100."""
    def part(prefix, key):
        value = model.get(key)
        return f"{prefix}{value if value is not None else '?'}"

    attention = model.get("attention")
    middle = [part("r", "read_n"), part("w", "write_n")] if attention is not False else ["no-att"]
    return " ".join([part("T", "glimpses"), *middle, part("h", "hidden"), part("z", "latent")])


def _age(unix: float | None, now: float | None = None) -> str:
    """How long ago, briefly: 'now', '12m ago', '5h ago', '3d ago'."""
    if not unix:
        return "-"
    seconds = (datetime.now().timestamp() if now is None else now) - unix
    if seconds < 60:
        return "now"
    for unit, size, limit in (("m", 60, 3600), ("h", 3600, 48 * 3600), ("d", 86400, math.inf)):
        if seconds < limit:
            return f"{int(seconds // size)}{unit} ago"
    return "-"  # pragma: no cover


STATUS_STYLE = {"finished": "green", "interrupted": "yellow", "locked": "cyan", "empty": "dim", "failed": "red"}


def runs_table(infos: list[dict], runs_dir: str | Path):
    """The rich table of `draw runs`: one row per run (details are in --json)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"runs in {runs_dir}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("run", "data", "model", "epochs", "steps", "best", "IWAE", "changed", "status"):
        right = name in ("epochs", "steps", "best", "IWAE")
        # On a narrow terminal the model summary wraps; everything else stays whole.
        table.add_column(name, justify="right" if right else "left", no_wrap=name != "model",
                         min_width=9 if name == "model" else None, style="bold" if name == "run" else None)
    for info in infos:
        target = info["epochs_target"]
        epochs = f"{info['epochs']}/{target}" if target is not None else str(info["epochs"])
        steps = str(info["steps"]) + (f"/{info['max_steps']}" if info["max_steps"] is not None else "")
        best = info["best_eval"]
        iwae = info["iwae"]
        iwae_text = "-"
        if iwae:
            iwae_text = f"{iwae['iwae']:.2f}" + (f" K{iwae['samples']}" if iwae.get("samples") is not None else "")
            if iwae.get("limit") is not None:  # not the whole split: not comparable with the best loss beside it
                iwae_text += f" ({iwae.get('images') or iwae['limit']} img)"
            if iwae.get("split") not in (None, "test"):
                iwae_text += f" {iwae['split']}"
        status = info["status"]
        if status == "locked" and info["lock"]:
            pid = info["lock"].get("pid")
            status = f"locked (pid {pid})" if pid is not None else status
        if info.get("unreadable"):
            status += f", {' and '.join(info['unreadable'])} unreadable"
        cells = [info["name"], str(info["dataset"] or "?"), model_summary(info["model"]), epochs, steps,
                 f"{best['loss']:.2f}" if best else "-", iwae_text, _age(info["last_change_unix"])]
        # Text, not markup: nothing read from a run's files is interpreted.
        table.add_row(*map(Text, cells), Text(status, style=STATUS_STYLE[info["status"]]))
    return table


def runs_command(runs_dir: str = "runs", as_json: bool = False, console=None) -> list[dict]:
    """Print the runs in runs_dir as a table, or as JSON with ``as_json``; return them."""
    infos = list_runs(runs_dir)
    if as_json:
        print(json.dumps(infos, indent=2))
        return infos
    from rich.console import Console

    # Piped or logged: rows stay whole, as on a wide terminal.
    console = console or (Console() if Console().is_terminal else Console(width=160))
    if not infos:
        console.print(f"no runs in {Path(runs_dir).absolute()} (--runs-dir DIR lists another folder; "
                      "train one with: draw train --name NAME)", highlight=False, soft_wrap=True)
        return infos
    print_table(console, runs_table(infos, runs_dir))
    return infos


def print_table(console, table) -> None:
    """A rich table; off a terminal (pipes, logs) without the spaces that pad its lines to its width."""
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
