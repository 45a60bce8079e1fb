"""The trained model shipped in the package (@mnist): verified, deterministic, still as good as the README says."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from drawcli.runs import builtin

ROOT = Path(__file__).resolve().parents[1]


def test_the_bundled_file_is_small_weights_only_and_matches_its_sha256():
    entry = builtin.get_builtin("@mnist")
    path = builtin.weights_path(entry)
    assert path.stat().st_size <= 5 * 2**20
    assert builtin.sha256_of(path) == entry.sha256
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert data["format"] == builtin.WEIGHTS_FORMAT and "optimizer" not in data
    assert {"channels": 1, **data["model_config"]} == entry.model  # files from before colour support omit channels


def test_the_bundled_model_samples_deterministically_for_a_seed():
    model, settings, _ = builtin.build(builtin.get_builtin("mnist"), torch.device("cpu"))
    a, _ = model.generate(3, generator=torch.Generator().manual_seed(5), every_step=False)
    b, _ = model.generate(3, generator=torch.Generator().manual_seed(5), every_step=False)
    c, _ = model.generate(3, generator=torch.Generator().manual_seed(6), every_step=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert settings.model.glimpses == 64 and settings.data.dataset == "mnist"


def test_draw_models_lists_it_without_torch():
    code = "import sys\nfrom drawcli.cli import app\ntry:\n    app(['models', '--json'], prog_name='draw')\nexcept SystemExit as e:\n    assert e.code in (0, None)\nprint('TORCH' if 'torch' in sys.modules else 'NO_TORCH')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"ref": "@mnist"' in out.stdout and "NO_TORCH" in out.stdout


def test_animate_at_mnist_draws_with_no_data_and_no_runs(tmp_path, monkeypatch):
    """On a fresh install: no data set, no runs folder; the GIF is written to the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRAW_DATA_DIR", str(tmp_path / "no-data"))
    out = subprocess.run([sys.executable, "-m", "drawcli", "animate", "@mnist", "-o", "out.gif", "-n", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.gif").stat().st_size > 1000 and not (tmp_path / "no-data").exists()


@pytest.mark.mnist
def test_the_bundled_model_still_reaches_its_recorded_elbo(mnist_data_dir):
    """A regression check that can fail: the ELBO on the first 500 test images (fixed binarisation,
    K = 1) stays within 2 nats of the figure measured when the file was made."""
    from drawcli.data.loading import load_splits
    from drawcli.evaluation.bounds import likelihood_bounds

    want = builtin.REGRESSION["mnist"]
    model, settings, _ = builtin.build(builtin.get_builtin("mnist"), torch.device("cpu"))
    images = load_splits("mnist", mnist_data_dir).eval[: want["limit"]]
    bounds = likelihood_bounds(model, images, settings.data.binarize, want["samples"], seed=0)
    got = float(bounds.elbo.mean())
    assert abs(got - want["elbo"]) < 2.0, (got, want["elbo"])


def test_the_wheel_carries_the_weights(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("drawcli-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "drawcli/runs/weights/mnist.pt" in names
