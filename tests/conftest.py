"""Shared fixtures. Real MNIST comes from $DRAW_TEST_MNIST (set by .ci/run)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
    from drawcli.data import load_splits

    return load_splits("mnist", mnist_data_dir)


def synthetic_images(n: int = 96, seed: int = 0) -> np.ndarray:
    """Soft blobs on a 28x28 canvas, uint8: structure to learn from, instant to make."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    cy, cx = g.uniform(8, 20, (2, n, 1, 1))
    return (np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0) * 255).astype(np.uint8)


def idx_bytes(images: np.ndarray) -> bytes:
    """An IDX ubyte file (magic 0x00000803 for 3-D images)."""
    return b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in images.shape) + images.tobytes()


@pytest.fixture
def synthetic_data_dir(tmp_path) -> Path:
    """DATA_DIR with a small synthetic 'mnist' (96 train, 40 test images) in IDX format."""
    root = tmp_path / "synthetic-data"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "train-images-idx3-ubyte").write_bytes(idx_bytes(synthetic_images(96, seed=1)))
    (root / "mnist" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(synthetic_images(40, seed=2)))
    return root
