"""Progress for people: one reporter (a rich bar on a terminal, plain lines otherwise) used by
download, training and evaluation, and the training callback and summary table built on it."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
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


def count_columns(unit: str) -> list[ProgressColumn]:
    """label, bar, done/total UNIT, elapsed, remaining."""
    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
            TimeRemainingColumn()]


def bytes_columns() -> list[ProgressColumn]:
    """label, bar, size, speed, remaining."""
    return [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]


def train_columns() -> list[ProgressColumn]:
    """epoch, bar, step/total, loss and throughput, elapsed, remaining."""
    return [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]


ESTIMATE_AFTER = 3.0  # seconds of work (or a tenth of it) before the first estimate of the total time
PLAIN_EVERY = 60.0  # with an estimate, a plain line at least this often (seconds)


def duration(seconds: float) -> str:
    """'4.4 s', '38 s', '14 min', '2.8 h'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Reporter:
    """Progress output: a rich bar on a terminal, plain lines otherwise, nothing (but errors) when quiet.

    One task at a time: :meth:`begin` starts it (or resets it, for a retry), :meth:`update` moves it,
    :meth:`end` finishes it. :meth:`say` prints a plain line (above the bar, when there is one);
    :meth:`tick` moves the task and, without a bar, prints a plain line at every tenth of the total.
    With ``estimate``, :meth:`tick` also says the estimated total time in one line as soon as the
    first ESTIMATE_AFTER seconds (or a tenth) of the work are done, and the plain lines say the time
    left and come at least every PLAIN_EVERY seconds (the bar shows the time left itself).
    Use as a context manager, or call :meth:`close`, so the bar stops however the work ended.
    """

    def __init__(self, console: Console | None = None, quiet: bool = False, columns: Sequence[ProgressColumn] | None = None,
                 transient: bool = False, unit: str = "", estimate: bool = False, clock=time.perf_counter):
        self.console = console or make_console()
        self.quiet = quiet
        self.unit = unit
        self.estimate = estimate
        self._clock = clock
        self._columns = list(columns) if columns is not None else count_columns(unit)
        self._transient = transient
        self._bar: Progress | None = None
        self._task = None
        self._label, self._total, self._next_line, self._t0 = "", None, 0.1, clock()
        self._first, self._estimated, self._last_line = 0, False, self._t0

    def start(self) -> Reporter:
        if self._bar is None and not self.quiet and self.console.is_terminal:
            self._bar = Progress(*self._columns, console=self.console, transient=self._transient)
            self._bar.start()
        return self

    @property
    def has_bar(self) -> bool:
        return self._bar is not None

    def __enter__(self) -> Reporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def begin(self, label: str, total: float | None, completed: float = 0, **fields) -> None:
        self._label, self._total, self._next_line, self._t0 = label, total, 0.1, self._clock()
        self._first, self._estimated, self._last_line = completed, False, self._t0
        while total and self._next_line * total <= completed:
            self._next_line += 0.1
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task(escape(label), total=total, completed=completed, **fields)
        else:  # a retry of the same work: the bar jumps back
            self._bar.update(self._task, total=total, completed=completed, **fields)

    def update(self, completed: float | None = None, **fields) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=completed, **fields)

    def _left(self, done: int, elapsed: float) -> float | None:
        """Seconds left at the pace so far (of this session's work), or None before any."""
        worked = done - self._first
        if worked <= 0 or elapsed <= 0 or not self._total:
            return None
        return (self._total - done) * elapsed / worked

    def tick(self, done: int) -> None:
        """``done`` of the total finished: the bar moves, or a plain line at every tenth."""
        now = self._clock()
        elapsed, total = now - self._t0, self._total or 0
        unit = f" {self.unit}" if self.unit else ""
        left = self._left(done, elapsed) if self.estimate else None
        if left is not None and not self._estimated and done < total and (
                elapsed >= ESTIMATE_AFTER or done - self._first >= 0.1 * (total - self._first)):
            self._estimated, self._last_line = True, now
            self.say(f"{self._label}: {done}/{total}{unit} in {duration(elapsed)}; about {duration(elapsed + left)} in all, "
                     f"{duration(left)} left (estimated from them)")
            while self._next_line * total <= done:
                self._next_line += 0.1
            if self._bar is None:
                return
        if self._bar is not None:
            self.update(done)
            return
        due = self._estimated and now - self._last_line >= PLAIN_EVERY
        if done >= self._next_line * total or done == total or due:
            after = f", about {duration(left)} left" if left is not None and done < total else ""
            self.say(f"{self._label}: {done}/{total}{unit} ({elapsed:.1f} s{after})")
            self._last_line = now
            while self._next_line * total <= done:
                self._next_line += 0.1

    def end(self) -> None:
        self._task = None


