"""Reading data sets from the data directory and turning pixels into model input.

Layout: ``DATA_DIR/<dataset>/<file>``, each file either as named in the
registry or gzipped (``<file>.gz``). Images are kept as uint8 0..255 arrays
(pre-binarised sets as 0/255), so one binarisation rule serves every set:
(N, H, W) for grey sets, (N, C, H, W) channel first for colour ones.

Formats that are slow to parse (binarized-mnist's text, SVHN's .mat, CIFAR-10's
archive of pickles) are cached as ``.npy`` beside their files after the first load.
``folder:PATH`` sets are read by drawcli/data/folders.py and cached under DATA_DIR/folders/.
"""

from __future__ import annotations

import gzip
import math
import os
import shlex
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.data.arrays import Splits, eval_split_name, save_cache
from drawcli.data.catalogue import DatasetSpec, get_spec, is_folder

if TYPE_CHECKING:
    import torch

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


def image_shape(spec: DatasetSpec) -> tuple[int, ...]:
    """The shape of one image as the arrays hold it: (H, W) for grey sets, (C, H, W) for colour."""
    if spec.channels == 1:
        return (spec.height, spec.width)
    return (spec.channels, spec.height, spec.width)


def _cached(cache: Path, source: Path, shape: tuple[int, ...], build: Callable[[], np.ndarray]) -> np.ndarray:
    """``build()``'s uint8 array, kept in ``cache`` (.npy) for the next load.

    The cache is used only when it is newer than ``source`` (a re-download replaces the
    source, so its mtime moves on) and holds uint8 images of ``shape``; anything else is
    rebuilt. Written atomically; a data directory that cannot be written still works,
    only slower.
    """
    try:
        fresh = cache.is_file() and cache.stat().st_mtime >= source.stat().st_mtime
    except OSError:
        fresh = False
    if fresh:
        try:
            images = np.load(cache, allow_pickle=False)
            if images.dtype == np.uint8 and images.shape[1:] == shape:
                return images
        except (OSError, ValueError, EOFError):
            pass  # unreadable cache: rebuild it below
    images = build()
    save_cache(cache, images)
    return images


def _source(spec: DatasetSpec, directory: Path, role: str) -> Path:
    """The file that holds ``role``'s images: its own file, or cifar10's single archive."""
    entry = spec.file("archive" if spec.kind == "cifar" else role)
    path = find_file(directory, entry.name)
    if path is None:
        how = (f"it is built from {spec.built_from}" if spec.built_from
               else "or add `--from PATH`: a folder with the files")
        raise MissingDataset(
            f"data set {spec.name!r} is missing {entry.name}[.gz] in {directory}; "
            f"run `{download_hint(spec.name, directory.parent)}` ({how})"
        )
    return path


def load_images(spec: DatasetSpec, directory: Path, role: str) -> np.ndarray:
    """uint8 images for one registry role (e.g. test_images), values 0..255.

    Grey sets give (N, H, W), colour sets (N, C, H, W) (see ``image_shape``).
    """
    path = _source(spec, directory, role)
    shape = image_shape(spec)
    if spec.kind == "amat":
        return _cached(directory / (spec.file(role).name + ".npy"), path, shape,
                       lambda: parse_amat(read_bytes(path), path, spec.height))
    if spec.kind == "mat":
        from drawcli.data.formats import load_svhn_mat

        return _cached(directory / (spec.file(role).name + ".npy"), path, shape, lambda: load_svhn_mat(path))
    if spec.kind == "cifar":
        return _load_cifar(spec, directory, path, role)
    images = parse_idx(read_bytes(path), path, 3)
    if images.shape[1:] != shape:
        raise DrawError(f"{path}: images are {images.shape[1:]}, expected {shape}")
    return images


def _load_cifar(spec: DatasetSpec, directory: Path, archive: Path, role: str) -> np.ndarray:
    """One split of cifar10: from its .npy cache, else from the archive (caching both splits)."""
    from drawcli.data.formats import load_cifar

    shape = image_shape(spec)
    built: dict[str, np.ndarray] = {}

    def build() -> np.ndarray:
        built.update(load_cifar(archive))
        for other, images in built.items():  # one extraction serves both splits
            if other != role:
                save_cache(directory / f"{other}.npy", images)
        return built[role]

    images = _cached(directory / f"{role}.npy", archive, shape, build)
    if images.shape[1:] != shape:
        raise DrawError(f"{archive}: images are {images.shape[1:]}, expected {shape}")
    return images


def load_splits(
    dataset: str,
    data_dir: Path,
    validation: bool = False,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    test_fraction: float | None = None,
    skip_unreadable: bool = False,
) -> Splits:
    """Training images and the images to evaluate on each epoch.

    With ``validation`` the evaluation set is the validation split (binarized-mnist's
    own, or the last 10k of a 60k training set), so model selection never sees test.

    ``folder:PATH`` data sets (drawcli/data/folders.py) take ``image_size``, ``channels``,
    ``test_fraction`` and ``skip_unreadable`` (the data.* settings of the same names); a registry
    set has its own size and channels, and ``channels`` may only repeat them.
    """
    if is_folder(dataset):
        from drawcli.data.folders import load_folder_splits

        return load_folder_splits(dataset, data_dir, validation, image_size=image_size, channels=channels,
                                  test_fraction=test_fraction, skip_unreadable=skip_unreadable)
    spec = get_spec(dataset)
    if image_size is not None or test_fraction is not None:
        key = "image_size" if image_size is not None else "test_fraction"
        raise DrawError(f"data.{key}: only for folder:PATH data sets; {spec.name} has fixed images and splits")
    if channels is not None and channels != spec.channels:
        raise DrawError(f"data.channels: {spec.name} has {spec.channels} channel(s), got {channels}; "
                        f"leave it unset for a registry data set")
    directory = data_dir / spec.name
    train = load_images(spec, directory, "train_images")
    if not validation:
        return Splits(train, load_images(spec, directory, "test_images"), eval_split_name(False), spec)
    if "valid" in spec.splits:
        return Splits(train, load_images(spec, directory, "valid_images"), eval_split_name(True), spec)
    if len(train) <= VALIDATION_SIZE:
        raise DrawError(f"data set {spec.name!r} has too few training images to hold out {VALIDATION_SIZE}")
    return Splits(train[:-VALIDATION_SIZE], train[-VALIDATION_SIZE:], eval_split_name(True), spec)


def to_input(images: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
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
