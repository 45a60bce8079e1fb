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
from rich.console import Console
from typer.testing import CliRunner

from drawcli.cli import app
from drawcli.commands import pictures as pictures_cmd
from drawcli.commands.options import AnimateOptions, InspectOptions, SampleOptions
from drawcli.core.errors import DrawError
from drawcli.pictures import frames as framing
from drawcli.pictures import grids, palette, viz, writers
from drawcli.runs.checkpoint import atomic_save, build_model, make_checkpoint
from drawcli.runs.store import load_run, write_config
from drawcli.settings import build_settings

from helpers import gif_info, ok, one_error_line, run_cli, unwritable_folder

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


# ----------------------------------------------------------------------------- viz
def test_parse_indices():
    assert viz.parse_indices("0,5,7", 10) == [0, 5, 7]
    assert viz.parse_indices("2-4, 9", 10) == [2, 3, 4, 9]
    with pytest.raises(DrawError, match="out of range"):
        viz.parse_indices("3,10", 10)
    with pytest.raises(DrawError, match="comma-separated"):
        viz.parse_indices("a,b", 10)


# ----------------------------------------------------------------------------- draw sample
def test_sample_png_size_values_and_npy(runs, tmp_path):
    out = tmp_path / "s.png"
    written = pictures_cmd.sample_command(SampleOptions("att", n=6, nrow=3, scale=2, npy=True, device="cpu", output=out, runs_dir=runs), console=_quiet())
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
    first = pictures_cmd.sample_command(SampleOptions("att", n=4, binary=True, npy=True, device="cpu", runs_dir=runs), console=_quiet())
    assert first[0] == runs / "att" / "samples-best-n4-seed0-binary.png"  # named by what it holds
    raw = np.load(first[1])
    assert set(np.unique(raw).tolist()) <= {0.0, 1.0}
    a = iio.imread(first[0])
    again = pictures_cmd.sample_command(SampleOptions("att", n=4, binary=True, device="cpu", runs_dir=runs, output=tmp_path / "b.png"), console=_quiet())
    assert (iio.imread(again[0]) == a).all()
    other = pictures_cmd.sample_command(SampleOptions("att", n=4, binary=True, seed=1, device="cpu", runs_dir=runs, output=tmp_path / "c.png"), console=_quiet())
    assert (iio.imread(other[0]) != a).any()