def model_line(model) -> str:
    """What is being trained, in the words of the flags: 'T=16 glimpses, LSTM 256, z 20, read 2x2,
    write 5x5, images 28x28' (the glimpses are drawing steps per image, not optimizer steps)."""
    parts = [f"T={model.steps} glimpses", f"LSTM {model.hidden}", f"z {model.embed}"]
    if model.attention:
        parts += [f"read {model.read_n}x{model.read_n}", f"write {model.write_n}x{model.write_n}"]
    else:
        parts.append("no attention")
    colour = f" with {model.channels} channels" if model.channels > 1 else ""
    return ", ".join(parts) + f", images {model.width}x{model.height}{colour}"


class TrainProgress:
    """Training callback: shows progress, epoch results and a final summary table."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or make_console()
        self.quiet = quiet
        self.reporter = Reporter(self.console, quiet, train_columns())
        self.last_row: dict | None = None
        self.info: dict = {}

    # -- callbacks
    def on_start(self, info: dict) -> None:
        self.info = info
        if self.quiet:
            return
        if info.get("model") is not None:
            self.console.print(f"model: {model_line(info['model'])}; {info['parameters']:,} parameters", highlight=False)
        self.console.print(
            f"training on {info['train_images']} images, evaluating on {info['eval_images']} "
            f"{info['eval_split']} images; optimizer steps {info['start_step']} -> {info['total_steps']} "
            f"({info['steps_per_epoch']} per epoch); precision {info.get('precision', 'float32')}",
            highlight=False,
        )
        self.reporter.start()
        self.reporter.begin("train", info["total_steps"], info["start_step"], epoch=1, loss="-", rate="")

    def on_step(self, step: int, epoch: int) -> None:
        self.reporter.update(step, epoch=epoch)

    def on_log(self, row: dict) -> None:
        self.last_row = row
        if self.quiet:
            return
        if self.reporter.has_bar:
            self.reporter.update(loss=f"{row['loss']:.2f}", rate=f"{row['img_per_s']:.0f} img/s")
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
        self.reporter.close()

    def close(self) -> None:
        """Stop the bar even when training ended with an error."""
        self.reporter.close()


def epochs_done_text(summary: dict) -> str:
    """Complete epochs of the target, as `draw runs` counts them: '1/5 complete', and where a stop
    inside an epoch (--max-steps, Ctrl-C) left it: '; stopped inside epoch 2 after 32 of 96 images'."""
    epoch, inside = summary["epoch"], summary.get("epoch_images", 0)
    complete = epoch - 1 if inside else epoch
    target = summary.get("epochs_target")
    text = f"{complete}/{target} complete" if target is not None else f"{complete} complete"
    if inside:
        of = f" of {summary['train_images']}" if summary.get("train_images") else ""
        text += f"; stopped inside epoch {epoch} after {inside}{of} images"
    return text


def summary_table(run_dir, summary: dict, eval_split: str) -> Table:
    """The end-of-training table: steps, epochs, losses, time, throughput, run directory."""
    table = Table(title=f"run {run_dir.name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("optimizer steps", str(summary["step"]))
    table.add_row("epochs", epochs_done_text(summary))
    ev = summary.get("eval") or {}
    if ev:
        table.add_row(f"{eval_split} loss (nats/image)", f"{ev['loss']:.2f}")
        table.add_row(f"{eval_split} L_x / L_z", f"{ev['lx']:.2f} / {ev['lz']:.2f}")
    if summary.get("best_loss") is not None:
        table.add_row(f"best {eval_split} loss", f"{summary['best_loss']:.2f}")
    table.add_row("wall time", f"{summary['seconds']:.1f} s")
    if "train_seconds" in summary:
        table.add_row("training time", f"{summary['train_seconds']:.1f} s (without evaluations and checkpoints)")
    table.add_row("throughput", f"{summary['img_per_s']:.0f} img/s (training images over training time)")
    table.add_row("run directory", str(run_dir))
    return table
