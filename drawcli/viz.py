"""Pictures of a trained DRAW model: `draw sample`, `draw animate`, `draw inspect-attention`.

Three layers, top to bottom of this file:

* pure numpy image building (no torch, no files): pixel conversion, nearest
  upscaling, grid layout, attention-window geometry and box drawing;
* writers: PNG, GIF (imageio's pillow plugin), MP4 (imageio's ffmpeg plugin,
  optional);
* the commands: load a run's checkpoint, run the model, build and write frames.

Coordinates. The model reports windows in the paper's 1-based pixel
coordinates (pixel a = 1..A, image centre (A+1)/2). In an image array pixel a
sits at index a-1 and covers the continuous span [a-1, a); a frame upscaled by
``scale`` maps that span to frame pixels [(a-1)*scale, a*scale).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drawcli.errors import DrawError
from drawcli.files import replace_atomically
from drawcli.runs import LoadedRun, load_run, locate

WRITE_COLOR = (255, 0, 0)  # red, as in the paper's figures
READ_COLOR = (0, 255, 0)  # green
PAD = 2  # frame pixels between grid cells and around the grid
GROUP_GAP = 6  # extra pixels between groups of cells (one image's panels)
PAD_VALUE = 72  # dark grey: separates cells whose background is black without glaring
PROGRESS_HEIGHT = 3  # frame pixels of the timeline bar under animations
PROGRESS_VALUE = 200
TARGET_SIDE = 112  # default upscaling makes a 28-pixel digit 112 pixels
MAX_FPS = 50  # GIF delays have 10 ms resolution and viewers slow anything under 20 ms
MAX_FRAME_BYTES = 1536 * 2**20  # refuse animations whose frames would not fit in memory comfortably
STRIP_COLUMNS = 16  # time steps shown in the inspect-attention PNG strip when T is larger
ANIMATION_SUFFIXES = (".gif", ".mp4")

# Frames with windows are palette images: indices 0..253 are grey levels, 254 and 255 the
# window colours. GIF is a palette format anyway; choosing the palette here makes every
# frame exact and skips pillow's per-frame colour quantisation (the slowest step by far),
# and a frame takes one byte per pixel instead of three.
GREY_LEVELS = 254
WRITE_INDEX, READ_INDEX = 254, 255
PALETTE = np.zeros((256, 3), dtype=np.uint8)
PALETTE[:GREY_LEVELS] = np.rint(np.arange(GREY_LEVELS) * 255 / (GREY_LEVELS - 1))[:, None]
PALETTE[WRITE_INDEX], PALETTE[READ_INDEX] = WRITE_COLOR, READ_COLOR
GREY_INDEX = np.rint(np.arange(256) * (GREY_LEVELS - 1) / 255).astype(np.uint8)  # grey 0..255 -> index


# ----------------------------------------------------------------------------- pixels and grids
def default_scale(height: int, width: int) -> int:
    """Integer nearest-neighbour factor that makes the longer side about TARGET_SIDE pixels."""
    return max(1, round(TARGET_SIDE / max(height, width)))


def to_uint8(probs: np.ndarray) -> np.ndarray:
    """Float intensities in [0, 1] -> uint8 0..255 (imageio writes float frames as black GIFs)."""
    p = np.nan_to_num(np.asarray(probs, dtype=np.float32), nan=0.0)
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of the last two axes (..., H, W) -> (..., H*scale, W*scale)."""
    if scale == 1:
        return images
    *lead, h, w = images.shape
    # One copy: a broadcast view (.., H, s, W, s) flattened, instead of two np.repeat passes.
    view = np.broadcast_to(images[..., :, None, :, None], (*lead, h, scale, w, scale))
    return view.reshape(*lead, h * scale, w * scale)


def to_indexed(grey: np.ndarray) -> np.ndarray:
    """Grey uint8 -> PALETTE indices, so windows can be drawn in colour."""
    return GREY_INDEX[grey]


def to_rgb(indexed: np.ndarray) -> np.ndarray:
    """PALETTE indices (..., H, W) -> RGB (..., H, W, 3)."""
    return PALETTE[indexed]


