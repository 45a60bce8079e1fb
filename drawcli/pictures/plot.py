"""`draw plot`: learning curves from metrics.jsonl, one or several runs in one figure.

Train loss at every log step (a thin line: the mean over the steps since the previous log
row), evaluation loss at every epoch (a thicker line with dots), IWAE bounds from
``draw train --eval-samples`` as stars and resumes as dotted vertical lines, each run in its
own colour. ``parts`` adds panels for L^x and L^z; ``lr`` the learning rate of every train row
on a second axis of the loss panel (dashed). matplotlib (an optional extra) draws with
its Agg backend, through a Figure object (no pyplot state); the file is written atomically.
Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.core.files import check_output, replace_atomically
from drawcli.runs.metrics import current_rows, read_config, read_metrics, steps_per_epoch
from drawcli.runs.names import METRICS

INSTALL_HINT = 'pip install "drawcli[plot]"'
DPI = 100
SIZE = (1000, 600)  # pixels, one panel
SIZE_PARTS = (1500, 500)  # pixels, three panels side by side
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
# The paper's Table 2: negative log-likelihood bounds on binarized MNIST, nats per image.
PAPER_NLL = {True: 80.97, False: 87.40}
MNIST_SETS = ("mnist", "binarized-mnist")
PANELS = {  # key in the rows, panel title
    "loss": "loss $L = L^x + L^z$",
    "lx": "reconstruction $L^x$",
    "lz": "latent $L^z$ (KL)",
}


def _matplotlib():
    """(Figure, FigureCanvasAgg), or one error line saying how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DrawError(f"draw plot needs matplotlib: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def parse_size(text: str) -> tuple[int, int]:
    """'1200x700' -> (1200, 700) pixels."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise DrawError(f"--size: expected WIDTHxHEIGHT in pixels, e.g. 1200x700, got {text!r}") from None
    if not (100 <= width <= 10000 and 100 <= height <= 10000):
        raise DrawError(f"--size: width and height must be between 100 and 10000 pixels, got {text!r}")
    return width, height


def _run_dir(ref: str, runs_dir: str | Path) -> Path:
    """A run name, a run directory (with or without config.yaml), or a metrics.jsonl file's folder."""
    from drawcli.runs.builtin import is_builtin_ref
    from drawcli.runs.store import resolve_run

    if is_builtin_ref(ref):
        raise DrawError(f"{ref} is a built-in model: it ships without learning curves (no metrics.jsonl); "
                        "draw plot takes runs you trained (see draw runs)")
    path = Path(ref)
    if path.name == METRICS and path.is_file():
        return path.parent
    if ("/" in ref or "\\" in ref or ref in (".", "..")) and (path / METRICS).is_file():
        return path
    return resolve_run(ref, Path(runs_dir))


class RunCurves:
    """One run's rows, ready to draw."""

    def __init__(self, ref: str, runs_dir: str | Path):
        self.dir = _run_dir(ref, runs_dir)
        self.name = self.dir.name
        rows = current_rows(read_metrics(self.dir / METRICS))
        self.train = [r for r in rows if r.get("kind") == "train"]
        self.eval = [r for r in rows if r.get("kind") == "eval"]
        self.iwae = [r for r in rows if r.get("kind") == "iwae" and isinstance(r.get("iwae"), (int, float))]
        self.resumes = [r for r in rows if r.get("kind") == "resume"]
        if not self.train and not self.eval:
            where = self.dir / METRICS
            why = "does not exist" if not where.is_file() else "has no train or eval rows"
            raise DrawError(f"run {self.name!r} has no metrics to plot yet ({where} {why})")
        self.spe = steps_per_epoch(self.train + self.eval)
        self.ends = epoch_ends(self.train + self.eval)
        config = read_config(self.dir)
        data, model = config.get("data") or {}, config.get("model") or {}
        self.dataset = data.get("dataset") if isinstance(data, dict) else None
        self.attention = model.get("attention", True) if isinstance(model, dict) else None
        # (step, old, new) of every resume that changed train.batch_size: a step means another number of images after it
        self.batch_changes = []
        for r in self.resumes:
            change = (r.get("changes") or {}).get("train.batch_size") if isinstance(r.get("changes"), dict) else None
            if isinstance(change, list) and len(change) == 2:
                self.batch_changes.append((r["step"], change[0], change[1]))

    def x(self, row: dict, axis: str) -> float:
        if axis == "step":
            return row["step"]
        if not self.ends:  # no epoch complete yet
            return row["step"] / self.spe if self.spe else row.get("epoch", 0)
        # Fractional epochs between the steps where epochs ended: right whatever the batch size was.
        step, before = row["step"], (0, 0)
        for end in self.ends:
            if step <= end[0]:
                return before[1] + (step - before[0]) / (end[0] - before[0]) * (end[1] - before[1])
            before_last, before = before, end
        per_epoch = (before[0] - before_last[0]) / (before[1] - before_last[1])
        return before[1] + (step - before[0]) / per_epoch


def epoch_ends(rows: list[dict]) -> list[tuple[int, int]]:
    """(step, epoch) where each complete epoch ended, by step: the last row of an epoch that a later
    epoch's rows follow, or that an evaluation says was complete."""
    last: dict[int, int] = {}
    complete = set()
    for r in rows:
        epoch = r.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1:
            last[epoch] = max(last.get(epoch, 0), r["step"])
            if r.get("kind") == "eval" and r.get("epoch_complete") is True:
                complete.add(epoch)
    newest = max(last, default=0)
    ends, previous = [], (0, 0)
    for epoch in sorted(last):
        if (epoch < newest or epoch in complete) and last[epoch] > previous[0]:
            previous = (last[epoch], epoch)
            ends.append(previous)
    return ends


def default_axis(runs: list[RunCurves]) -> tuple[str, list[str]]:
    """step, or epoch when a run changed its batch size on resume (a step then means another number
    of images), with the note that says so."""
    changed = [(run, change) for run in runs for change in run.batch_changes]
    if not changed:
        return "step", []
    run, (step, old, new) = changed[0]
    return "epoch", [f"run {run.name}: the batch size changed on resume ({old} -> {new} at step {step}): plotted against "
                     "epochs; --x step plots optimizer steps (the change is marked)"]


def load_runs(refs: list[str], runs_dir: str | Path = "runs") -> list[RunCurves]:
    runs = [RunCurves(ref, runs_dir) for ref in refs]
    names = [r.name for r in runs]
    for run, ref in zip(runs, refs):
        if names.count(run.name) > 1:  # the same name from different folders: say which is which
            run.name = ref
    return runs


def build_figure(
    runs: list[RunCurves],
    *,
    x: str | None = None,
    parts: bool = False,
    log: bool = False,
    paper: bool = False,
    ymin: float | None = None,
    ymax: float | None = None,
    size: tuple[int, int] | None = None,
    lr: bool = False,
):
    """The matplotlib Figure (Agg canvas) of the runs' curves, and notes for the user. ``x``: step,
    epoch, or None: :func:`default_axis`."""
    Figure, FigureCanvasAgg = _matplotlib()
    notes = []
    if x is None:
        x, notes = default_axis(runs)
    width, height = size or (SIZE_PARTS if parts else SIZE)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    keys = ["loss", "lx", "lz"] if parts else ["loss"]
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, key in zip(axes, keys):
        for run, color in zip(runs, colors):
            if run.train:
                ax.plot([run.x(r, x) for r in run.train], [r[key] for r in run.train], color=color, lw=0.9,
                        alpha=0.55, label=f"{run.name} train")
            if run.eval:
                split = run.eval[-1].get("split", "eval")
                ax.plot([run.x(r, x) for r in run.eval], [r[key] for r in run.eval], color=color, lw=1.8,
                        marker="o", ms=3.5, label=f"{run.name} {split}")
            for r in run.resumes:
                ax.axvline(run.x(r, x), color=color, ls=":", lw=0.9)
            if key == "loss":
                for step, old, new in run.batch_changes:
                    ax.text(run.x({"step": step}, x), 0.98, f" batch {old} → {new}", transform=ax.get_xaxis_transform(),
                            color=color, fontsize="small", va="top", rotation=90)
            if key == "loss" and run.iwae:
                ax.plot([run.x(r, x) for r in run.iwae], [r["iwae"] for r in run.iwae], ls="none", marker="*",
                        ms=11, color=color, markeredgecolor="black", markeredgewidth=0.5,
                        label=f"{run.name} IWAE K={run.iwae[-1].get('samples', '?')}")
        if key == "loss" and paper:
            shown = sorted({r.attention for r in runs if r.dataset in MNIST_SETS and r.attention is not None},
                           reverse=True)
            for attention in shown:
                value = PAPER_NLL[bool(attention)]
                what = "with attention" if attention else "no attention"
                ax.axhline(value, color="0.35", ls="--" if attention else "-.", lw=1.1,
                           label=f"paper, {what}: {value:.2f} (binarized MNIST, Table 2)")
            if not shown:
                notes.append("--paper: none of these runs is an MNIST run; no paper line drawn")
        ax.set_title(PANELS[key])
        ax.set_xlabel("step" if x == "step" else "epoch")
        ax.set_ylabel("nats per image")
        if log:
            ax.set_yscale("log")
        if key == "loss" and (ymin is not None or ymax is not None):
            ax.set_ylim(bottom=ymin, top=ymax)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if lr:
        rates = [(run, color, [r for r in run.train if isinstance(r.get("lr"), (int, float))]) for run, color in zip(runs, colors)]
        if any(rows for _, _, rows in rates):
            twin = axes[0].twinx()
            for run, color, rows in rates:
                if rows:
                    twin.plot([run.x(r, x) for r in rows], [r["lr"] for r in rows], color=color, ls="--", lw=1.2,
                              label=f"{run.name} learning rate")
            twin.set_ylabel("learning rate")
            twin.set_ylim(bottom=0)
            more_handles, more_labels = twin.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        else:
            notes.append("--lr: none of these runs logged a learning rate; none drawn")
    axes[0].legend(handles, labels, fontsize="small", loc="upper right")
    return fig, notes


@dataclass(frozen=True)
class PlotOptions:
    """What `draw plot` draws (:func:`build_figure` takes the same, with ``size`` parsed)."""

    x: str | None = None  # step, epoch, or None: default_axis
    parts: bool = False
    log: bool = False
    paper: bool = False
    ymin: float | None = None
    ymax: float | None = None
    size: str | None = None  # WIDTHxHEIGHT in pixels; None: SIZE, or SIZE_PARTS with parts
    lr: bool = False

    def check(self) -> tuple[int, int] | None:
        """A one-line DrawError for a wrong option; the size in pixels (None: the default)."""
        if self.x is not None and self.x not in ("step", "epoch"):
            raise DrawError(f"--x: expected step or epoch, got {self.x!r}")
        if self.ymin is not None and self.ymax is not None and self.ymin >= self.ymax:
            raise DrawError(f"--ymin {self.ymin:g} must be below --ymax {self.ymax:g}")
        if self.log and self.ymin is not None and self.ymin <= 0:
            raise DrawError(f"--ymin must be > 0 on a log axis, got {self.ymin:g}")
        return parse_size(self.size) if self.size else None


def plot_runs(
    refs: list[str],
    output: str | Path | None = None,
    options: PlotOptions | None = None,
    runs_dir: str | Path = "runs",
) -> tuple[Path, list[str]]:
    """Draw the runs' curves into ``output``; returns the path and notes for the user."""
    o = options or PlotOptions()
    pixels = o.check()
    if output is not None and Path(output).suffix.lower() not in FORMATS:
        raise DrawError(f"-o {output}: expected a .png, .svg or .pdf file name")
    _matplotlib()  # before reading anything: without it there is nothing to do
    runs = load_runs(refs, runs_dir)
    if output is None:
        output = runs[0].dir / "curves.png" if len(runs) == 1 else Path("curves.png")
    output = Path(output)
    created = check_output(output)
    fig, notes = build_figure(runs, x=o.x, parts=o.parts, log=o.log, paper=o.paper, ymin=o.ymin, ymax=o.ymax, size=pixels,
                              lr=o.lr)
    notes = [created, *notes] if created else notes
    fmt = FORMATS[output.suffix.lower()]
    replace_atomically(output, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI), what="plot ")
    return output, notes
