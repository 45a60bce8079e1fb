"""drawcli/pictures/writers.py: GIFs that hold the palette's colours exactly, their delays, and a
file that cannot be written: one error, no traceback from imageio's finaliser."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from drawcli.core.errors import DrawError
from drawcli.pictures import palette, writers

from helpers import gif_info, unwritable_folder


def test_gif_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 30, 40), dtype=np.uint8)
    frames[1] = palette.WRITE_INDEX  # a frame of one colour only
    writers.write_animation(tmp_path / "r.gif", frames, fps=20, hold=0.3)
    decoded, durations, loop = gif_info(tmp_path / "r.gif")
    assert (decoded[..., :3] == palette.to_rgb(frames)).all()
    assert durations == [50, 50, 300] and loop == 0

def test_gif_durations_in_milliseconds_with_hold():
    assert writers.gif_durations(4, 10, 2.0) == [100, 100, 100, 2000]
    assert writers.gif_durations(3, 12, 0.0) == [80, 80, 80]  # 83.3 ms rounds to GIF's 10 ms grid
    assert writers.gif_durations(2, 50, 0.5) == [20, 500]

def test_an_unwritable_gif_or_png_is_one_error_and_no_finaliser_traceback(monkeypatch):
    where = unwritable_folder()
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    frames = np.zeros((3, 8, 8), dtype=np.uint8)
    with pytest.raises(DrawError, match="cannot write .*: Permission denied"):
        writers.write_animation(where / "a.gif", frames, fps=10, hold=1)
    with pytest.raises(DrawError, match="cannot write"):
        writers.write_png(where / "a.png", np.zeros((8, 8), dtype=np.uint8))
    gc.collect()
    assert unraisable == []  # imageio's writer never held the failed file
