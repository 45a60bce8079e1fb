"""Readers for the colour sets' published formats: SVHN's .mat files and CIFAR-10's archive.

Both turn into uint8 (N, 3, H, W) arrays, channel first. Neither trusts its input to be
benign beyond what the registry's checksums pin:

- SVHN: MATLAB v5 files read with ``scipy.io.loadmat`` (never by hand). Loading a .mat
  file builds arrays and structs only; nothing in it is run.
- CIFAR-10: a .tar.gz of Python pickles. Every member is checked before anything is
  extracted (no absolute path, no ``..``, no link, no device: the archive is refused
  whole), extraction uses tarfile's ``data`` filter where Python has it, and the pickles
  are read by an unpickler that can build numpy arrays and nothing else: any other
  global (``os.system``, ``builtins.eval``...) is refused before it could be called.

No torch here.
"""

from __future__ import annotations

import io
import pickle
import re
import shutil
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np

from drawcli.core.errors import DrawError

# --------------------------------------------------------------------------- SVHN (.mat)

SVHN_SIDE = 32


def load_svhn_mat(path: Path) -> np.ndarray:
    """uint8 (N, 3, 32, 32) from an SVHN cropped-digits file (X is (32, 32, 3, N) there)."""
    try:
        import scipy.io
    except ImportError:
        raise DrawError(
            "reading SVHN's .mat files needs scipy, which is not installed: pip install 'drawcli[svhn]' "
            "(or pip install scipy)"
        ) from None
    from scipy.io.matlab import MatReadError, MatReadWarning

    try:
        with warnings.catch_warnings():
            # scipy warns and goes on over a damaged file: here that is an error, one line.
            warnings.simplefilter("error", MatReadWarning)
            contents = scipy.io.loadmat(str(path), variable_names=("X",))
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5): not what SVHN publishes
        raise DrawError(f"{path}: not an SVHN .mat file ({_one_line(e)})") from None
    except (MatReadError, MatReadWarning, ValueError, TypeError, OSError, EOFError, KeyError, IndexError) as e:
        raise DrawError(f"{path}: not a readable MATLAB .mat file ({_one_line(e) or type(e).__name__})") from None
    x = contents.get("X")
    expected = (SVHN_SIDE, SVHN_SIDE, 3)
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != expected or x.dtype != np.uint8:
        what = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "missing"
        raise DrawError(f"{path}: expected X as uint8 (32, 32, 3, N), got {what}")
    # (row, col, channel, N) -> (N, channel, row, col): the layout the model takes.
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))


# --------------------------------------------------------------------------- tar archives


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be extracted, or None."""
    name = member.name
    if member.issym() or member.islnk():
        return f"a link (to {member.linkname!r})"
    if member.ischr() or member.isblk() or member.isfifo():
        return "a device or FIFO"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder"
    # Both separators and drive letters: the archive may have been made on Windows.
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "'..' in its path"
    return None


def check_members(archive: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Refuse the archive (one line, naming the member) if any member could land outside ``dest``."""
    root = dest.resolve()
    for member in members:
        why = _member_problem(member)
        if why is None and not (root / member.name).resolve().is_relative_to(root):
            why = "a path outside the target folder"
        if why is not None:
            raise DrawError(
                f"{archive}: refused to extract member {member.name!r}: {why}; nothing was extracted "
                f"(the archive is corrupt or was tampered with)"
            )


def safe_extract(archive: Path, dest: Path, wanted: set[str] | None = None) -> list[Path]:
    """Extract ``wanted`` members (all when None) of a tar archive into ``dest``; return their paths.

    Every member is checked first, wanted or not: one bad member refuses the whole archive.
    """
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DrawError(f"{archive}: not a readable tar archive ({_one_line(e)})") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DrawError(f"{archive}: corrupt tar archive ({_one_line(e)})") from None
        check_members(archive, members, dest)
        chosen = [m for m in members if wanted is None or m.name in wanted]
        missing = sorted((wanted or set()) - {m.name for m in chosen})
        if missing:
            raise DrawError(f"{archive}: lacks {', '.join(missing)}")
        # The "data" filter (Python 3.12, 3.11.4+, ...) repeats our checks and also drops
        # unsafe permission bits; where it is missing, the checks above are the guard.
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tar.extractall(dest, members=chosen, **kwargs)
        except (tarfile.TarError, EOFError) as e:
            raise DrawError(f"{archive}: cannot extract ({_one_line(e)})") from None
        except OSError as e:
            raise DrawError(f"cannot extract {archive} into {dest}: {e.strerror or e}") from None
    return [dest / m.name for m in chosen]


