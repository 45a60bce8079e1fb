"""Pictures from arrays: pure numpy image building and the PNG, GIF and MP4 writers. No torch.

* pixel conversion, nearest upscaling, grid layout, the timeline bar;
* attention-window geometry and box drawing;
* the frames of `draw animate` and `draw inspect-attention` (grids of canvases with windows):
  palette indices for grey models, RGB for colour ones (C = 3), quantised to a fixed palette
  only when a GIF is written;
* writers: PNG, GIF (imageio's pillow plugin), MP4 (imageio's ffmpeg plugin, optional),
  each written atomically (encoded in memory, then put in place).

Coordinates. The model reports windows in the paper's 1-based pixel
coordinates (pixel a = 1..A, image centre (A+1)/2). In an image array pixel a
sits at index a-1 and covers the continuous span [a-1, a); a frame upscaled by
``scale`` maps that span to frame pixels [(a-1)*scale, a*scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.core.files import replace_atomically

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

# Colour models (C = 3) are drawn as RGB frames (..., H, W, 3); grey ones stay indexed as above.
# A GIF still needs a palette, so colour frames are quantised once, when written, to a fixed
# one: a 6x7x6 RGB cube (green gets the extra level: the eye tells greens apart best), then the
# two greys of the padding and the timeline bar, then the two window colours. Fixed, so every
# frame is an exact palette image and pillow's slow per-frame quantisation is still skipped.
# Ordered (Bayer) dithering hides the cube's coarse steps: over a 4x4 block the mean colour is
# within about one unit of the true one, and the pattern is the same in every frame, so it
# does not flicker. Pure red, pure green and black are cube colours, so they survive exactly.
CUBE_LEVELS = (6, 7, 6)  # red, green, blue
CUBE_SIZE = math.prod(CUBE_LEVELS)  # 252
PAD_INDEX_RGB, PROGRESS_INDEX_RGB = CUBE_SIZE, CUBE_SIZE + 1
OUTLINE_COLOR = (0, 0, 0)
COLOUR_PALETTE = np.zeros((256, 3), dtype=np.uint8)
COLOUR_PALETTE[:CUBE_SIZE] = np.stack(
    np.meshgrid(*(np.rint(np.arange(k) * 255 / (k - 1)) for k in CUBE_LEVELS), indexing="ij"), axis=-1
).reshape(-1, 3)  # index = (r * 7 + g) * 6 + b
COLOUR_PALETTE[PAD_INDEX_RGB], COLOUR_PALETTE[PROGRESS_INDEX_RGB] = (PAD_VALUE,) * 3, (PROGRESS_VALUE,) * 3
COLOUR_PALETTE[WRITE_INDEX], COLOUR_PALETTE[READ_INDEX] = WRITE_COLOR, READ_COLOR
BAYER = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])  # 4x4 ordered-dither ranks


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


def is_colour(probs: np.ndarray, grey_ndim: int) -> bool:
    """Whether canvas probs carry a channel axis: grey arrays have ``grey_ndim`` axes, colour one more."""
    return probs.ndim == grey_ndim + 1


def image_cells(probs: np.ndarray, scale: int, colour: bool) -> np.ndarray:
    """Intensities -> upscaled frame cells: grey (..., H, W) to PALETTE indices (..., h, w);
    colour (..., 3, H, W) to RGB (..., h, w, 3). Upscaled while small, before the grid."""
    if not colour:
        return upscale(to_indexed(to_uint8(probs)), scale)
    return np.moveaxis(upscale(to_uint8(probs), scale), -3, -1)


def quantise(frames: np.ndarray) -> np.ndarray:
    """RGB frames (T, H, W, 3) -> COLOUR_PALETTE indices (T, H, W), ordered-dithered.

    Colours that are palette entries of their own (padding, timeline bar, windows) map
    to them exactly; anything else to the cube, level = floor(v * (k-1)/255 + threshold)
    with the Bayer threshold of the pixel's place in the frame. One frame at a time:
    the float temporaries stay the size of one frame.
    """
    t, h, w, _ = frames.shape
    threshold = (np.tile(BAYER, (-(-h // 4), -(-w // 4)))[:h, :w, None] + 0.5) / 16
    top = np.array(CUBE_LEVELS, dtype=np.float64) - 1
    weights = np.array([CUBE_LEVELS[1] * CUBE_LEVELS[2], CUBE_LEVELS[2], 1])
    exact = {_key(COLOUR_PALETTE[i]): i for i in (PAD_INDEX_RGB, PROGRESS_INDEX_RGB, WRITE_INDEX, READ_INDEX)}
    out = np.empty((t, h, w), dtype=np.uint8)
    for f in range(t):
        levels = np.minimum(np.floor(frames[f] * (top / 255) + threshold), top).astype(np.int64)
        index = levels @ weights
        keys = _key(frames[f])
        for key, i in exact.items():
            index[keys == key] = i
        out[f] = index
    return out


def _key(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) -> one integer per colour, to compare colours in one operation."""
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


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

    def place(self, cells: np.ndarray, pad_value: int = PAD_VALUE, rgb: bool = False) -> np.ndarray:
        """Cells (..., k, cell_h, cell_w) -> one image (..., H, W); cells beyond k stay padding.

        rgb: cells (..., k, cell_h, cell_w, 3) -> (..., H, W, 3); ``pad_value`` is then a grey.
        One slice assignment per cell, each vectorised over the leading axes (time).
        """
        tail = cells.shape[-1:] if rgb else ()
        k = cells.shape[-3 - len(tail)]
        if k > self.rows * self.cols:
            raise ValueError(f"{k} cells do not fit a {self.rows}x{self.cols} grid")
        out = np.full(cells.shape[: -3 - len(tail)] + self.shape + tail, pad_value, dtype=cells.dtype)
        rest = (slice(None),) * len(tail)
        for i in range(k):
            y, x = self.origin(i)
            out[(..., slice(y, y + self.cell_h), slice(x, x + self.cell_w), *rest)] = cells[(..., i, slice(None), slice(None), *rest)]
        return out


