"""`draw download`: fetch a data set from verified mirrors into the data directory.

Every file goes the same way, whatever it came from (a mirror, ``--from URL`` or
``--from FOLDER``): bytes go to a ``.part`` file, the part is checked against the
registry (sha256 and size of the *decompressed* contents, see datasets.py), and only
then is it renamed into place, as ``NAME.gz`` when the bytes are gzip and ``NAME``
otherwise (data.py reads either). A file that fails the check is deleted; it is never
left under a name the loader would pick up.

Network policy: mirrors are tried in order; timeouts, resets, HTTP 429 and 5xx are
retried with exponential backoff and the transfer resumes with an HTTP ``Range``
request where the server answers 206; 403/404 and friends move on to the next mirror;
a host that cannot be reached at all (refused, unknown, bad certificate) is skipped for
the rest of the run. Without ``--from`` only https mirrors are used, and redirects to
anything but https are refused; ``--from`` accepts http because the user chose it.
A data set whose registry entry says ``http_mirrors`` (svhn: its only host serves
http) may use its plain-http mirrors too: its files are pinned by md5 + exact size.

Files with no sha256 in the registry (svhn, cifar10: published with an md5 only) are
verified by md5 and size of the bytes as downloaded and stored exactly as downloaded
(cifar10's .tar.gz stays a .tar.gz). A data set ``built_from`` another one
(two-digit-mnist) is made locally from that installed set, then verified by sha256
like a download.

Standard library only for the transfer (urllib). No torch at import time: torch is
touched only to coordinate torchrun ranks, and only when torch is already loaded.
"""

from __future__ import annotations

import errno
import glob
import gzip
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drawcli.core.errors import DrawError
from drawcli.core.progress import Reporter, bytes_columns, make_console
from drawcli.core.version import __version__
from drawcli.data.catalogue import DATASETS, DataFile, DatasetSpec, get_spec, is_folder
from drawcli.data.loading import MissingDataset, download_hint, find_file, resolve_data_dir

RETRIES = 3  # extra attempts per URL after a transient failure
BACKOFF_BASE = 1.0  # seconds before the first retry; doubles on each further one
TIMEOUT = 30.0  # seconds a connect or a single read may block
CHUNK = 1 << 16
STAMP_NAME = ".verified.json"  # per data-set directory: what was verified, and when
USER_AGENT = f"drawcli/{__version__} (+https://arxiv.org/abs/1502.04623)"

# Statuses of one file, as verify_dataset reports them.
OK, MISSING, BAD_SIZE, BAD_HASH, UNREADABLE = "ok", "missing", "bad size", "bad hash", "unreadable"
BAD_FILE_SIZE, BAD_MD5, CANNOT_READ = "bad file size", "bad md5", "cannot read"  # files kept as downloaded
_PROBLEM = {
    BAD_SIZE: "wrong size after decompression",
    BAD_HASH: "sha256 mismatch",
    UNREADABLE: "corrupt gzip data",
    BAD_FILE_SIZE: "wrong file size",
    BAD_MD5: "md5 mismatch",
    CANNOT_READ: "cannot be read",
}


# --------------------------------------------------------------------------- failures


class _SourceFailed(Exception):
    """This URL or file cannot supply the file: try the next one. str() is the short reason."""

    def __init__(self, reason: str, unreachable: bool = False):
        super().__init__(reason)
        self.unreachable = unreachable  # the whole host is out: skip it for the other files too


