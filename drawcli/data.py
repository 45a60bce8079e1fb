"""Reading data sets from the data directory and turning pixels into model input.

Layout: ``DATA_DIR/<dataset>/<file>``, each file either as named in the
registry or gzipped (``<file>.gz``). Images are kept as uint8 0..255 arrays
(pre-binarised sets as 0/255), so one binarisation rule serves every set.
"""

from __future__ import annotations

import gzip
import math
import os
import shlex
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drawcli.datasets import DatasetSpec, get_spec
from drawcli.errors import DrawError

VALIDATION_SIZE = 10_000  # held out from the end of a 60k training set when asked


class MissingDataset(DrawError):
    """The data set's files are not in the data directory."""


def default_data_dir() -> Path:
    """The per-user cache directory for data sets."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "drawcli"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "drawcli" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "drawcli"


def resolve_data_dir(setting: str | None) -> Path:
    """--data-dir / settings file, else $DRAW_DATA_DIR, else the per-user cache."""
    if setting:
        return Path(setting).expanduser()
    env = os.environ.get("DRAW_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return default_data_dir()


def download_hint(name: str, root: Path) -> str:
    """`draw download NAME`, with --data-dir when ROOT is not where that command would put it."""
    command = f"draw download {name}"
    if Path(root).expanduser().absolute() != resolve_data_dir(None).absolute():
        command += f" --data-dir {shlex.quote(str(root))}"
    return command


def find_file(directory: Path, name: str) -> Path | None:
    """The file as named, or gzipped beside it; None when neither exists."""
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path: Path) -> bytes:
    """File contents, transparently gunzipped (by magic bytes, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DrawError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DrawError(f"{path}: corrupt gzip data ({e})") from None
    return raw


def parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX ubyte file (LeCun's format): magic 0x0000 08 <ndim>, big-endian sizes."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        raise DrawError(
            f"{path}: not an IDX ubyte file with {ndim} dimension(s) (magic {data[:4].hex() or 'missing'}, "
            f"expected 000008{ndim:02x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DrawError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python ints: a hostile header cannot overflow it
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise DrawError(f"{path}: {what} IDX data: {len(data)} bytes, header {dims} needs {expected}")
    # A writable copy: torch refuses to wrap read-only buffers without a warning.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def parse_amat(data: bytes, path: Path, side: int = 28) -> np.ndarray:
    """Parse a binarized-MNIST .amat file: one image a line, 784 space-separated 0/1 digits.

    Reads the bytes directly (np.loadtxt is slow and yields float64): every digit is
    one byte followed by a space or newline, so a line of P pixels is 2P bytes.
    """
    pixels = side * side
    digits = np.frombuffer(data, dtype=np.uint8)
    if digits.size == 0:
        raise DrawError(f"{path}: empty .amat file")
    # Tolerate \r\n line ends and trailing spaces: keep only the 0/1 characters per line.
    lines = data.split(b"\n")
    if lines and lines[-1].strip() == b"":
        lines = lines[:-1]
    rows = np.frombuffer(b"".join(line.replace(b" ", b"").replace(b"\r", b"") for line in lines), dtype=np.uint8)
    if rows.size != len(lines) * pixels:
        raise DrawError(f"{path}: expected {pixels} pixels on each of {len(lines)} lines, got {rows.size} in all")
    values = rows - ord("0")
    if values.max(initial=0) > 1:
        raise DrawError(f"{path}: .amat pixels must be 0 or 1")
    return (values * 255).astype(np.uint8).reshape(len(lines), side, side)


def load_images(spec: DatasetSpec, directory: Path, role: str) -> np.ndarray:
    """uint8 images (N, H, W) with values 0..255 for one registry role (e.g. test_images)."""
    entry = spec.file(role)
    path = find_file(directory, entry.name)
    if path is None:
        raise MissingDataset(
            f"data set {spec.name!r} is missing {entry.name}[.gz] in {directory}; "
            f"run `{download_hint(spec.name, directory.parent)}` (or add `--from PATH`: a folder with the files)"
        )
    if spec.kind == "amat":
        cache = directory / (entry.name + ".npy")
        if cache.is_file() and cache.stat().st_mtime >= path.stat().st_mtime:
            try:
                images = np.load(cache, allow_pickle=False)
                if images.dtype == np.uint8 and images.shape[1:] == (spec.height, spec.width):
                    return images
            except (OSError, ValueError):
                pass  # unreadable cache: rebuild it below
        images = parse_amat(read_bytes(path), path, spec.height)
        try:
            tmp = cache.with_suffix(".npy.tmp")
            with open(tmp, "wb") as f:
                np.save(f, images, allow_pickle=False)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only data directory still works, only slower
        return images
    images = parse_idx(read_bytes(path), path, 3)
    if images.shape[1:] != (spec.height, spec.width):
        raise DrawError(f"{path}: images are {images.shape[1:]}, expected {(spec.height, spec.width)}")
    return images


@dataclass
class Splits:
    train: np.ndarray  # uint8 (N, H, W), 0..255
    eval: np.ndarray
    eval_name: str  # "test" or "valid"
    spec: DatasetSpec


def load_splits(dataset: str, data_dir: Path, validation: bool = False) -> Splits:
    """Training images and the images to evaluate on each epoch.

    With ``validation`` the evaluation set is the validation split (binarized-mnist's
    own, or the last 10k of a 60k training set), so model selection never sees test.
    """
    spec = get_spec(dataset)
    directory = data_dir / spec.name
    train = load_images(spec, directory, "train_images")
    if not validation:
        return Splits(train, load_images(spec, directory, "test_images"), "test", spec)
    if "valid" in spec.splits:
        return Splits(train, load_images(spec, directory, "valid_images"), "valid", spec)
    if len(train) <= VALIDATION_SIZE:
        raise DrawError(f"data set {spec.name!r} has too few training images to hold out {VALIDATION_SIZE}")
    return Splits(train[:-VALIDATION_SIZE], train[-VALIDATION_SIZE:], "valid", spec)


def to_input(images, mode: str, generator=None):
    """uint8 0..255 tensor -> float model input in [0, 1].

    dynamic: a fresh Bernoulli sample of the intensities every call;
    threshold: pixel >= 0.5; none: grey levels (valid Bernoulli-loss targets).
    """
    import torch

    x = images.float().div_(255.0)
    if mode == "dynamic":
        return torch.bernoulli(x, generator=generator)
    if mode == "threshold":
        return (x >= 0.5).float()
    if mode == "none":
        return x
    raise DrawError(f"unknown binarisation {mode!r}; expected dynamic, threshold or none")
