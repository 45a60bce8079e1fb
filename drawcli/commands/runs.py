"""`draw runs`: the runs of a runs folder as a table, or as JSON (drawcli/runs/listing.py finds out
what each one is; this prints it)."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

from drawcli.runs.listing import list_runs


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


STATUS_STYLE = {"finished": "green", "stopped at max-steps": "green", "interrupted": "yellow", "locked": "cyan", "empty": "dim", "failed": "red"}


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
        console.print(f"no runs in {Path(runs_dir).absolute()} (--runs-dir DIR lists another folder, as does DRAW_RUNS_DIR=DIR; "
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
