"""``folder:PATH`` data sets: train on your own pictures.

What is read: PNG, JPEG, BMP and GIF files (by suffix, any case) in PATH and all its
subfolders, so torchvision's ImageFolder layout (one subfolder per class) works as it
is; class folders carry no meaning here. Hidden files and folders (a name starting with
".") and files with other suffixes are skipped, and the load says how many and which.
Symlinked files are read; symlinked folders are not entered (no loops). A GIF gives its
first frame.

How pixels are made, in this order:

1. Colour mode. Palette, greyscale (8 and 16 bit), bilevel, CMYK and RGB images are
   converted with Pillow. Anything transparent (RGBA, LA, a palette or colour key with
   transparency) is first composited on a white background (BACKGROUND).
2. Channels: ``data.channels`` 3 (the default) gives RGB; 1 gives Pillow's "L",
   luma = 0.299 R + 0.587 G + 0.114 B.
3. Size: with ``data.image_size: S`` every image is resized to S x S, the aspect ratio
   not kept (crop your pictures first if it matters), with Pillow's LANCZOS filter and
   ``reducing_gap=3.0`` (a box-filter reduction to within 3x of the target, then Lanczos:
   as good as plain Lanczos to the eye and much faster on large photos). Images already
   S x S are left untouched. Without ``data.image_size`` every image must have the size
   of the first one (in sorted path order), non-square allowed; a different one is an
   error that names it.

Splits: a fixed test split is held out, ``data.test_fraction`` of the images (default:
10%, at most 10,000), at least one. Which images: those whose relative path has the
smallest sha256 (salted), so the split does not depend on a random generator's version,
and adding pictures moves few old ones between train and test. With ``data.validation``
as many again are held out of training for validation, and the test split is not used.

Cache: the uint8 array of every image, in sorted path order, is saved as
``DATA_DIR/folders/<key>.npy``, key = sha256 of the relative paths, sizes and
modification times of the files plus every setting that changes pixels. Touching,
adding or removing a file makes a new key (old cache files stay; delete
DATA_DIR/folders to reclaim the space). Written atomically; a read-only data
directory still works, only slower.

No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.core.files import write_text_atomically
from drawcli.data.arrays import Splits, eval_split_name, save_cache
from drawcli.data.catalogue import FOLDER_PREFIX, DatasetSpec

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SKIP_HINT = "set data.skip_unreadable: true (--set data.skip_unreadable=true) to leave unreadable pictures out"
KINDS = "PNG, JPEG, BMP or GIF"
BACKGROUND = (255, 255, 255)  # transparency is composited on white
REDUCING_GAP = 3.0
DEFAULT_CHANNELS = 3
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_TEST_MAX = 10_000  # with the default fraction: evaluating more each epoch only costs time
CACHE_FORMAT = 1  # part of the cache key: bump it when the conversion's pixels change
_SPLIT_SALT = b"drawcli folder split 1\0"


@dataclass
class Scan:
    root: Path
    files: list[tuple[str, int, int]] = field(default_factory=list)  # (relative posix path, size, mtime_ns)
    hidden: list[str] = field(default_factory=list)  # hidden files and folders, skipped
    other: list[str] = field(default_factory=list)  # files that are not images by suffix, skipped
    unreadable: list[str] = field(default_factory=list)  # pictures that could not be read (data.skip_unreadable)

    def skipped(self) -> str:
        """'' or a clause saying what was skipped, with a few examples."""
        parts = []
        if self.unreadable:
            parts.append(f"{_count(len(self.unreadable), 'unreadable picture')} ({_examples(self.unreadable)}; "
                         "data.skip_unreadable)")
        if self.other:
            parts.append(f"{_count(len(self.other), 'file')} not {KINDS} ({_examples(self.other)})")
        if self.hidden:
            parts.append(f"{_count(len(self.hidden), 'hidden file or folder', 'hidden files or folders')} "
                         f"({_examples(self.hidden)})")
        return "skipped " + " and ".join(parts) if parts else ""


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _examples(names: list[str], k: int = 3) -> str:
    shown = ", ".join(names[:k])
    return shown + (f", ... {len(names) - k} more" if len(names) > k else "")


def folder_path(dataset: str) -> Path:
    """PATH of ``folder:PATH``, ~ expanded; relative paths are relative to the working directory."""
    raw = dataset[len(FOLDER_PREFIX):] if dataset.startswith(FOLDER_PREFIX) else dataset
    if not raw.strip():
        raise DrawError("data.dataset: folder: needs a path to a folder of images, e.g. folder:~/pictures")
    return Path(raw).expanduser()


def scan(root: Path, skip_unreadable: bool = False) -> Scan:
    """Every image file under ``root`` (sorted by relative path), and what was skipped."""
    if not root.exists():
        raise DrawError(f"{root}: no such folder (data.dataset folder:{root})")
    if not root.is_dir():
        raise DrawError(f"{root}: not a folder (data.dataset folder:PATH needs a folder of images)")
    out = Scan(root)
    errors: list[OSError] = []
    for here, dirs, files in os.walk(root, onerror=errors.append):
        rel_here = Path(here).relative_to(root)
        for d in [d for d in dirs if d.startswith(".")]:
            out.hidden.append((rel_here / d).as_posix() + "/")
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            rel = (rel_here / name).as_posix()
            if name.startswith("."):
                out.hidden.append(rel)
            elif not name.lower().endswith(SUFFIXES):
                out.other.append(rel)
            else:
                try:
                    st = os.stat(Path(here) / name)
                except OSError as e:  # e.g. a dangling symlink
                    if skip_unreadable:
                        out.unreadable.append(rel)
                        continue
                    raise DrawError(f"{Path(here) / name}: cannot read this image ({e.strerror or e}); {SKIP_HINT}") from None
                out.files.append((rel, st.st_size, st.st_mtime_ns))
    if errors:
        e = errors[0]
        raise DrawError(f"{e.filename or root}: cannot list this folder ({e.strerror or e})")
    out.files.sort()
    out.hidden.sort()
    out.other.sort()
    if not out.files:
        skipped = out.skipped()
        raise DrawError(f"{root}: no {KINDS} images in this folder or its subfolders"
                        + (f" ({skipped})" if skipped else ""))
    return out


def cache_key(found: Scan, image_size: int | None, channels: int) -> str:
    """sha256 of everything that decides the cached pixels."""
    what = {
        "format": CACHE_FORMAT,
        "image_size": image_size,
        "channels": channels,
        "filter": f"LANCZOS reducing_gap={REDUCING_GAP}",
        "background": BACKGROUND,
        "files": found.files,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DrawError("reading image folders needs Pillow, which is not installed: pip install pillow") from None
    return Image


def _to_mode(Image, im, channels: int):
    """``im`` as "L" or "RGB", transparency composited on BACKGROUND."""
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit greyscale PNG: scale to 8 bits (Pillow's own conversion would clip at 255).
        values = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba)
    return im.convert("L" if channels == 1 else "RGB")


def _decoding_errors(Image) -> tuple[type[BaseException], ...]:
    # What Pillow's decoders raise for a file that is not a valid image of its kind:
    # OSError (truncated data, unidentified format), SyntaxError (bad PNG/BMP structure),
    # struct.error and IndexError (short headers), ValueError, EOFError, and the
    # decompression-bomb guard.
    return (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
            Image.DecompressionBombError)


def read_image(path: Path, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W) for channels 1, (3, H, W) for 3; ``size`` (width, height) resizes when it differs."""
    Image = _pillow()
    resampling = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has the names on Image itself
    try:
        with Image.open(path) as im:
            im.load()  # the first frame of a GIF; decoding errors surface here
            im = _to_mode(Image, im, channels)
            if size is not None and im.size != size:
                im = im.resize(size, resampling.LANCZOS, reducing_gap=REDUCING_GAP)
            pixels = np.asarray(im, dtype=np.uint8)
    except _decoding_errors(Image) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, Image.UnidentifiedImageError):  # its text repeats the path
            reason = "not an image Pillow can identify"
        elif isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        raise DrawError(f"{path}: cannot read this image ({reason})") from None
    return pixels if channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def read_folder(found: Scan, image_size: int | None, channels: int, skip_unreadable: bool = False) -> np.ndarray:
    """Every image of ``found``, uint8 (N, H, W) or (N, 3, H, W), in its sorted order. With
    ``skip_unreadable`` a picture that cannot be read is left out: it moves from ``found.files`` to
    ``found.unreadable``; without, it is an error that names it and the setting."""
    size = (image_size, image_size) if image_size is not None else None
    kept, images = [], []
    first_path = None
    for entry in found.files:
        path = found.root / entry[0]
        try:
            pixels = read_image(path, channels, size)
        except DrawError as e:
            if not skip_unreadable:
                raise DrawError(f"{e}; {SKIP_HINT}") from None
            found.unreadable.append(entry[0])
            continue
        if images and pixels.shape != images[0].shape:  # only without data.image_size
            h, w = pixels.shape[-2:]
            height, width = images[0].shape[-2:]
            raise DrawError(
                f"{path}: {w}x{h} pixels, but the first image, {first_path}, is {width}x{height} "
                f"(width x height); set data.image_size (--image-size S) to resize every image to one square size"
            )
        first_path = first_path or path
        kept.append(entry)
        images.append(pixels)
    if not images:
        raise DrawError(f"{found.root}: none of its {_count(len(found.files), 'picture')} could be read "
                        f"({_examples(found.unreadable)})")
    found.files = kept
    found.unreadable.sort()
    return np.stack(images)