def grid_for(n: int, nrow: int | None, cell_h: int, cell_w: int) -> Grid:
    """A grid for n cells with ``nrow`` cells per row (torchvision's meaning); default about square."""
    cols = min(n, nrow if nrow else math.ceil(math.sqrt(n)))
    return Grid(rows=math.ceil(n / cols), cols=cols, cell_h=cell_h, cell_w=cell_w)


def add_progress(frames: np.ndarray, rgb: bool = False) -> np.ndarray:
    """Append a timeline bar under indexed frames (T, H, W) (RGB (T, H, W, 3) with ``rgb``):
    frame t of T fills t/T of the width.

    It shows where the loop starts, and it keeps consecutive frames distinct, so
    the GIF encoder (which merges identical consecutive frames) keeps one frame
    per glimpse even when the model stops changing the canvas.
    """
    t = frames.shape[0]
    width = frames.shape[2]
    filled = np.rint(width * np.arange(1, t + 1) / t)
    done, todo = (PROGRESS_VALUE, PAD_VALUE) if rgb else (GREY_INDEX[PROGRESS_VALUE], GREY_INDEX[PAD_VALUE])
    row = np.where(np.arange(width)[None, :] < filled[:, None], done, todo).astype(np.uint8)
    bar = np.broadcast_to(row[:, None, :], (t, PROGRESS_HEIGHT, width))
    if rgb:
        bar = np.broadcast_to(bar[..., None], (*bar.shape, 3))
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
    frames: np.ndarray, grid: Grid, cells: Sequence[int], params: np.ndarray, n: int, scale: int, color,
    outline=None,
) -> np.ndarray:
    """Draw one window per (frame, cell): frames (F, H, W[, 3]), params (F, len(cells), 5). In place.

    outline: a colour for a one-pixel line on both sides of the border. On colour images the
    window colour alone can vanish (a red box on a red patch); black next to it always stands
    out there, and where the image is dark the red or green line itself does. Grey images need
    none: no grey is red or green.
    """
    boxes = window_boxes(params, n, scale)
    widths = border_widths(params, scale)
    origins = [grid.origin(c) for c in cells]
    for f in range(frames.shape[0]):
        for j, (y, x) in enumerate(origins):
            cell = frames[f, y : y + grid.cell_h, x : x + grid.cell_w]
            if outline is not None:
                x0, y0, x1, y1 = (int(v) for v in boxes[f, j])
                draw_box(cell, (x0 - 1, y0 - 1, x1 + 1, y1 + 1), widths[f, j] + 2, outline)
            draw_box(cell, boxes[f, j], widths[f, j], color)
    return frames


