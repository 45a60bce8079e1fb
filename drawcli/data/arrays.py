"""What a data set loads into: its train and evaluation arrays (Splits), and the .npy cache that
spares re-parsing slow formats (loading.py's files, folders.py's pictures). No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.core.files import replace_atomically
from drawcli.data.catalogue import DatasetSpec


@dataclass
class Splits:
    train: np.ndarray  # uint8 0..255: (N, H, W) when spec.channels == 1, else (N, C, H, W)
    eval: np.ndarray
    eval_name: str  # "test" or "valid": eval_split_name(validation)
    spec: DatasetSpec  # height, width and channels of the images
    notes: tuple[str, ...] = ()  # lines worth showing the user (e.g. files a folder set skipped)


def eval_split_name(validation: bool) -> str:
    """The name of the split a data set evaluates on: "valid" when data.validation holds images out
    (or takes the set's own validation split), else "test"."""
    return "valid" if validation else "test"


def save_cache(cache: Path, images: np.ndarray) -> None:
    """Write a .npy cache atomically; quietly skip it when the folder cannot be written."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)

    try:
        replace_atomically(cache, write)
    except DrawError:
        pass  # a read-only data directory still works, only slower
