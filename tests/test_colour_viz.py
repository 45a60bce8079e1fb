"""Pictures of colour models (C = 3): `draw sample`, `draw animate`, `draw inspect-attention`.

The run is a tiny untrained 3-channel model on a non-square 12x10 canvas, written as a real
run directory whose data set is a folder of RGB PNGs the fixture writes, so the commands go
through the same loading path as the CLI (test images come from the folder's test split).
"""

from __future__ import annotations

import io
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from drawcli.cli import app
from drawcli.commands import pictures as pictures_cmd
from drawcli.commands.options import AnimateOptions, InspectOptions, SampleOptions
from drawcli.pictures import frames as framing
from drawcli.pictures import grids, palette, viz, writers
from drawcli.runs.store import load_run
from drawcli.settings import load_data

from helpers import make_colour_run

T, H, W = 3, 12, 10  # make_colour_run's model


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """(runs dir, data dir, run settings): 20 RGB pictures 10 wide, 12 high, a coloured block on a tinted ground."""
    root = tmp_path_factory.mktemp("colour")
    g = np.random.default_rng(0)
    for i in range(20):
        img = np.empty((H, W, 3), dtype=np.uint8)
        img[:] = g.integers(0, 80, 3)
        y, x = g.integers(0, 6, 2)
        img[y : y + 6, x : x + 5] = g.integers(120, 256, 3)
        Image.fromarray(img).save(root / f"{i:02d}.png")
    runs = root / "runs"
    run_dir = make_colour_run(runs, "rgb", root, root / "data")
    return runs, root / "data", load_run("rgb", None, "cpu", runs).settings, run_dir


def _quiet():
    return Console(file=io.StringIO(), width=120)


def _rgb_cell(probs_one: np.ndarray, scale: int) -> np.ndarray:
    """One canvas (3, H, W) as the pictures show it: uint8, upscaled, channels last."""
    return np.moveaxis(grids.upscale(palette.to_uint8(probs_one), scale), 0, -1)


# ----------------------------------------------------------------------------- draw sample
def test_sample_writes_the_rgb_canvas_of_every_channel(colour, tmp_path):
    runs, _, _, _ = colour
    out = tmp_path / "s.png"
    pictures_cmd.sample_command(SampleOptions("rgb", n=5, nrow=3, scale=3, npy=True, seed=4, device="cpu", output=out, runs_dir=runs), console=_quiet())
    img = iio.imread(out)
    grid = grids.grid_for(5, 3, H * 3, W * 3)
    assert img.shape == (*grid.shape, 3) and img.dtype == np.uint8
    # The model's own final canvases, per channel, from the same seed.
    loaded = load_run("rgb", None, "cpu", runs)
    logits, _ = loaded.model.generate(5, generator=torch.Generator().manual_seed(4), every_step=False)
    probs = torch.sigmoid(logits[-1]).numpy()
    assert probs.shape == (5, 3, H, W)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), probs, atol=1e-6)
    for i in range(5):
        y, x = grid.origin(i)
        assert (img[y : y + H * 3, x : x + W * 3] == _rgb_cell(probs[i], 3)).all()
    assert (img[..., 0] != img[..., 1]).any()  # colour, not grey


# ----------------------------------------------------------------------------- draw animate
def test_animate_gif_shows_every_canvas_in_colour(colour, tmp_path):
    runs, _, _, _ = colour
    out = tmp_path / "a.gif"
    scale = 8  # a multiple of the dither's 4x4 period: each image pixel's block averages to its colour
    pictures_cmd.animate_command(AnimateOptions("rgb", output=out, n=4, scale=scale, seed=2, device="cpu", runs_dir=runs), console=_quiet())
    frames = iio.imread(out, index=None)[..., :3].astype(float)
    grid = grids.grid_for(4, None, H * scale, W * scale)
    assert frames.shape == (T, grid.shape[0] + framing.PROGRESS_HEIGHT, grid.shape[1], 3)
    loaded = load_run("rgb", None, "cpu", runs)
    probs, _ = viz.sample_prior(loaded, 4, torch.Generator().manual_seed(2))
    assert probs.shape == (T, 4, 3, H, W)
    for i in range(4):
        y, x = grid.origin(i)
        shown = frames[:, y : y + H * scale, x : x + W * scale]  # (T, h, w, 3)
        true = np.stack([_rgb_cell(probs[t, i], scale) for t in range(T)]).astype(float)
        assert np.abs(shown - true).max() <= 52  # within one level of the 6x7x6 cube
        blocks = shown.reshape(T, H, scale, W, scale, 3).mean((2, 4))
        assert np.abs(blocks - palette.to_uint8(probs[:, i]).transpose(0, 2, 3, 1)).max() < 2.5