@dataclass(frozen=True)
class Grid:
    """Layout of equal cells in rows and columns, with padding and optional grouping.

    ``col_group``/``row_group`` put an extra GROUP_GAP after every that many
    columns/rows, so that the panels of one image read as a unit.
    """

    rows: int
    cols: int
    cell_h: int
    cell_w: int
    pad: int = PAD
    col_group: int = 0
    row_group: int = 0

    def _gaps(self, index: int, group: int) -> int:
        return (index // group) * GROUP_GAP if group else 0

    def origin(self, cell: int) -> tuple[int, int]:
        """Top-left frame pixel (y, x) of cell number ``cell`` (row-major)."""
        r, c = divmod(cell, self.cols)
        y = self.pad + r * (self.cell_h + self.pad) + self._gaps(r, self.row_group)
        x = self.pad + c * (self.cell_w + self.pad) + self._gaps(c, self.col_group)
        return y, x

    @property
    def shape(self) -> tuple[int, int]:
        y, x = self.origin(self.rows * self.cols - 1)
        return y + self.cell_h + self.pad, x + self.cell_w + self.pad

    def place(self, cells: np.ndarray, pad_value: int = PAD_VALUE) -> np.ndarray:
        """Cells (..., k, cell_h, cell_w) -> one image (..., H, W); cells beyond k stay padding.

        One slice assignment per cell, each vectorised over the leading axes (time).
        """
        k = cells.shape[-3]
        if k > self.rows * self.cols:
            raise ValueError(f"{k} cells do not fit a {self.rows}x{self.cols} grid")
        out = np.full(cells.shape[:-3] + self.shape, pad_value, dtype=cells.dtype)
        for i in range(k):
            y, x = self.origin(i)
            out[..., y : y + self.cell_h, x : x + self.cell_w] = cells[..., i, :, :]
        return out


def grid_for(n: int, nrow: int | None, cell_h: int, cell_w: int) -> Grid:
    """A grid for n cells with ``nrow`` cells per row (torchvision's meaning); default about square."""
    cols = min(n, nrow if nrow else math.ceil(math.sqrt(n)))
    return Grid(rows=math.ceil(n / cols), cols=cols, cell_h=cell_h, cell_w=cell_w)


def add_progress(frames: np.ndarray) -> np.ndarray:
    """Append a timeline bar under indexed frames (T, H, W): frame t of T fills t/T of the width.

    It shows where the loop starts, and it keeps consecutive frames distinct, so
    the GIF encoder (which merges identical consecutive frames) keeps one frame
    per glimpse even when the model stops changing the canvas.
    """
    t = frames.shape[0]
    width = frames.shape[2]
    filled = np.rint(width * np.arange(1, t + 1) / t)
    done, todo = GREY_INDEX[PROGRESS_VALUE], GREY_INDEX[PAD_VALUE]
    row = np.where(np.arange(width)[None, :] < filled[:, None], done, todo).astype(np.uint8)
    bar = np.broadcast_to(row[:, None, :], (t, PROGRESS_HEIGHT, width))
    return np.concatenate([frames, bar], axis=1)


# ----------------------------------------------------------------------------- attention windows
def window_boxes(params: np.ndarray, n: int, scale: int) -> np.ndarray:
    """Frame rectangles of attention windows: (..., 5) params -> (..., 4) int [x0, y0, x1, y1).

    The window is the N x N grid of filter centres: centre (g_x, g_y), side
    N * delta (each filter owns a delta-wide cell), in 1-based paper pixels.
    Edges are rounded to the nearest frame pixel; a window is at least one
    frame pixel wide so it never vanishes.
    """
    params = np.asarray(params, dtype=np.float64)
    half = n * params[..., 2] / 2
    # 1-based pixel a spans [a-1, a) in array coordinates, so g maps to g - 0.5.
    cx, cy = params[..., 0] - 0.5, params[..., 1] - 0.5
    edges = np.stack([cx - half, cy - half, cx + half, cy + half], axis=-1) * scale
    # Wild parameters from an untrained model must not overflow the int cast; anything
    # this far outside the frame is clipped away when drawing anyway.
    edges = np.clip(np.nan_to_num(edges, nan=0.0), -1e6, 1e6)
    boxes = np.floor(edges + 0.5).astype(np.int64)
    boxes[..., 2] = np.maximum(boxes[..., 2], boxes[..., 0] + 1)
    boxes[..., 3] = np.maximum(boxes[..., 3], boxes[..., 1] + 1)
    return boxes


def border_widths(params: np.ndarray, scale: int) -> np.ndarray:
    """Border thickness in frame pixels: a quarter of the filter's standard deviation.

    Blurrier filters get wider borders, as in the paper's Figure 3. At least one
    frame pixel; at most one image pixel, so a wide border never hides the digit.
    """
    sigma = np.sqrt(np.clip(np.nan_to_num(np.asarray(params, dtype=np.float64)[..., 3]), 0, None))
    return np.clip(np.rint(scale * sigma / 4), 1, max(1, scale)).astype(np.int64)


def draw_box(image: np.ndarray, box: Sequence[int], width: int, color) -> np.ndarray:
    """Draw a rectangle border inside [x0, x1) x [y0, y1) on an image view, clipped to it.

    ``image`` is indexed (H, W) with a palette index as ``color``, or RGB (H, W, 3)
    with an (r, g, b) colour.

    Works in place (pass a view of one grid cell to clip to that cell) and returns the image.
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)

    def band(ya: int, yb: int, xa: int, xb: int) -> None:
        ya, yb, xa, xb = max(ya, 0), min(yb, h), max(xa, 0), min(xb, w)
        if ya < yb and xa < xb:
            image[ya:yb, xa:xb] = color

    band(y0, y0 + width, x0, x1)  # top
    band(y1 - width, y1, x0, x1)  # bottom
    band(y0, y1, x0, x0 + width)  # left
    band(y0, y1, x1 - width, x1)  # right
    return image


def draw_windows(
    frames: np.ndarray, grid: Grid, cells: Sequence[int], params: np.ndarray, n: int, scale: int, color
) -> np.ndarray:
    """Draw one window per (frame, cell): frames (F, H, W[, 3]), params (F, len(cells), 5). In place."""
    boxes = window_boxes(params, n, scale)
    widths = border_widths(params, scale)
    origins = [grid.origin(c) for c in cells]
    for f in range(frames.shape[0]):
        for j, (y, x) in enumerate(origins):
            cell = frames[f, y : y + grid.cell_h, x : x + grid.cell_w]
            draw_box(cell, boxes[f, j], widths[f, j], color)
    return frames


def strip_steps(steps: int, columns: int = STRIP_COLUMNS) -> np.ndarray:
    """0-based time steps for a strip: all of them, or ``columns`` evenly spaced incl. first and last."""
    if steps <= columns:
        return np.arange(steps)
    return np.unique(np.rint(np.linspace(0, steps - 1, columns)).astype(np.int64))


def parse_indices(spec: str | Sequence[int], limit: int) -> list[int]:
    """'0,5,7' or '10-15' (inclusive ranges may be mixed in) -> indices checked against ``limit``."""
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise DrawError(f"--index: expected comma-separated image numbers like 0,5,7 or 10-15, got {spec!r}")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise DrawError(f"--index: empty range {part!r}")
            out.extend(range(lo, hi + 1))
    else:
        out = [int(i) for i in spec]
    if not out:
        raise DrawError("--index: no image numbers given")
    bad = [i for i in out if not 0 <= i < limit]
    if bad:
        raise DrawError(f"--index: {bad[0]} is out of range: the test set has {limit} images (0..{limit - 1})")
    return out


# ----------------------------------------------------------------------------- writers
def _replace_into(path: Path, write) -> None:
    """Write through a temp file in the same folder, so a failure never leaves half a picture."""
    replace_atomically(path, write)


def _write_encoded(path: Path, data: bytes) -> None:
    """Put bytes that are already encoded in place. Encoding in memory first keeps imageio's
    writers away from the file system: a writer that failed to open its file would retry in
    its finaliser and print a traceback after the one-line error."""
    _replace_into(path, lambda tmp: tmp.write_bytes(data))


def write_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    _write_encoded(path, iio.imwrite("<bytes>", image, extension=".png"))


def gif_durations(frames: int, fps: float, hold: float) -> list[int]:
    """Per-frame GIF delays in milliseconds; the last frame stays ``hold`` seconds.

    GIF stores delays in hundredths of a second, so they are rounded to 10 ms.
    """
    frame_ms = max(20, 10 * round(100 / fps))
    last = max(frame_ms, 10 * round(100 * hold))
    return [frame_ms] * (frames - 1) + [last]


def ffmpeg_available() -> bool:
    """imageio's ffmpeg plugin needs the imageio-ffmpeg package and its bundled binary."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return False
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return False
    return True


def check_animation_path(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise DrawError(f"{path}: the animation must be a .gif or .mp4 file")
    if suffix == ".mp4" and not ffmpeg_available():
        raise DrawError(
            f"{path}: writing MP4 needs imageio's ffmpeg plugin (pip install imageio-ffmpeg); or write a .gif instead"
        )


def write_animation(path: Path, frames: np.ndarray, fps: float, hold: float) -> tuple[int, int, int]:
    """Indexed frames (T, H, W) (PALETTE indices) -> looping GIF, or MP4 by the suffix.

    Returns what the file holds: (frames, width, height). A GIF has one frame per glimpse and
    holds the last by its delay; a video repeats the last frame and pads odd sides by a pixel.
    """
    import imageio.v3 as iio

    check_animation_path(path)
    t, h, w = frames.shape
    if path.suffix.lower() == ".gif":
        durations = gif_durations(t, fps, hold)
        # mode "L" hands pillow the indices untouched; its GIF writer then uses our palette.
        data = iio.imwrite(
            "<bytes>", frames, extension=".gif", is_batch=True, mode="L", palette=PALETTE.tobytes(), duration=durations, loop=0
        )
        _write_encoded(path, data)
        return t, w, h
    import imageio.v2 as iio2

    # Video has one frame rate: hold the last frame by repeating it; yuv420p needs even sides.
    even = np.full((h + h % 2, w + w % 2), GREY_INDEX[PAD_VALUE], dtype=np.uint8)
    repeats = max(0, math.ceil(hold * fps) - 1)

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"")  # an unwritable folder fails here, in our hands, not inside ffmpeg
        with iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=2) as writer:
            for i in range(t + repeats):
                even[:h, :w] = frames[min(i, t - 1)]
                writer.append_data(to_rgb(even))

    _replace_into(path, write)
    return t + repeats, even.shape[1], even.shape[0]


