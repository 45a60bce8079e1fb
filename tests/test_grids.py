"""drawcli/pictures/grids.py: nearest-neighbour upscaling, the default scale and grids of cells."""

from __future__ import annotations

import numpy as np

from drawcli.pictures import grids


def test_upscale_is_nearest_neighbour():
    img = np.array([[1, 2], [3, 4]], np.uint8)
    assert grids.upscale(img, 2).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert grids.upscale(np.zeros((5, 3, 7, 6)), 3).shape == (5, 3, 21, 18)

def test_default_scale_makes_a_digit_about_112_pixels():
    assert grids.default_scale(28, 28) == 4
    assert grids.default_scale(64, 32) == 2
    assert grids.default_scale(500, 500) == 1

def test_grid_places_cells_with_padding():
    grid = grids.grid_for(5, 3, 2, 3)  # 5 cells of 2x3 pixels, 3 per row -> 2 rows
    assert (grid.rows, grid.cols) == (2, 3)
    pad = grids.PAD
    assert grid.shape == (pad + 2 * (2 + pad), pad + 3 * (3 + pad))
    cells = np.arange(1, 6, dtype=np.uint8)[:, None, None] * np.ones((5, 2, 3), np.uint8)
    out = grid.place(cells, pad_value=0)
    for i in range(5):
        y, x = grid.origin(i)
        assert (out[y : y + 2, x : x + 3] == i + 1).all()
    assert (out > 0).sum() == 5 * 6  # everything else, the sixth cell included, is padding
    # Leading axes (time) are carried through.
    assert grid.place(np.zeros((7, 5, 2, 3), np.uint8)).shape == (7, *grid.shape)

def test_grid_groups_add_a_gap_between_panels():
    grid = grids.Grid(rows=1, cols=4, cell_h=2, cell_w=2, col_group=2)
    xs = [grid.origin(c)[1] for c in range(4)]
    step = 2 + grids.PAD
    assert xs[1] - xs[0] == step and xs[3] - xs[2] == step
    assert xs[2] - xs[1] == step + grids.GROUP_GAP