def load_folder_images(dataset: str, data_dir: Path | None, image_size: int | None = None,
                       channels: int | None = None, skip_unreadable: bool = False) -> tuple[np.ndarray, Scan, bool]:
    """(images, scan, from_cache) for ``folder:PATH``: read, or loaded from the cache.

    A cache made while pictures were skipped has a list of them beside it (KEY.skipped.json): the
    same files give the same pictures, so it holds for the cache's key; without
    ``skip_unreadable`` such a cache is not used, and the folder is read again (and refused)."""
    channels = DEFAULT_CHANNELS if channels is None else channels
    if channels not in (1, 3):
        raise DrawError(f"data.channels: expected 1 (grey) or 3 (colour), got {channels!r}")
    if image_size is not None and image_size < 1:
        raise DrawError(f"data.image_size: must be >= 1, got {image_size}")
    found = scan(folder_path(dataset), skip_unreadable)
    cache = Path(data_dir) / "folders" / f"{cache_key(found, image_size, channels)[:40]}.npy" if data_dir else None
    if cache is not None and cache.is_file():
        try:
            skipped_list = cache.with_suffix(".skipped.json")
            skipped = json.loads(skipped_list.read_text(encoding="utf-8")) if skipped_list.is_file() else []
            kept = [f for f in found.files if f[0] not in set(skipped)]
            images = np.load(cache, allow_pickle=False)
            ok = (images.dtype == np.uint8 and len(images) == len(kept) and images.ndim == (3 if channels == 1 else 4)
                  and (skip_unreadable or not skipped))
            if ok and image_size is not None:
                ok = images.shape[-2:] == (image_size, image_size)
            if ok:
                found.files, found.unreadable = kept, sorted(found.unreadable + skipped)
                return images, found, True
        except (OSError, ValueError, EOFError, TypeError):
            pass  # unreadable cache: read the images again
    unreadable_before = list(found.unreadable)
    images = read_folder(found, image_size, channels, skip_unreadable)
    if cache is not None:
        skipped = sorted(set(found.unreadable) - set(unreadable_before))
        try:
            if skipped:  # first the list, then the cache it describes
                write_text_atomically(cache.with_suffix(".skipped.json"), json.dumps(skipped))
        except DrawError:
            pass
        else:
            save_cache(cache, images)
    return images, found, False