def check_frame_memory(steps: int, height: int, width: int) -> None:
    need = steps * height * width  # one byte per pixel: indexed frames
    if need > MAX_FRAME_BYTES:
        raise DrawError(
            f"the animation would need {need / 2**30:.1f} GiB of frames ({steps} frames of {width}x{height}); "
            "use fewer images (-n) or a smaller --scale"
        )


# ----------------------------------------------------------------------------- runs and models
@contextlib.contextmanager
def _inference_threads(loaded: LoadedRun):
    """One CPU thread while the model runs, restored afterwards.

    DRAW's per-step ops are tiny (a few hundred rows at most), so extra threads
    only add synchronisation; on a busy machine each op then waits for a second
    core and sampling 64 images took seconds instead of well under one.
    """
    import torch

    if loaded.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise DrawError(f"--seed must be 0 or more, got {seed}")


def _generator(loaded: LoadedRun, seed: int):
    import torch

    _check_seed(seed)
    return torch.Generator(device=loaded.device).manual_seed(seed)


def _require_attention(loaded: LoadedRun, what: str) -> None:
    if not loaded.model.attention:
        raise DrawError(
            f"{_named(loaded)} was trained without attention (model.attention: false), "
            f"so it has no read or write windows {what}"
        )


def _named(loaded: LoadedRun) -> str:
    return f"run {loaded.label!r}" if loaded.run_dir is not None else f"the built-in model {loaded.label}"