# --------------------------------------------------------------------------- CIFAR-10 (pickles)

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"{CIFAR_FOLDER}/data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = (f"{CIFAR_FOLDER}/test_batch",)
CIFAR_SIDE = 32

try:  # numpy >= 2 keeps it in numpy._core; older numpy in numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

# Exactly what a pickled ndarray refers to (CIFAR's files were written by Python 2 with
# numpy 1.x, hence numpy.core): building an array, its dtype, and nothing else.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedPickle(Exception):
    """The pickle names a global outside the allowed numpy ones (str(): module.name)."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; refuses every other global before it is loaded.

    ``find_class`` is the only way a pickle reaches code (REDUCE, BUILD, NEWOBJ and
    friends all call what it returned); persistent ids are refused by the base class.
    """

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None


def load_pickle(data: bytes, where: str):
    """Unpickle ``data`` (CIFAR's Python 2 pickles: byte strings stay bytes) without running code."""
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedPickle as e:
        raise DrawError(
            f"{where}: refused to unpickle {e}: CIFAR batches hold only numpy arrays and plain data "
            f"(nothing in the file was run)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, UnicodeDecodeError) as e:
        raise DrawError(f"{where}: not a readable CIFAR batch ({_one_line(e) or type(e).__name__})") from None


def parse_cifar_batch(data: bytes, where: str) -> np.ndarray:
    """uint8 (N, 3, 32, 32) from one CIFAR-10 python batch (dict with b"data" (N, 3072) and b"labels")."""
    batch = load_pickle(data, where)
    if not isinstance(batch, dict):
        raise DrawError(f"{where}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    pixels, labels = batch.get(b"data"), batch.get(b"labels")
    size = 3 * CIFAR_SIDE * CIFAR_SIDE
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != size:
        what = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise DrawError(f"{where}: expected b'data' as uint8 (N, {size}), got {what}")
    if not isinstance(labels, list) or len(labels) != len(pixels):
        raise DrawError(f"{where}: expected b'labels' as a list of {len(pixels)} labels")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: channel first already.
    return pixels.reshape(len(pixels), 3, CIFAR_SIDE, CIFAR_SIDE).copy()


def load_cifar(archive: Path) -> dict[str, np.ndarray]:
    """{"train_images": (50000, 3, 32, 32), "test_images": (10000, 3, 32, 32)} uint8 from the .tar.gz.

    The archive is extracted (safely, see safe_extract) into a temporary folder beside it,
    or in the system temp folder when the data directory cannot be written, read, and
    removed again: the arrays are what loading.py caches, and nothing stale is left behind.
    """
    scratch = None
    for parent in (archive.parent, None):  # None: the system's temp folder
        try:
            scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=parent))
            break
        except OSError:
            continue
    if scratch is None:
        raise DrawError(f"cannot extract {archive}: no writable folder, neither beside it nor the temp folder")
    try:
        safe_extract(archive, scratch, set(CIFAR_TRAIN + CIFAR_TEST))
        out = {}
        for role, members in (("train_images", CIFAR_TRAIN), ("test_images", CIFAR_TEST)):
            parts = []
            for member in members:
                path = scratch / member
                try:
                    data = path.read_bytes()
                except OSError as e:
                    raise DrawError(f"cannot read {member} extracted from {archive}: {e.strerror or e}") from None
                parts.append(parse_cifar_batch(data, f"{archive}: {member}"))
            out[role] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