class _Transient(Exception):
    """Worth another attempt at the same URL (after a backoff)."""

    def __init__(self, reason: str, responded: bool):
        super().__init__(reason)
        self.responded = responded  # the server had answered before this went wrong


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> tuple[str, bool, bool]:
    """(short reason, transient, unreachable) for an exception raised while talking to a server."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _describe(reason)
        return _one_line(reason), False, True
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate error ({_one_line(exc.verify_message or exc)})", False, True
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({_one_line(exc.reason or exc)})", False, True
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", False, True
    if isinstance(exc, socket.gaierror):
        return "host not found", False, True
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        return "timed out", True, False
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed by the server", True, False
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "connection reset", True, False
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed mid-transfer", True, False
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response ({type(exc).__name__})", True, False
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "network unreachable", False, True
        return _one_line(exc.strerror or exc), True, False
    return _one_line(f"{type(exc).__name__}: {exc}"), False, False


# --------------------------------------------------------------------------- verification


def _check_file(path: Path, entry: DataFile) -> str:
    """OK, BAD_SIZE, BAD_HASH or UNREADABLE: the decompressed contents against the registry.

    Streams, and stops as soon as the contents outgrow the expected size, so a hostile
    gzip bomb costs no more than reading the real file would.
    """
    if entry.as_downloaded:
        return _check_as_downloaded(path, entry)
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


def _check_as_downloaded(path: Path, entry: DataFile) -> str:
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


def _pin(entry: DataFile) -> dict:
    """What a verification stamp records as the registry's digest for ``entry``."""
    return {"md5": entry.remote_md5} if entry.as_downloaded else {"sha256": entry.sha256}


def _fingerprint(path: Path) -> dict:
    # ctime and inode change on any rewrite, even one that restores mtime and size.
    st = path.stat()
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino}


def _load_stamp(directory: Path) -> dict:
    try:
        stamp = json.loads((directory / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _save_stamp(directory: Path, stamp: dict) -> None:
    tmp = directory / (STAMP_NAME + ".tmp")
    try:
        tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True))
        os.replace(tmp, directory / STAMP_NAME)
    except OSError:
        pass  # read-only data directory: files are simply re-hashed next time


def _remember(stamp: dict, entry: DataFile, path: Path) -> None:
    stamp[entry.name] = {**_fingerprint(path), **_pin(entry)}


def verify_dataset(spec: DatasetSpec, directory: Path, extras: bool = False) -> dict[str, str]:
    """role -> "ok" | "missing" | "bad size" | "bad hash" | "unreadable", for the files in ``directory``.

    (Files kept as downloaded give "bad file size", "bad md5" or "cannot read" instead.)
    ``extras``: also the optional files (svhn's extra set).

    Checks the file the loader would read (``find_file``). A file already verified and
    unchanged since (same size, mtime, ctime and inode, recorded in ``.verified.json``)
    is not hashed again; anything else is hashed in full and the record updated.
    """
    directory = Path(directory)
    stamp = _load_stamp(directory)
    changed = False
    result: dict[str, str] = {}
    for entry in spec.files + (spec.extras if extras else ()):
        path = find_file(directory, entry.name)
        if path is None:
            result[entry.role] = MISSING
            continue
        try:
            known = stamp.get(entry.name) == {**_fingerprint(path), **_pin(entry)}
        except OSError:
            known = False
        status = OK if known else _check_file(path, entry)
        if status == OK and not known:
            _remember(stamp, entry, path)
            changed = True
        elif status != OK and entry.name in stamp:
            del stamp[entry.name]
            changed = True
        result[entry.role] = status
    if changed:
        _save_stamp(directory, stamp)
    return result


# --------------------------------------------------------------------------- output


def _human(size: float) -> str:
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


# --------------------------------------------------------------------------- transfer


