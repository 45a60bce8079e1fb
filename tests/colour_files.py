"""Small SVHN and CIFAR-10 files in the real formats, made by the tests (no download).

- SVHN: MATLAB v5 files written by ``scipy.io.savemat`` with X uint8 (32, 32, 3, N) and
  y (N, 1), label 10 for the digit 0, as in train_32x32.mat.
- CIFAR-10: ``cifar-10-python.tar.gz`` holding ``cifar-10-batches-py/`` with data_batch_1..5,
  test_batch, batches.meta and readme.html. Batches are pickled as Python 2's cPickle wrote
  them (protocol 2; every string a byte string, BINSTRING; numpy.core.multiarray._reconstruct),
  dicts with the keys b"batch_label", b"labels", b"data" (N, 3072) uint8 and b"filenames".
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np


def svhn_mat(n: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """(file bytes, images uint8 (N, 3, 32, 32) as the loader must return them)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, 10 meaning the digit 0
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": x, "y": y})
    return buf.getvalue(), np.ascontiguousarray(x.transpose(3, 2, 0, 1))


class _Py2Pickler(pickle._Pickler):
    """The pure-Python pickler, writing str and bytes as Python 2's byte strings."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_string(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_string
    dispatch[bytes] = _save_py2_string


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 2 names its module numpy._core; the real files (numpy 1.x, 2009) say numpy.core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")


def cifar_batch(images: np.ndarray, label: str, seed: int) -> bytes:
    """One batch file from uint8 (N, 3, 32, 32) images."""
    n = len(images)
    labels = [int(v) for v in np.random.default_rng(seed).integers(0, 10, n)]
    return py2_pickle({
        b"batch_label": label.encode(),
        b"labels": labels,
        b"data": images.reshape(n, 3072).copy(),
        b"filenames": [f"image_{seed}_{i}.png".encode() for i in range(n)],
    })


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    info.mode = 0o644
    return info, data


def cifar_archive(per_batch: int = 4, n_test: int = 3, seed: int = 0,
                  replace: dict[str, bytes] | None = None,
                  more: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> tuple[bytes, dict[str, np.ndarray]]:
    """(cifar-10-python.tar.gz bytes, {"train_images": ..., "test_images": ...} uint8 (N, 3, 32, 32))."""
    rng = np.random.default_rng(seed)
    folder = "cifar-10-batches-py"
    members = [(_dir(folder), None)]
    train = []
    for i in range(1, 6):
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        train.append(images)
        members.append(file_member(f"{folder}/data_batch_{i}", cifar_batch(images, f"training batch {i} of 5", i)))
    test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    members.append(file_member(f"{folder}/test_batch", cifar_batch(test, "testing batch 1 of 1", 0)))
    meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
                             b"ship", b"truck"], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    members.append(file_member(f"{folder}/batches.meta", py2_pickle(meta)))
    members.append(file_member(f"{folder}/readme.html", b"<meta HTTP-EQUIV=\"REFRESH\" content=\"0; url=...\">\n"))
    for name, data in (replace or {}).items():
        members = [(i, data if i.name == name else d) for i, d in members]
    members += list(more)
    return tar_bytes(members), {"train_images": np.concatenate(train), "test_images": test}


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
