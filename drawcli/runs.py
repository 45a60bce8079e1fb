"""Run directories: naming, lookup, and the recorder that writes a run's files.

Layout of ``RUNS_DIR/NAME/``:
  config.yaml          resolved settings (reproduce with ``draw train --config``)
  metrics.jsonl        one JSON object per logged step and per epoch
  checkpoints/epoch_NNN.pt, last.pt, best.pt
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from drawcli import checkpoint as ckpt_io
from drawcli.errors import DrawError
from drawcli.files import write_text_atomically

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or ".." in name or not _NAME.match(name):
        raise DrawError(
            f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' (no path separators or '..')"
        )
    return name


def existing_runs(runs_dir: Path) -> list[str]:
    if not runs_dir.is_dir():
        return []
    runs = [p.name for p in runs_dir.iterdir() if p.is_dir() and (p / "config.yaml").is_file()]
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
        raise DrawError(f"run {name!r} already exists in {runs_dir}; pick another --name or continue it with --resume {name}")
    try:
        (path / "checkpoints").mkdir(parents=True)
    except OSError as e:
        raise DrawError(f"cannot create run directory {path}: {e.strerror or e}") from None
    return path


def resolve_run(ref: str, runs_dir: Path) -> Path:
    """A run name under runs_dir, or a path to a run directory."""
    candidate = Path(ref)
    # A path (it has a separator, or is . or ..) names a run directory; anything else is a name.
    pathlike = "/" in ref or "\\" in ref or ref in (".", "..")
    if pathlike and (candidate / "config.yaml").is_file():
        return candidate
    if pathlike:
        if candidate.is_dir():
            raise DrawError(f"{ref} is not a run directory (no config.yaml in it)")
        raise DrawError(f"run directory not found: {ref}")
    validate_name(ref)
    path = Path(runs_dir) / ref
    if not (path / "config.yaml").is_file():
        runs = existing_runs(Path(runs_dir))
        listing = f"existing runs: {', '.join(runs)}" if runs else f"no runs yet in {runs_dir}"
        raise DrawError(f"run {ref!r} not found in {runs_dir} ({listing})")
    return path


def resolve_checkpoint(run_dir: Path, load: str | None) -> Path:
    """--load EPOCH|last|best; default best, else last."""
    ckpts = run_dir / "checkpoints"
    if load is None:
        for name in ("best.pt", "last.pt"):
            if (ckpts / name).is_file():
                return ckpts / name
        raise DrawError(f"run {run_dir.name!r} has no checkpoints yet (looked in {ckpts})")
    if load in ("best", "last"):
        path = ckpts / f"{load}.pt"
        if not path.is_file():
            raise DrawError(f"run {run_dir.name!r} has no {load}.pt checkpoint")
        return path
    if not load.isdigit():
        raise DrawError(f"--load: expected an epoch number, 'last' or 'best', got {load!r}")
    path = ckpts / ckpt_io.epoch_file(int(load))
    if not path.is_file():
        epochs = ckpt_io.list_epochs(ckpts)
        have = ", ".join(map(str, epochs)) if epochs else "none"
        raise DrawError(f"run {run_dir.name!r} has no checkpoint for epoch {int(load)} (epochs with checkpoints: {have})")
    return path


class RunRecorder:
    """Training callback that writes metrics.jsonl and the checkpoints of one run."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"

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
        epoch_path = self.ckpt_dir / ckpt_io.epoch_file(ckpt["epoch"])
        ckpt_io.atomic_save(ckpt, epoch_path)
        # last.pt and best.pt are hard links to the epoch file: no extra disk, same atomicity.
        ckpt_io.atomic_link(epoch_path, self.ckpt_dir / "last.pt")
        if is_best:
            ckpt_io.atomic_link(epoch_path, self.ckpt_dir / "best.pt")

    def on_interrupt(self, ckpt: dict) -> None:
        # Mid-epoch: only last.pt moves on (a new file replaces the link; epoch files stay).
        ckpt_io.atomic_save(ckpt, self.ckpt_dir / "last.pt")


def write_config(run_dir: Path, settings) -> None:
    header = "# drawcli resolved settings; reproduce with: draw train --config THIS_FILE --name NEW\n"
    write_text_atomically(Path(run_dir) / "config.yaml", header + settings.to_yaml())