def strip_steps(steps: int, columns: int = STRIP_COLUMNS) -> np.ndarray:
    """0-based time steps for a strip: all of them, or ``columns`` evenly spaced incl. first and last."""
    if steps <= columns:
        return np.arange(steps)
    return np.unique(np.rint(np.linspace(0, steps - 1, columns)).astype(np.int64))


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
    """Frames -> looping GIF, or MP4 by the suffix. Indexed frames (T, H, W) hold PALETTE indices
    (grey models); RGB frames (T, H, W, 3) are colour ones, quantised to COLOUR_PALETTE for a GIF.

    Returns what the file holds: (frames, width, height). A GIF has one frame per glimpse and
    holds the last by its delay; a video repeats the last frame and pads odd sides by a pixel.
    """
    import imageio.v3 as iio

    check_animation_path(path)
    rgb = frames.ndim == 4
    t, h, w = frames.shape[:3]
    if path.suffix.lower() == ".gif":
        durations = gif_durations(t, fps, hold)
        indexed, palette = (quantise(frames), COLOUR_PALETTE) if rgb else (frames, PALETTE)
        # mode "L" hands pillow the indices untouched; its GIF writer then uses our palette.
        data = iio.imwrite(
            "<bytes>", indexed, extension=".gif", is_batch=True, mode="L", palette=palette.tobytes(), duration=durations, loop=0
        )
        _write_encoded(path, data)
        return t, w, h
    import imageio.v2 as iio2

    # Video has one frame rate: hold the last frame by repeating it; yuv420p needs even sides.
    if rgb:  # colour frames go to the video as they are, not through the GIF palette
        even = np.full((h + h % 2, w + w % 2, 3), PAD_VALUE, dtype=np.uint8)
    else:
        even = np.full((h + h % 2, w + w % 2), GREY_INDEX[PAD_VALUE], dtype=np.uint8)
    repeats = max(0, math.ceil(hold * fps) - 1)

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"")  # an unwritable folder fails here, in our hands, not inside ffmpeg
        with iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=2) as writer:
            for i in range(t + repeats):
                even[:h, :w] = frames[min(i, t - 1)]
                writer.append_data(even if rgb else to_rgb(even))

    _replace_into(path, write)
    return t + repeats, even.shape[1], even.shape[0]


def check_frame_memory(steps: int, height: int, width: int, channels: int = 1) -> None:
    need = steps * height * width * channels  # bytes: one per pixel for indexed frames, three for RGB
    if need > MAX_FRAME_BYTES:
        raise DrawError(
            f"the animation would need {need / 2**30:.1f} GiB of frames ({steps} frames of {width}x{height}); "
            "use fewer images (-n) or a smaller --scale"
        )


# ----------------------------------------------------------------------------- frames of the commands
# Canvas probs are (T, n, H, W) for grey models and (T, n, 3, H, W) for colour ones (inputs
# likewise without T). Grey frames are PALETTE indices, colour frames RGB; windows are drawn
# in each one's encoding, with a black outline on colour (see draw_windows).
def _window_inks(rgb: bool) -> tuple:
    """(read colour, write colour, outline) in the frames' encoding."""
    return (READ_COLOR, WRITE_COLOR, OUTLINE_COLOR) if rgb else (READ_INDEX, WRITE_INDEX, None)


def _pad(rgb: bool) -> int:
    return PAD_VALUE if rgb else GREY_INDEX[PAD_VALUE]


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
    """Canvas probs (T, n, [3,] H, W) -> frames (T, H', W') indexed, or (T, H', W', 3) RGB for
    colour, of a grid, windows drawn when given.

    read/write: (T, n, 5) attention parameters; read (green) is drawn first so
    the write window (red) stays visible where they overlap.
    """
    rgb = is_colour(probs, 4)
    t, n = probs.shape[:2]
    h, w = probs.shape[-2:]
    grid = grid_for(n, nrow, h * scale, w * scale)
    check_frame_memory(t, grid.shape[0] + PROGRESS_HEIGHT, grid.shape[1], 3 if rgb else 1)
    # Index and upscale the small (T, n, H, W) array, not the big frames.
    frames = grid.place(image_cells(probs, scale, rgb), pad_value=_pad(rgb), rgb=rgb)
    read_ink, write_ink, outline = _window_inks(rgb)
    if read is not None:
        draw_windows(frames, grid, range(n), read, read_n, scale, read_ink, outline)
    if write is not None:
        draw_windows(frames, grid, range(n), write, write_n, scale, write_ink, outline)
    return add_progress(frames, rgb) if progress else frames


