"""Grids of pictures: the default upscaling, nearest-neighbour upscaling, and grids of equal cells
with padding and grouping. Pure numpy, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drawcli.pictures.palette import PAD_VALUE, to_indexed, to_uint8

PAD = 2  # frame pixels between grid cells and around the grid
GROUP_GAP = 6  # extra pixels between groups of cells (one image's panels)
TARGET_SIDE = 112  # default upscaling makes a 28-pixel digit 112 pixels


def default_scale(height: int, width: int) -> int:
    """Integer nearest-neighbour factor that makes the longer side about TARGET_SIDE pixels."""
    return max(1, round(TARGET_SIDE / max(height, width)))


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of the last two axes (..., H, W) -> (..., H*scale, W*scale)."""
    if scale == 1:
        return images
    *lead, h, w = images.shape
    # One copy: a broadcast view (.., H, s, W, s) flattened, instead of two np.repeat passes.
    view = np.broadcast_to(images[..., :, None, :, None], (*lead, h, scale, w, scale))
    return view.reshape(*lead, h * scale, w * scale)


def image_cells(probs: np.ndarray, scale: int, colour: bool) -> np.ndarray:
    """Intensities -> upscaled frame cells: grey (..., H, W) to PALETTE indices (..., h, w);
    colour (..., 3, H, W) to RGB (..., h, w, 3). Upscaled while small, before the grid."""
    if not colour:
        return upscale(to_indexed(to_uint8(probs)), scale)
    return np.moveaxis(upscale(to_uint8(probs), scale), -3, -1)


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
