"""Atomic file writes: every file drawcli writes appears whole or not at all; and a scoped change of
environment variables."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from drawcli.core.errors import DrawError


def replace_atomically(path: str | Path, write: Callable[[Path], None], what: str = "") -> None:
    """Call ``write(tmp)`` for a temp file beside ``path``, fsync it, then ``os.replace`` it into place.

    A crash, a full disk (ENOSPC) or any error leaves the previous file untouched and
    no temp file behind; an OSError becomes one DrawError line. The temp name keeps
    the suffix, since some writers (imageio) choose the format by it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the parent is not a directory: there is no temp file
            pass
        if isinstance(e, OSError):
            # The destination was never opened: whatever it held before is still there.
            raise DrawError(
                f"cannot write {what}{path}: {e.strerror or e} (the previous file, if any, is unchanged)"
            ) from None
        raise


def write_text_atomically(path: str | Path, text: str, what: str = "") -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)


def check_output(path: str | Path) -> str | None:
    """Before any work: can ``path`` be written? A one-line DrawError when not (a folder on the way
    is a file, the folder refuses a new file, the path is a folder), so that minutes of work are
    never lost to a file that cannot be written. Missing folders are created now, and the line
    that says so is returned (None when nothing was created)."""
    path = Path(path)
    if path.is_dir():
        raise DrawError(f"cannot write {path}: it is a folder; give a file name")
    parent = path.parent
    existing = next(f for f in (parent, *parent.parents) if f.exists() or f.is_symlink() or f == Path(f.anchor or "."))
    if not existing.is_dir():
        raise DrawError(f"cannot write {path}: {existing} is not a folder")
    created = None
    if existing != parent:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DrawError(f"cannot write {path}: cannot create the folder {parent}: {e.strerror or e}") from None
        created = f"created the folder {parent} for {path.name}"
    try:
        fd, probe = tempfile.mkstemp(prefix=".draw-write-check-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DrawError(f"cannot write {path}: {e.strerror or e} (the previous file, if any, is unchanged)") from None
    return created


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the duration of a ``with`` block, then restore them (a variable
    that was unset is removed again)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
