"""The frames of `draw animate` and `draw inspect-attention`: grids of canvases with their attention
windows drawn, the timeline bar under animations and the steps of a strip. Pure numpy, no torch.

Canvas probs are (T, n, H, W) for grey models and (T, n, 3, H, W) for colour ones (inputs
likewise without T). Grey frames are PALETTE indices, colour frames RGB (drawcli/pictures/palette.py);
windows are drawn in each one's encoding, with a black outline on colour (see draw_windows).

Coordinates. The model reports windows in the paper's 1-based pixel
coordinates (pixel a = 1..A, image centre (A+1)/2). In an image array pixel a
sits at index a-1 and covers the continuous span [a-1, a); a frame upscaled by
``scale`` maps that span to frame pixels [(a-1)*scale, a*scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.pictures.grids import Grid, grid_for, image_cells
from drawcli.pictures.palette import (
    GREY_INDEX,
    OUTLINE_COLOR,
    PAD_VALUE,
    PROGRESS_VALUE,
    READ_COLOR,
    READ_INDEX,
    WRITE_COLOR,
    WRITE_INDEX,
    is_colour,
    to_rgb,
)

PROGRESS_HEIGHT = 3  # frame pixels of the timeline bar under animations
MAX_FRAME_BYTES = 1536 * 2**20  # refuse animations whose frames would not fit in memory comfortably
STRIP_COLUMNS = 16  # time steps shown in the inspect-attention PNG strip when T is larger


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


def check_frame_memory(steps: int, height: int, width: int, channels: int = 1) -> None:
    need = steps * height * width * channels  # bytes: one per pixel for indexed frames, three for RGB
    if need > MAX_FRAME_BYTES:
        raise DrawError(
            f"the animation would need {need / 2**30:.1f} GiB of frames ({steps} frames of {width}x{height}); "
            "use fewer images (-n) or a smaller --scale"
        )


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


# ----------------------------------------------------------------------------- the frames of the commands
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


def strip_steps(steps: int, columns: int = STRIP_COLUMNS) -> np.ndarray:
    """0-based time steps for a strip: all of them, or ``columns`` evenly spaced incl. first and last."""
    if steps <= columns:
        return np.arange(steps)
    return np.unique(np.rint(np.linspace(0, steps - 1, columns)).astype(np.int64))


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
