"""Checking a data set's files against the catalogue (drawcli/data/catalogue.py): sha256 and size of
the decompressed contents, or md5 and size of files kept as downloaded; and the stamp file that
remembers what was verified, so that an unchanged file is not hashed again. No torch here."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path

from drawcli.data.catalogue import DataFile, DatasetSpec
from drawcli.data.loading import find_file

CHUNK = 1 << 16
STAMP_NAME = ".verified.json"  # per data-set directory: what was verified, and when

# Statuses of one file, as verify_dataset reports them.
OK, MISSING, BAD_SIZE, BAD_HASH, UNREADABLE = "ok", "missing", "bad size", "bad hash", "unreadable"
BAD_FILE_SIZE, BAD_MD5, CANNOT_READ = "bad file size", "bad md5", "cannot read"  # files kept as downloaded
PROBLEM = {
    BAD_SIZE: "wrong size after decompression",
    BAD_HASH: "sha256 mismatch",
    UNREADABLE: "corrupt gzip data",
    BAD_FILE_SIZE: "wrong file size",
    BAD_MD5: "md5 mismatch",
    CANNOT_READ: "cannot be read",
}


def check_file(path: Path, entry: DataFile) -> str:
    """OK, BAD_SIZE, BAD_HASH or UNREADABLE: the decompressed contents against the registry.

    Streams, and stops as soon as the contents outgrow the expected size, so a hostile
    gzip bomb costs no more than reading the real file would.
    """
    if entry.as_downloaded:
        return check_as_downloaded(path, entry)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > entry.size:
                    return BAD_SIZE
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return UNREADABLE
    if size != entry.size:
        return BAD_SIZE
    return OK if digest.hexdigest() == entry.sha256 else BAD_HASH


def check_as_downloaded(path: Path, entry: DataFile) -> str:
    """OK, BAD_FILE_SIZE, BAD_MD5 or CANNOT_READ: the file's own bytes (never gunzipped) against md5 + size."""
    try:
        if path.stat().st_size != entry.size:  # cheap, and it bounds what is hashed
            return BAD_FILE_SIZE
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return CANNOT_READ
    return OK if digest.hexdigest() == entry.remote_md5 else BAD_MD5


def pin(entry: DataFile) -> dict:
    """What a verification stamp records as the registry's digest for ``entry``."""
    return {"md5": entry.remote_md5} if entry.as_downloaded else {"sha256": entry.sha256}


def fingerprint(path: Path) -> dict:
    # ctime and inode change on any rewrite, even one that restores mtime and size.
    st = path.stat()
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino}


def load_stamp(directory: Path) -> dict:
    try:
        stamp = json.loads((directory / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def save_stamp(directory: Path, stamp: dict) -> None:
    tmp = directory / (STAMP_NAME + ".tmp")
    try:
        tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True))
        os.replace(tmp, directory / STAMP_NAME)
    except OSError:
        pass  # read-only data directory: files are simply re-hashed next time


def remember(stamp: dict, entry: DataFile, path: Path) -> None:
    stamp[entry.name] = {**fingerprint(path), **pin(entry)}


def verify_dataset(spec: DatasetSpec, directory: Path, extras: bool = False) -> dict[str, str]:
    """role -> "ok" | "missing" | "bad size" | "bad hash" | "unreadable", for the files in ``directory``.

    (Files kept as downloaded give "bad file size", "bad md5" or "cannot read" instead.)
    ``extras``: also the optional files (svhn's extra set).

    Checks the file the loader would read (``find_file``). A file already verified and
    unchanged since (same size, mtime, ctime and inode, recorded in ``.verified.json``)
    is not hashed again; anything else is hashed in full and the record updated.
    """
    directory = Path(directory)
    stamp = load_stamp(directory)
    changed = False
    result: dict[str, str] = {}
    for entry in spec.files + (spec.extras if extras else ()):
        path = find_file(directory, entry.name)
        if path is None:
            result[entry.role] = MISSING
            continue
        try:
            known = stamp.get(entry.name) == {**fingerprint(path), **pin(entry)}
        except OSError:
            known = False
        status = OK if known else check_file(path, entry)
        if status == OK and not known:
            remember(stamp, entry, path)
            changed = True
        elif status != OK and entry.name in stamp:
            del stamp[entry.name]
            changed = True
        result[entry.role] = status
    if changed:
        save_stamp(directory, stamp)
    return result


def problems(spec: DatasetSpec, statuses: dict[str, str]) -> tuple[list[str], list[str]]:
    missing = [spec.file(role).name for role, s in statuses.items() if s == MISSING]
    bad = [f"{spec.file(role).name} ({PROBLEM[s]})" for role, s in statuses.items() if s not in (OK, MISSING)]
    return missing, bad
