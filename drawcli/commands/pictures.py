"""`draw sample`, `draw animate` and `draw inspect-attention`: console output and the files they
write, around drawcli/pictures/ (the same sample_prior, reconstruct_images and attention records
the Python API uses). Each takes its options as one object (drawcli/commands/options.py), checks
them and locates the model once, before torch is imported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from drawcli.commands.options import AnimateOptions, InspectOptions, ModelOptions, SampleOptions
from drawcli.core.errors import DrawError
from drawcli.core.files import check_output, replace_atomically
from drawcli.pictures.frames import add_progress, animation_frames, inspect_animation, inspect_strip, strip_rgb, strip_steps
from drawcli.pictures.grids import default_scale, grid_for, image_cells, upscale
from drawcli.pictures.palette import to_uint8
from drawcli.pictures.viz import (
    attention_records,
    attention_tables,
    binary_pixels,
    load_test_images,
    parse_indices,
    reconstruct_images,
    require_attention,
    sample_prior,
    seeded_generator,
)
from drawcli.pictures.writers import check_animation_path, write_animation, write_png
from drawcli.runs.store import LoadedRun, Located, load_run, locate


def _locate(options: ModelOptions) -> Located:
    """The options checked and the model found: every mistake in them is answered here, once, before
    torch is imported (which takes seconds)."""
    options.check()
    return locate(options.run, options.load, options.device, options.runs_dir)


def _load(options: ModelOptions, located: Located, console) -> LoadedRun:
    """The located model, loaded in the asked precision; its note (which checkpoint, when not the
    asked one) printed."""
    loaded = load_run(options.run, options.load, options.device, options.runs_dir, located, options.precision)
    if loaded.note:
        _console(console).print(loaded.note, highlight=False, soft_wrap=True)
    return loaded


def _engine(setting: str, loaded: LoadedRun, work: str):
    """--engine resolved for this command's work (drawcli.model.engine.resolve). Not said: the engine
    changes the time training and evaluation take (they say which runs), not what is drawn."""
    from drawcli.model.engine import resolve_for

    return resolve_for(setting, loaded.model, loaded.device, work, flag="--engine")


def _check_outputs(console, *paths: Path) -> None:
    """Every file the command will write can be written (files.check_output), before the work."""
    for path in paths:
        created = check_output(path)
        if created:
            _console(console).print(created, highlight=False, soft_wrap=True)


def _console(console):
    if console is not None:
        return console
    from drawcli.core.progress import make_console

    return make_console()


def sample_command(options: SampleOptions, console=None) -> list[Path]:
    """A PNG grid of sigmoid(c_T) for n prior samples (Bernoulli pixels with ``binary``); RGB for
    colour models, each channel its own sigmoid. ``npy`` keeps the floats, (n, [C,] H, W)."""
    o = options
    located = _locate(o)

    def named(where) -> Path:
        return Path(o.output) if o.output is not None else where.output(
            "samples", ".png", f"n{o.n}", f"seed{o.seed}", "binary" if o.binary else "")

    out = named(located)
    if out.suffix.lower() != ".png":
        raise DrawError(f"{out}: samples are written as PNG; use a .png file name")
    _check_outputs(console, out, *([out.with_suffix(".npy")] if o.npy else []))  # before the model runs
    loaded = _load(o, located, console)
    if loaded.note:  # another checkpoint than the one asked for: the default name says which
        out = named(loaded)
    con = _console(console)
    engine = _engine(o.engine, loaded, "sample")
    gen = seeded_generator(loaded, o.seed)
    probs, _ = sample_prior(loaded, o.n, gen, engine, every_step=False)
    pixels = probs[-1]  # (n, H, W), or (n, C, H, W) for colour
    if o.binary:
        pixels = binary_pixels(loaded, pixels, gen)
    model = loaded.model
    s = o.scale or default_scale(model.height, model.width)
    grid = grid_for(o.n, o.nrow, model.height * s, model.width * s)
    if model.channels == 1:  # grey levels as they are (an "L" PNG), not palette indices
        write_png(out, grid.place(upscale(to_uint8(pixels), s)))
    else:
        write_png(out, grid.place(image_cells(pixels, s, colour=True), rgb=True))
    written = [out]
    if o.npy:
        raw = out.with_suffix(".npy")
        replace_atomically(raw, lambda tmp: np.save(tmp, pixels, allow_pickle=False))
        written.append(raw)
    for path in written:
        con.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return written


def animate_command(options: AnimateOptions, console=None) -> list[Path]:
    """One frame per glimpse t = 1..T of sigmoid(c_t) for a grid of samples (or reconstructions)."""
    o = options
    located = _locate(o)
    what = "reconstruct" if o.reconstruct else ("boxes" if o.boxes else "")

    def named(where) -> Path:
        return Path(o.output) if o.output is not None else where.output("animation", ".gif", f"n{o.n}", f"seed{o.seed}", what)

    out = named(located)
    check_animation_path(out)  # before torch and the model: a wrong suffix should fail fast
    _check_outputs(console, out)
    loaded = _load(o, located, console)
    if loaded.note:  # another checkpoint than the one asked for: the default name says which
        out = named(loaded)
    con = _console(console)
    engine = _engine(o.engine, loaded, "animate")
    model = loaded.model
    if o.boxes and not o.reconstruct:
        require_attention(loaded, "to draw (drop --boxes)")
    gen = seeded_generator(loaded, o.seed)
    read = write = None
    if o.reconstruct:
        images = load_test_images(loaded, o.data_dir)
        if o.n > len(images):
            raise DrawError(f"-n {o.n}: the test set has only {len(images)} images")
        _, probs, read, write = reconstruct_images(loaded, images[:o.n], gen, engine)
        if not model.attention:
            con.print("this run has no attention: reconstructions are shown without windows", highlight=False, soft_wrap=True)
    else:
        probs, write_params = sample_prior(loaded, o.n, gen, engine)
        if o.boxes:
            write = write_params
    s = o.scale or default_scale(model.height, model.width)
    frames = animation_frames(probs, s, o.nrow, read, write, model.read_n, model.write_n, o.progress)
    count, width, height = write_animation(out, frames, o.fps, o.hold)
    con.print(f"wrote {out} ({_frames_note(count, len(probs))}, {width}x{height})", highlight=False, soft_wrap=True)
    return [out]


def _frames_note(count: int, glimpses: int) -> str:
    if count == glimpses:
        return f"{count} frames"
    return f"{count} frames: {glimpses} glimpses, then the last held"


def _inspected(options: InspectOptions) -> tuple[str, ...]:
    """The part of a default inspect-attention file name that says which images it shows."""
    if options.generate:
        return ("prior", f"n{options.count}")
    if options.index is None:
        return ("test", f"n{options.count}")
    index = options.index
    spec = index if isinstance(index, str) else ",".join(map(str, index))
    spec = "".join(spec.split())
    if len(spec) > 40:  # a long list: a short, stable digest of it instead
        import hashlib

        spec = hashlib.sha256(spec.encode()).hexdigest()[:10]
    return ("test", f"i{spec}")


def inspect_attention_command(options: InspectOptions, console=None) -> list[Path]:
    """Animation (GIF) and PNG strip of read/write windows over time, plus JSON or a summary table."""
    o = options
    located = _locate(o)

    def named(where) -> Path:
        return Path(o.output) if o.output is not None else where.output("attention", ".gif", *_inspected(o), f"seed{o.seed}")

    out = named(located)
    check_animation_path(out)
    json_path = Path(o.json_path) if o.json_path is not None else None
    _check_outputs(console, out, out.with_suffix(".png"), *([json_path] if json_path is not None else []))
    loaded = _load(o, located, console)
    if loaded.note:
        out = named(loaded)
    require_attention(loaded, "to inspect")
    engine = _engine(o.engine, loaded, "inspect-attention")
    strip_path = out.with_suffix(".png")
    model = loaded.model
    gen = seeded_generator(loaded, o.seed)
    if o.generate:
        count = o.count
        probs, write = sample_prior(loaded, count, gen, engine)
        inputs = read = None
        labels = [{"sample": i} for i in range(count)]
    else:
        images = load_test_images(loaded, o.data_dir)
        chosen = parse_indices(o.index, len(images)) if o.index is not None else list(range(o.count))
        if max(chosen) >= len(images):
            raise DrawError(f"-n {len(chosen)}: the test set has only {len(images)} images")
        inputs, probs, read, write = reconstruct_images(loaded, images[chosen], gen, engine)
        labels = [{"index": i} for i in chosen]
    for name, params in (("read", read), ("write", write)):
        if params is not None and not np.isfinite(params).all():
            raise DrawError(f"the model produced non-finite {name} attention parameters (is the checkpoint diverged?)")

    s = o.scale or default_scale(model.height, model.width)
    frames = add_progress(inspect_animation(inputs, probs, read, write, model.read_n, model.write_n, s), model.channels > 1)
    count, width, height = write_animation(out, frames, o.fps, o.hold)
    steps = strip_steps(len(probs))
    write_png(strip_path, strip_rgb(inspect_strip(inputs, probs, read, write, model.read_n, model.write_n, s, steps)))
    written = [out, strip_path]

    con = _console(console)
    if json_path is not None:
        doc = {
            "run": str(loaded.run_dir) if loaded.run_dir is not None else loaded.label,
            "checkpoint": str(loaded.checkpoint) if loaded.checkpoint is not None else None,
            "epoch": loaded.epoch,
            "source": "prior samples" if o.generate else "test images",
            "coordinates": "g_x, g_y: the paper's 1-based pixel coordinates (pixel a = 1..A, centre (A+1)/2); "
            "delta: pixels between filter centres; sigma2: filter variance in pixels^2; gamma: intensity",
            "height": model.height,
            "width": model.width,
            "steps": len(probs),
            "read_n": None if o.generate else model.read_n,
            "write_n": model.write_n,
            "images": attention_records(read, write, labels),
        }
        path = json_path
        replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8"))
        written.append(path)
    else:
        for table in attention_tables(read, write, model.read_n, model.write_n):
            con.print(table)
    shown = ", ".join(str(int(t) + 1) for t in steps)
    con.print(f"wrote {out} ({_frames_note(count, len(probs))}, {width}x{height})", highlight=False, soft_wrap=True)
    con.print(f"wrote {strip_path} (steps t = {shown})", highlight=False, soft_wrap=True)
    if json_path is not None:
        con.print(f"wrote {written[-1]}", highlight=False, soft_wrap=True)
    return written