class _RedirectPolicy(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from the https-only mirror list to a plain-http URL."""

    def __init__(self, https_only: bool):
        super().__init__()
        self.https_only = https_only

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if self.https_only and urlsplit(newurl).scheme != "https":
            fp.close()
            raise _SourceFailed(f"refused redirect to non-https {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class _Options:
    opener: urllib.request.OpenerDirector
    retries: int
    backoff: float
    timeout: float


def _size_limit(entry: DataFile) -> int:
    # A stored file is the data, gzipped or not; gzip never grows data by more than a
    # few bytes per 64 kB block. Anything longer is not the file (or is an endless stream).
    return entry.size + entry.size // 100 + (1 << 20)


def _part_path(directory: Path, entry: DataFile, tag: str) -> Path:
    # One part per source URL: a partial download is only ever resumed from the URL that
    # produced it (two mirrors may compress the same data differently).
    return directory / f"{entry.remote}.{hashlib.sha256(tag.encode()).hexdigest()[:10]}.part"


def _remove_parts(directory: Path, entry: DataFile) -> None:
    for part in directory.glob(f"{glob.escape(entry.remote)}.*.part"):
        part.unlink(missing_ok=True)


def _fetch_once(url: str, part: Path, entry: DataFile, report: Reporter, opts: _Options, midway: bool) -> None:
    """One HTTP request for ``url``, appending to ``part`` when the server honours Range."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opts.opener.open(request, timeout=opts.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            return  # we already hold every byte (e.g. interrupted before verifying); the check decides
        if e.code == 429 or 500 <= e.code < 600:
            raise _Transient(f"HTTP {e.code}", responded=True) from None
        raise _SourceFailed(f"HTTP {e.code}") from None
    except _SourceFailed:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        if isinstance(e, ValueError):  # malformed URL
            raise _SourceFailed(_one_line(e)) from None
        reason, transient, unreachable = _describe(e)
        if transient or midway:  # a host that answered a moment ago and now refuses: try again
            raise _Transient(reason, responded=False) from None
        raise _SourceFailed(reason, unreachable=unreachable) from None

    with response:
        limit = _size_limit(entry)
        if response.status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset:  # not the bytes we asked for: start over cleanly
                part.unlink(missing_ok=True)
                raise _Transient(f"server sent bytes from {start}, not {offset}", responded=True)
            mode = "ab"
            report.say(f"  resuming at {_human(offset)}")
        elif response.status == 200:
            offset, mode = 0, "wb"  # Range ignored (or not sent): the whole file again
        else:
            raise _SourceFailed(f"HTTP {response.status}")
        length = _int_or_none(response.headers.get("Content-Length"))
        total = offset + length if length is not None else None
        if total is not None and total > limit:
            raise _SourceFailed(f"file is {total} bytes, more than this data file can be")
        report.begin(entry.remote, total, offset)
        received = 0
        with _open_part(part, mode) as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Transient(_describe(e)[0], responded=True) from None
                if not chunk:
                    break
                _write(out, chunk, part)
                received += len(chunk)
                report.update(offset + received)
                if offset + received > limit:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise _SourceFailed("response is longer than this data file can be")
    # http.client returns b"" when the peer closes early instead of raising; compare ourselves.
    if length is not None and received < length:
        raise _Transient(f"connection closed after {_human(offset + received)} of {_human(total)}", responded=True)


def _range_start(header: str | None) -> int | None:
    # "bytes START-END/TOTAL"
    try:
        unit, _, spec = (header or "").partition(" ")
        return int(spec.split("-", 1)[0]) if unit.strip() == "bytes" else None
    except ValueError:
        return None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _open_part(part: Path, mode: str):
    try:
        return open(part, mode)
    except OSError as e:
        raise DrawError(f"cannot write {part}: {e.strerror or e}") from None


def _write(out, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as e:
        raise DrawError(f"cannot write {part}: {e.strerror or e}") from None


def _fetch(url: str, part: Path, entry: DataFile, report: Reporter, opts: _Options) -> bool:
    """Download ``url`` into ``part`` with retries and resume. True when bytes were resumed."""
    resumed = part.exists() and part.stat().st_size > 0
    answered = False  # whether any attempt got a response: refusals after that are transient
    attempt = 0
    report.say(f"fetching {url}")
    while True:
        try:
            _fetch_once(url, part, entry, report, opts, midway=answered)
            return resumed
        except _Transient as e:
            answered = answered or e.responded
            if attempt >= opts.retries:
                # Never answered at all: the host is out, not just this file.
                tries = f"{attempt + 1} attempts" if attempt else "1 attempt"
                raise _SourceFailed(f"{e} (after {tries})", unreachable=not answered) from None
            delay = opts.backoff * (2**attempt)
            report.say(f"  {e}; retrying in {delay:.1f} s")
            time.sleep(delay)
            attempt += 1
            if part.exists() and part.stat().st_size > 0:
                resumed = True


def _copy(src: Path, part: Path, entry: DataFile, report: Reporter) -> None:
    report.say(f"copying {src}")
    try:
        total = src.stat().st_size
        if total > _size_limit(entry):
            raise _SourceFailed(f"file is {total} bytes, more than this data file can be")
        report.begin(entry.remote, total, 0)
        done = 0
        with open(src, "rb") as inp, _open_part(part, "wb") as out:
            while chunk := inp.read(CHUNK):
                _write(out, chunk, part)
                done += len(chunk)
                report.update(done)
    except OSError as e:
        raise _SourceFailed(f"cannot read: {e.strerror or e}") from None


def _install_part(part: Path, entry: DataFile, directory: Path, stamp: dict) -> Path:
    """Move a verified part into place under the name its contents call for."""
    with open(part, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b" and not entry.as_downloaded  # a .tar.gz keeps its own name
    final = directory / (entry.name + ".gz" if gz else entry.name)
    other = directory / (entry.name if gz else entry.name + ".gz")
    try:
        os.replace(part, final)
        other.unlink(missing_ok=True)  # never both forms: data.py would prefer the raw one
        (directory / (entry.name + ".npy")).unlink(missing_ok=True)  # data.py's .amat cache
        _remove_parts(directory, entry)  # partials left by other mirrors or earlier runs
    except OSError as e:
        raise DrawError(f"cannot write {final}: {e.strerror or e}") from None
    _remember(stamp, entry, final)
    _save_stamp(directory, stamp)
    return final


@dataclass
class _Source:
    label: str  # how errors name it: a mirror's base URL, or the URL / path tried
    location: str | Path  # a full URL, or a local file


def _try_source(src: _Source, entry: DataFile, directory: Path, report: Reporter, opts: _Options,
                stamp: dict) -> Path:
    """Fetch or copy one candidate, verify it, and install it. Raises _SourceFailed."""
    part = _part_path(directory, entry, str(src.location))
    retried = False
    try:
        while True:
            if isinstance(src.location, Path):
                _copy(src.location, part, entry, report)
                resumed = False
            else:
                resumed = _fetch(src.location, part, entry, report, opts)
            status = _check_file(part, entry)
            if status == OK:
                final = _install_part(part, entry, directory, stamp)
                how = "md5 and size verified" if entry.as_downloaded else "sha256 verified"
                report.say(f"  {final.name}: {_human(final.stat().st_size)}, {how}")
                return final
            part.unlink(missing_ok=True)  # a file that failed verification is never kept
            if not resumed or retried:
                raise _SourceFailed(f"{_PROBLEM[status]} (corrupt or not the expected file)")
            # Bytes resumed from an earlier run may belong to an older copy: once more from zero.
            report.say(f"  resumed file failed verification ({_PROBLEM[status]}); downloading it again")
            retried = True
    finally:
        report.end()


def _file_sources(spec: DatasetSpec, entry: DataFile, mirrors: tuple[str, ...] | None,
                  source: str | None) -> tuple[list[_Source], list[str]]:
    """Candidates for one file and, for a --from folder, the names looked for."""
    names = list(dict.fromkeys((entry.remote, entry.name, entry.name + ".gz")))
    if source is None:
        return [_Source(base, base + entry.remote) for base in mirrors or ()], []
    folder = _local_folder(source)
    if folder is None:
        base = source if source.endswith("/") else source + "/"
        return [_Source(base + n, base + n) for n in names], []
    found = []
    for d in (folder, folder / spec.name):  # --from DATA_DIR works as well as --from DATA_DIR/NAME
        found += [_Source(str(d / n), d / n) for n in names if (d / n).is_file()]
    return found, names


def _local_folder(source: str) -> Path | None:
    """The folder a --from value names, or None when it is an http(s) URL."""
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urlsplit(source).path))
    elif scheme:
        raise DrawError(f"--from {source}: unsupported URL scheme {scheme!r}; use a folder or an http(s) URL")
    else:
        path = Path(source).expanduser()
    if not path.is_dir():
        raise DrawError(f"--from {source}: no such folder")
    return path


def install_dataset(
    spec: DatasetSpec,
    directory: Path,
    *,
    source: str | None = None,
    mirrors: tuple[str, ...] | None = None,
    allow_http: bool = False,
    force: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    retries: int | None = None,
    backoff: float | None = None,
    timeout: float | None = None,
    extras: bool = False,
) -> int:
    """Download (or copy) every file of ``spec`` that is not present and verified; return how many.

    ``source`` is --from (folder or URL, http allowed). Otherwise ``mirrors`` (default:
    the registry's) are tried in order, https only unless ``allow_http`` (tests) or the
    registry allows http for the set. A set built from another one is built, unless
    ``source`` names a copy of it. ``extras``: the optional files too.
    """
    directory = Path(directory)
    console = console if console is not None else make_console()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DrawError(f"cannot create data directory {directory}: {e.strerror or e}") from None
    files = spec.files + (spec.extras if extras else ())
    statuses = {} if force else verify_dataset(spec, directory, extras)
    todo = [entry for entry in files if force or statuses[entry.role] != OK]
    if not todo:
        return 0
    if spec.built_from and source is None:
        return _build_dataset(spec, directory, todo, console, quiet)
    allow_http = allow_http or spec.http_mirrors
    mirrors = tuple(spec.mirrors if mirrors is None else mirrors)
    from_url = source is not None and _local_folder(source) is None
    opts = _Options(
        opener=urllib.request.build_opener(_RedirectPolicy(https_only=source is None and not allow_http)),
        retries=RETRIES if retries is None else retries,
        backoff=BACKOFF_BASE if backoff is None else backoff,
        timeout=TIMEOUT if timeout is None else timeout,
    )
    if source is None and not mirrors:
        raise DrawError(
            f"data set {spec.name!r} has no mirrors; install it with `{download_hint(spec.name, directory.parent)} --from PATH`"
        )
    dead: dict[str, str] = {}  # host label -> why it cannot be reached (not retried for other files)
    stamp = _load_stamp(directory)
    with Reporter(console, quiet, bytes_columns()) as report:
        for entry in todo:
            if force:
                _remove_parts(directory, entry)
            elif statuses.get(entry.role) not in (None, MISSING):
                report.say(f"{entry.name}: {_PROBLEM[statuses[entry.role]]}; downloading it again")
            sources, looked_for = _file_sources(spec, entry, mirrors, source)
            errors: list[str] = []
            for src in sources:
                host = _host(src.location)
                if source is None and not _allowed(src.location, allow_http):
                    errors.append(f"{src.label} (refused: not https; use --from to allow it)")
                    continue
                if host in dead:
                    errors.append(f"{src.label} ({dead[host]})")
                    continue
                try:
                    _try_source(src, entry, directory, report, opts, stamp)
                    break
                except _SourceFailed as e:
                    errors.append(f"{src.label} ({e})")
                    if e.unreachable and host:
                        dead[host] = str(e)
                    if len(sources) > 1:
                        report.say(f"  {src.label} failed: {e}")
            else:
                raise DrawError(_failure_message(spec, entry, source, errors, looked_for, from_url, directory))
    return len(todo)


def _build_dataset(spec: DatasetSpec, directory: Path, todo: list[DataFile], console: Console, quiet: bool) -> int:
    """Build ``spec`` from its installed source set, verify each file by sha256, install it."""
    from drawcli.data import twodigit

    root = directory.parent
    source = get_spec(spec.built_from)
    statuses = verify_dataset(source, root / source.name)
    if not all(s == OK for s in statuses.values()):
        missing, bad = _problems(source, statuses)
        state = "not installed" if len(missing) == len(statuses) else f"not usable ({', '.join(missing + bad)})"
        raise MissingDataset(
            f"data set {spec.name!r} is built from {source.name!r}, which is {state} in {root}; "
            f"run `draw download {source.name} --data-dir {root}` first"
        )
    stamp = _load_stamp(directory)
    with Reporter(console, quiet) as report:
        report.say(f"building {spec.name} from {root / source.name} (seed {twodigit.SEED})")
        contents = twodigit.build_from_mnist(root / source.name, spec=source)
        for entry in todo:
            part = _part_path(directory, entry, "built")
            with _open_part(part, "wb") as out:
                # gzip (level 6, no timestamp): a tenth of the disk; data.py and the check read either form.
                _write(out, gzip.compress(contents[entry.name], compresslevel=6, mtime=0), part)
            status = _check_file(part, entry)
            if status != OK:
                part.unlink(missing_ok=True)
                raise DrawError(
                    f"built {entry.name} of data set {spec.name!r} does not match the registry ({_PROBLEM[status]}); "
                    f"this drawcli builds it differently from the one that recorded its sha256"
                )
            final = _install_part(part, entry, directory, stamp)
            report.say(f"  {final.name}: {_human(final.stat().st_size)}, sha256 verified")
    return len(todo)


def _allowed(location: str | Path, allow_http: bool) -> bool:
    scheme = urlsplit(str(location)).scheme.lower()
    return scheme == "https" or (allow_http and scheme == "http")


def _host(location: str | Path) -> str | None:
    if isinstance(location, Path):
        return None
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}"


