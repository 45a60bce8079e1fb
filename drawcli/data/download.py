"""Fetching a data set from verified mirrors into the data directory (`draw download`, and
training or evaluation when a set is missing: ensure_dataset).

Every file goes the same way, whatever it came from (a mirror, ``--from URL`` or
``--from FOLDER``): bytes go to a ``.part`` file, the part is checked against the
registry (sha256 and size of the *decompressed* contents, see catalogue.py), and only
then is it renamed into place, as ``NAME.gz`` when the bytes are gzip and ``NAME``
otherwise (loading.py reads either). A file that fails the check is deleted; it is never
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

import gzip
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from drawcli.core.errors import DrawError
from drawcli.core.progress import Reporter, bytes_columns, make_console
from drawcli.data.catalogue import DataFile, DatasetSpec, get_spec, is_folder
from drawcli.data.loading import MissingDataset, download_hint
from drawcli.data.transfer import (
    Options,
    RedirectPolicy,
    SourceFailed,
    copy_file,
    fetch,
    human_size,
    open_part,
    part_path,
    remove_parts,
    write_chunk,
)
from drawcli.data.verify import (
    MISSING,
    OK,
    PROBLEM,
    check_file,
    load_stamp,
    problems,
    remember,
    save_stamp,
    verify_dataset,
)

RETRIES = 3  # extra attempts per URL after a transient failure
BACKOFF_BASE = 1.0  # seconds before the first retry; doubles on each further one
TIMEOUT = 30.0  # seconds a connect or a single read may block



def _install_part(part: Path, entry: DataFile, directory: Path, stamp: dict) -> Path:
    """Move a verified part into place under the name its contents call for."""
    with open(part, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b" and not entry.as_downloaded  # a .tar.gz keeps its own name
    final = directory / (entry.name + ".gz" if gz else entry.name)
    other = directory / (entry.name if gz else entry.name + ".gz")
    try:
        os.replace(part, final)
        other.unlink(missing_ok=True)  # never both forms: loading.py would prefer the raw one
        (directory / (entry.name + ".npy")).unlink(missing_ok=True)  # loading.py's .amat cache
        remove_parts(directory, entry)  # partials left by other mirrors or earlier runs
    except OSError as e:
        raise DrawError(f"cannot write {final}: {e.strerror or e}") from None
    remember(stamp, entry, final)
    save_stamp(directory, stamp)
    return final


@dataclass
class _Source:
    label: str  # how errors name it: a mirror's base URL, or the URL / path tried
    location: str | Path  # a full URL, or a local file


def _try_source(src: _Source, entry: DataFile, directory: Path, report: Reporter, opts: Options,
                stamp: dict) -> Path:
    """Fetch or copy one candidate, verify it, and install it. Raises SourceFailed."""
    part = part_path(directory, entry, str(src.location))
    retried = False
    try:
        while True:
            if isinstance(src.location, Path):
                copy_file(src.location, part, entry, report)
                resumed = False
            else:
                resumed = fetch(src.location, part, entry, report, opts)
            status = check_file(part, entry)
            if status == OK:
                final = _install_part(part, entry, directory, stamp)
                how = "md5 and size verified" if entry.as_downloaded else "sha256 verified"
                report.say(f"  {final.name}: {human_size(final.stat().st_size)}, {how}")
                return final
            part.unlink(missing_ok=True)  # a file that failed verification is never kept
            if not resumed or retried:
                raise SourceFailed(f"{PROBLEM[status]} (corrupt or not the expected file)")
            # Bytes resumed from an earlier run may belong to an older copy: once more from zero.
            report.say(f"  resumed file failed verification ({PROBLEM[status]}); downloading it again")
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


def check_source(source: str) -> None:
    """A --from value: an http(s) URL, or a folder that exists (else a one-line DrawError)."""
    _local_folder(source)


@dataclass(frozen=True)
class Patience:
    """How long a source is tried: ``retries`` more attempts after a transient failure, ``backoff``
    seconds before the first of them (doubling on each further one), ``timeout`` seconds a connect or
    a single read may block. None: the module's RETRIES, BACKOFF_BASE, TIMEOUT, read when used."""

    retries: int | None = None
    backoff: float | None = None
    timeout: float | None = None


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
    extras: bool = False,
    patience: Patience | None = None,
) -> int:
    """Download (or copy) every file of ``spec`` that is not present and verified; return how many.

    ``source`` is --from (folder or URL, http allowed). Otherwise ``mirrors`` (default:
    the registry's) are tried in order, https only unless ``allow_http`` (tests) or the
    registry allows http for the set. A set built from another one is built, unless
    ``source`` names a copy of it. ``extras``: the optional files too. ``patience``: how long each
    source is tried (default: RETRIES, BACKOFF_BASE and TIMEOUT).
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
    opts = Options(
        opener=urllib.request.build_opener(RedirectPolicy(https_only=source is None and not allow_http)),
        retries=RETRIES if patience is None or patience.retries is None else patience.retries,
        backoff=BACKOFF_BASE if patience is None or patience.backoff is None else patience.backoff,
        timeout=TIMEOUT if patience is None or patience.timeout is None else patience.timeout,
    )
    if source is None and not mirrors:
        raise DrawError(
            f"data set {spec.name!r} has no mirrors; install it with `{download_hint(spec.name, directory.parent)} --from PATH`"
        )
    dead: dict[str, str] = {}  # host label -> why it cannot be reached (not retried for other files)
    stamp = load_stamp(directory)
    with Reporter(console, quiet, bytes_columns()) as report:
        for entry in todo:
            if force:
                remove_parts(directory, entry)
            elif statuses.get(entry.role) not in (None, MISSING):
                report.say(f"{entry.name}: {PROBLEM[statuses[entry.role]]}; downloading it again")
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
                except SourceFailed as e:
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
        missing, bad = problems(source, statuses)
        state = "not installed" if len(missing) == len(statuses) else f"not usable ({', '.join(missing + bad)})"
        raise MissingDataset(
            f"data set {spec.name!r} is built from {source.name!r}, which is {state} in {root}; "
            f"run `draw download {source.name} --data-dir {root}` first"
        )
    stamp = load_stamp(directory)
    with Reporter(console, quiet) as report:
        report.say(f"building {spec.name} from {root / source.name} (seed {twodigit.SEED})")
        contents = twodigit.build_from_mnist(root / source.name, spec=source)
        for entry in todo:
            part = part_path(directory, entry, "built")
            with open_part(part, "wb") as out:
                # gzip (level 6, no timestamp): a tenth of the disk; loading.py and the check read either form.
                write_chunk(out, gzip.compress(contents[entry.name], compresslevel=6, mtime=0), part)
            status = check_file(part, entry)
            if status != OK:
                part.unlink(missing_ok=True)
                raise DrawError(
                    f"built {entry.name} of data set {spec.name!r} does not match the registry ({PROBLEM[status]}); "
                    f"this drawcli builds it differently from the one that recorded its sha256"
                )
            final = _install_part(part, entry, directory, stamp)
            report.say(f"  {final.name}: {human_size(final.stat().st_size)}, sha256 verified")
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


def _ensure_here(spec: DatasetSpec, directory: Path, console: Console | None, quiet: bool) -> None:
    statuses = verify_dataset(spec, directory)
    if all(s == OK for s in statuses.values()):
        return
    missing, bad = problems(spec, statuses)
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
        return  # the user's own folder: nothing to download (loading.py says if it is missing)
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
        missing, bad = problems(spec, statuses)
        raise MissingDataset(
            f"rank {dist.get_rank()}: data set {spec.name!r} is not usable in {directory} after rank 0 "
            f"installed it ({', '.join(missing + bad)}); on several machines, put the data directory on a "
            f"shared filesystem or run `{download_hint(spec.name, Path(data_dir))}` on each one"
        )
