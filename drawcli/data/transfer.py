"""Moving one file's bytes into a ``.part`` file beside its final place: from a URL (urllib, with
retries, backoff and HTTP Range resumes; https only unless the user chose http) or from a local
file, within the size the catalogue allows. download.py decides which sources to try and installs
what passes verification (verify.py). Standard library only; no torch here."""

from __future__ import annotations

import errno
import glob
import hashlib
import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from drawcli.core.errors import DrawError
from drawcli.core.progress import Reporter
from drawcli.core.version import __version__
from drawcli.data.catalogue import DataFile
from drawcli.data.verify import CHUNK

USER_AGENT = f"drawcli/{__version__} (+https://arxiv.org/abs/1502.04623)"

# --------------------------------------------------------------------------- failures


class SourceFailed(Exception):
    """This URL or file cannot supply the file: try the next one. str() is the short reason."""

    def __init__(self, reason: str, unreachable: bool = False):
        super().__init__(reason)
        self.unreachable = unreachable  # the whole host is out: skip it for the other files too


class Transient(Exception):
    """Worth another attempt at the same URL (after a backoff)."""

    def __init__(self, reason: str, responded: bool):
        super().__init__(reason)
        self.responded = responded  # the server had answered before this went wrong


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def describe_failure(exc: BaseException) -> tuple[str, bool, bool]:
    """(short reason, transient, unreachable) for an exception raised while talking to a server."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return describe_failure(reason)
        return one_line(reason), False, True
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate error ({one_line(exc.verify_message or exc)})", False, True
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({one_line(exc.reason or exc)})", False, True
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
        return one_line(exc.strerror or exc), True, False
    return one_line(f"{type(exc).__name__}: {exc}"), False, False


# --------------------------------------------------------------------------- output


def human_size(size: float) -> str:
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


# --------------------------------------------------------------------------- transfer


class RedirectPolicy(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from the https-only mirror list to a plain-http URL."""

    def __init__(self, https_only: bool):
        super().__init__()
        self.https_only = https_only

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if self.https_only and urlsplit(newurl).scheme != "https":
            fp.close()
            raise SourceFailed(f"refused redirect to non-https {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class Options:
    opener: urllib.request.OpenerDirector
    retries: int
    backoff: float
    timeout: float


def _size_limit(entry: DataFile) -> int:
    # A stored file is the data, gzipped or not; gzip never grows data by more than a
    # few bytes per 64 kB block. Anything longer is not the file (or is an endless stream).
    return entry.size + entry.size // 100 + (1 << 20)


def part_path(directory: Path, entry: DataFile, tag: str) -> Path:
    # One part per source URL: a partial download is only ever resumed from the URL that
    # produced it (two mirrors may compress the same data differently).
    return directory / f"{entry.remote}.{hashlib.sha256(tag.encode()).hexdigest()[:10]}.part"


def remove_parts(directory: Path, entry: DataFile) -> None:
    for part in directory.glob(f"{glob.escape(entry.remote)}.*.part"):
        part.unlink(missing_ok=True)


def _fetch_once(url: str, part: Path, entry: DataFile, report: Reporter, opts: Options, midway: bool) -> None:
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
            raise Transient(f"HTTP {e.code}", responded=True) from None
        raise SourceFailed(f"HTTP {e.code}") from None
    except SourceFailed:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        if isinstance(e, ValueError):  # malformed URL
            raise SourceFailed(one_line(e)) from None
        reason, transient, unreachable = describe_failure(e)
        if transient or midway:  # a host that answered a moment ago and now refuses: try again
            raise Transient(reason, responded=False) from None
        raise SourceFailed(reason, unreachable=unreachable) from None

    with response:
        limit = _size_limit(entry)
        if response.status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset:  # not the bytes we asked for: start over cleanly
                part.unlink(missing_ok=True)
                raise Transient(f"server sent bytes from {start}, not {offset}", responded=True)
            mode = "ab"
            report.say(f"  resuming at {human_size(offset)}")
        elif response.status == 200:
            offset, mode = 0, "wb"  # Range ignored (or not sent): the whole file again
        else:
            raise SourceFailed(f"HTTP {response.status}")
        length = _int_or_none(response.headers.get("Content-Length"))
        total = offset + length if length is not None else None
        if total is not None and total > limit:
            raise SourceFailed(f"file is {total} bytes, more than this data file can be")
        report.begin(entry.remote, total, offset)
        received = 0
        with open_part(part, mode) as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise Transient(describe_failure(e)[0], responded=True) from None
                if not chunk:
                    break
                write_chunk(out, chunk, part)
                received += len(chunk)
                report.update(offset + received)
                if offset + received > limit:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise SourceFailed("response is longer than this data file can be")
    # http.client returns b"" when the peer closes early instead of raising; compare ourselves.
    if length is not None and received < length:
        raise Transient(f"connection closed after {human_size(offset + received)} of {human_size(total)}", responded=True)


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


def open_part(part: Path, mode: str):
    try:
        return open(part, mode)
    except OSError as e:
        raise DrawError(f"cannot write {part}: {e.strerror or e}") from None


def write_chunk(out, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as e:
        raise DrawError(f"cannot write {part}: {e.strerror or e}") from None


def fetch(url: str, part: Path, entry: DataFile, report: Reporter, opts: Options) -> bool:
    """Download ``url`` into ``part`` with retries and resume. True when bytes were resumed."""
    resumed = part.exists() and part.stat().st_size > 0
    answered = False  # whether any attempt got a response: refusals after that are transient
    attempt = 0
    report.say(f"fetching {url}")
    while True:
        try:
            _fetch_once(url, part, entry, report, opts, midway=answered)
            return resumed
        except Transient as e:
            answered = answered or e.responded
            if attempt >= opts.retries:
                # Never answered at all: the host is out, not just this file.
                tries = f"{attempt + 1} attempts" if attempt else "1 attempt"
                raise SourceFailed(f"{e} (after {tries})", unreachable=not answered) from None
            delay = opts.backoff * (2**attempt)
            report.say(f"  {e}; retrying in {delay:.1f} s")
            time.sleep(delay)
            attempt += 1
            if part.exists() and part.stat().st_size > 0:
                resumed = True


def copy_file(src: Path, part: Path, entry: DataFile, report: Reporter) -> None:
    report.say(f"copying {src}")
    try:
        total = src.stat().st_size
        if total > _size_limit(entry):
            raise SourceFailed(f"file is {total} bytes, more than this data file can be")
        report.begin(entry.remote, total, 0)
        done = 0
        with open(src, "rb") as inp, open_part(part, "wb") as out:
            while chunk := inp.read(CHUNK):
                write_chunk(out, chunk, part)
                done += len(chunk)
                report.update(done)
    except OSError as e:
        raise SourceFailed(f"cannot read: {e.strerror or e}") from None
