"""`draw evaluate`: bounds of a run on a data split, printed as a table and written as JSON
(drawcli/evaluation/ computes them). Its options are one object (drawcli/commands/options.py),
checked, and the model located, once, before torch is imported.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drawcli.commands.options import EvaluateOptions
from drawcli.core.errors import DrawError
from drawcli.core.files import check_output
from drawcli.core.progress import Reporter, count_columns, make_console
from drawcli.core.version import __version__
from drawcli.evaluation.evaluate import (
    EVAL_FORMAT,
    EVAL_FORMAT_VERSION,
    data_for,
    eval_binarize,
    eval_path,
    load_split,
    partial_key,
    partial_path,
    per_value,
    read_partial,
    same_dataset,
    write_json_atomic,
    write_partial,
)


def evaluate_command(options: EvaluateOptions, console: Console | None = None) -> dict:
    """Evaluate a run's checkpoint; print a table, then write ``options.output`` (default: a name in
    the run directory that says what it holds, see :func:`eval_file_name`); return what was written."""
    from drawcli.core.device import autocast, describe
    from drawcli.data.catalogue import get_spec, is_folder
    from drawcli.data.loading import resolve_data_dir
    from drawcli.runs import store as runs

    o = options
    console = console or make_console()
    o.check()
    located = runs.locate(o.run, o.load, o.device, o.runs_dir)

    def named(where) -> Path:
        return Path(o.output) if o.output is not None else eval_path(where, o.split, o.samples, o.limit, o.dataset, o.seed)

    path = named(located)
    created = check_output(path)  # before minutes of evaluation
    if created:
        console.print(created, highlight=False)
    from drawcli.evaluation.bounds import Continuation, check_finite, likelihood_bounds, paper_comparison  # torch: only now

    loaded = runs.load_run(o.run, o.load, o.device, o.runs_dir, located, o.precision)
    if loaded.note:
        console.print(loaded.note, highlight=False)
        path = named(loaded.located)  # the file's name says which checkpoint was evaluated
    located = loaded.located
    settings, model, dev = loaded.settings, loaded.model, loaded.device
    source = str(located.checkpoint) if located.checkpoint is not None else located.label

    data = data_for(settings.data, o.dataset, model)
    name = data.dataset
    if not is_folder(name):  # a wrong shape is answered before any file is read
        known = get_spec(name)
        if (known.channels, known.height, known.width) != (model.channels, model.height, model.width):
            raise DrawError(
                f"data set {name} has {known.height}x{known.width} images with {known.channels} channel(s); "
                f"{located.label!r} models {model.height}x{model.width} with {model.channels}"
            )
    from drawcli.model.engine import resolve_for

    choice = resolve_for(o.engine, model, dev, "evaluate", flag="--engine", say=lambda line: console.print(line, highlight=False))
    images, spec = load_split(data, resolve_data_dir(o.data_dir or settings.data.data_dir), o.split, console)
    expected = (model.height, model.width) if model.channels == 1 else (model.channels, model.height, model.width)
    if tuple(images.shape[1:]) != expected:
        raise DrawError(f"{name} images are {tuple(images.shape[1:])}; {located.label!r} models {expected}")
    total = len(images)
    if o.limit is not None:
        images = images[:o.limit]
    binarize = eval_binarize(spec, settings)

    notes = []
    if o.split == "valid" and "valid" not in spec.splits and same_dataset(name, settings.data.dataset) and not settings.data.validation:
        notes.append(
            f"run {located.label!r} trained without data.validation: these last {len(images)} training images were in its training set"
        )
    if o.split == "train":
        notes.append("the train split measures fit, not generalisation")

    console.print(
        f"evaluating {source} ({loaded.trained}) on {len(images)} {name} {o.split} images, "
        f"K={o.samples}, device {describe(dev)}, precision {loaded.precision}",
        highlight=False,
    )
    console.print(choice.line, highlight=False)

    # Hours of K = 1000 survive an interruption: the finished images are kept beside the output
    # (at most a minute's work is lost) and the same command continues, to the same numbers.
    kept_at = partial_path(path)
    key = partial_key(located.label, located.checkpoint, split=o.split, dataset=name, limit=o.limit, images=len(images),
                      samples=o.samples, seed=o.seed, binarize=binarize, precision=loaded.precision, engine=choice.name,
                      device=dev.type)
    resume, earlier, note = read_partial(kept_at, key)
    if note is not None:
        console.print(note, highlight=False)
    t0 = time.perf_counter()

    def keep(partial) -> None:
        write_partial(kept_at, key, partial, earlier + time.perf_counter() - t0)

    try:
        with Reporter(console, columns=count_columns("images"), transient=True, unit="images", estimate=True) as bar:
            bar.begin(f"K={o.samples}", len(images), completed=resume.done if resume is not None else 0)
            with autocast(dev, loaded.precision):
                bounds = likelihood_bounds(model, images, binarize, o.samples, seed=o.seed, batch_size=o.batch_size,
                                           progress=bar.tick, engine=choice,
                                           continuation=Continuation(resume=resume, keep=keep))
    except KeyboardInterrupt:
        if kept_at.exists():
            console.print(f"the finished images are kept in {kept_at}: the same command continues from there", highlight=False)
        raise
    seconds = earlier + time.perf_counter() - t0
    numbers = bounds.summary()
    check_finite(numbers)

    result = {
        "format": EVAL_FORMAT,
        "format_version": EVAL_FORMAT_VERSION,
        "package_version": __version__,
        "run": located.label,
        "checkpoint": str(located.checkpoint) if located.checkpoint is not None else None,
        "epoch": loaded.epoch,
        "step": loaded.step,
        **({"training": loaded.training} if loaded.training is not None else {}),  # every cycle of a model trained in several
        "settings": loaded.saved_settings,
        "dataset": name,
        "split": o.split,
        "limit": o.limit,
        "seed": o.seed,
        "rows_per_pass": bounds.rows_per_pass,
        "binarization": bounds.binarization,
        **numbers,
        "paper": paper_comparison(model.config(), name, o.split, len(images), total, settings.data.dataset),
        "continuous": not bounds.binarization.get("binary", True),
        **per_value(numbers, model.channels * model.height * model.width),
        "notes": notes,
        "device": describe(dev),
        "precision": loaded.precision,
        "precision_reason": loaded.precision_reason,
        "engine": choice.name,
        "seconds": seconds,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # The numbers first: a file that cannot be written must not cost minutes of evaluation.
    console.print(results_table(result))
    for line in _footnotes(result):
        console.print(line, highlight=False)
    write_json_atomic(path, result)
    kept_at.unlink(missing_ok=True)
    console.print(f"wrote {path} ({seconds:.1f} s)", highlight=False)
    return result


def results_table(result: dict) -> Table:
    """Our bounds with standard errors; the paper's Table 2 number on the ELBO row."""
    paper = result["paper"]
    what = ("Bernoulli cross-entropy of continuous targets (not a likelihood bound)" if result.get("continuous")
            else "-log p(x) bounds")
    title = (
        f"run {escape(result['run'])}, {_epochs(result)}: {what}, nats per image, "
        f"{result['images']} {escape(result['dataset'])} {result['split']} images, {result.get('precision', 'float32')}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("bound")
    table.add_column("ours", justify="right")
    table.add_column("± s.e.", justify="right")
    applies = paper.get("applies", True)
    if applies:
        table.add_column(f"paper, Table 2 ({paper['row']})", justify="right")

    def se(key: str) -> str:
        value = result.get(f"{key}_stderr")
        return "-" if value is None else f"{value:.2f}"

    paper_cell = f"{paper['table2']:.2f}" if paper["comparable"] else f"({paper['table2']:.2f})*"
    k = result["samples"]

    def row(*cells: str, paper_value: str = "") -> None:
        table.add_row(*cells, *([paper_value] if applies else []))

    row("ELBO  L = L^x + L^z (eq 12)", f"{result['elbo']:.2f}", se("elbo"), paper_value=paper_cell)
    row("  L^x reconstruction (eq 9)", f"{result['elbo_lx']:.2f}", se("elbo_lx"))
    row("  L^z latent KL (eq 11)", f"{result['elbo_lz']:.2f}", se("elbo_lz"))
    row(f"IWAE bound, K={k}", f"{result['iwae']:.2f}", se("iwae"))
    row("ELBO - IWAE (paired)", f"{result['elbo_minus_iwae']:.2f}", se("elbo_minus_iwae"))
    if "values_per_image" in result:
        n = result["values_per_image"]
        for key, label in (("elbo", "ELBO"), ("iwae", "IWAE")):
            row(f"{label} per sub-pixel ({n} per image)",
                f"{result[key + '_per_value_nats']:.4f} nats = {result[key + '_per_value_bits']:.4f} bits", "")
    return table


def _epochs(result: dict) -> str:
    """'epoch 12', or '400 epochs in 4 cycles' for a model trained in several (its training history)."""
    cycles = (result.get("training") or {}).get("cycles") or []
    if len(cycles) > 1:
        return f"{result['epoch']} epochs in {len(cycles)} cycles"
    return f"epoch {result['epoch']}"


def _footnotes(result: dict) -> list[str]:
    paper = result["paper"]
    lines = [f"binarisation: {result['binarization']['description']} (sha256 {result['binarization']['sha256']})"]
    if not paper.get("applies", True):
        lines.append(f"the paper's Table 2 reports binarized MNIST (28x28) only: it has no number for {result['dataset']} "
                     "at this size")
    elif paper["comparable"]:
        lines.append(
            f"same setup as the paper's Table 2 row {paper['row']!r} (T=64, 256 LSTM units, z 100, binarized-mnist "
            "test): the paper's number is a variational bound like our ELBO; the IWAE bound is tighter."
        )
    else:
        lines.append(
            f"* not comparable with the paper's {paper['table2']:.2f}: " + "; ".join(paper["differences"])
        )
    if result.get("continuous"):
        lines.append("the targets are grey levels or colours in [0, 1], not binary pixels: these numbers are Bernoulli "
                     "cross-entropies in nats, useful to compare runs, but not bounds on a likelihood.")
    if result["samples"] == 1:
        lines.append("K=1: the IWAE row is a one-sample ELBO with a sampled KL; use --samples 100 or more for a tighter bound.")
    lines.extend(result["notes"])
    return lines
