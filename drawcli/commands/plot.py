"""`draw plot`: training curves of runs into a picture file (drawcli/pictures/plot.py draws them).
"""

from __future__ import annotations

from pathlib import Path

from drawcli.pictures.plot import PlotOptions, plot_runs


def plot_command(refs: list[str], output=None, options: PlotOptions | None = None, runs_dir: str | Path = "runs",
                 console=None) -> Path:
    from rich.console import Console

    console = console or Console()
    err = Console(stderr=True)
    path, notes = plot_runs(refs, output, options, runs_dir)
    for note in notes:
        err.print(note, highlight=False)
    console.print(f"wrote {path}", highlight=False)
    return path