def load_test_images(loaded: LoadedRun, data_dir: str | None) -> np.ndarray:
    """The run's test images, uint8 (N, H, W); a missing data set is the usual one-line error.

    Only the test file is read: pictures never need the 47 MB training set.
    """
    from drawcli.data import load_images, resolve_data_dir
    from drawcli.datasets import get_spec

    spec = get_spec(loaded.settings.data.dataset)
    directory = resolve_data_dir(data_dir or loaded.settings.data.data_dir) / spec.name
    images = load_images(spec, directory, "test_images")
    model = loaded.model
    if images.shape[1:] != (model.height, model.width):
        raise DrawError(
            f"{spec.name} images are {images.shape[2]}x{images.shape[1]} but the model draws "
            f"{model.width}x{model.height}"
        )
    return images


def reconstruct_images(loaded: LoadedRun, images: np.ndarray, generator):
    """Encode and redraw test images: (inputs (B,H,W), canvas probs (T,B,H,W), read, write) as numpy.

    The input is binarised as in training (the run's data.binarize, seeded), so
    the picture shows what the model actually read.
    """
    import torch

    from drawcli.data import to_input

    with torch.no_grad(), _inference_threads(loaded):
        x = to_input(torch.from_numpy(images).to(loaded.device), loaded.settings.data.binarize, generator)
        out = loaded.model(x, record=True, generator=generator)
    probs = torch.sigmoid(out.canvases).cpu().numpy()
    read = None if out.read is None else out.read.cpu().numpy()
    write = None if out.write is None else out.write.cpu().numpy()
    return x.cpu().numpy(), probs, read, write


