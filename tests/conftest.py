"""Shared fixtures. Real MNIST comes from $DRAW_TEST_MNIST (set by .ci/run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import TINY_TRAIN, idx_bytes, ok, run_cli, synthetic_images

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder with the four real MNIST IDX files (gzipped or not).

    Skips when DRAW_TEST_MNIST is unset; fails when it is set but the files are missing.
    """
    value = os.environ.get("DRAW_TEST_MNIST")
    if not value:
        pytest.skip("DRAW_TEST_MNIST is not set: tests on real MNIST skipped (point it at the folder with the IDX files)")
    path = Path(value)
    missing = [f for f in MNIST_FILES if not (path / f).is_file() and not (path / (f + ".gz")).is_file()]
    if missing:
        pytest.fail(f"DRAW_TEST_MNIST={value} is set but lacks {', '.join(missing)}")
    return path


@pytest.fixture(scope="session")
def mnist_data_dir(mnist_dir, tmp_path_factory) -> Path:
    """A data directory (DATA_DIR/mnist/...) whose files link to the real MNIST files."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    for f in mnist_dir.iterdir():
        if f.name.startswith(MNIST_FILES):
            (root / "mnist" / f.name).symlink_to(f.resolve())
    return root


@pytest.fixture(scope="session")
def mnist_splits(mnist_data_dir):
    from drawcli.data.loading import load_splits

    return load_splits("mnist", mnist_data_dir)


@pytest.fixture
def synthetic_data_dir(tmp_path) -> Path:
    """DATA_DIR with a small synthetic 'mnist' (96 train, 40 test images) in IDX format."""
    root = tmp_path / "synthetic-data"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "train-images-idx3-ubyte").write_bytes(idx_bytes(synthetic_images(96, seed=1)))
    (root / "mnist" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(synthetic_images(40, seed=2)))
    return root


@pytest.fixture
def env(synthetic_data_dir) -> dict:
    """CLI environment whose data directory holds the synthetic mnist: nothing ever tries the network."""
    return {"DRAW_DATA_DIR": str(synthetic_data_dir)}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small-tensor tests (request it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): two threads on two cores shared with
    other test processes spin and wait far more than they compute here (8x slower measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """tmp_path as the current folder: runs/ and the pictures of the commands go there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_run(workdir, env) -> Path:
    """runs/tiny in the current folder (workdir): one epoch of 3 steps of helpers.TINY_TRAIN,
    trained through the CLI."""
    ok(run_cli("train", *TINY_TRAIN, "--epochs", "1", "--name", "tiny", env=env))
    return workdir / "runs" / "tiny"


@pytest.fixture
def proc_env(synthetic_data_dir) -> dict:
    """The environment of a `python -m drawcli` subprocess on the synthetic mnist. OMP_NUM_THREADS
    set: torchrun would otherwise print a notice that it sets it."""
    return {**os.environ, "DRAW_DATA_DIR": str(synthetic_data_dir), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
