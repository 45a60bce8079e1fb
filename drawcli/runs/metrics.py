"""Reading a run's metrics.jsonl, for `draw plot` and `draw runs`. Never imports torch.

Rows are JSON objects with a ``kind``: ``train`` (one per log step), ``eval`` (one per
epoch), ``iwae`` (``draw train --eval-samples``) and ``resume`` (where a resumed run started).
A run that died after logging past its last checkpoint and was then resumed has logged some
steps twice: :func:`current_rows` keeps only the later rows, so curves never go back in time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from drawcli.core.errors import DrawError
from drawcli.runs.names import CONFIG

CURVE_KINDS = ("train", "eval")


def read_metrics(path: str | Path) -> list[dict]:
    """Every well-formed row of a metrics.jsonl, in file order; [] when there is no file.

    A line that is not a JSON object (a write cut short by a crash) is skipped.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise DrawError(f"cannot read {path}: it is a directory") from None
    except OSError as e:
        raise DrawError(f"cannot read {path}: {e.strerror or e}") from None
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _step(row: dict) -> int | None:
    step = row.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _number(row: dict, key: str) -> bool:
    value = row.get(key)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def current_rows(rows: list[dict]) -> list[dict]:
    """The rows of the run's current history, in order.

    A ``resume`` row at step S drops earlier train and eval rows after S; a train or eval row
    whose step is not after the previous one of its kind drops the earlier rows of that kind
    from its step on (a resume without a ``resume`` row).
    """
    out: list[dict] = []
    last: dict[str, int] = {}
    for row in rows:
        kind, step = row.get("kind"), _step(row)
        if step is None:
            continue
        if kind == "resume":
            out = [r for r in out if r.get("kind") not in CURVE_KINDS or _step(r) <= step]
            last = {k: v for k, v in last.items() if v <= step}
        elif kind in CURVE_KINDS:
            if not all(_number(row, k) for k in ("lx", "lz", "loss")):
                continue
            if kind in last and step <= last[kind]:
                out = [r for r in out if r.get("kind") != kind or _step(r) < step]
            last[kind] = step
        out.append(row)
    return out


def steps_per_epoch(rows: list[dict]) -> int | None:
    """Steps per epoch as the rows tell it: a train or eval row of epoch e at step s says
    (e - 1) * spe < s <= e * spe; the log row at each epoch's end makes the largest
    ceil(s / e) exact once an epoch has finished (a lower bound before)."""
    best = None
    for row in rows:
        step, epoch = _step(row), row.get("epoch")
        if row.get("kind") in CURVE_KINDS and step and isinstance(epoch, int) and epoch >= 1:
            best = max(best or 0, -(-step // epoch))
    return best


def read_config(run_dir: str | Path) -> dict:
    """A run's config.yaml as a plain mapping, unvalidated; {} when missing or unreadable."""
    try:
        data = yaml.safe_load((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