def test_sample_cli_prints_path_and_works_without_attention(runs, tmp_path):
    out = tmp_path / "plain.png"
    result = cli("sample", runs / "plain", "-n", 2, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and out.is_file()


def test_default_picture_names_say_what_they_hold_so_examples_do_not_overwrite_each_other(tiny_run, env):
    """The default file names carry the options that change the picture, so the documented
    examples, run one after another, each keep their file."""
    ok(run_cli("sample", "tiny"))
    ok(run_cli("sample", "tiny", "-n", "16", "--nrow", "4", "--binary", "--npy"))
    assert sorted(p.name for p in tiny_run.glob("samples*")) == [
        "samples-best-n16-seed0-binary.npy", "samples-best-n16-seed0-binary.png", "samples-best-n64-seed0.png"]
    for args in ((), ("--boxes",), ("--reconstruct",)):
        ok(run_cli("animate", "tiny", "-n", "2", *args, env=env))
    assert len(list(tiny_run.glob("animation-*.gif"))) == 3


# ----------------------------------------------------------------------------- draw animate
def test_animate_gif_frames_timing_loop_and_content(runs, tmp_path):
    out = tmp_path / "a.gif"
    pictures_cmd.animate_command(AnimateOptions("att", output=out, n=4, scale=2, fps=10, hold=1.5, device="cpu", runs_dir=runs), console=_quiet())
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
    pictures_cmd.animate_command(AnimateOptions("att", output=out, n=2, boxes=True, device="cpu", runs_dir=runs), console=_quiet())
    frames, _, _ = gif_info(out)
    red = (frames[..., 0] > 200) & (frames[..., 1] < 60) & (frames[..., 2] < 60)
    assert red.any(axis=(1, 2)).all()  # a write window in every frame
    out = tmp_path / "recon.gif"
    pictures_cmd.animate_command(AnimateOptions("att", output=out, n=3, reconstruct=True, device="cpu", runs_dir=runs), console=_quiet())
    frames, durations, _ = gif_info(out)
    assert len(frames) == len(durations) == T
    green = (frames[..., 1] > 200) & (frames[..., 0] < 60) & (frames[..., 2] < 60)
    assert green.any(axis=(1, 2)).all()


def test_animate_same_seed_same_gif(runs, tmp_path):
    paths = []
    for name, seed in (("x.gif", 5), ("y.gif", 5), ("z.gif", 6)):
        pictures_cmd.animate_command(AnimateOptions("att", output=tmp_path / name, n=2, seed=seed, device="cpu", runs_dir=runs), console=_quiet())
        paths.append(tmp_path / name)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_animate_without_attention_draws_no_windows(runs, tmp_path):
    out = tmp_path / "plain.gif"
    pictures_cmd.animate_command(AnimateOptions("plain", output=out, n=2, reconstruct=True, device="cpu", runs_dir=runs), console=_quiet())
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
    pictures_cmd.animate_command(AnimateOptions("att", output=out, n=3, fps=10, hold=1.0, device="cpu", runs_dir=runs), console=_quiet())
    import imageio.v2 as iio2

    with iio2.get_reader(out, format="FFMPEG") as reader:
        frames = [frame for frame in reader]
    assert len(frames) == T + 9  # the last frame repeated for one second at 10 fps


def test_animate_rejects_other_suffixes(runs, tmp_path):
    result = cli("animate", "att", "-o", tmp_path / "a.avi", "--runs-dir", runs)
    assert_one_line_error(result, ".gif or .mp4")


def test_the_mp4_message_says_what_the_file_holds(tiny_run, monkeypatch, tmp_path):
    import imageio.v2

    appended = []

    class FakeWriter:  # stands in for imageio-ffmpeg, which this machine may not have
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def append_data(self, frame):
            appended.append(frame.shape)

    monkeypatch.setattr(writers, "ffmpeg_available", lambda: True)
    monkeypatch.setattr(imageio.v2, "get_writer", lambda *a, **k: FakeWriter())
    out = tmp_path / "a.mp4"
    r = ok(run_cli("animate", "tiny", "-o", out, "--fps", "10", "--hold", "2"))
    height, width = appended[0][:2]
    assert width % 2 == 0 and height % 2 == 0 and len(appended) == 2 + 19  # T glimpses, then 2 s at 10 fps
    assert f"wrote {out} ({len(appended)} frames: 2 glimpses, then the last held, {width}x{height})" in r.stdout


def test_animate_and_inspect_attention_to_an_unwritable_folder(tiny_run, proc_env):
    where = unwritable_folder()
    for command in ("animate", "inspect-attention"):
        r = subprocess.run([sys.executable, "-m", "drawcli", command, "tiny", "-n", "1", "-o", where / "x.gif"],
                           cwd=tiny_run.parent.parent, env=proc_env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.splitlines() == [
            f"error: cannot write {where / 'x.gif'}: Permission denied (the previous file, if any, is unchanged)"], r.stderr


def test_reconstruct_with_a_data_dir_without_the_data_names_the_download(tiny_run, tmp_path):
    empty = tmp_path / "empty-data"
    one_error_line(run_cli("animate", "tiny", "--reconstruct", "--data-dir", empty, "-n", "1"),
                   f"run `draw download mnist --data-dir {empty}`")


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
        InspectOptions("att", n=3, generate=True, json_path=js, output=tmp_path / "gen.gif", device="cpu", runs_dir=runs), console=_quiet()
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
            InspectOptions("att", n=2, json_path=tmp_path / f"{name}.json", output=tmp_path / f"{name}.gif", seed=3, device="cpu", runs_dir=runs), console=_quiet()
        )
        texts.append(json.loads((tmp_path / f"{name}.json").read_text())["images"])
    assert texts[0] == texts[1]


def test_the_attention_table_reads_cleanly():
    write = np.zeros((2, 3, 5))
    write[:, :, 0] = 14.1  # g_x, the same for every image: a standard deviation of 0
    write[:, :, 3] = [[1.0, 1.0, 1.0 + 2e-6], [2.5, 2.5, 2.5]]  # sigma^2 with a spread of about 1e-6
    console = Console(record=True, width=200)
    for table in viz.attention_tables(None, write, 2, 5):
        console.print(table)
    text = console.export_text()
    assert "14.1 ± 0.0" in text and "1.00 ± 0.00" in text and "e-0" not in text and "±0 " not in text


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
        InspectOptions("real", index="0,9999", json_path=js, output=tmp_path / "real.gif", device="cpu", runs_dir=tmp_path), console=_quiet()
    )
    doc = json.loads(js.read_text())
    assert [im["index"] for im in doc["images"]] == [0, 9999]
    strip = iio.imread(tmp_path / "real.png")
    # Input row of the first image, first column: a real digit (some bright pixels, mostly dark).
    y, x = grids.Grid(4, T, 112, 112, row_group=2).origin(0)
    cell = strip[y + 10 : y + 102, x + 10 : x + 102, 0]
    assert 0.02 < (cell > 128).mean() < 0.5
