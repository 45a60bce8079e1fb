"""`draw sample`, `draw animate`, `draw inspect-attention`: pictures, windows, files and errors.

Runs are tiny untrained models (T = 4, 16 hidden units) written as real run
directories, so every test goes through the same loading path as the CLI.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from drawcli.cli import app
from drawcli.commands import pictures as pictures_cmd
from drawcli.core.errors import DrawError
from drawcli.pictures import frames as framing
from drawcli.pictures import grids, palette, viz, writers
from drawcli.runs.checkpoint import atomic_save, build_model, make_checkpoint
from drawcli.runs.store import load_run, write_config
from drawcli.settings import build_settings

T = 4
N_TEST = 12  # synthetic test images


def make_run(runs_dir: Path, name: str, *, attention: bool = True, data_dir: Path | None = None, checkpoints=("epoch_001", "last", "best")) -> Path:
    settings = build_settings(
        flags={
            "model": {"steps": T, "hidden": 16, "embed": 4, "attention": attention, "read_n": 2, "write_n": 3},
            "data": {"data_dir": None if data_dir is None else str(data_dir)},
            "run": {"name": name, "runs_dir": str(runs_dir), "device": "cpu"},
        }
    )
    torch.manual_seed(0)
    model = build_model(settings, 28, 28)
    run_dir = runs_dir / name
    (run_dir / "checkpoints").mkdir(parents=True)
    write_config(run_dir, settings)
    ckpt = make_checkpoint(model, torch.optim.Adam(model.parameters()), settings, 1, 10, {}, {"loss": 500.0}, 500.0)
    for stem in checkpoints:
        atomic_save(ckpt, run_dir / "checkpoints" / f"{stem}.pt")
    return run_dir


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """LeCun's IDX ubyte format: magic 0x00000803, then big-endian sizes, then pixels."""
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    path.write_bytes(header + images.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """DATA_DIR/mnist with only a synthetic test-image file: bright squares on black."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    rng = np.random.default_rng(0)
    images = np.zeros((N_TEST, 28, 28), np.uint8)
    for img in images:
        y, x = rng.integers(2, 16, size=2)
        img[y : y + 10, x : x + 8] = 255
    write_idx_images(root / "mnist" / "t10k-images-idx3-ubyte", images)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "att", data_dir=data_dir)
    make_run(root, "plain", attention=False, data_dir=data_dir)
    make_run(root, "empty", checkpoints=())
    return root


def gif_info(path: Path):
    """Frames as arrays plus the per-frame delays and loop count pillow reads back."""
    with Image.open(path) as im:
        loop = im.info.get("loop")
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    frames = iio.imread(path, index=None)
    return frames, durations, loop


def _quiet():
    """A console that keeps the commands' output out of the test log."""
    return Console(file=io.StringIO(), width=120)


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# ----------------------------------------------------------------------------- pure image building
def test_to_uint8_scales_and_rounds():
    out = palette.to_uint8(np.array([0.0, 0.5, 1.0, 1.2, -0.1, np.nan], dtype=np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 128, 255, 255, 0, 0]


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


def test_palette_keeps_greys_and_window_colours_exact():
    assert len({tuple(c) for c in palette.PALETTE}) == 256  # pillow maps colours back to indices: no duplicates
    grey = np.arange(256, dtype=np.uint8)
    assert np.abs(palette.to_rgb(palette.to_indexed(grey))[:, 0].astype(int) - grey).max() <= 1
    assert palette.to_rgb(np.uint8(palette.WRITE_INDEX)).tolist() == [255, 0, 0]
    assert palette.to_rgb(np.uint8(palette.READ_INDEX)).tolist() == [0, 255, 0]


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


def test_strip_steps_keep_first_and_last():
    assert framing.strip_steps(4).tolist() == [0, 1, 2, 3]
    steps = framing.strip_steps(64, 16)
    assert len(steps) == 16 and steps[0] == 0 and steps[-1] == 63


def test_parse_indices():
    assert viz.parse_indices("0,5,7", 10) == [0, 5, 7]
    assert viz.parse_indices("2-4, 9", 10) == [2, 3, 4, 9]
    with pytest.raises(DrawError, match="out of range"):
        viz.parse_indices("3,10", 10)
    with pytest.raises(DrawError, match="comma-separated"):
        viz.parse_indices("a,b", 10)


def test_progress_bar_makes_every_frame_distinct():
    frames = np.zeros((5, 8, 20), np.uint8)  # five identical frames
    out = framing.add_progress(frames)
    assert out.shape == (5, 8 + framing.PROGRESS_HEIGHT, 20)
    assert all((out[i] != out[i + 1]).any() for i in range(4))
    assert (out[-1, -1] == palette.GREY_INDEX[palette.PROGRESS_VALUE]).all()  # the last frame's bar is full


# ----------------------------------------------------------------------------- draw sample
def test_sample_png_size_values_and_npy(runs, tmp_path):
    out = tmp_path / "s.png"
    written = pictures_cmd.sample_command("att", n=6, nrow=3, scale=2, npy=True, device="cpu", output=out, runs_dir=runs, console=_quiet())
    assert written == [out, tmp_path / "s.npy"]
    img = iio.imread(out)
    assert img.dtype == np.uint8 and img.shape == (grids.PAD + 2 * (56 + grids.PAD), grids.PAD + 3 * (56 + grids.PAD))
    assert len(np.unique(img)) > 10  # a real picture, not one colour
    raw = np.load(tmp_path / "s.npy")
    assert raw.shape == (6, 28, 28) and raw.dtype == np.float32 and 0 <= raw.min() and raw.max() <= 1
    # The PNG shows exactly these pixels, upscaled.
    y, x = grids.grid_for(6, 3, 56, 56).origin(4)
    assert (img[y : y + 56, x : x + 56] == grids.upscale(palette.to_uint8(raw[4]), 2)).all()


def test_sample_default_output_binary_and_seed(runs, tmp_path):
    first = pictures_cmd.sample_command("att", n=4, binary=True, npy=True, device="cpu", runs_dir=runs, console=_quiet())
    assert first[0] == runs / "att" / "samples-best-n4-seed0-binary.png"  # named by what it holds
    raw = np.load(first[1])
    assert set(np.unique(raw).tolist()) <= {0.0, 1.0}
    a = iio.imread(first[0])
    again = pictures_cmd.sample_command("att", n=4, binary=True, device="cpu", runs_dir=runs, output=tmp_path / "b.png", console=_quiet())
    assert (iio.imread(again[0]) == a).all()
    other = pictures_cmd.sample_command("att", n=4, binary=True, seed=1, device="cpu", runs_dir=runs, output=tmp_path / "c.png", console=_quiet())
    assert (iio.imread(other[0]) != a).any()


def test_sample_cli_prints_path_and_works_without_attention(runs, tmp_path):
    out = tmp_path / "plain.png"
    result = cli("sample", runs / "plain", "-n", 2, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and out.is_file()


# ----------------------------------------------------------------------------- draw animate
def test_animate_gif_frames_timing_loop_and_content(runs, tmp_path):
    out = tmp_path / "a.gif"
    pictures_cmd.animate_command("att", output=out, n=4, scale=2, fps=10, hold=1.5, device="cpu", runs_dir=runs, console=_quiet())
    frames, durations, loop = gif_info(out)
    grid = grids.grid_for(4, None, 56, 56)
    assert frames.shape[:3] == (T, grid.shape[0] + framing.PROGRESS_HEIGHT, grid.shape[1])
    assert durations == [100] * (T - 1) + [1500]
    assert loop == 0  # loops forever
    assert all((frames[t] != frames[t + 1]).any() for t in range(T - 1))
    body = frames[:, : grid.shape[0]]
    assert all(len(np.unique(f)) > 3 for f in body)  # not one colour
    # The canvas changes over time, not just the timeline bar.
    assert (body[0] != body[-1]).any()


def test_animate_frames_match_the_model_canvases(runs):
    loaded = load_run("att", None, "cpu", runs)
    probs, _ = viz.sample_prior(loaded, 3, torch.Generator().manual_seed(0))
    frames = framing.animation_frames(probs, 1, progress=False)
    grid = grids.grid_for(3, None, 28, 28)
    y, x = grid.origin(2)
    assert (frames[:, y : y + 28, x : x + 28] == palette.to_indexed(palette.to_uint8(probs[:, 2]))).all()


def test_animate_boxes_are_red_and_reconstruct_adds_green(runs, tmp_path):
    out = tmp_path / "boxes.gif"
    pictures_cmd.animate_command("att", output=out, n=2, boxes=True, device="cpu", runs_dir=runs, console=_quiet())
    frames, _, _ = gif_info(out)
    red = (frames[..., 0] > 200) & (frames[..., 1] < 60) & (frames[..., 2] < 60)
    assert red.any(axis=(1, 2)).all()  # a write window in every frame
    out = tmp_path / "recon.gif"
    pictures_cmd.animate_command("att", output=out, n=3, reconstruct=True, device="cpu", runs_dir=runs, console=_quiet())
    frames, durations, _ = gif_info(out)
    assert len(frames) == len(durations) == T
    green = (frames[..., 1] > 200) & (frames[..., 0] < 60) & (frames[..., 2] < 60)
    assert green.any(axis=(1, 2)).all()


def test_animate_same_seed_same_gif(runs, tmp_path):
    paths = []
    for name, seed in (("x.gif", 5), ("y.gif", 5), ("z.gif", 6)):
        pictures_cmd.animate_command("att", output=tmp_path / name, n=2, seed=seed, device="cpu", runs_dir=runs, console=_quiet())
        paths.append(tmp_path / name)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_animate_without_attention_draws_no_windows(runs, tmp_path):
    out = tmp_path / "plain.gif"
    pictures_cmd.animate_command("plain", output=out, n=2, reconstruct=True, device="cpu", runs_dir=runs, console=_quiet())
    frames, _, _ = gif_info(out)
    assert len(frames) == T
    assert (frames[..., 0] == frames[..., 1]).all()  # grey only


def test_animate_mp4_without_ffmpeg_is_one_clear_line(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "ffmpeg_available", lambda: False)
    result = cli("animate", "att", "-o", tmp_path / "a.mp4", "--runs-dir", runs, "--device", "cpu")
    assert_one_line_error(result, "pip install imageio-ffmpeg")
    assert not (tmp_path / "a.mp4").exists()


def test_animate_mp4_with_ffmpeg(runs, tmp_path):
    if not writers.ffmpeg_available():
        pytest.skip("imageio-ffmpeg is not installed")
    out = tmp_path / "a.mp4"
    pictures_cmd.animate_command("att", output=out, n=3, fps=10, hold=1.0, device="cpu", runs_dir=runs, console=_quiet())
    import imageio.v2 as iio2

    with iio2.get_reader(out, format="FFMPEG") as reader:
        frames = [frame for frame in reader]
    assert len(frames) == T + 9  # the last frame repeated for one second at 10 fps


def test_animate_rejects_other_suffixes(runs, tmp_path):
    result = cli("animate", "att", "-o", tmp_path / "a.avi", "--runs-dir", runs)
    assert_one_line_error(result, ".gif or .mp4")


# ----------------------------------------------------------------------------- draw inspect-attention
def test_inspect_attention_gif_strip_and_json(runs, tmp_path):
    out = tmp_path / "att.gif"
    js = tmp_path / "att.json"
    result = cli("inspect-attention", "att", "--index", "0,5,7", "--json", js, "-o", out, "--runs-dir", runs, "--device", "cpu")
    assert result.exit_code == 0, result.output
    for path in (out, tmp_path / "att.png", js):
        assert str(path) in result.output and path.is_file()

    frames, durations, loop = gif_info(out)
    assert len(frames) == T and loop == 0 and durations[-1] == 2000
    green = (frames[..., 1] > 200) & (frames[..., 0] < 60)
    red = (frames[..., 0] > 200) & (frames[..., 1] < 60)
    assert green.any(axis=(1, 2)).all() and red.any(axis=(1, 2)).all()

    strip = iio.imread(tmp_path / "att.png")
    grid = grids.Grid(3 * 2, T, 112, 112, row_group=2)  # per image: input row over canvas row; T columns
    assert strip.shape == (*grid.shape, 3)

    doc = json.loads(js.read_text())
    assert [im["index"] for im in doc["images"]] == [0, 5, 7]
    assert doc["steps"] == T and doc["read_n"] == 2 and doc["write_n"] == 3
    for im in doc["images"]:
        assert [s["t"] for s in im["steps"]] == list(range(1, T + 1))
        for step in im["steps"]:
            for kind in ("read", "write"):
                p = step[kind]
                assert set(p) == {"g_x", "g_y", "delta", "sigma2", "gamma"}
                assert all(math.isfinite(v) for v in p.values())
                assert p["delta"] > 0 and p["sigma2"] > 0 and p["gamma"] > 0
                # Near the image for this barely-initialised model (1-based: 1..28).
                assert -28 < p["g_x"] < 56 and -28 < p["g_y"] < 56


def test_inspect_attention_table_and_default_outputs(runs):
    result = cli("inspect-attention", "att", "-n", 2, "--runs-dir", runs, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "read window" in result.output and "write window" in result.output and "±" in result.output
    assert (runs / "att" / "attention-best-test-n2-seed0.gif").is_file()
    assert (runs / "att" / "attention-best-test-n2-seed0.png").is_file()


def test_inspect_attention_generate_has_write_windows_only(runs, tmp_path):
    js = tmp_path / "gen.json"
    pictures_cmd.inspect_attention_command(
        "att", n=3, generate=True, json_path=js, output=tmp_path / "gen.gif", device="cpu", runs_dir=runs, console=_quiet()
    )
    doc = json.loads(js.read_text())
    assert len(doc["images"]) == 3 and doc["source"] == "prior samples"
    assert all("read" not in s and "write" in s for im in doc["images"] for s in im["steps"])
    frames, _, _ = gif_info(tmp_path / "gen.gif")
    assert not ((frames[..., 1] > 200) & (frames[..., 0] < 60)).any()  # no green
    strip = iio.imread(tmp_path / "gen.png")
    assert strip.shape == (*grids.Grid(3, T, 112, 112).shape, 3)


def test_inspect_attention_same_seed_same_json(runs, tmp_path):
    texts = []
    for name in ("a", "b"):
        pictures_cmd.inspect_attention_command(
            "att", n=2, json_path=tmp_path / f"{name}.json", output=tmp_path / f"{name}.gif", seed=3, device="cpu", runs_dir=runs, console=_quiet()
        )
        texts.append(json.loads((tmp_path / f"{name}.json").read_text())["images"])
    assert texts[0] == texts[1]


# ----------------------------------------------------------------------------- errors
def test_missing_run_is_one_line_listing_runs(runs):
    result = cli("sample", "nope", "--runs-dir", runs)
    assert_one_line_error(result, "'nope' not found", "att")


def test_missing_checkpoint_is_one_line(runs):
    assert_one_line_error(cli("animate", "empty", "--runs-dir", runs), "no checkpoints")
    assert_one_line_error(cli("sample", "att", "--load", "7", "--runs-dir", runs), "epoch 7", "epochs with checkpoints: 1")


def test_no_attention_run_is_one_line(runs):
    assert_one_line_error(cli("inspect-attention", "plain", "--runs-dir", runs), "without attention")
    assert_one_line_error(cli("animate", "plain", "--boxes", "--runs-dir", runs), "without attention", "--boxes")


def test_missing_data_set_is_one_line(tmp_path):
    make_run(tmp_path, "nodata", data_dir=tmp_path / "no-data-here")
    result = cli("inspect-attention", "nodata", "--runs-dir", tmp_path, "--device", "cpu")
    assert_one_line_error(result, "draw download mnist")


def test_bad_values_are_one_line(runs):
    assert_one_line_error(cli("animate", "att", "--fps", 0, "--runs-dir", runs), "--fps")
    assert_one_line_error(cli("sample", "att", "-n", 0, "--runs-dir", runs), "-n")
    assert_one_line_error(cli("inspect-attention", "att", "--index", "0,999", "--runs-dir", runs), "out of range")
    assert_one_line_error(cli("inspect-attention", "att", "--generate", "--index", "1", "--runs-dir", runs), "--generate")


def test_help_does_not_import_torch():
    code = "import sys; from drawcli.cli import app; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    for command in ("sample", "animate", "inspect-attention"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Examples" in result.output


# ----------------------------------------------------------------------------- real MNIST
@pytest.mark.mnist
def test_inspect_attention_on_real_mnist(mnist_data_dir, tmp_path):
    make_run(tmp_path, "real", data_dir=mnist_data_dir)
    js = tmp_path / "real.json"
    pictures_cmd.inspect_attention_command(
        "real", index="0,9999", json_path=js, output=tmp_path / "real.gif", device="cpu", runs_dir=tmp_path, console=_quiet()
    )
    doc = json.loads(js.read_text())
    assert [im["index"] for im in doc["images"]] == [0, 9999]
    strip = iio.imread(tmp_path / "real.png")
    # Input row of the first image, first column: a real digit (some bright pixels, mostly dark).
    y, x = grids.Grid(4, T, 112, 112, row_group=2).origin(0)
    cell = strip[y + 10 : y + 102, x + 10 : x + 102, 0]
    assert 0.02 < (cell > 128).mean() < 0.5
