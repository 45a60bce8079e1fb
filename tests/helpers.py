"""Helpers shared by the tests (fixtures live in conftest.py): synthetic images, tiny settings, a callback that collects."""

from __future__ import annotations

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


def tiny_settings(*sets):
    return build_settings(
        None,
        None,
        ["model.steps=3", "model.hidden=16", "model.embed=4", "train.batch_size=32", "train.log_every=2",
         "train.eval_batch_size=50", *sets],
    )