def sample_prior(loaded: LoadedRun, n: int, generator):
    """Prior samples: canvas probs (T, n, H, W) and write windows (T, n, 5) or None, as numpy."""
    import torch

    with _inference_threads(loaded):
        logits, write = loaded.model.generate(n, generator=generator, device=loaded.device)
        probs = torch.sigmoid(logits).cpu().numpy()
    return probs, (None if write is None else write.cpu().numpy())


def _positive(name: str, value, minimum=1) -> None:
    if value is not None and value < minimum:
        raise DrawError(f"{name} must be at least {minimum}, got {value}")


def _check_timing(fps: float, hold: float) -> None:
    if not 0 < fps <= MAX_FPS:
        raise DrawError(f"--fps must be more than 0 and at most {MAX_FPS}, got {fps:g}")
    if not hold >= 0:
        raise DrawError(f"--hold must be 0 or more seconds, got {hold:g}")


def _console(console):
    if console is not None:
        return console
    from drawcli.progress import make_console

    return make_console()


# ----------------------------------------------------------------------------- draw sample
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
    console=None,
) -> list[Path]:
    """A PNG grid of sigmoid(c_T) for n prior samples (Bernoulli pixels with ``binary``)."""
    _positive("-n", n)
    _positive("--nrow", nrow)
    _positive("--scale", scale)
    _check_seed(seed)
    located = locate(run, load, device, runs_dir)
    out = Path(output) if output is not None else located.output(
        "samples", ".png", f"n{n}", f"seed{seed}", "binary" if binary else ""
    )
    if out.suffix.lower() != ".png":
        raise DrawError(f"{out}: samples are written as PNG; use a .png file name")
    import torch  # only now: every mistake above is answered without it

    loaded = load_run(run, load, device, runs_dir, located)
    gen = _generator(loaded, seed)
    model = loaded.model
    with torch.no_grad(), _inference_threads(loaded):
        logits, _ = model.generate(n, generator=gen, device=loaded.device, every_step=False)
        probs = torch.sigmoid(logits[-1])
        if binary:
            probs = torch.bernoulli(probs, generator=gen)
    pixels = probs.float().cpu().numpy()  # (n, H, W)
    s = scale or default_scale(model.height, model.width)
    grid = grid_for(n, nrow, model.height * s, model.width * s)
    write_png(out, grid.place(upscale(to_uint8(pixels), s)))
    written = [out]
    if npy:
        raw = out.with_suffix(".npy")
        _replace_into(raw, lambda tmp: np.save(tmp, pixels, allow_pickle=False))
        written.append(raw)
    con = _console(console)
    for path in written:
        con.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return written


