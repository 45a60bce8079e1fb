"""drawcli/pictures/frames.py: attention windows on frames (in the paper's 1-based pixels), their
borders, the steps of a strip and the timeline bar under animations. The frames of whole commands
are tested through the commands (tests/test_viz.py, tests/test_colour_viz.py)."""

from __future__ import annotations

import numpy as np

from drawcli.pictures import frames as framing
from drawcli.pictures import grids, palette


def params(gx, gy, delta, sigma2, gamma=1.0):
    return np.array([gx, gy, delta, sigma2, gamma], dtype=np.float64)

def test_window_lands_on_expected_pixels():
    # Centre at 1-based pixel 14.5 (between array pixels 13 and 14), N = 5 filters spaced 2
    # apart: the window spans 10 image pixels, array columns 9..18, so frame pixels
    # 36..75 at scale 4. A tiny sigma gives a 1-pixel border.
    p = params(14.5, 14.5, 2.0, 0.04)
    assert framing.window_boxes(p, 5, 4).tolist() == [36, 36, 76, 76]
    assert framing.border_widths(p, 4) == 1
    img = np.zeros((112, 112, 3), np.uint8)
    framing.draw_windows(img[None], grids.Grid(1, 1, 112, 112, pad=0), [0], p[None, None], 5, 4, palette.WRITE_COLOR)
    expected = np.zeros((112, 112), bool)
    expected[36:76, 36] = expected[36:76, 75] = expected[36, 36:76] = expected[75, 36:76] = True
    red = (img == palette.WRITE_COLOR).all(-1)
    assert (red == expected).all()
    assert ((img != 0).any(-1) == expected).all()  # nothing else touched

def test_window_in_one_based_coordinates_off_centre():
    # One filter (N = 1) centred on 1-based pixel (3, 10) with delta 1 covers exactly that pixel:
    # array row 9, column 2 -> frame rows 18..19, columns 4..5 at scale 2.
    box = framing.window_boxes(params(3, 10, 1.0, 0.01), 1, 2)
    assert box.tolist() == [4, 18, 6, 20]

def test_border_grows_with_sigma_and_is_clipped_to_the_cell():
    widths = framing.border_widths(np.stack([params(14, 14, 3, s) for s in (0.01, 4.0, 9.0, 100.0)]), 4)
    assert widths.tolist() == [1, 2, 3, 4]  # a quarter of the standard deviation, capped at one image pixel
    # A window hanging off the top-left corner: only its bottom and right edges are visible.
    img = np.zeros((40, 40, 3), np.uint8)
    framing.draw_box(img, (-10, -10, 20, 30), 3, palette.READ_COLOR)
    green = (img == palette.READ_COLOR).all(-1)
    expected = np.zeros((40, 40), bool)
    expected[27:30, 0:20] = True  # bottom band
    expected[0:30, 17:20] = True  # right band
    assert (green == expected).all()
    # Entirely outside: nothing drawn, no error.
    framing.draw_box(img, (100, 100, 120, 120), 2, palette.WRITE_COLOR)
    assert not (img == palette.WRITE_COLOR).all(-1).any()

def test_extreme_parameters_do_not_overflow():
    """An untrained model's wild windows: the edges are clipped to +-1e6 frame pixels before the int cast
    (no overflow, no warning), NaN counts as 0, and a box whose border lies outside the image draws nothing."""
    params = np.array([[1e30, -1e30, 1e30, 1e30, 1.0], [np.nan, 0, 0, np.nan, 1]])
    with np.errstate(all="raise"):  # an overflowing cast would raise here
        boxes = framing.window_boxes(params, 5, 4)
        widths = framing.border_widths(params, 4)
    assert boxes.dtype == np.int64
    assert boxes.tolist() == [[-1_000_000, -1_000_000, 1_000_000, 1_000_000], [0, -2, 1, -1]]
    assert widths.tolist() == [4, 1]  # at most one image pixel (scale 4); NaN sigma: the thinnest border
    img = np.zeros((10, 10, 3), np.uint8)
    for box, width in zip(boxes, widths):
        assert framing.draw_box(img, box, width, palette.WRITE_COLOR) is img
    assert not img.any()  # both borders lie outside the 10x10 image

def test_colour_windows_have_a_black_outline():
    # A window from frame pixel 10 to 30 with a 2-pixel border: red at 10..11 and 28..29,
    # black just outside (9, 30) and just inside (12, 27); the image elsewhere untouched.
    img = np.full((1, 40, 40, 3), 128, np.uint8)
    p = np.array([[[10.5, 10.5, 2.0, 16.0, 1.0]]])  # centre at image pixel 10 (scale 2), 5 filters 2 apart
    assert framing.window_boxes(p, 5, 2).tolist() == [[[10, 10, 30, 30]]]
    framing.draw_windows(img, grids.Grid(1, 1, 40, 40, pad=0), [0], p, 5, 2, palette.WRITE_COLOR, palette.OUTLINE_COLOR)
    row = img[0, 20]
    assert framing.border_widths(p, 2)[0, 0] == 2
    assert (row[10:12] == palette.WRITE_COLOR).all() and (row[28:30] == palette.WRITE_COLOR).all()
    assert (row[[9, 12, 27, 30]] == 0).all()
    assert (row[13:27] == 128).all() and (row[:9] == 128).all() and (row[31:] == 128).all()

def test_strip_steps_keep_first_and_last():
    assert framing.strip_steps(4).tolist() == [0, 1, 2, 3]
    steps = framing.strip_steps(64, 16)
    assert len(steps) == 16 and steps[0] == 0 and steps[-1] == 63

def test_progress_bar_makes_every_frame_distinct():
    frames = np.zeros((5, 8, 20), np.uint8)  # five identical frames
    out = framing.add_progress(frames)
    assert out.shape == (5, 8 + framing.PROGRESS_HEIGHT, 20)
    assert all((out[i] != out[i + 1]).any() for i in range(4))
    assert (out[-1, -1] == palette.GREY_INDEX[palette.PROGRESS_VALUE]).all()  # the last frame's bar is full
