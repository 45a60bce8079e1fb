"""The run lock: an advisory lock held by the one process that trains a run.

The lock is the flock on RUN_DIR/.lock, not the file: the OS drops it when the process ends in any
way (kill -9 included), so a stale file never blocks. The file only says who holds it (pid, host,
started, command). Windows has no flock: msvcrt's byte lock is used there, and where neither
exists runs are not locked. No torch here: `draw runs` shows the holder with this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.runs.names import LOCK

_held: dict[str, tuple[int, int]] = {}  # resolved run dir -> (fd, depth): re-entrant in one process

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    try:
        import msvcrt
    except ImportError:
        msvcrt = None


def _try_lock(fd: int, shared: bool = False) -> bool:
    """Take the lock on fd without waiting; False when another process holds it. ``shared``: a
    probe (flock's shared lock, so that two lookers never see each other as the holder)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        elif msvcrt is not None:  # pragma: no cover - Windows
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)):
            return False  # held by another process
        raise
    return True


def _unlock(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:  # pragma: no cover - Windows
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}  # being rewritten right now: the holder is real, its details unknown


def describe_holder(info: dict) -> str:
    parts = [f"pid {info['pid']}" if info.get("pid") is not None else "another process"]
    if info.get("host"):
        parts.append(f"on {info['host']}")
    if info.get("started"):
        parts.append(f"since {info['started']}")
    return " ".join(parts)


def lock_holder(run_dir: str | Path) -> dict | None:
    """Who trains this run: the lock file's contents ({} when unreadable), when another process
    holds its lock; else None (also where the file system cannot lock). Reads, never writes."""
    path = Path(run_dir) / LOCK
    key = str(Path(run_dir).resolve())
    if key in _held or (fcntl is None and msvcrt is None):
        return None
    try:
        fd = os.open(path, os.O_RDONLY if fcntl is not None else os.O_RDWR)
    except OSError:
        return None  # no lock file: nobody has ever trained it with a lock
    try:
        try:
            free = _try_lock(fd, shared=True)
        except OSError:  # a file system without locks: no holder can be seen
            return None
        if free:
            _unlock(fd)
            return None
        return _read_holder(fd)
    finally:
        os.close(fd)


def _locked(run_dir: Path, info: dict) -> DrawError:
    return DrawError(
        f"run {Path(run_dir).name!r} is being trained by {describe_holder(info)}; "
        "wait for it to finish or stop it, then try again"
    )


def check_not_locked(run_dir: Path) -> None:
    """Fail fast when another process trains the run (run_lock is what makes it safe)."""
    info = lock_holder(run_dir)
    if info is not None:
        raise _locked(run_dir, info)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold RUN_DIR/.lock while the block runs; a DrawError naming the holder if another process has it."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held:  # this process holds it already (the CLI took it, training nests)
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    if fcntl is None and msvcrt is None:  # pragma: no cover - no locking on this platform
        yield
        return
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DrawError(f"cannot create the run lock {path}: {e.strerror or e}") from None
    try:
        if not _try_lock(fd):
            raise _locked(run_dir, _read_holder(fd))
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["draw", *sys.argv[1:]]),
        }
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
        except OSError:
            pass  # the lock holds without its description
        _held[key] = (fd, 1)
        try:
            yield
        finally:
            _held.pop(key, None)
            _unlock(fd)
    finally:
        os.close(fd)
