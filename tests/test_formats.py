"""SVHN's .mat and CIFAR-10's pickles in a .tar.gz: readers, safe extraction, no code run.

Every file is made here in the real format (tests/colour_files.py); the download side
(mirrors, md5 + size) is in test_download.py.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from colour_files import cifar_archive, cifar_batch, file_member, py2_pickle, svhn_mat, tar_bytes, write

from drawcli.core.errors import DrawError
from drawcli.data import catalogue as datasets
from drawcli.data import formats
from drawcli.data import loading as data

# --------------------------------------------------------------------------- SVHN


def test_svhn_mat_is_read_channel_first(tmp_path):
    raw, expected = svhn_mat(7, seed=1)
    path = write(tmp_path / "train_32x32.mat", raw)
    images = formats.load_svhn_mat(path)
    assert images.dtype == np.uint8 and images.shape == (7, 3, 32, 32) and images.flags.c_contiguous
    np.testing.assert_array_equal(images, expected)
    # The same pixel seen from the file's side: X[row, col, channel, n].
    import scipy.io

    x = scipy.io.loadmat(str(path))["X"]
    assert images[5, 2, 10, 3] == x[10, 3, 2, 5]


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: b"<html>404</html>", "not a readable MATLAB .mat file"),
        (lambda: b"", "not a readable MATLAB .mat file"),
        (lambda: _mat({"X": np.zeros((28, 28, 1, 2), np.uint8)}), "expected X as uint8 (32, 32, 3, N), got uint8 (28, 28, 1, 2)"),
        (lambda: _mat({"X": np.zeros((32, 32, 3, 2), np.float64)}), "expected X as uint8 (32, 32, 3, N), got float64"),
        (lambda: _mat({"y": np.zeros((2, 1), np.uint8)}), "expected X as uint8 (32, 32, 3, N), got missing"),
    ],
    ids=["html", "empty", "grey-28", "float", "no-X"],
)
def test_svhn_mat_that_is_not_svhn(tmp_path, make, fragment):
    path = write(tmp_path / "train_32x32.mat", make())
    with pytest.raises(DrawError) as e:
        formats.load_svhn_mat(path)
    assert str(e.value).startswith(f"{path}: ") and fragment in str(e.value) and "\n" not in str(e.value)


def _mat(contents: dict) -> bytes:
    import io

    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, contents)
    return buf.getvalue()


def test_svhn_without_scipy_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy.io" or name.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(DrawError, match=r"needs scipy, which is not installed: pip install 'drawcli\[svhn\]'"):
        formats.load_svhn_mat(tmp_path / "x.mat")


def test_svhn_loads_through_the_registry_and_is_cached(tmp_path, monkeypatch):
    folder = tmp_path / "svhn"
    raw_train, train = svhn_mat(6, seed=2)
    raw_test, test = svhn_mat(4, seed=3)
    write(folder / "train_32x32.mat", raw_train)
    write(folder / "test_32x32.mat", raw_test)
    splits = data.load_splits("svhn", tmp_path)
    np.testing.assert_array_equal(splits.train, train)
    np.testing.assert_array_equal(splits.eval, test)
    assert splits.spec.channels == 3 and (splits.spec.height, splits.spec.width) == (32, 32)
    assert (folder / "train_32x32.mat.npy").is_file() and (folder / "test_32x32.mat.npy").is_file()

    def no_parsing(path):
        raise AssertionError("parsed again instead of using the cache")

    monkeypatch.setattr(formats, "load_svhn_mat", no_parsing)
    np.testing.assert_array_equal(data.load_splits("svhn", tmp_path).train, train)
    # A newer .mat (a re-download) makes the cache stale.
    st = (folder / "train_32x32.mat").stat()
    os.utime(folder / "train_32x32.mat", ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    with pytest.raises(AssertionError, match="parsed again"):
        data.load_splits("svhn", tmp_path)


def test_svhn_extra_file_is_a_role_of_its_own(tmp_path):
    raw, extra = svhn_mat(3, seed=4)
    write(tmp_path / "svhn" / "extra_32x32.mat", raw)
    np.testing.assert_array_equal(data.load_images(datasets.SVHN, tmp_path / "svhn", "extra_images"), extra)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_archive_is_read_and_cached(tmp_path, monkeypatch):
    archive_bytes, expected = cifar_archive(per_batch=4, n_test=3)
    folder = tmp_path / "cifar10"
    write(folder / "cifar-10-python.tar.gz", archive_bytes)
    splits = data.load_splits("cifar10", tmp_path)
    assert splits.train.shape == (20, 3, 32, 32) and splits.eval.shape == (3, 3, 32, 32)
    assert splits.train.dtype == np.uint8 and splits.spec.channels == 3
    np.testing.assert_array_equal(splits.train, expected["train_images"])
    np.testing.assert_array_equal(splits.eval, expected["test_images"])
    # Both splits cached by one extraction; the scratch folder is gone.
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-python.tar.gz", "test_images.npy", "train_images.npy"]

    monkeypatch.setattr(formats, "load_cifar", lambda archive: pytest.fail("extracted again instead of the cache"))
    np.testing.assert_array_equal(data.load_splits("cifar10", tmp_path).train, expected["train_images"])


def test_cifar_rows_are_red_then_green_then_blue(tmp_path):
    images = np.zeros((2, 3, 32, 32), np.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 200, 100, 50
    row = formats.parse_cifar_batch(cifar_batch(images, "x", 0), "batch")
    data_row = pickle.loads(cifar_batch(images, "x", 0), encoding="bytes")[b"data"][0]
    assert list(data_row[[0, 1023, 1024, 2047, 2048, 3071]]) == [200, 200, 100, 100, 50, 50]
    assert (row[:, 0] == 200).all() and (row[:, 1] == 100).all() and (row[:, 2] == 50).all()


def test_cifar_with_a_read_only_data_dir_extracts_in_the_temp_folder(tmp_path, monkeypatch):
    archive_bytes, expected = cifar_archive(per_batch=2, n_test=2, seed=5)
    archive = write(tmp_path / "cifar10" / "cifar-10-python.tar.gz", archive_bytes)
    real_mkdtemp = formats.tempfile.mkdtemp
    used = []

    def mkdtemp(prefix="", dir=None):
        if dir is not None:  # beside the archive: pretend the data directory is read-only
            raise PermissionError(13, "Permission denied")
        used.append(real_mkdtemp(prefix=prefix))
        return used[-1]

    monkeypatch.setattr(formats.tempfile, "mkdtemp", mkdtemp)
    out = formats.load_cifar(archive)
    np.testing.assert_array_equal(out["test_images"], expected["test_images"])
    assert used and not Path(used[0]).exists()  # extracted there, then removed


# --------------------------------------------------------------------------- unsafe archives


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


BAD_MEMBERS = {
    "dotdot": (lambda: file_member("../evil", b"x"), "'..' in its path"),
    "dotdot-inside": (lambda: file_member("cifar-10-batches-py/../../evil", b"x"), "'..' in its path"),
    "absolute": (lambda: file_member("/tmp/drawcli-evil", b"x"), "an absolute path"),
    "drive-letter": (lambda: file_member("C:/evil", b"x"), "an absolute path"),
    "backslash-dotdot": (lambda: file_member("cifar-10-batches-py\\..\\..\\evil", b"x"), "'..' in its path"),
    "symlink": (lambda: _link("cifar-10-batches-py/data_batch_9", "/etc/passwd"), "a link (to '/etc/passwd')"),
    "symlink-relative": (lambda: _link("cifar-10-batches-py/x", "../../outside"), "a link (to '../../outside')"),
    "hardlink": (lambda: _link("cifar-10-batches-py/h", "/etc/passwd", hard=True), "a link (to '/etc/passwd')"),
    "char-device": (lambda: _special("cifar-10-batches-py/null", tarfile.CHRTYPE), "a device or FIFO"),
    "block-device": (lambda: _special("cifar-10-batches-py/sda", tarfile.BLKTYPE), "a device or FIFO"),
    "fifo": (lambda: _special("cifar-10-batches-py/pipe", tarfile.FIFOTYPE), "a device or FIFO"),
}


@pytest.mark.parametrize("kind", list(BAD_MEMBERS))
def test_unsafe_tar_member_is_refused_and_nothing_is_extracted(tmp_path, kind):
    make, why = BAD_MEMBERS[kind]
    member = make()
    archive_bytes, _ = cifar_archive(per_batch=1, n_test=1, more=[member])
    archive = write(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz", archive_bytes)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DrawError) as e:
        formats.safe_extract(archive, dest)
    message = str(e.value)
    assert message == (f"{archive}: refused to extract member {member[0].name!r}: {why}; nothing was extracted "
                       f"(the archive is corrupt or was tampered with)")
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/drawcli-evil").exists()

    # The loader refuses it the same way, even though the bad member is not one it wants,
    # and leaves no scratch folder behind.
    with pytest.raises(DrawError, match="refused to extract member"):
        data.load_splits("cifar10", tmp_path / "data")
    assert sorted(p.name for p in archive.parent.iterdir()) == ["cifar-10-python.tar.gz"]


def test_tar_filter_is_used_where_python_has_it(tmp_path, monkeypatch):
    archive_bytes, _ = cifar_archive(per_batch=1, n_test=1)
    archive = write(tmp_path / "a.tar.gz", archive_bytes)
    seen = []
    real = tarfile.TarFile.extractall

    def spy(self, path=".", members=None, *, numeric_owner=False, **kwargs):
        seen.append(kwargs.get("filter"))
        return real(self, path, members, numeric_owner=numeric_owner, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractall", spy)
    formats.safe_extract(archive, tmp_path / "out")
    assert seen == (["data"] if hasattr(tarfile, "data_filter") else [None])


def test_archive_that_is_not_a_tar(tmp_path):
    path = write(tmp_path / "cifar10" / "cifar-10-python.tar.gz", b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DrawError, match=r"cifar-10-python.tar.gz: (not a readable|corrupt) tar archive"):
        data.load_splits("cifar10", tmp_path)
    write(path, tar_bytes([file_member("cifar-10-batches-py/test_batch", b"x")]))
    with pytest.raises(DrawError, match="lacks cifar-10-batches-py/data_batch_1, "):
        data.load_splits("cifar10", tmp_path)


# --------------------------------------------------------------------------- pickles that would run code


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evaluates:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize(
    "payload, name",
    [(_RunsShell, "posix.system"), (_Evaluates, "__builtin__.eval")],  # protocol 2 writes Python 2 names
    ids=["os-system", "eval"],
)
@pytest.mark.parametrize("where", ["whole", "inside-the-dict"])
def test_pickle_with_any_other_global_is_refused_without_running(tmp_path, payload, name, where):
    marker = tmp_path / "MARKER"
    obj = payload(marker) if where == "whole" else {b"data": payload(marker), b"labels": []}
    evil = py2_pickle(obj)
    pickle.loads(evil)  # the payload really runs when unpickled plainly: the test can fail
    assert marker.exists()
    marker.unlink()

    with pytest.raises(DrawError) as e:
        formats.parse_cifar_batch(evil, "data_batch_1")
    assert str(e.value) == (f"data_batch_1: refused to unpickle {name}: CIFAR batches hold only numpy arrays "
                            f"and plain data (nothing in the file was run)")
    assert not marker.exists()


def test_evil_batch_in_the_archive_is_refused_end_to_end(tmp_path):
    marker = tmp_path / "MARKER"
    member = "cifar-10-batches-py/data_batch_3"
    archive_bytes, _ = cifar_archive(per_batch=1, n_test=1, replace={member: py2_pickle(_RunsShell(marker))})
    archive = write(tmp_path / "cifar10" / "cifar-10-python.tar.gz", archive_bytes)
    with pytest.raises(DrawError) as e:
        data.load_splits("cifar10", tmp_path)
    assert str(e.value).startswith(f"{archive}: {member}: refused to unpickle posix.system")
    assert not marker.exists()
    assert not (archive.parent / "train_images.npy").exists()


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ([1, 2], "expected a dict with b'data' and b'labels', got list"),
        ({b"labels": [1]}, "expected b'data' as uint8 (N, 3072), got NoneType"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "expected b'data' as uint8 (N, 3072), got float32 (2, 3072)"),
        ({b"data": np.zeros((2, 784), np.uint8), b"labels": [0, 1]}, "got uint8 (2, 784)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "expected b'labels' as a list of 2 labels"),
    ],
    ids=["list", "no-data", "float", "mnist-sized", "labels"],
)
def test_batch_that_is_not_cifar(obj, fragment):
    with pytest.raises(DrawError, match=None) as e:
        formats.parse_cifar_batch(py2_pickle(obj), "b")
    assert fragment in str(e.value)


def test_truncated_pickle():
    good = cifar_batch(np.zeros((1, 3, 32, 32), np.uint8), "x", 0)
    with pytest.raises(DrawError, match="^b: not a readable CIFAR batch"):
        formats.parse_cifar_batch(good[:-50], "b")


def test_modern_numpy_pickles_load_too():
    """A batch re-pickled by Python 3 (numpy._core, protocol 4) is the same data."""
    arr = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    out = formats.parse_cifar_batch(pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=4), "b")
    np.testing.assert_array_equal(out.reshape(2, 3072), arr)
