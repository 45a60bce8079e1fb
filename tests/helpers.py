"""Helpers shared by the tests (fixtures live in conftest.py): synthetic images, tiny settings, a tiny colour run, a callback that collects, a `draw serve` process, and the flags and checks of tiny runs through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from drawcli.settings import build_settings


def synthetic_images(n: int = 96, seed: int = 0) -> np.ndarray:
    """Soft blobs on a 28x28 canvas, uint8: structure to learn from, instant to make."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    cy, cx = g.uniform(8, 20, (2, n, 1, 1))
    return (np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0) * 255).astype(np.uint8)


def idx_bytes(images: np.ndarray) -> bytes:
    """An IDX ubyte file (magic 0x00000803 for 3-D images)."""
    return b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in images.shape) + images.tobytes()


class Collect:
    def __init__(self):
        self.logs, self.epochs, self.ckpts = [], [], []

    def on_log(self, row):
        self.logs.append(row)

    def on_epoch(self, row):
        self.epochs.append(row)

    def on_checkpoint(self, ckpt, is_best):
        self.ckpts.append((ckpt, is_best))


def make_colour_run(runs_dir, name: str, folder, data_dir, steps: int = 3, height: int = 12, width: int = 10):
    """A run of an untrained 3-channel model (16 hidden units, read 2x2, write 3x3) on the
    pictures in ``folder`` (data.binarize none: the model reads the pictures themselves),
    written as a real run directory with one checkpoint, last.pt."""
    import torch

    from drawcli.runs.checkpoint import atomic_save, build_model, make_checkpoint
    from drawcli.runs.store import write_config

    settings = build_settings(
        flags={
            "model": {"steps": steps, "hidden": 16, "embed": 4, "read_n": 2, "write_n": 3},
            "data": {"dataset": f"folder:{folder}", "data_dir": str(data_dir), "binarize": "none"},
            "run": {"name": name, "runs_dir": str(runs_dir), "device": "cpu"},
        }
    )
    torch.manual_seed(0)
    model = build_model(settings, height, width, 3)
    run_dir = runs_dir / name
    (run_dir / "checkpoints").mkdir(parents=True)
    write_config(run_dir, settings)
    ckpt = make_checkpoint(model, torch.optim.Adam(model.parameters()), settings, 1, 10, {}, {"loss": 500.0}, 500.0)
    atomic_save(ckpt, run_dir / "checkpoints" / "last.pt")
    return run_dir


def tiny_settings(*sets):
    return build_settings(
        None,
        None,
        ["model.steps=3", "model.hidden=16", "model.embed=4", "train.batch_size=32", "train.log_every=2",
         "train.eval_batch_size=50", *sets],
    )


def cli_in_fresh_interpreter(argv: list[str], cwd=None) -> tuple[str, bool]:
    """Run the CLI in a new Python process: (stdout, whether torch got imported). Exit code 0 expected."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "from drawcli.cli import app\n"
        f"try:\n    app({argv!r}, prog_name='draw')\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_NOT_LOADED')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout, "TORCH_LOADED" in out.stdout


def run_cli(*args, env=None):
    """``draw ARGS`` in this process (typer's CliRunner); never a traceback."""
    from typer.testing import CliRunner

    from drawcli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert "Traceback" not in result.output and "Traceback" not in (result.stderr or "")
    return result


def start_server(args: list[str], cwd: Path, env_extra: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """`python -m drawcli serve ARGS --port 0`; returns the process and the lines it printed up to the URL."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", "drawcli", "serve", *args, "--port", "0"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "serving" in line:
            return proc, lines
    proc.kill()
    raise AssertionError(f"draw serve did not start: {lines}")


def url_in(lines: list[str]) -> str:
    return next(w for line in lines for w in line.split() if w.startswith("http://"))


# ----------------------------------------------------------------------------- tiny runs through the CLI
ROOT = Path(__file__).resolve().parent.parent
# A tiny model (T=2, 16 LSTM units, z of 4) for `draw train` on conftest's synthetic mnist (96 training,
# 40 test images): one epoch is 3 optimizer steps of batch 32.
TINY_TRAIN = ["--glimpses", "2", "--hidden", "16", "--latent", "4", "-b", "32", "--device", "cpu",
              "--set", "train.eval_batch_size=50"]


def ok(result):
    """A CliRunner result that succeeded."""
    assert result.exit_code == 0, result.output
    return result


def one_error_line(result, fragment: str, code: int = 1) -> str:
    """A CliRunner result that failed with ``code`` and one line on stderr, 'error: ...', holding
    ``fragment``, and no traceback anywhere."""
    for text in (result.stdout, result.stderr):
        assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], f"\nexpected: {fragment}\n     got: {lines[0]}"
    return lines[0]


def metrics_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def unwritable_folder() -> Path:
    """A folder nobody can create files in, root included (sysfs); skips the test where there is none."""
    import pytest

    where = Path("/sys")
    probe = where / f"drawcli-probe-{os.getpid()}"
    try:
        probe.open("wb").close()
    except OSError:
        return where
    probe.unlink()
    pytest.skip("no folder here refuses a new file to this user")


def picture_folder(folder: Path, n: int = 30, sizes=((20, 16), (24, 24))) -> Path:
    """n small RGB PNGs of two sizes (so data.image_size is needed), in two class subfolders a/ and b/."""
    from PIL import Image

    g = np.random.default_rng(0)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = np.full((h, w, 3), 30, np.uint8)
        img[g.integers(0, h - 6) :, g.integers(0, w - 6) :][:6, :6] = g.integers(80, 256, 3)
        (folder / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / "ab"[i % 2] / f"{i}.png")
    return folder


def draw_process(*args, cwd, env, **kw) -> subprocess.Popen:
    """`python -m drawcli ARGS` started in the background, its output in pipes."""
    return subprocess.Popen([sys.executable, "-m", "drawcli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def gif_info(path: Path):
    """A GIF's frames as arrays, plus the per-frame delays and the loop count pillow reads back."""
    import imageio.v3 as iio
    from PIL import Image

    with Image.open(path) as im:
        loop = im.info.get("loop")
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    frames = iio.imread(path, index=None)
    return frames, durations, loop
