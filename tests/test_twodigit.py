"""Two-digit MNIST: deterministic, and both digits really are in every image.

A fast synthetic variant always runs; the real-MNIST one (DRAW_TEST_MNIST) also checks
the registry's sha256. The download side (build, verify, install) is in test_download.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from drawcli.core.errors import DrawError
from drawcli.data import catalogue as datasets
from drawcli.data import loading as data
from drawcli.data import twodigit

from helpers import synthetic_images


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return synthetic_images(n, seed), np.random.default_rng(seed).integers(0, 10, n).astype(np.uint8)


def _parse(files: dict[str, bytes], split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = data.parse_idx(files[f"{prefix}-images-idx3-ubyte"], Path("images"), 3)
    layout = twodigit.parse_layout(files[f"{prefix}-layout-idx2-int"], Path("layout"))
    return images, layout


def check_both_digits(images: np.ndarray, layout: np.ndarray, digits: np.ndarray, labels: np.ndarray,
                      rows=None) -> None:
    """Layout sane for every image; ``rows`` (default all) recomposed and compared pixel for pixel."""
    n = len(images)
    assert images.shape == (n, 60, 60) and images.dtype == np.uint8 and layout.shape == (n, 8)
    a, ra, ca, la, b, rb, cb, lb = layout.T
    assert (a == np.arange(n)).all() and (b != a).all() and ((b >= 0) & (b < n)).all()
    for offsets in (ra, ca, rb, cb):
        assert offsets.min() >= 0 and offsets.max() <= 32  # the 28x28 box lies inside the canvas
    assert (la == labels[a]).all() and (lb == labels[b]).all()
    for i in range(n) if rows is None else rows:
        # Recomposed independently: the canvas is exactly the pixel-wise max of the two placed digits.
        expected = np.zeros((60, 60), np.uint8)
        for idx, r, c in ((a[i], ra[i], ca[i]), (b[i], rb[i], cb[i])):
            box = expected[r : r + 28, c : c + 28]
            np.maximum(box, digits[idx], out=box)
        np.testing.assert_array_equal(images[i], expected)
        assert (images[i, ra[i] : ra[i] + 28, ca[i] : ca[i] + 28] >= digits[a[i]]).all()
        assert (images[i, rb[i] : rb[i] + 28, cb[i] : cb[i] + 28] >= digits[b[i]]).all()


def test_synthetic_build_is_byte_identical_and_holds_both_digits():
    train, test = _digits(50, 1), _digits(20, 2)
    first = twodigit.build_files(train, test, seed=0)
    again = twodigit.build_files(train, test, seed=0)
    assert first == again  # byte for byte, every file
    assert sorted(first) == sorted(twodigit.FILES.values())
    for split, (digits, labels) in (("train", train), ("test", test)):
        images, layout = _parse(first, split)
        check_both_digits(images, layout, digits, labels)
    other = twodigit.build_files(train, test, seed=1)
    assert other["train-images-idx3-ubyte"] != first["train-images-idx3-ubyte"]
    # Train and test draw from independent streams: the same digits get other placements.
    same = twodigit.build_files(test, test)
    assert not np.array_equal(_parse(same, "train")[1], _parse(same, "test")[1])


def test_layout_file_round_trip_and_errors():
    layout = twodigit.make_layout(np.arange(5) % 10, "train")
    raw = twodigit.idx_bytes(layout)
    assert raw[:4] == b"\x00\x00\x0c\x02" and len(raw) == 12 + 5 * 8 * 4
    np.testing.assert_array_equal(twodigit.parse_layout(raw, Path("l")), layout)
    with pytest.raises(DrawError, match="l: not an IDX int32 file with 2 dimensions"):
        twodigit.parse_layout(raw[:4].replace(b"\x0c", b"\x08") + raw[4:], Path("l"))
    with pytest.raises(DrawError, match="l: expected 8 int32 columns"):
        twodigit.parse_layout(raw[:-4], Path("l"))
    with pytest.raises(DrawError, match="at least 2 source digits"):
        twodigit.make_layout(np.zeros(1), "test")


def test_real_mnist_build_is_byte_identical_and_matches_the_registry(mnist_dir):
    first = twodigit.build_from_mnist(mnist_dir)
    again = twodigit.build_from_mnist(mnist_dir)
    assert first == again
    for entry in datasets.TWO_DIGIT_MNIST.files:
        assert len(first[entry.name]) == entry.size
        assert hashlib.sha256(first[entry.name]).hexdigest() == entry.sha256, entry.name
    for split, prefix in (("train", "train"), ("test", "t10k")):
        digits = data.load_images(datasets.MNIST, mnist_dir, f"{split}_images")
        labels = data.parse_idx(data.read_bytes(data.find_file(mnist_dir, f"{prefix}-labels-idx1-ubyte")), mnist_dir, 1)
        images, layout = _parse(first, split)
        # Every image's layout is checked; a sample is recomposed (all 70k would take a while in Python).
        check_both_digits(images, layout, digits, labels, rows=range(0, len(images), 37))