def _failure_message(spec: DatasetSpec, entry: DataFile, source: str | None, errors: list[str],
                     looked_for: list[str], from_url: bool, directory: Path) -> str:
    if source is None:
        return (
            f"could not download {entry.remote} of data set {spec.name!r}: every mirror failed: "
            f"{'; '.join(errors)}. Install it from a copy with `{download_hint(spec.name, directory.parent)} --from PATH_OR_URL`"
        )
    if not errors and not from_url:
        return (
            f"--from {source}: found none of {', '.join(looked_for)} there "
            f"(nor under {spec.name}/); it must hold the files of data set {spec.name!r}"
        )
    return f"could not install {entry.name} of data set {spec.name!r} from {source}: tried {'; '.join(errors)}"


# --------------------------------------------------------------------------- torchrun


def _distributed():
    """torch.distributed when this is an initialised multi-process job, else None.

    Looks at torch only if something already imported it: a process that never loaded
    torch cannot be in a process group, and `draw download` must not pay for the import.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1 or "RANK" not in os.environ or "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


# --------------------------------------------------------------------------- entry points


def _problems(spec: DatasetSpec, statuses: dict[str, str]) -> tuple[list[str], list[str]]:
    missing = [spec.file(role).name for role, s in statuses.items() if s == MISSING]
    bad = [f"{spec.file(role).name} ({_PROBLEM[s]})" for role, s in statuses.items() if s not in (OK, MISSING)]
    return missing, bad


def _ensure_here(spec: DatasetSpec, directory: Path, console: Console | None, quiet: bool) -> None:
    statuses = verify_dataset(spec, directory)
    if all(s == OK for s in statuses.values()):
        return
    missing, bad = _problems(spec, statuses)
    console = console if console is not None else make_console()
    if not quiet:
        if bad and not missing:
            why = f"has corrupt files ({', '.join(bad)})"
        elif len(missing) == len(statuses):
            why = "is not in the data directory"
        else:
            why = f"is incomplete (missing {', '.join(missing + bad)})"
        verb = "building" if spec.built_from else "downloading"  # two-digit-mnist is made, not fetched
        console.print(f"data set {spec.name!r} {why}; {verb} it into {directory}",
                      markup=False, highlight=False, soft_wrap=True)
    install_dataset(spec, directory, console=console, quiet=quiet)


def ensure_dataset(name: str, data_dir: Path, console: Console | None = None, quiet: bool = False) -> None:
    """Make sure ``data_dir/<name>`` holds the verified data set, downloading it if needed.

    Cheap when the set is there (a stat per file, thanks to the verification stamp). In a
    torchrun job only rank 0 downloads; the other ranks wait at a barrier, then check.
    """
    if is_folder(name):
        return  # the user's own folder: nothing to download (data.py says if it is missing)
    spec = get_spec(name)
    directory = Path(data_dir) / spec.name
    dist = _distributed()
    if dist is None:
        _ensure_here(spec, directory, console, quiet)
        return
    if dist.get_rank() == 0:
        try:
            _ensure_here(spec, directory, console, quiet)
        finally:
            dist.barrier()  # even on failure, so the other ranks are not left waiting
        return
    dist.barrier()
    statuses = verify_dataset(spec, directory)
    if not all(s == OK for s in statuses.values()):
        missing, bad = _problems(spec, statuses)
        raise MissingDataset(
            f"rank {dist.get_rank()}: data set {spec.name!r} is not usable in {directory} after rank 0 "
            f"installed it ({', '.join(missing + bad)}); on several machines, put the data directory on a "
            f"shared filesystem or run `{download_hint(spec.name, Path(data_dir))}` on each one"
        )


def _list(console: Console, root: Path, names: list[str]) -> None:
    table = Table(title=f"Data sets in {escape(str(root))}", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("download", justify="right")
    table.add_column("unpacked", justify="right")
    table.add_column("status")
    table.add_column("description")
    for name in names:
        spec = DATASETS[name]
        statuses = verify_dataset(spec, root / spec.name)
        missing, bad = _problems(spec, statuses)
        if bad:
            status = f"[red]corrupt: {escape(', '.join(bad))}[/red]"
        elif not missing:
            status = "[green]present and verified[/green]"
        elif len(missing) == len(statuses):
            status = "[dim]missing[/dim]"
        else:
            status = f"[yellow]incomplete: missing {escape(', '.join(missing))}[/yellow]"
        fetched = _human(spec.download_size)
        fetched = fetched if spec.download_size == spec.size else f"~{fetched}"  # mirrors' gzip levels differ
        table.add_row(escape(name), fetched, _human(spec.size), status, escape(spec.description))
    console.print(table)


def download_command(
    name: str | None,
    data_dir: str | None,
    source: str | None = None,
    force: bool = False,
    quiet: bool = False,
    list_only: bool = False,
    console: Console | None = None,
    extra: bool = False,
) -> None:
    """`draw download NAME [--from PATH_OR_URL] [--force] [--quiet] [--data-dir D]` and `draw download --list`.

    ``extra``: also the set's optional files (svhn's extra_32x32.mat, 1.3 GB).
    """
    console = console if console is not None else make_console()
    root = resolve_data_dir(data_dir)
    if list_only:
        _list(console, root, [get_spec(name).name] if name else list(DATASETS))
        return
    if not name:
        raise DrawError(
            f"name the data set to download: one of {', '.join(DATASETS)} "
            f"(`draw download --list` shows what is installed)"
        )
    spec = get_spec(name)
    directory = root / spec.name
    if extra and not spec.extras:
        raise DrawError(f"--extra: data set {spec.name!r} has no optional files "
                        f"(only {', '.join(n for n, d in DATASETS.items() if d.extras) or 'none'} has)")
    if not force and all(s == OK for s in verify_dataset(spec, directory, extra).values()):
        if not quiet:
            console.print(f"{spec.name}: present and verified in {directory}; nothing to download "
                          f"(--force downloads it again)", markup=False, highlight=False, soft_wrap=True)
        return
    count = install_dataset(spec, directory, source=source, force=force, console=console, quiet=quiet, extras=extra)
    if not quiet:
        console.print(f"{spec.name}: {count} file(s) installed and verified in {directory}",
                      markup=False, highlight=False, soft_wrap=True)
