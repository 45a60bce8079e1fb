"""Two-digit MNIST, the paper's section 4.2 (Figure 8): two MNIST digits on a 60x60 canvas.

Built locally by `draw download two-digit-mnist` from the installed, verified MNIST,
so nothing is downloaded and the result is the same on every machine:

- train: 60,000 images from MNIST train; test: 10,000 images from MNIST test. Image i
  holds source digit i (every MNIST digit is a first digit exactly once) and a second
  digit drawn uniformly from the other images of the same split.
- Each digit's 28x28 box goes at a uniform integer offset (row, column) in 0..32, so it
  lies wholly inside the canvas; where the two boxes overlap, the pixel-wise maximum wins.
- The random numbers are the raw 64-bit outputs of numpy's PCG64 seeded through
  ``SeedSequence([SEED, split])``. Both are specified bit for bit and kept stable by
  numpy (unlike ``Generator`` methods, whose algorithms may change), so the built files'
  sha256 can be recorded in the registry and checked like a download.

Files, in IDX format as MNIST's own (loading.py reads them like MNIST):
``{train,t10k}-images-idx3-ubyte`` uint8 (N, 60, 60), and ``{train,t10k}-layout-idx2-int``,
int32 (N, 8): for each image ``index_a, row_a, col_a, label_a, index_b, row_b, col_b,
label_b`` (source indices into the MNIST split, the top-left corner of each digit's box,
and the two labels), so every image can be traced back to its digits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drawcli.core.errors import DrawError

SEED = 0
SIDE = 60  # canvas side, the paper's 60x60
DIGIT = 28  # MNIST's side
SPLITS = {"train": 0, "test": 1}  # the second SeedSequence word: independent streams per split
LAYOUT_COLUMNS = ("index_a", "row_a", "col_a", "label_a", "index_b", "row_b", "col_b", "label_b")
FILES = {  # role -> file name, as in the registry
    "train_images": "train-images-idx3-ubyte",
    "train_layout": "train-layout-idx2-int",
    "test_images": "t10k-images-idx3-ubyte",
    "test_layout": "t10k-layout-idx2-int",
}

_IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}  # LeCun's type codes


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: uint8 (type 0x08) or int32 stored big-endian (type 0x0C), as the format says."""
    if array.dtype == np.uint8:
        data = np.ascontiguousarray(array)
    else:
        data = np.ascontiguousarray(array, dtype=">i4")
    header = bytes([0, 0, _IDX_TYPES[data.dtype], data.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    return header + data.tobytes()


def parse_layout(data: bytes, path: Path) -> np.ndarray:
    """A layout file (IDX int32, 2-D, 8 columns) as int32 (N, 8)."""
    if len(data) < 12 or data[:4] != b"\x00\x00\x0c\x02":
        raise DrawError(f"{path}: not an IDX int32 file with 2 dimensions "
                        f"(magic {data[:4].hex() or 'missing'}, expected 00000c02)")
    rows, cols = int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big")
    if cols != len(LAYOUT_COLUMNS) or len(data) != 12 + 4 * rows * cols:
        raise DrawError(f"{path}: expected {len(LAYOUT_COLUMNS)} int32 columns and {12 + 4 * rows * cols} bytes, "
                        f"got {cols} columns and {len(data)} bytes")
    return np.frombuffer(data, dtype=">i4", offset=12).reshape(rows, cols).astype(np.int32)


def make_layout(labels: np.ndarray, split: str, seed: int = SEED) -> np.ndarray:
    """int32 (N, 8) placement of two digits per image; N = len(labels), see the module docstring."""
    n = len(labels)
    if n < 2:
        raise DrawError(f"two-digit MNIST needs at least 2 source digits per split, got {n}")
    bits = np.random.PCG64(np.random.SeedSequence([seed, SPLITS[split]]))
    raw = bits.random_raw(5 * n).reshape(n, 5)
    # The modulo's bias is below 2**-58 for these small ranges: irrelevant, and exactly reproducible.
    positions = SIDE - DIGIT + 1
    index_a = np.arange(n, dtype=np.int64)
    index_b = (index_a + 1 + (raw[:, 0] % np.uint64(n - 1)).astype(np.int64)) % n  # never the same digit
    offsets = (raw[:, 1:] % np.uint64(positions)).astype(np.int64)
    out = np.empty((n, len(LAYOUT_COLUMNS)), dtype=np.int32)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = index_a, offsets[:, 0], offsets[:, 1], labels[index_a]
    out[:, 4], out[:, 5], out[:, 6], out[:, 7] = index_b, offsets[:, 2], offsets[:, 3], labels[index_b]
    return out


def compose(digits: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """uint8 (N, 60, 60) canvases: digit a pasted, digit b merged in by pixel-wise maximum."""
    images = np.zeros((len(layout), SIDE, SIDE), dtype=np.uint8)
    for i, (a, ra, ca, _, b, rb, cb, _) in enumerate(layout.tolist()):
        images[i, ra : ra + DIGIT, ca : ca + DIGIT] = digits[a]
        box = images[i, rb : rb + DIGIT, cb : cb + DIGIT]
        np.maximum(box, digits[b], out=box)
    return images


def build_files(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                seed: int = SEED) -> dict[str, bytes]:
    """File name -> contents, from (digits uint8 (N, 28, 28), labels) of MNIST train and test."""
    out = {}
    for split, (digits, labels) in (("train", train), ("test", test)):
        if digits.shape[1:] != (DIGIT, DIGIT) or len(labels) != len(digits):
            raise DrawError(f"two-digit MNIST needs {DIGIT}x{DIGIT} digits with one label each, "
                            f"got {digits.shape[1:]} and {len(labels)} labels for {len(digits)} digits")
        layout = make_layout(np.asarray(labels), split, seed)
        out[FILES[f"{split}_images"]] = idx_bytes(compose(digits, layout))
        out[FILES[f"{split}_layout"]] = idx_bytes(layout)
    return out


def build_from_mnist(mnist_directory: Path, seed: int = SEED, spec=None) -> dict[str, bytes]:
    """The four files, from the MNIST files in ``mnist_directory`` (verified by the caller).

    ``spec``: the registry entry those files are described by (default: mnist's).
    """
    from drawcli.data.catalogue import MNIST
    from drawcli.data.loading import find_file, load_images, parse_idx, read_bytes

    spec = MNIST if spec is None else spec

    def labels(role: str) -> np.ndarray:
        path = find_file(mnist_directory, spec.file(role).name)
        if path is None:
            raise DrawError(f"{mnist_directory}: missing {spec.file(role).name}[.gz]")
        return parse_idx(read_bytes(path), path, 1)

    train = (load_images(spec, mnist_directory, "train_images"), labels("train_labels"))
    test = (load_images(spec, mnist_directory, "test_images"), labels("test_labels"))
    return build_files(train, test, seed)


def load_layout(directory: Path, split: str) -> np.ndarray:
    """int32 (N, 8) layout of an installed split ("train" or "test"); columns: LAYOUT_COLUMNS."""
    from drawcli.data.loading import find_file, read_bytes

    name = FILES[f"{split}_layout"]
    path = find_file(Path(directory), name)
    if path is None:
        raise DrawError(f"{directory}: missing {name}[.gz]; run `draw download two-digit-mnist`")
    return parse_layout(read_bytes(path), path)