def held_out(paths: list[str], count: int) -> np.ndarray:
    """Indices of ``count`` paths chosen by the smallest salted sha256: stable across machines and versions."""
    keys = [hashlib.sha256(_SPLIT_SALT + p.encode("utf-8", "surrogateescape")).digest() for p in paths]
    order = sorted(range(len(paths)), key=keys.__getitem__)
    return np.array(order[:count], dtype=np.int64)


def held_out_count(n: int, test_fraction: float | None) -> int:
    if test_fraction is None:
        return min(max(1, round(n * DEFAULT_TEST_FRACTION)), DEFAULT_TEST_MAX)
    if not 0 < test_fraction < 1:
        raise DrawError(f"data.test_fraction: must be in (0, 1), got {test_fraction!r}")
    return max(1, round(n * test_fraction))


def load_folder_splits(dataset: str, data_dir: Path | None, validation: bool = False, *,
                       image_size: int | None = None, channels: int | None = None,
                       test_fraction: float | None = None, skip_unreadable: bool = False) -> Splits:
    """Splits (drawcli/data/arrays.py) for ``folder:PATH``: train and test (or validation) images, and a spec with their shape."""
    images, found, from_cache = load_folder_images(dataset, data_dir, image_size, channels, skip_unreadable)
    paths = [rel for rel, _, _ in found.files]
    n = len(paths)
    n_test = held_out_count(n, test_fraction)
    held = held_out(paths, 2 * n_test if validation else n_test)
    if n - len(held) < 1:
        what = f"{n_test} test and {n_test} validation images" if validation else f"{n_test} test image(s)"
        raise DrawError(f"{found.root}: only {_count(n, 'image')}, too few to hold out {what} and keep "
                        f"some to train on; add pictures or lower data.test_fraction")
    test_idx, valid_idx = held[:n_test], held[n_test:]
    eval_idx = valid_idx if validation else test_idx
    train_mask = np.ones(n, dtype=bool)
    train_mask[held] = False
    c = 1 if images.ndim == 3 else images.shape[1]
    spec = DatasetSpec(name=dataset, description=f"images in {found.root}", files=(), mirrors=(),
                       height=images.shape[-2], width=images.shape[-1], channels=c, kind="folder")
    eval_name = eval_split_name(validation)
    notes = [f"{dataset}: {_count(n, 'image')} {spec.width}x{spec.height}, {_count(c, 'channel')}: "
             f"{int(train_mask.sum())} train, {len(eval_idx)} {eval_name}"
             + (" (from the cache)" if from_cache else "")]
    if found.skipped():
        notes.append(f"{dataset}: {found.skipped()}")
    # np.sort: held-out images in path order, like the training ones.
    return Splits(images[train_mask], images[np.sort(eval_idx)], eval_name, spec, tuple(notes))