def _panel_cells(inputs: np.ndarray | None, probs: np.ndarray, scale: int, steps, rgb: bool) -> np.ndarray:
    """Upscaled cells (S, n, panels, h, w[, 3]) for the chosen steps: [input,] canvas."""
    canvas = image_cells(probs[steps], scale, rgb)  # (S, n, h, w[, 3])
    if inputs is None:
        return canvas[:, :, None]
    shown = np.broadcast_to(image_cells(inputs, scale, rgb), canvas.shape)
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
    """Frames (T, H, W) indexed, or (T, H, W, 3) RGB for colour: per image a pair
    [input + read window | canvas + write window].

    Without inputs (prior samples) each image is its canvas alone. The pairs sit
    in a near-square grid, with a wider gap between pairs than inside one.
    """
    rgb = is_colour(probs, 4)
    t, n = probs.shape[:2]
    h, w = probs.shape[-2:]
    cells = _panel_cells(inputs, probs, scale, slice(None), rgb)
    panels = cells.shape[2]
    per_row = math.ceil(math.sqrt(n))
    grid = Grid(math.ceil(n / per_row), per_row * panels, h * scale, w * scale, col_group=panels if panels > 1 else 0)
    check_frame_memory(t, grid.shape[0] + PROGRESS_HEIGHT, grid.shape[1], 3 if rgb else 1)
    frames = grid.place(cells.reshape(t, n * panels, *cells.shape[3:]), pad_value=_pad(rgb), rgb=rgb)
    canvas_cells = np.arange(n) * panels + (panels - 1)
    read_ink, write_ink, outline = _window_inks(rgb)
    if read is not None:
        draw_windows(frames, grid, canvas_cells - 1, read, read_n, scale, read_ink, outline)
    draw_windows(frames, grid, canvas_cells, write, write_n, scale, write_ink, outline)
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
    """One image over time, indexed (H, W) or RGB (H, W, 3) for colour: per image a row of inputs
    with read windows above a row of canvases with write windows (canvases only without
    inputs), one column per chosen step."""
    rgb = is_colour(probs, 4)
    n = probs.shape[1]
    h, w = probs.shape[-2:]
    k = len(steps)
    cells = _panel_cells(inputs, probs, scale, steps, rgb)  # (k, n, panels, h', w'[, 3])
    panels = cells.shape[2]
    grid = Grid(n * panels, k, h * scale, w * scale, row_group=panels if panels > 1 else 0)
    # Row-major cells: image, panel, step.
    order = (1, 2, 0, *range(3, cells.ndim))
    image = grid.place(cells.transpose(order).reshape(n * panels * k, *cells.shape[3:]), pad_value=_pad(rgb), rgb=rgb)
    canvas_cells = ((np.arange(n) * panels + panels - 1)[:, None] * k + np.arange(k)).ravel()  # image-major

    def per_cell(params: np.ndarray) -> np.ndarray:  # (T, n, 5) -> (1, n*k, 5) in cell order
        return params[steps].transpose(1, 0, 2).reshape(1, n * k, 5)

    read_ink, write_ink, outline = _window_inks(rgb)
    if read is not None:
        draw_windows(image[None], grid, canvas_cells - k, per_cell(read), read_n, scale, read_ink, outline)
    draw_windows(image[None], grid, canvas_cells, per_cell(write), write_n, scale, write_ink, outline)
    return image


def strip_rgb(image: np.ndarray) -> np.ndarray:
    """An inspect strip as RGB for the PNG: indexed (grey models) through PALETTE, RGB as it is."""
    return image if image.ndim == 3 else to_rgb(image)
