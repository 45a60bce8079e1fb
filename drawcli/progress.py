"""Training progress for people: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

WIDE = 1000  # columns for output that is not a terminal: tables fit their contents, nothing is cut


def make_console(**kwargs) -> Console:
    """A Console that never hard-wraps or crops when its output is not a terminal (logs, pipes, CI).

    Rich assumes 80 columns there and would split log lines and cut paths and hashes in tables.
    """
    console = Console(soft_wrap=True, **kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console.width = WIDE
    return console


class TrainProgress:
    """Training callback: shows progress, epoch results and a final summary table."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or make_console()
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task = None
        self.last_row: dict | None = None
        self.info: dict = {}

    # -- callbacks
    def on_start(self, info: dict) -> None:
        self.info = info
        if self.quiet:
            return
        c = self.console
        c.print(
            f"training on {info['train_images']} images, evaluating on {info['eval_images']} "
            f"{info['eval_split']} images; {info['parameters']:,} parameters; "
            f"steps {info['start_step']} -> {info['total_steps']} ({info['steps_per_epoch']} per epoch); "
            f"precision {info.get('precision', 'float32')}",
            highlight=False,
        )
        if c.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=c,
                transient=False,
            )
            self.task = self.bar.add_task(
                "train", total=info["total_steps"], completed=info["start_step"], epoch=1, loss="-", rate=""
            )
            self.bar.start()

    def on_step(self, step: int, epoch: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=epoch)

    def on_log(self, row: dict) -> None:
        self.last_row = row
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, loss=f"{row['loss']:.2f}", rate=f"{row['img_per_s']:.0f} img/s")
        else:
            self.console.print(
                f"step {row['step']}/{self.info.get('total_steps', '?')}  epoch {row['epoch']}  "
                f"loss {row['loss']:.2f} (L_x {row['lx']:.2f}, L_z {row['lz']:.2f})  {row['img_per_s']:.0f} img/s",
                highlight=False,
            )

    def on_epoch(self, row: dict) -> None:
        if self.quiet:
            return
        self.console.print(
            f"epoch {row['epoch']} (step {row['step']}): {row['split']} loss {row['loss']:.2f} nats "
            f"(L_x {row['lx']:.2f}, L_z {row['lz']:.2f})",
            highlight=False,
        )

    def on_end(self, summary: dict) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def close(self) -> None:
        """Stop the bar even when training ended with an error."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def summary_table(run_dir, summary: dict, eval_split: str) -> Table:
    table = Table(title=f"run {run_dir.name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("steps", str(summary["step"]))
    table.add_row("epochs", str(summary["epoch"]))
    ev = summary.get("eval") or {}
    if ev:
        table.add_row(f"{eval_split} loss (nats/image)", f"{ev['loss']:.2f}")
        table.add_row(f"{eval_split} L_x / L_z", f"{ev['lx']:.2f} / {ev['lz']:.2f}")
    if summary.get("best_loss") is not None:
        table.add_row(f"best {eval_split} loss", f"{summary['best_loss']:.2f}")
    table.add_row("wall time", f"{summary['seconds']:.1f} s")
    table.add_row("throughput", f"{summary['img_per_s']:.0f} img/s")
    table.add_row("run directory", str(run_dir))
    return table
