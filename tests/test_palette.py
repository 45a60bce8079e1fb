"""drawcli/pictures/palette.py: pixel conversions, the grey palette with its two window colours,
and the colour palette that colour frames are dithered to for GIF."""

from __future__ import annotations

import numpy as np

from drawcli.pictures import palette


def test_to_uint8_scales_and_rounds():
    out = palette.to_uint8(np.array([0.0, 0.5, 1.0, 1.2, -0.1, np.nan], dtype=np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 128, 255, 255, 0, 0]

def test_palette_keeps_greys_and_window_colours_exact():
    assert len({tuple(c) for c in palette.PALETTE}) == 256  # pillow maps colours back to indices: no duplicates
    grey = np.arange(256, dtype=np.uint8)
    assert np.abs(palette.to_rgb(palette.to_indexed(grey))[:, 0].astype(int) - grey).max() <= 1
    assert palette.to_rgb(np.uint8(palette.WRITE_INDEX)).tolist() == [255, 0, 0]
    assert palette.to_rgb(np.uint8(palette.READ_INDEX)).tolist() == [0, 255, 0]

def test_colour_palette_and_quantisation():
    pal = palette.COLOUR_PALETTE
    assert pal[palette.WRITE_INDEX].tolist() == list(palette.WRITE_COLOR)
    assert pal[palette.READ_INDEX].tolist() == list(palette.READ_COLOR)
    assert len({tuple(c) for c in pal[: palette.CUBE_SIZE]}) == palette.CUBE_SIZE
    # Padding, timeline bar and windows map to their own entries; a flat colour dithers to a
    # 4x4 pattern whose mean is that colour within about one unit.
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[0] = palette.PAD_VALUE
    frames[0, :, :2] = palette.WRITE_COLOR
    frames[0, :, 2:4] = palette.READ_COLOR
    frames[0, :, 4:6] = palette.PROGRESS_VALUE
    frames[1] = (200, 30, 117)
    q = palette.quantise(frames)
    assert (q[0, :, :2] == palette.WRITE_INDEX).all() and (q[0, :, 2:4] == palette.READ_INDEX).all()
    assert (q[0, :, 4:6] == palette.PROGRESS_INDEX_RGB).all() and (q[0, :, 6:] == palette.PAD_INDEX_RGB).all()
    shown = pal[q[1]].astype(float)
    assert np.abs(shown.reshape(-1, 3).mean(0) - (200, 30, 117)).max() < 2.5
    assert np.abs(shown - (200, 30, 117)).max() <= 52  # no pixel further than one level of the cube