def test_animate_boxes_in_window_colour_with_outline(colour, tmp_path):
    runs, _, _, _ = colour
    out = tmp_path / "boxes.gif"
    scale = 6
    pictures_cmd.animate_command(AnimateOptions("rgb", output=out, n=1, scale=scale, boxes=True, progress=False, device="cpu", runs_dir=runs), console=_quiet())
    frames = iio.imread(out, index=None)[..., :3]
    loaded = load_run("rgb", None, "cpu", runs)
    _, write = viz.sample_prior(loaded, 1, torch.Generator().manual_seed(0))
    boxes = framing.window_boxes(write[:, 0], loaded.model.write_n, scale)
    widths = framing.border_widths(write[:, 0], scale)
    y0, x0 = grids.grid_for(1, None, H * scale, W * scale).origin(0)
    checked = 0
    for t in range(T):
        cell = frames[t, y0 : y0 + H * scale, x0 : x0 + W * scale]
        bx0, by0, bx1, by1 = boxes[t]
        # Every edge of the box that falls inside the cell is red, and black just outside it.
        for edge, outside, lo, hi in ((by0, by0 - 1, bx0, bx1), (by1 - widths[t], by1, bx0, bx1)):
            a, b = max(lo, 0), min(hi, W * scale)
            if 0 <= edge < H * scale and a < b:
                assert (cell[edge, a:b] == palette.WRITE_COLOR).all()
                if 0 <= outside < H * scale:
                    assert (cell[outside, max(a, 1) : b - 1] == palette.OUTLINE_COLOR).all()
                checked += 1
    assert checked >= T  # the untrained model's windows sit on the canvas


def test_animate_reconstructs_folder_test_images_with_both_windows(colour, tmp_path):
    runs, _, _, _ = colour
    out = tmp_path / "recon.gif"
    pictures_cmd.animate_command(AnimateOptions("rgb", output=out, n=2, reconstruct=True, device="cpu", runs_dir=runs), console=_quiet())
    frames = iio.imread(out, index=None)[..., :3]
    assert len(frames) == T
    for colour_ in (palette.WRITE_COLOR, palette.READ_COLOR):
        assert (frames == colour_).all(-1).any(axis=(1, 2)).all()


@pytest.mark.skipif(not writers.ffmpeg_available(), reason="imageio-ffmpeg is not installed")
def test_animate_mp4_takes_rgb_frames(colour, tmp_path):
    runs, _, _, _ = colour
    out = tmp_path / "a.mp4"
    pictures_cmd.animate_command(AnimateOptions("rgb", output=out, n=1, scale=4, hold=0, device="cpu", runs_dir=runs), console=_quiet())
    video = np.stack(list(iio.imiter(out)))
    assert video.shape[0] == T and video.shape[-1] == 3


# ----------------------------------------------------------------------------- draw inspect-attention
def test_inspect_attention_on_a_colour_folder_run(colour, tmp_path):
    runs, data_dir, settings, _ = colour
    out, js = tmp_path / "att.gif", tmp_path / "att.json"
    pictures_cmd.inspect_attention_command(InspectOptions("rgb", n=2, output=out, json_path=js, scale=4, device="cpu", runs_dir=runs), console=_quiet())
    frames = iio.imread(out, index=None)
    assert len(frames) == T
    doc = json.loads(js.read_text())
    assert [im["index"] for im in doc["images"]] == [0, 1] and doc["height"] == H and doc["width"] == W
    strip = iio.imread(out.with_suffix(".png"))
    assert strip.ndim == 3 and strip.shape[-1] == 3
    # The first input cell is the folder's first test image (read as training reads it), except
    # where the read window is drawn on it.
    test_images = load_data(settings.data, data_dir).eval
    assert test_images.shape[1:] == (3, H, W)
    y, x = grids.Grid(4, T, H * 4, W * 4, row_group=2).origin(0)
    cell = strip[y : y + H * 4, x : x + W * 4]
    expected = _rgb_cell(test_images[0] / 255.0, 4)
    assert (cell == expected).all(-1).mean() > 0.5


def test_missing_folder_is_one_line(colour, tmp_path):
    _, data_dir, _, _ = colour
    runs = tmp_path / "runs"
    make_colour_run(runs, "gone", tmp_path / "no-such-pictures", data_dir)
    result = CliRunner().invoke(app, ["inspect-attention", "gone", "--runs-dir", str(runs), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-pictures" in lines[0], result.stderr