# ----------------------------------------------------------------------------- draw animate
def animation_frames(
    probs: np.ndarray,
    scale: int,
    nrow: int | None = None,
    read: np.ndarray | None = None,
    write: np.ndarray | None = None,
    read_n: int = 0,
    write_n: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Canvas probs (T, n, H, W) -> indexed frames (T, H', W') of a grid, windows drawn when given.

    read/write: (T, n, 5) attention parameters; read (green) is drawn first so
    the write window (red) stays visible where they overlap.
    """
    t, n, h, w = probs.shape
    grid = grid_for(n, nrow, h * scale, w * scale)
    check_frame_memory(t, grid.shape[0] + PROGRESS_HEIGHT, grid.shape[1])
    # Index and upscale the small (T, n, H, W) array, not the big frames.
    frames = grid.place(upscale(to_indexed(to_uint8(probs)), scale), pad_value=GREY_INDEX[PAD_VALUE])
    if read is not None:
        draw_windows(frames, grid, range(n), read, read_n, scale, READ_INDEX)
    if write is not None:
        draw_windows(frames, grid, range(n), write, write_n, scale, WRITE_INDEX)
    return add_progress(frames) if progress else frames


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
    console=None,
) -> list[Path]:
    """One frame per glimpse t = 1..T of sigmoid(c_t) for a grid of samples (or reconstructions)."""
    _positive("-n", n)
    _positive("--nrow", nrow)
    _positive("--scale", scale)
    _check_timing(fps, hold)
    _check_seed(seed)
    located = locate(run, load, device, runs_dir)
    what = "reconstruct" if reconstruct else ("boxes" if boxes else "")
    out = Path(output) if output is not None else located.output(
        "animation", ".gif", f"n{n}", f"seed{seed}", what
    )
    check_animation_path(out)  # before torch and the model: a wrong suffix should fail fast
    loaded = load_run(run, load, device, runs_dir, located)
    con = _console(console)
    model = loaded.model
    if boxes and not reconstruct:
        _require_attention(loaded, "to draw (drop --boxes)")
    gen = _generator(loaded, seed)
    read = write = None
    if reconstruct:
        images = load_test_images(loaded, data_dir)
        if n > len(images):
            raise DrawError(f"-n {n}: the test set has only {len(images)} images")
        _, probs, read, write = reconstruct_images(loaded, images[:n], gen)
        if not model.attention:
            con.print("this run has no attention: reconstructions are shown without windows", highlight=False, soft_wrap=True)
    else:
        probs, write_params = sample_prior(loaded, n, gen)
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


# ----------------------------------------------------------------------------- draw inspect-attention
def attention_records(read: np.ndarray | None, write: np.ndarray, labels: Sequence[dict]) -> list[dict]:
    """Per image and step, the window parameters as plain floats (JSON-ready)."""
    from drawcli.model import ATTENTION_FIELDS

    def fields(row) -> dict:
        return {k: round(float(v), 6) for k, v in zip(ATTENTION_FIELDS, row)}

    records = []
    for i, label in enumerate(labels):
        steps = []
        for t in range(write.shape[0]):
            step = {"t": t + 1}
            if read is not None:
                step["read"] = fields(read[t, i])
            step["write"] = fields(write[t, i])
            steps.append(step)
        records.append({**label, "steps": steps})
    return records


def attention_tables(read: np.ndarray | None, write: np.ndarray, read_n: int, write_n: int):
    """Rich tables: mean ± standard deviation over images of each parameter, per step."""
    from rich.table import Table

    from drawcli.model import ATTENTION_FIELDS

    heads = {"g_x": "g_x", "g_y": "g_y", "delta": "δ", "sigma2": "σ²", "gamma": "γ"}
    tables = []
    for name, params, side in (("read", read, read_n), ("write", write, write_n)):
        if params is None:
            continue
        n = params.shape[1]
        table = Table(title=f"{name} window ({side}x{side} filters): mean ± std over {n} image{'s' * (n != 1)}")
        table.add_column("t", justify="right")
        for f in ATTENTION_FIELDS:
            table.add_column(heads[f], justify="right", no_wrap=True)
        mean, std = params.mean(axis=1), params.std(axis=1)
        for t in range(params.shape[0]):
            table.add_row(str(t + 1), *(f"{m:.3g} ±{s:.2g}" for m, s in zip(mean[t], std[t])))
        tables.append(table)
    return tables


def _panel_cells(inputs: np.ndarray | None, probs: np.ndarray, scale: int, steps) -> np.ndarray:
    """Indexed, upscaled cells (S, n, panels, h, w) for the chosen steps: [input,] canvas."""
    canvas = upscale(to_indexed(to_uint8(probs[steps])), scale)  # (S, n, h, w)
    if inputs is None:
        return canvas[:, :, None]
    shown = np.broadcast_to(upscale(to_indexed(to_uint8(inputs)), scale), canvas.shape)
    return np.stack([shown, canvas], axis=2)


def inspect_animation(
    inputs: np.ndarray | None,
    probs: np.ndarray,
    read: np.ndarray | None,
    write: np.ndarray,
    read_n: int,
    write_n: int,
    scale: int,
) -> np.ndarray:
    """Indexed frames (T, H, W): per image a pair [input + read window | canvas + write window].

    Without inputs (prior samples) each image is its canvas alone. The pairs sit
    in a near-square grid, with a wider gap between pairs than inside one.
    """
    t, n, h, w = probs.shape
    cells = _panel_cells(inputs, probs, scale, slice(None))
    panels = cells.shape[2]
    per_row = math.ceil(math.sqrt(n))
    grid = Grid(math.ceil(n / per_row), per_row * panels, h * scale, w * scale, col_group=panels if panels > 1 else 0)
    check_frame_memory(t, grid.shape[0] + PROGRESS_HEIGHT, grid.shape[1])
    frames = grid.place(cells.reshape(t, n * panels, h * scale, w * scale), pad_value=GREY_INDEX[PAD_VALUE])
    canvas_cells = np.arange(n) * panels + (panels - 1)
    if read is not None:
        draw_windows(frames, grid, canvas_cells - 1, read, read_n, scale, READ_INDEX)
    draw_windows(frames, grid, canvas_cells, write, write_n, scale, WRITE_INDEX)
    return frames


def inspect_strip(
    inputs: np.ndarray | None,
    probs: np.ndarray,
    read: np.ndarray | None,
    write: np.ndarray,
    read_n: int,
    write_n: int,
    scale: int,
    steps: np.ndarray,
) -> np.ndarray:
    """One indexed image over time: per image a row of inputs with read windows above a row of
    canvases with write windows (canvases only without inputs), one column per chosen step."""
    _, n, h, w = probs.shape
    k = len(steps)
    cells = _panel_cells(inputs, probs, scale, steps)  # (k, n, panels, h', w')
    panels = cells.shape[2]
    grid = Grid(n * panels, k, h * scale, w * scale, row_group=panels if panels > 1 else 0)
    # Row-major cells: image, panel, step.
    image = grid.place(cells.transpose(1, 2, 0, 3, 4).reshape(n * panels * k, h * scale, w * scale), pad_value=GREY_INDEX[PAD_VALUE])
    canvas_cells = ((np.arange(n) * panels + panels - 1)[:, None] * k + np.arange(k)).ravel()  # image-major

    def per_cell(params: np.ndarray) -> np.ndarray:  # (T, n, 5) -> (1, n*k, 5) in cell order
        return params[steps].transpose(1, 0, 2).reshape(1, n * k, 5)

    if read is not None:
        draw_windows(image[None], grid, canvas_cells - k, per_cell(read), read_n, scale, READ_INDEX)
    draw_windows(image[None], grid, canvas_cells, per_cell(write), write_n, scale, WRITE_INDEX)
    return image


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
    console=None,
) -> list[Path]:
    """Animation (GIF) and PNG strip of read/write windows over time, plus JSON or a summary table."""
    _positive("-n", n)
    _positive("--scale", scale)
    _check_timing(fps, hold)
    if generate and index is not None:
        raise DrawError("--index picks test images; it cannot be combined with --generate")
    if n is not None and index is not None:
        raise DrawError("give either -n (the first N test images) or --index (chosen test images), not both")
    _check_seed(seed)
    if isinstance(index, str):
        parse_indices(index, limit=2**62)  # the syntax now; the range once the test set is read
    located = locate(run, load, device, runs_dir)
    out = Path(output) if output is not None else located.output("attention", ".gif", *_inspected(generate, n, index), f"seed{seed}")
    check_animation_path(out)
    if json_path is not None and Path(json_path).suffix.lower() != ".json":
        raise DrawError(f"{json_path}: --json writes JSON; use a .json file name")
    loaded = load_run(run, load, device, runs_dir, located)
    _require_attention(loaded, "to inspect")
    strip_path = out.with_suffix(".png")
    model = loaded.model
    gen = _generator(loaded, seed)
    if generate:
        count = n or 8
        probs, write = sample_prior(loaded, count, gen)
        inputs = read = None
        labels = [{"sample": i} for i in range(count)]
    else:
        images = load_test_images(loaded, data_dir)
        chosen = parse_indices(index, len(images)) if index is not None else list(range(n or 8))
        if max(chosen) >= len(images):
            raise DrawError(f"-n {len(chosen)}: the test set has only {len(images)} images")
        inputs, probs, read, write = reconstruct_images(loaded, images[chosen], gen)
        labels = [{"index": i} for i in chosen]
    for name, params in (("read", read), ("write", write)):
        if params is not None and not np.isfinite(params).all():
            raise DrawError(f"the model produced non-finite {name} attention parameters (is the checkpoint diverged?)")

    s = scale or default_scale(model.height, model.width)
    frames = add_progress(inspect_animation(inputs, probs, read, write, model.read_n, model.write_n, s))
    count, width, height = write_animation(out, frames, fps, hold)
    steps = strip_steps(len(probs))
    write_png(strip_path, to_rgb(inspect_strip(inputs, probs, read, write, model.read_n, model.write_n, s, steps)))
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
        _replace_into(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8"))
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
