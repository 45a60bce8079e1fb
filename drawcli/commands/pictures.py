"""`draw sample`, `draw animate` and `draw inspect-attention`: option checks, console output and the
files they write, around drawcli/pictures/ (the same sample_prior, reconstruct_images and attention
records the Python API uses).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.core.files import check_output, replace_atomically
from drawcli.pictures.render import (
    MAX_FPS,
    add_progress,
    animation_frames,
    check_animation_path,
    default_scale,
    grid_for,
    image_cells,
    inspect_animation,
    inspect_strip,
    strip_rgb,
    strip_steps,
    to_uint8,
    upscale,
    write_animation,
    write_png,
)
from drawcli.pictures.viz import (
    attention_records,
    attention_tables,
    load_test_images,
    parse_indices,
    reconstruct_images,
    require_attention,
    running,
    sample_prior,
    seeded_generator,
)
from drawcli.runs.store import LoadedRun, load_run, locate
from drawcli.settings import check_command_options


def _engine(setting: str, loaded: LoadedRun, work: str):
    """--engine resolved for this command's work (drawcli.model.engine.resolve). Not said: the engine
    changes the time training and evaluation take (they say which runs), not what is drawn."""
    from drawcli.model.engine import resolve_for

    return resolve_for(setting, loaded.model, loaded.device, work, flag="--engine")


def _positive(name: str, value, minimum=1) -> None:
    if value is not None and value < minimum:
        raise DrawError(f"{name} must be at least {minimum}, got {value}")


def _check_timing(fps: float, hold: float) -> None:
    if not 0 < fps <= MAX_FPS:
        raise DrawError(f"--fps must be more than 0 and at most {MAX_FPS}, got {fps:g}")
    if not hold >= 0:
        raise DrawError(f"--hold must be 0 or more seconds, got {hold:g}")


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


def sample_command(
    run: str,
    *,
    load: str | None = None,
    n: int = 64,
    nrow: int | None = None,
    scale: int | None = None,
    binary: bool = False,
    npy: bool = False,
    seed: int = 0,
    device: str = "auto",
    output: str | Path | None = None,
    runs_dir: str | Path = "runs",
    precision: str = "float32",
    console=None,
    engine: str = "auto",
) -> list[Path]:
    """A PNG grid of sigmoid(c_T) for n prior samples (Bernoulli pixels with ``binary``); RGB for
    colour models, each channel its own sigmoid. ``npy`` keeps the floats, (n, [C,] H, W)."""
    _positive("-n", n)
    _positive("--nrow", nrow)
    _positive("--scale", scale)
    check_command_options(seed=seed, precision=precision, engine=engine)
    located = locate(run, load, device, runs_dir)
    out = Path(output) if output is not None else located.output(
        "samples", ".png", f"n{n}", f"seed{seed}", "binary" if binary else ""
    )
    if out.suffix.lower() != ".png":
        raise DrawError(f"{out}: samples are written as PNG; use a .png file name")
    _check_outputs(console, out, *([out.with_suffix(".npy")] if npy else []))  # before the model runs
    import torch  # only now: every mistake above is answered without it

    loaded = load_run(run, load, device, runs_dir, located, precision)
    con = _console(console)
    if loaded.note:
        con.print(loaded.note, highlight=False, soft_wrap=True)
        if output is None:  # the file's name says which checkpoint drew it
            out = loaded.output("samples", ".png", f"n{n}", f"seed{seed}", "binary" if binary else "")
    engine = _engine(engine, loaded, "sample")
    gen = seeded_generator(loaded, seed)
    model = loaded.model
    with running(loaded):
        logits, _ = model.generate(n, generator=gen, device=loaded.device, every_step=False, engine=engine)
        probs = torch.sigmoid(logits[-1].float())
        if binary:
            probs = torch.bernoulli(probs, generator=gen)
    pixels = probs.float().cpu().numpy()  # (n, H, W), or (n, C, H, W) for colour
    s = scale or default_scale(model.height, model.width)
    grid = grid_for(n, nrow, model.height * s, model.width * s)
    if model.channels == 1:  # grey levels as they are (an "L" PNG), not palette indices
        write_png(out, grid.place(upscale(to_uint8(pixels), s)))
    else:
        write_png(out, grid.place(image_cells(pixels, s, colour=True), rgb=True))
    written = [out]
    if npy:
        raw = out.with_suffix(".npy")
        replace_atomically(raw, lambda tmp: np.save(tmp, pixels, allow_pickle=False))
        written.append(raw)
    for path in written:
        con.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return written


def animate_command(
    run: str,
    *,
    output: str | Path | None = None,
    load: str | None = None,
    n: int = 16,
    nrow: int | None = None,
    scale: int | None = None,
    fps: float = 10.0,
    hold: float = 2.0,
    boxes: bool = False,
    reconstruct: bool = False,
    progress: bool = True,
    seed: int = 0,
    device: str = "auto",
    runs_dir: str | Path = "runs",
    data_dir: str | None = None,
    precision: str = "float32",
    console=None,
    engine: str = "auto",
) -> list[Path]:
    """One frame per glimpse t = 1..T of sigmoid(c_t) for a grid of samples (or reconstructions)."""
    _positive("-n", n)
    _positive("--nrow", nrow)
    _positive("--scale", scale)
    _check_timing(fps, hold)
    check_command_options(seed=seed, precision=precision, engine=engine)
    located = locate(run, load, device, runs_dir)
    what = "reconstruct" if reconstruct else ("boxes" if boxes else "")
    out = Path(output) if output is not None else located.output(
        "animation", ".gif", f"n{n}", f"seed{seed}", what
    )
    check_animation_path(out)  # before torch and the model: a wrong suffix should fail fast
    _check_outputs(console, out)
    loaded = load_run(run, load, device, runs_dir, located, precision)
    con = _console(console)
    if loaded.note:
        con.print(loaded.note, highlight=False, soft_wrap=True)
        if output is None:
            out = loaded.output("animation", ".gif", f"n{n}", f"seed{seed}", what)
    engine = _engine(engine, loaded, "animate")
    model = loaded.model
    if boxes and not reconstruct:
        require_attention(loaded, "to draw (drop --boxes)")
    gen = seeded_generator(loaded, seed)
    read = write = None
    if reconstruct:
        images = load_test_images(loaded, data_dir)
        if n > len(images):
            raise DrawError(f"-n {n}: the test set has only {len(images)} images")
        _, probs, read, write = reconstruct_images(loaded, images[:n], gen, engine)
        if not model.attention:
            con.print("this run has no attention: reconstructions are shown without windows", highlight=False, soft_wrap=True)
    else:
        probs, write_params = sample_prior(loaded, n, gen, engine)
        if boxes:
            write = write_params
    s = scale or default_scale(model.height, model.width)
    frames = animation_frames(probs, s, nrow, read, write, model.read_n, model.write_n, progress)
    count, width, height = write_animation(out, frames, fps, hold)
    con.print(f"wrote {out} ({_frames_note(count, len(probs))}, {width}x{height})", highlight=False, soft_wrap=True)
    return [out]


def _frames_note(count: int, glimpses: int) -> str:
    if count == glimpses:
        return f"{count} frames"
    return f"{count} frames: {glimpses} glimpses, then the last held"


def _inspected(generate: bool, n: int | None, index) -> tuple[str, ...]:
    """The part of a default inspect-attention file name that says which images it shows."""
    if generate:
        return ("prior", f"n{n or 8}")
    if index is None:
        return ("test", f"n{n or 8}")
    spec = index if isinstance(index, str) else ",".join(map(str, index))
    spec = "".join(spec.split())
    if len(spec) > 40:  # a long list: a short, stable digest of it instead
        import hashlib

        spec = hashlib.sha256(spec.encode()).hexdigest()[:10]
    return ("test", f"i{spec}")


def inspect_attention_command(
    run: str,
    *,
    load: str | None = None,
    n: int | None = None,
    index: str | Sequence[int] | None = None,
    generate: bool = False,
    json_path: str | Path | None = None,
    output: str | Path | None = None,
    scale: int | None = None,
    fps: float = 10.0,
    hold: float = 2.0,
    seed: int = 0,
    device: str = "auto",
    runs_dir: str | Path = "runs",
    data_dir: str | None = None,
    precision: str = "float32",
    console=None,
    engine: str = "auto",
) -> list[Path]:
    """Animation (GIF) and PNG strip of read/write windows over time, plus JSON or a summary table."""
    _positive("-n", n)
    _positive("--scale", scale)
    _check_timing(fps, hold)
    if generate and index is not None:
        raise DrawError("--index picks test images; it cannot be combined with --generate")
    if n is not None and index is not None:
        raise DrawError("give either -n (the first N test images) or --index (chosen test images), not both")
    check_command_options(seed=seed, precision=precision, engine=engine)
    if isinstance(index, str):
        parse_indices(index, limit=2**62)  # the syntax now; the range once the test set is read
    located = locate(run, load, device, runs_dir)
    out = Path(output) if output is not None else located.output("attention", ".gif", *_inspected(generate, n, index), f"seed{seed}")
    check_animation_path(out)
    if json_path is not None and Path(json_path).suffix.lower() != ".json":
        raise DrawError(f"{json_path}: --json writes JSON; use a .json file name")
    _check_outputs(console, out, out.with_suffix(".png"), *([Path(json_path)] if json_path is not None else []))
    loaded = load_run(run, load, device, runs_dir, located, precision)
    if loaded.note:
        _console(console).print(loaded.note, highlight=False, soft_wrap=True)
        if output is None:
            out = loaded.output("attention", ".gif", *_inspected(generate, n, index), f"seed{seed}")
    require_attention(loaded, "to inspect")
    engine = _engine(engine, loaded, "inspect-attention")
    strip_path = out.with_suffix(".png")
    model = loaded.model
    gen = seeded_generator(loaded, seed)
    if generate:
        count = n or 8
        probs, write = sample_prior(loaded, count, gen, engine)
        inputs = read = None
        labels = [{"sample": i} for i in range(count)]
    else:
        images = load_test_images(loaded, data_dir)
        chosen = parse_indices(index, len(images)) if index is not None else list(range(n or 8))
        if max(chosen) >= len(images):
            raise DrawError(f"-n {len(chosen)}: the test set has only {len(images)} images")
        inputs, probs, read, write = reconstruct_images(loaded, images[chosen], gen, engine)
        labels = [{"index": i} for i in chosen]
    for name, params in (("read", read), ("write", write)):
        if params is not None and not np.isfinite(params).all():
            raise DrawError(f"the model produced non-finite {name} attention parameters (is the checkpoint diverged?)")

    s = scale or default_scale(model.height, model.width)
    frames = add_progress(inspect_animation(inputs, probs, read, write, model.read_n, model.write_n, s), model.channels > 1)
    count, width, height = write_animation(out, frames, fps, hold)
    steps = strip_steps(len(probs))
    write_png(strip_path, strip_rgb(inspect_strip(inputs, probs, read, write, model.read_n, model.write_n, s, steps)))
    written = [out, strip_path]

    con = _console(console)
    if json_path is not None:
        doc = {
            "run": str(loaded.run_dir) if loaded.run_dir is not None else loaded.label,
            "checkpoint": str(loaded.checkpoint) if loaded.checkpoint is not None else None,
            "epoch": loaded.epoch,
            "source": "prior samples" if generate else "test images",
            "coordinates": "g_x, g_y: the paper's 1-based pixel coordinates (pixel a = 1..A, centre (A+1)/2); "
            "delta: pixels between filter centres; sigma2: filter variance in pixels^2; gamma: intensity",
            "height": model.height,
            "width": model.width,
            "steps": len(probs),
            "read_n": None if generate else model.read_n,
            "write_n": model.write_n,
            "images": attention_records(read, write, labels),
        }
        path = Path(json_path)
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
