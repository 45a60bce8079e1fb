"""`draw download`: mirrors, retries, resume, verification, --from, --list, idempotence.

Everything runs against an HTTP server on 127.0.0.1 started here (no network). Real
MNIST (DRAW_TEST_MNIST, through conftest's ``mnist_dir``) is downloaded twice in the
whole file; the failure modes use small synthetic data sets registered for the test.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from drawcli.commands import download as download_cmd
from drawcli.core.errors import DrawError
from drawcli.data import catalogue as datasets
from drawcli.data import download, transfer, verify
from drawcli.data import loading as data
from drawcli.data.catalogue import DataFile, DatasetSpec

# --------------------------------------------------------------------------- local HTTP server


class MirrorServer(http.server.ThreadingHTTPServer):
    """Serves folders under URL prefixes, with switchable misbehaviour, and logs every request.

    ``mounts``: prefix -> folder (``/m1/x.gz`` reads ``mounts["m1"] / "x.gz"``).
    ``missing``: prefixes or full paths answered with 404.
    ``cut``: path -> K: the first request for it sends the headers of the full file, K bytes, and hangs up.
    ``fail``: path -> list of status codes to answer (one per request) before behaving.
    ``corrupt``: paths whose served bytes have one byte flipped.
    ``ranges``: honour ``Range`` (206) when True, ignore it (200, whole file) when False.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mounts: dict[str, Path] = {}
        self.missing: set[str] = set()
        self.cut: dict[str, int] = {}
        self.fail: dict[str, list[int]] = {}
        self.corrupt: set[str] = set()
        self.ranges = True
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        # A client that hangs up mid-file (the tests make them) is expected: no traceback in the log.
        pass

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{prefix}/"

    def requests(self, prefix: str = "") -> list[tuple[str, str | None, int]]:
        with self.lock:
            return [r for r in self.log if r[0].startswith(f"/{prefix}")]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: MirrorServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _record(self, status: int) -> None:
        with self.server.lock:
            self.server.log.append((self.path, self.headers.get("Range"), status))

    def do_GET(self):
        srv = self.server
        path = self.path
        prefix, _, rest = path.lstrip("/").partition("/")
        with srv.lock:
            forced = srv.fail.get(path)
            status = forced.pop(0) if forced else None
            cut = srv.cut.pop(path, None)
        if status is not None:
            return self._error(status)
        folder = srv.mounts.get(prefix)
        file = folder / rest if folder is not None else None
        if path in srv.missing or f"/{prefix}/" in srv.missing or file is None or not file.is_file():
            return self._error(404)
        body = file.read_bytes()
        if path in srv.corrupt:
            body = body[:-100] + bytes([body[-100] ^ 0xFF]) + body[-99:]
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
            if start >= len(body):
                return self._error(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self._record(206)
        else:
            self.send_response(200)
            self._record(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if cut is not None:  # promise the whole file, send K bytes, hang up
            self.wfile.write(body[start : start + cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def _error(self, status: int):
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server():
    srv = MirrorServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No proxy may capture 127.0.0.1, and no backoff slows the suite down."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(download, "BACKOFF_BASE", 0.0)
    monkeypatch.setattr(download, "TIMEOUT", 5.0)


def closed_port_url(prefix: str) -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{prefix}/"


def quiet_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=False), out


# --------------------------------------------------------------------------- synthetic data sets


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _entry(role: str, name: str, raw: bytes, remote: str) -> DataFile:
    return DataFile(role, name, hashlib.sha256(raw).hexdigest(), len(raw), remote)


@dataclasses.dataclass
class Synthetic:
    spec: DatasetSpec
    raw: dict[str, bytes]  # file name -> decompressed contents
    gz_dir: Path  # the files as a mirror holds them (gzipped, remote names)
    raw_dir: Path  # the same files decompressed, under their plain names


def make_idx_set(root: Path, name: str = "tiny", n_train: int = 40, n_test: int = 12, seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    arrays = {
        ("train_images", "train-images-idx3-ubyte"): rng.integers(0, 256, (n_train, 28, 28)),
        ("train_labels", "train-labels-idx1-ubyte"): rng.integers(0, 10, (n_train,)),
        ("test_images", "t10k-images-idx3-ubyte"): rng.integers(0, 256, (n_test, 28, 28)),
        ("test_labels", "t10k-labels-idx1-ubyte"): rng.integers(0, 10, (n_test,)),
    }
    files = {fname: _idx(a) for (_, fname), a in arrays.items()}
    entries = tuple(_entry(role, fname, files[fname], fname + ".gz") for role, fname in arrays)
    return _write_set(root, DatasetSpec(name=name, description="synthetic IDX set", files=entries, mirrors=()), files)


def make_amat_set(root: Path, name: str = "tiny-bin", rows: tuple[int, int, int] = (30, 8, 8)) -> Synthetic:
    rng = np.random.default_rng(1)
    files, entries = {}, []
    roles = ("train_images", "valid_images", "test_images")
    for role, split, n in zip(roles, ("train", "valid", "test"), rows, strict=True):
        pixels = rng.integers(0, 2, (n, 784))
        text = "".join(" ".join(str(int(v)) for v in row) + "\n" for row in pixels).encode()
        fname = f"binarized_mnist_{split}.amat"
        files[fname] = text
        entries.append(_entry(role, fname, text, fname))  # served uncompressed, like Larochelle's
    spec = DatasetSpec(name=name, description="synthetic amat set", files=tuple(entries), mirrors=(),
                       kind="amat", prebinarized=True, splits=("train", "valid", "test"))
    return _write_set(root, spec, files, gzip_remote=False)


def _write_set(root: Path, spec: DatasetSpec, files: dict[str, bytes], gzip_remote: bool = True) -> Synthetic:
    gz_dir, raw_dir = root / f"{spec.name}-mirror", root / f"{spec.name}-raw"
    gz_dir.mkdir(parents=True)
    raw_dir.mkdir(parents=True)
    for entry in spec.files:
        body = files[entry.name]
        (raw_dir / entry.name).write_bytes(body)
        (gz_dir / entry.remote).write_bytes(gzip.compress(body, mtime=0) if gzip_remote else body)
    return Synthetic(spec, files, gz_dir, raw_dir)


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Synthetic:
    """A small IDX data set named 'tiny', registered in the registry for this test."""
    syn = make_idx_set(tmp_path / "src")
    monkeypatch.setitem(datasets.DATASETS, syn.spec.name, syn.spec)
    return syn


def install(spec, directory, mirrors, **kw):
    """The mirror path of `draw download`, with http allowed for the local server."""
    console, out = quiet_console()
    kw.setdefault("allow_http", True)
    download.install_dataset(spec, directory, mirrors=tuple(mirrors), console=console, **kw)
    return out.getvalue()


def installed(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def stored(directory: Path, syn: Synthetic, gz: bool) -> list[str]:
    return sorted([e.name + (".gz" if gz else "") for e in syn.spec.files] + [verify.STAMP_NAME])


# --------------------------------------------------------------------------- real MNIST


@pytest.fixture
def mnist_mirror(mnist_dir, tmp_path) -> Path:
    """DRAW_TEST_MNIST laid out as a mirror: each file under its remote name."""
    mirror = tmp_path / "mnist-mirror"
    mirror.mkdir()
    for entry in datasets.MNIST.files:
        src = mnist_dir / entry.remote
        (mirror / entry.remote).symlink_to(src if src.is_file() else mnist_dir / entry.name)
    return mirror


def test_mnist_first_mirror_404_second_used_then_loadable(server, mnist_mirror, tmp_path):
    server.mounts["good"] = mnist_mirror
    server.missing.add("/bad/")
    root = tmp_path / "data"
    mirrors = [server.url("bad"), server.url("good")]

    log = install(datasets.MNIST, root / "mnist", mirrors)

    assert [s for _, _, s in server.requests("bad")] == [404] * 4
    assert [s for _, _, s in server.requests("good")] == [200] * 4
    assert "HTTP 404" in log and "sha256 verified" in log
    assert verify.verify_dataset(datasets.MNIST, root / "mnist") == {e.role: "ok" for e in datasets.MNIST.files}
    assert not list((root / "mnist").glob("*.part"))
    splits = data.load_splits("mnist", root)
    assert splits.train.shape == (60000, 28, 28) and splits.eval.shape == (10000, 28, 28)
    assert splits.train.dtype == np.uint8 and splits.train.max() == 255

    # Second run: present and verified, not one request.
    before = len(server.requests())
    console, out = quiet_console()
    download_cmd.download_command("mnist", str(root), console=console)
    assert "present and verified" in out.getvalue()
    assert len(server.requests()) == before


def test_mnist_from_local_folder(mnist_dir, tmp_path):
    console, out = quiet_console()
    download_cmd.download_command("mnist", str(tmp_path / "data"), source=str(mnist_dir), console=console)
    assert "4 file(s) installed and verified" in out.getvalue()
    assert all(s == "ok" for s in verify.verify_dataset(datasets.MNIST, tmp_path / "data" / "mnist").values())


# --------------------------------------------------------------------------- mirrors and failures


def test_download_verifies_and_stores_as_downloaded(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    target = tmp_path / "data" / "tiny"
    install(tiny.spec, target, [server.url("m")])
    assert installed(target) == stored(target, tiny, gz=True)
    for entry in tiny.spec.files:
        assert gzip.decompress((target / (entry.name + ".gz")).read_bytes()) == tiny.raw[entry.name]
    splits = data.load_splits("tiny", tmp_path / "data")
    assert splits.train.shape == (40, 28, 28) and splits.eval.shape == (12, 28, 28)


def test_first_mirror_404_second_mirror_used(server, tiny, tmp_path):
    server.mounts["a"] = tiny.gz_dir
    server.mounts["b"] = tiny.gz_dir
    server.missing.add("/a/")
    install(tiny.spec, tmp_path / "tiny", [server.url("a"), server.url("b")])
    assert [s for *_, s in server.requests("a")] == [404] * 4
    assert [s for *_, s in server.requests("b")] == [200] * 4


def test_connection_cut_mid_file_is_resumed_with_range(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    path = "/m/train-images-idx3-ubyte.gz"
    server.cut[path] = 5000
    install(tiny.spec, tmp_path / "tiny", [server.url("m")])
    assert server.requests("m/train-images") == [(path, None, 200), (path, "bytes=5000-", 206)]
    assert verify.verify_dataset(tiny.spec, tmp_path / "tiny")["train_images"] == "ok"


def test_connection_cut_and_range_ignored_restarts_from_zero(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    server.ranges = False
    path = "/m/train-images-idx3-ubyte.gz"
    server.cut[path] = 5000
    install(tiny.spec, tmp_path / "tiny", [server.url("m")])
    assert server.requests("m/train-images") == [(path, None, 200), (path, "bytes=5000-", 200)]
    assert verify.verify_dataset(tiny.spec, tmp_path / "tiny")["train_images"] == "ok"


def test_partial_file_from_an_interrupted_run_is_resumed(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    path = "/m/train-images-idx3-ubyte.gz"
    server.cut[path] = 3000
    with pytest.raises(DrawError, match="connection closed after"):
        install(tiny.spec, tmp_path / "tiny", [server.url("m")], patience=download.Patience(retries=0))
    assert len(list((tmp_path / "tiny").glob("*.part"))) == 1  # kept for the next run
    install(tiny.spec, tmp_path / "tiny", [server.url("m")])
    assert server.requests("m/train-images")[-1] == (path, "bytes=3000-", 206)
    assert not list((tmp_path / "tiny").glob("*.part"))
    assert all(s == "ok" for s in verify.verify_dataset(tiny.spec, tmp_path / "tiny").values())


def test_server_errors_are_retried(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    path = "/m/t10k-labels-idx1-ubyte.gz"
    server.fail[path] = [503, 429]
    install(tiny.spec, tmp_path / "tiny", [server.url("m")])
    assert [s for *_, s in server.requests("m/t10k-labels")] == [503, 429, 200]


def test_corrupt_byte_is_rejected_and_never_installed(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    server.corrupt.add("/m/train-images-idx3-ubyte.gz")
    target = tmp_path / "tiny"
    with pytest.raises(DrawError) as err:
        install(tiny.spec, target, [server.url("m")])
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and "every mirror failed" in message
    assert server.url("m") in message
    assert "sha256 mismatch" in message or "corrupt gzip" in message
    assert not (target / "train-images-idx3-ubyte").exists()
    assert not (target / "train-images-idx3-ubyte.gz").exists()
    assert not list(target.glob("*.part"))


def test_corrupt_first_mirror_falls_back_to_second(server, tiny, tmp_path):
    server.mounts["a"] = tiny.gz_dir
    server.mounts["b"] = tiny.gz_dir
    server.corrupt.add("/a/t10k-images-idx3-ubyte.gz")
    install(tiny.spec, tmp_path / "tiny", [server.url("a"), server.url("b")])
    assert [p for p, *_ in server.requests("b")] == ["/b/t10k-images-idx3-ubyte.gz"]
    assert all(s == "ok" for s in verify.verify_dataset(tiny.spec, tmp_path / "tiny").values())


def test_oversized_response_is_refused(server, tiny, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "train-images-idx3-ubyte.gz").write_bytes(os.urandom(tiny.spec.files[0].size * 2 + (2 << 20)))
    server.mounts["m"] = big
    with pytest.raises(DrawError, match="more than this data file can be"):
        install(tiny.spec, tmp_path / "tiny", [server.url("m")])
    assert installed(tmp_path / "tiny") == []


def test_all_mirrors_refused_one_clear_line(tiny, tmp_path):
    mirrors = [closed_port_url("one"), closed_port_url("two")]
    with pytest.raises(DrawError) as err:
        install(tiny.spec, tmp_path / "tiny", mirrors)
    message = str(err.value)
    assert "\n" not in message
    for mirror in mirrors:
        assert f"{mirror} (connection refused)" in message
    assert "--from" in message and "tiny" in message
    assert installed(tmp_path / "tiny") == []


def test_http_mirror_refused_without_from(server, tiny, tmp_path, monkeypatch):
    server.mounts["m"] = tiny.gz_dir
    with pytest.raises(DrawError, match=r"refused: not https.*--from"):
        install(tiny.spec, tmp_path / "a", [server.url("m")], allow_http=False)
    # The CLI path is https-only too: the registry's mirror is http here.
    monkeypatch.setitem(datasets.DATASETS, "tiny", dataclasses.replace(tiny.spec, mirrors=(server.url("m"),)))
    console, _ = quiet_console()
    with pytest.raises(DrawError, match="refused: not https"):
        download_cmd.download_command("tiny", str(tmp_path / "b"), console=console)
    assert server.requests() == []


@pytest.fixture
def hangup_mirror():
    """A host that accepts connections and closes them without an HTTP answer; counts them."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.02)
    accepted, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/x/", accepted
    stop.set()
    thread.join()
    sock.close()


def test_host_that_never_answers_is_skipped_for_the_other_files(server, tiny, tmp_path, hangup_mirror):
    dead_url, accepted = hangup_mirror
    server.mounts["m"] = tiny.gz_dir
    log = install(tiny.spec, tmp_path / "tiny", [dead_url, server.url("m")], patience=download.Patience(retries=2))
    assert len(accepted) == 3  # the first file's three attempts; then the host is written off
    assert len(server.requests("m")) == 4
    assert "(after 3 attempts)" in log  # "connection reset" or "closed by the server", by timing


def test_complete_part_from_an_interrupted_run_is_verified_not_refetched(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    target = tmp_path / "tiny"
    target.mkdir()
    entry = tiny.spec.files[1]
    url = server.url("m") + entry.remote
    transfer.part_path(target, entry, url).write_bytes((tiny.gz_dir / entry.remote).read_bytes())
    install(tiny.spec, target, [server.url("m")])
    size = (tiny.gz_dir / entry.remote).stat().st_size
    assert server.requests("m/" + entry.remote) == [("/m/" + entry.remote, f"bytes={size}-", 416)]
    assert verify.verify_dataset(tiny.spec, target)[entry.role] == "ok"


def test_stale_part_that_fails_verification_is_downloaded_again(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    target = tmp_path / "tiny"
    target.mkdir()
    entry = tiny.spec.files[0]
    url = server.url("m") + entry.remote
    transfer.part_path(target, entry, url).write_bytes(b"\x1f\x8b" + b"stale bytes of another copy")
    log = install(tiny.spec, target, [server.url("m")])
    assert [(r, s) for _, r, s in server.requests("m/" + entry.remote)] == [("bytes=29-", 206), (None, 200)]
    assert "downloading it again" in log
    assert verify.verify_dataset(tiny.spec, target)[entry.role] == "ok"


# --------------------------------------------------------------------------- --from


@pytest.mark.parametrize("variant", ["gz", "raw"])
def test_from_folder(tiny, tmp_path, variant):
    folder = tiny.gz_dir if variant == "gz" else tiny.raw_dir
    console, out = quiet_console()
    download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(folder), console=console)
    target = tmp_path / "data" / "tiny"
    assert installed(target) == stored(target, tiny, gz=variant == "gz")
    assert data.load_splits("tiny", tmp_path / "data").train.shape == (40, 28, 28)
    assert "4 file(s) installed and verified" in out.getvalue()


def test_one_form_only_after_reinstall(tiny, tmp_path):
    console, _ = quiet_console()
    download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(tiny.raw_dir), console=console)
    download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(tiny.gz_dir), force=True, console=console)
    assert installed(tmp_path / "data" / "tiny") == stored(tmp_path / "data" / "tiny", tiny, gz=True)


def test_from_folder_holding_the_dataset_folder(tiny, tmp_path):
    parent = tmp_path / "copy"
    (parent / "tiny").mkdir(parents=True)
    for f in tiny.raw_dir.iterdir():
        (parent / "tiny" / f.name).write_bytes(f.read_bytes())
    console, _ = quiet_console()
    download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(parent), console=console)
    assert all(s == "ok" for s in verify.verify_dataset(tiny.spec, tmp_path / "data" / "tiny").values())


def test_from_folder_with_corrupt_file(tiny, tmp_path):
    bad = tiny.raw_dir / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-1] + b"\x63")
    console, _ = quiet_console()
    with pytest.raises(DrawError, match=r"t10k-labels-idx1-ubyte.*sha256 mismatch"):
        download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(tiny.raw_dir), console=console)
    target = tmp_path / "data" / "tiny"
    assert not (target / "t10k-labels-idx1-ubyte").exists() and not list(target.glob("*.part"))


def test_from_missing_or_empty_folder(tiny, tmp_path):
    console, _ = quiet_console()
    with pytest.raises(DrawError, match="no such folder"):
        download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(tmp_path / "nope"), console=console)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DrawError, match="found none of train-images-idx3-ubyte.gz"):
        download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(tmp_path / "empty"), console=console)


def test_from_url_then_idempotent_then_force(server, tiny, tmp_path):
    server.mounts["m"] = tiny.raw_dir  # decompressed files: found under their plain names
    console, out = quiet_console()
    root = str(tmp_path / "data")
    download_cmd.download_command("tiny", root, source=server.url("m").rstrip("/"), console=console)
    # For each file: remote name (.gz) 404s, then the plain name is served.
    assert [s for *_, s in server.requests()] == [404, 200] * 4
    assert installed(tmp_path / "data" / "tiny") == stored(tmp_path / "data" / "tiny", tiny, gz=False)

    count = len(server.requests())
    download_cmd.download_command("tiny", root, source=server.url("m"), console=console)
    assert len(server.requests()) == count
    assert "present and verified" in out.getvalue()

    download_cmd.download_command("tiny", root, source=server.url("m"), force=True, console=console)
    assert [s for *_, s in server.requests()[count:]] == [404, 200] * 4
    assert all(s == "ok" for s in verify.verify_dataset(tiny.spec, tmp_path / "data" / "tiny").values())


def test_from_url_all_candidates_missing(server, tiny, tmp_path):
    server.mounts["m"] = tmp_path  # holds none of the files
    console, _ = quiet_console()
    with pytest.raises(DrawError) as err:
        download_cmd.download_command("tiny", str(tmp_path / "data"), source=server.url("m"), console=console)
    message = str(err.value)
    assert "\n" not in message and message.count("HTTP 404") == 2  # remote name (= name.gz), plain name


# --------------------------------------------------------------------------- verification stamp and --list


def test_changed_file_is_verified_again(tiny, tmp_path):
    console, _ = quiet_console()
    download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(tiny.raw_dir), console=console)
    target = tmp_path / "data" / "tiny"
    assert (target / verify.STAMP_NAME).is_file()
    f = target / "train-labels-idx1-ubyte"
    st = f.stat()
    body = bytearray(f.read_bytes())
    body[20] ^= 1
    f.write_bytes(bytes(body))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert verify.verify_dataset(tiny.spec, target)["train_labels"] == "bad hash"
    # The bad file is replaced on the next run, without --force.
    download_cmd.download_command("tiny", str(tmp_path / "data"), source=str(tiny.raw_dir), console=console)
    assert verify.verify_dataset(tiny.spec, target)["train_labels"] == "ok"


def test_list_shows_every_dataset_and_status(tiny, tmp_path):
    root = tmp_path / "data"
    console, out = quiet_console()
    download_cmd.download_command(None, str(root), list_only=True, console=console)
    table = out.getvalue()
    for name in ("mnist", "fashion-mnist", "binarized-mnist", "tiny"):
        assert name in table
    assert "present and verified" not in table and "missing" in table
    assert "55.0 MB" in table  # mnist's decompressed size

    download_cmd.download_command("tiny", str(root), source=str(tiny.gz_dir), console=console)
    console, out = quiet_console()
    download_cmd.download_command("tiny", str(root), list_only=True, console=console)
    assert "present and verified" in out.getvalue()

    (root / "tiny" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip")
    console, out = quiet_console()
    download_cmd.download_command("tiny", str(root), list_only=True, console=console)
    assert "corrupt" in out.getvalue() and "t10k-images-idx3-ubyte" in out.getvalue()

    (root / "tiny" / "t10k-images-idx3-ubyte.gz").unlink()
    console, out = quiet_console()
    download_cmd.download_command("tiny", str(root), list_only=True, console=console)
    assert "incomplete" in out.getvalue()


def test_names_are_checked(tmp_path):
    console, _ = quiet_console()
    with pytest.raises(DrawError, match="mnist, fashion-mnist, binarized-mnist"):
        download_cmd.download_command(None, str(tmp_path), console=console)
    with pytest.raises(DrawError, match=r"unknown data set 'mnits' \(did you mean 'mnist'\?\); known data sets: mnist"):
        download_cmd.download_command("mnits", str(tmp_path), console=console)


# --------------------------------------------------------------------------- the other data sets


def test_binarized_mnist_checksums_and_parser(server, tmp_path, monkeypatch):
    syn = make_amat_set(tmp_path / "src", name="binarized-mnist")
    spec = dataclasses.replace(datasets.BINARIZED_MNIST, files=syn.spec.files)
    monkeypatch.setitem(datasets.DATASETS, "binarized-mnist", spec)
    server.mounts["m"] = syn.gz_dir
    server.corrupt.add("/m/binarized_mnist_valid.amat")
    root = tmp_path / "data"
    with pytest.raises(DrawError, match=r"binarized_mnist_valid.amat.*sha256 mismatch"):
        install(spec, root / "binarized-mnist", [server.url("m")])
    assert not (root / "binarized-mnist" / "binarized_mnist_valid.amat").exists()

    server.corrupt.clear()
    install(spec, root / "binarized-mnist", [server.url("m")])
    assert installed(root / "binarized-mnist") == stored(root, syn, gz=False)
    splits = data.load_splits("binarized-mnist", root, validation=True)
    assert splits.train.shape == (30, 28, 28) and splits.eval.shape == (8, 28, 28)
    assert set(np.unique(splits.train)) <= {0, 255}
    expected = np.array(syn.raw["binarized_mnist_train.amat"].split(), dtype=np.uint8).reshape(30, 28, 28) * 255
    np.testing.assert_array_equal(splits.train, expected)


def test_fashion_mnist_from_url(server, tmp_path, monkeypatch):
    syn = make_idx_set(tmp_path / "src", name="fashion-mnist", n_train=20, n_test=6, seed=3)
    spec = dataclasses.replace(datasets.FASHION_MNIST, files=syn.spec.files)
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist", spec)
    server.mounts["fm"] = syn.gz_dir
    console, _ = quiet_console()
    download_cmd.download_command("fashion-mnist", str(tmp_path / "data"), source=server.url("fm"), console=console)
    splits = data.load_splits("fashion-mnist", tmp_path / "data")
    assert splits.train.shape == (20, 28, 28) and splits.eval.shape == (6, 28, 28)
    assert splits.train.tobytes() == syn.raw["train-images-idx3-ubyte"][16:]


def test_registry_mirrors_are_usable():
    for spec in datasets.DATASETS.values():
        files = spec.files + spec.extras
        assert len({e.remote for e in files}) == len(files)
        if spec.built_from:  # made locally: no mirror, and every file pinned by sha256
            assert not spec.mirrors and spec.built_from in datasets.DATASETS, spec.name
            assert all(e.sha256 for e in files), spec.name
            continue
        # Plain http only where the registry says so, and then every file is pinned by md5 + size.
        scheme = "http://" if spec.http_mirrors else "https://"
        assert spec.mirrors and spec.mirrors[0].startswith(scheme), spec.name
        assert all(m.endswith("/") for m in spec.mirrors), spec.name
        if spec.http_mirrors:
            assert all(e.remote_md5 and e.size for e in files), spec.name
        for e in files:  # either the sha256 of the contents, or md5 + size of the bytes as downloaded
            assert (e.sha256 is not None and len(e.sha256) == 64) or (e.as_downloaded and len(e.remote_md5) == 32)


# --------------------------------------------------------------------------- draw train's entry point


def test_ensure_dataset_downloads_missing_set_once(server, tiny, tmp_path, monkeypatch):
    server.mounts["m"] = tiny.gz_dir
    monkeypatch.setitem(datasets.DATASETS, "tiny", dataclasses.replace(tiny.spec, mirrors=(server.url("m"),)))
    # The registry's mirror is plain http here; the real code path runs with http allowed.
    monkeypatch.setattr(download, "install_dataset", functools.partial(download.install_dataset, allow_http=True))
    console, out = quiet_console()
    download.ensure_dataset("tiny", tmp_path / "data", console=console)
    assert "not in the data directory; downloading it" in out.getvalue()
    assert len(server.requests()) == 4
    console, out = quiet_console()
    download.ensure_dataset("tiny", tmp_path / "data", console=console)
    assert out.getvalue() == "" and len(server.requests()) == 4


def test_ensure_dataset_offline_fails_with_the_clear_message(tiny, tmp_path, monkeypatch):
    mirror = closed_port_url("m").replace("http://", "https://")
    monkeypatch.setitem(datasets.DATASETS, "tiny", dataclasses.replace(tiny.spec, mirrors=(mirror,)))
    console, _ = quiet_console()
    with pytest.raises(DrawError, match=r"every mirror failed: https://127\.0\.0\.1:\d+/m/ \(connection refused\)"):
        download.ensure_dataset("tiny", tmp_path / "data", console=console, quiet=True)


class FakeDist:
    def __init__(self, rank: int, log: list):
        self.rank, self.log = rank, log

    def get_rank(self):
        return self.rank

    def barrier(self):
        self.log.append(("barrier", self.rank))


def test_torchrun_only_rank0_downloads(tiny, tmp_path, monkeypatch):
    log: list = []
    calls: list = []
    real = download.install_dataset

    def counting_install(spec, directory, **kw):
        calls.append(spec.name)
        return real(spec, directory, source=str(tiny.gz_dir), **kw)

    monkeypatch.setattr(download, "install_dataset", counting_install)
    console, _ = quiet_console()
    monkeypatch.setattr(download, "_distributed", lambda: FakeDist(1, log))
    with pytest.raises(data.MissingDataset, match="rank 1"):  # rank 0 has not installed it
        download.ensure_dataset("tiny", tmp_path / "data", console=console)
    assert calls == [] and log == [("barrier", 1)]

    monkeypatch.setattr(download, "_distributed", lambda: FakeDist(0, log))
    download.ensure_dataset("tiny", tmp_path / "data", console=console)
    assert calls == ["tiny"] and log[-1] == ("barrier", 0)

    monkeypatch.setattr(download, "_distributed", lambda: FakeDist(1, log))
    download.ensure_dataset("tiny", tmp_path / "data", console=console)  # now present: passes
    assert calls == ["tiny"] and log[-1] == ("barrier", 1)


def test_distributed_needs_an_initialised_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    if "torch" in sys.modules:
        import torch.distributed as dist

        assert not dist.is_initialized()
    assert download._distributed() is None


# --------------------------------------------------------------------------- output and imports


def test_progress_bar_on_terminal_and_silence_when_quiet(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, width=120)
    download.install_dataset(tiny.spec, tmp_path / "a", mirrors=(server.url("m"),), allow_http=True, console=terminal)
    assert "\x1b[" in out.getvalue() and "train-images-idx3-ubyte.gz" in out.getvalue()

    out = io.StringIO()
    download.install_dataset(tiny.spec, tmp_path / "b", mirrors=(server.url("m"),), allow_http=True,
                             console=Console(file=out, force_terminal=True), quiet=True)
    assert out.getvalue() == ""
    assert all(s == "ok" for s in verify.verify_dataset(tiny.spec, tmp_path / "b").values())


def test_import_does_not_load_torch():
    code = "import sys, drawcli.data.download; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_draw_train_downloads_a_missing_set_then_trains_on_fashion_mnist(server, tmp_path, monkeypatch):
    """`draw train --dataset fashion-mnist` fetches the missing set through the same code, then trains."""
    from typer.testing import CliRunner

    from drawcli.cli import app
    from drawcli.runs import checkpoint

    syn = make_idx_set(tmp_path / "src", name="fashion-mnist", n_train=20, n_test=6, seed=4)
    server.mounts["fm"] = syn.gz_dir
    spec = dataclasses.replace(datasets.FASHION_MNIST, files=syn.spec.files, mirrors=(server.url("fm"),))
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist", spec)
    monkeypatch.setattr(download, "install_dataset", functools.partial(download.install_dataset, allow_http=True))
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--steps", "2",
            "--hidden", "8", "--embed", "2", "-b", "10", "--max-steps", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "downloading it" in result.output
    assert data.load_splits("fashion-mnist", tmp_path / "data").train.shape == (20, 28, 28)
    assert checkpoint.load(tmp_path / "runs" / "run1" / "checkpoints" / "last.pt")["step"] == 2
    assert len(server.requests("fm")) == 4  # once each file, not again for training


# --------------------------------------------------------------------------- svhn, cifar10 (md5 + size)


def _md5_entry(entry: DataFile, body: bytes) -> DataFile:
    """The registry entry, pinned to a test file: md5 + size of the bytes as downloaded."""
    return dataclasses.replace(entry, size=len(body), remote_md5=hashlib.md5(body).hexdigest())


@pytest.fixture
def svhn_files(tmp_path, server, monkeypatch):
    """svhn's registry entry pointed at small real-format .mat files on the local server (plain http)."""
    from colour_files import svhn_mat

    mirror = tmp_path / "svhn-mirror"
    mirror.mkdir()
    arrays = {}
    for name, n, seed in (("train_32x32.mat", 6, 1), ("test_32x32.mat", 4, 2), ("extra_32x32.mat", 3, 3)):
        body, arrays[name] = svhn_mat(n, seed)
        (mirror / name).write_bytes(body)
    server.mounts["svhn"] = mirror
    spec = dataclasses.replace(
        datasets.SVHN,
        files=tuple(_md5_entry(e, (mirror / e.remote).read_bytes()) for e in datasets.SVHN.files),
        extras=tuple(_md5_entry(e, (mirror / e.remote).read_bytes()) for e in datasets.SVHN.extras),
        mirrors=(server.url("svhn"),),
    )
    monkeypatch.setitem(datasets.DATASETS, "svhn", spec)
    return spec, arrays


def test_svhn_downloads_over_http_verified_by_md5_and_loads(server, svhn_files, tmp_path):
    spec, arrays = svhn_files
    assert spec.http_mirrors and spec.mirrors[0].startswith("http://")
    console, out = quiet_console()
    # No allow_http: the registry allows this set's http mirror because md5 + size pin every file.
    download_cmd.download_command("svhn", str(tmp_path / "data"), console=console)
    target = tmp_path / "data" / "svhn"
    assert "md5 and size verified" in out.getvalue() and "2 file(s) installed" in out.getvalue()
    assert [p for p, *_ in server.requests("svhn")] == ["/svhn/train_32x32.mat", "/svhn/test_32x32.mat"]  # no extra
    assert installed(target) == [verify.STAMP_NAME, "test_32x32.mat", "train_32x32.mat"]
    assert (target / "train_32x32.mat").read_bytes() == (server.mounts["svhn"] / "train_32x32.mat").read_bytes()
    stamp = verify.load_stamp(target)
    assert stamp["train_32x32.mat"]["md5"] == spec.file("train_images").remote_md5 and "sha256" not in stamp["train_32x32.mat"]
    splits = data.load_splits("svhn", tmp_path / "data")
    np.testing.assert_array_equal(splits.train, arrays["train_32x32.mat"])
    np.testing.assert_array_equal(splits.eval, arrays["test_32x32.mat"])

    # Present and verified: nothing fetched again. --extra fetches the extra file alone.
    count = len(server.requests())
    download_cmd.download_command("svhn", str(tmp_path / "data"), console=console)
    assert len(server.requests()) == count
    download_cmd.download_command("svhn", str(tmp_path / "data"), console=console, extra=True)
    assert [p for p, *_ in server.requests()[count:]] == ["/svhn/extra_32x32.mat"]
    assert verify.verify_dataset(spec, target, extras=True)["extra_images"] == "ok"
    np.testing.assert_array_equal(data.load_images(spec, target, "extra_images"), arrays["extra_32x32.mat"])


@pytest.mark.parametrize("fault", ["corrupt", "truncated-on-server"])
def test_svhn_file_failing_md5_or_size_is_never_installed(server, svhn_files, tmp_path, fault):
    spec, _ = svhn_files
    if fault == "corrupt":
        server.corrupt.add("/svhn/test_32x32.mat")
        problem = "md5 mismatch"
    else:
        body = (server.mounts["svhn"] / "test_32x32.mat").read_bytes()
        (server.mounts["svhn"] / "test_32x32.mat").write_bytes(body[:-10])
        problem = "wrong file size"
    console, _ = quiet_console()
    with pytest.raises(DrawError) as e:
        download_cmd.download_command("svhn", str(tmp_path / "data"), console=console)
    assert "test_32x32.mat of data set 'svhn': every mirror failed" in str(e.value) and problem in str(e.value)
    target = tmp_path / "data" / "svhn"
    assert "test_32x32.mat" not in installed(target) and not list(target.glob("*.part"))


def test_svhn_file_changed_on_disk_is_caught(svhn_files, tmp_path):
    spec, _ = svhn_files
    console, _ = quiet_console()
    download_cmd.download_command("svhn", str(tmp_path / "data"), console=console)
    f = tmp_path / "data" / "svhn" / "train_32x32.mat"
    body = bytearray(f.read_bytes())
    body[-1] ^= 1
    f.write_bytes(bytes(body))
    assert verify.verify_dataset(spec, f.parent)["train_images"] == "bad md5"
    f.write_bytes(bytes(body[:-1]))
    assert verify.verify_dataset(spec, f.parent)["train_images"] == "bad file size"


def test_extra_is_only_for_sets_that_have_one(tmp_path):
    console, _ = quiet_console()
    with pytest.raises(DrawError, match="--extra: data set 'mnist' has no optional files \\(only svhn has\\)"):
        download_cmd.download_command("mnist", str(tmp_path), console=console, extra=True)


@pytest.fixture
def cifar_file(tmp_path, server, monkeypatch):
    from colour_files import cifar_archive

    mirror = tmp_path / "cifar-mirror"
    mirror.mkdir()
    body, expected = cifar_archive(per_batch=3, n_test=2, seed=7)
    (mirror / "cifar-10-python.tar.gz").write_bytes(body)
    server.mounts["cifar"] = mirror
    spec = dataclasses.replace(datasets.CIFAR10, files=(_md5_entry(datasets.CIFAR10.files[0], body),))
    monkeypatch.setitem(datasets.DATASETS, "cifar10", spec)
    return spec, body, expected


def test_cifar10_downloads_kept_as_tar_gz_and_loads(server, cifar_file, tmp_path):
    spec, body, expected = cifar_file
    target = tmp_path / "data" / "cifar10"
    log = install(spec, target, [server.url("cifar")])
    assert "md5 and size verified" in log
    # gzip bytes, but kept under its own name: the md5 is of the .tar.gz itself.
    assert installed(target) == [verify.STAMP_NAME, "cifar-10-python.tar.gz"]
    assert (target / "cifar-10-python.tar.gz").read_bytes() == body
    assert verify.verify_dataset(spec, target) == {"archive": "ok"}
    splits = data.load_splits("cifar10", tmp_path / "data")
    np.testing.assert_array_equal(splits.train, expected["train_images"])
    np.testing.assert_array_equal(splits.eval, expected["test_images"])
    assert installed(target) == [verify.STAMP_NAME, "cifar-10-python.tar.gz", "test_images.npy", "train_images.npy"]


def test_cifar10_from_url_and_corrupt_copy(server, cifar_file, tmp_path):
    spec, body, _ = cifar_file
    server.corrupt.add("/cifar/cifar-10-python.tar.gz")
    console, _ = quiet_console()
    with pytest.raises(DrawError, match=r"cifar-10-python.tar.gz.*md5 mismatch"):
        download_cmd.download_command("cifar10", str(tmp_path / "data"), source=server.url("cifar"), console=console)
    assert installed(tmp_path / "data" / "cifar10") == []
    server.corrupt.clear()
    download_cmd.download_command("cifar10", str(tmp_path / "data"), source=server.url("cifar"), console=console)
    assert verify.verify_dataset(spec, tmp_path / "data" / "cifar10") == {"archive": "ok"}


def test_http_mirror_still_refused_for_other_sets(server, tiny, tmp_path):
    server.mounts["m"] = tiny.gz_dir
    console, _ = quiet_console()
    with pytest.raises(DrawError, match="refused: not https; use --from to allow it"):
        download.install_dataset(tiny.spec, tmp_path / "t", mirrors=(server.url("m"),), console=console)
    assert server.requests() == []


def test_list_shows_the_new_sets_with_sizes(tmp_path):
    console, out = quiet_console()
    download_cmd.download_command(None, str(tmp_path), list_only=True, console=console)
    table = out.getvalue()
    for name, size in (("svhn", "246.3 MB"), ("cifar10", "170.5 MB"), ("two-digit-mnist", "254.2 MB")):
        row = next(line for line in table.splitlines() if f" {name} " in line)
        assert size in row and "missing" in row, row
    assert "folder" not in table


def test_list_shows_download_and_unpacked_sizes(tmp_path):
    from helpers import run_cli

    r = run_cli("download", "--list", "--data-dir", tmp_path)
    assert r.exit_code == 0, r.output
    mnist = next(line for line in r.stdout.splitlines() if " mnist " in line)
    assert "download" in r.stdout and "unpacked" in r.stdout
    assert "~11.6 MB" in mnist and "55.0 MB" in mnist


# --------------------------------------------------------------------------- two-digit-mnist (built here)


def _synthetic_mnist(tmp_path, monkeypatch) -> Path:
    """DATA_DIR with a verified synthetic 'mnist' (40 train, 12 test digits) standing in for the real one."""
    syn = make_idx_set(tmp_path / "src", name="mnist", n_train=40, n_test=12, seed=5)
    monkeypatch.setitem(datasets.DATASETS, "mnist", syn.spec)
    root = tmp_path / "data"
    console, _ = quiet_console()
    download_cmd.download_command("mnist", str(root), source=str(syn.gz_dir), console=console)
    return root


def test_two_digit_mnist_is_built_verified_and_loaded(tmp_path, monkeypatch):
    from drawcli.data import twodigit

    root = _synthetic_mnist(tmp_path, monkeypatch)
    built = twodigit.build_from_mnist(root / "mnist", spec=datasets.DATASETS["mnist"])
    files = tuple(dataclasses.replace(e, sha256=hashlib.sha256(built[e.name]).hexdigest(), size=len(built[e.name]))
                  for e in datasets.TWO_DIGIT_MNIST.files)
    spec = dataclasses.replace(datasets.TWO_DIGIT_MNIST, files=files)
    monkeypatch.setitem(datasets.DATASETS, "two-digit-mnist", spec)

    console, out = quiet_console()
    download_cmd.download_command("two-digit-mnist", str(root), console=console)
    assert "building two-digit-mnist from" in out.getvalue() and "4 file(s) installed and verified" in out.getvalue()
    target = root / "two-digit-mnist"
    assert installed(target) == sorted([e.name + ".gz" for e in files] + [verify.STAMP_NAME])
    assert all(s == "ok" for s in verify.verify_dataset(spec, target).values())
    splits = data.load_splits("two-digit-mnist", root)
    assert splits.train.shape == (40, 60, 60) and splits.eval.shape == (12, 60, 60) and splits.spec.channels == 1
    assert splits.train.tobytes() == built["train-images-idx3-ubyte"][16:]
    layout = twodigit.load_layout(target, "test")
    assert layout.shape == (12, 8) and (layout[:, 0] == np.arange(12)).all()

    # Present and verified: not built again; ensure_dataset (draw train's path) agrees.
    console, out = quiet_console()
    download_cmd.download_command("two-digit-mnist", str(root), console=console)
    assert "nothing to download" in out.getvalue()
    download.ensure_dataset("two-digit-mnist", root, console=console)


def test_two_digit_mnist_built_differently_is_refused(tmp_path, monkeypatch):
    root = _synthetic_mnist(tmp_path, monkeypatch)  # not the real MNIST: the registry's sha256 cannot match
    console, _ = quiet_console()
    with pytest.raises(DrawError, match=r"built train-images-idx3-ubyte of data set 'two-digit-mnist' does not match "
                                        r"the registry \(wrong size after decompression\)"):
        download_cmd.download_command("two-digit-mnist", str(root), console=console)
    assert installed(root / "two-digit-mnist") == []


def test_two_digit_mnist_needs_mnist_first(tmp_path):
    console, _ = quiet_console()
    root = tmp_path / "data"
    with pytest.raises(DrawError) as e:
        download_cmd.download_command("two-digit-mnist", str(root), console=console)
    assert str(e.value) == (f"data set 'two-digit-mnist' is built from 'mnist', which is not installed in {root}; "
                            f"run `draw download mnist --data-dir {root}` first")
    with pytest.raises(data.MissingDataset, match=r"run `draw download two-digit-mnist --data-dir \S+` \(it is built from mnist\)"):
        data.load_splits("two-digit-mnist", root)


def test_two_digit_mnist_from_real_mnist_matches_the_registry(mnist_dir, tmp_path):
    """Built from the real MNIST, the files have the sha256 recorded in the registry, and hold both digits."""
    from drawcli.data import twodigit

    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for f in mnist_dir.iterdir():
        (root / "mnist" / f.name).symlink_to(f.resolve())
    console, out = quiet_console()
    download_cmd.download_command("two-digit-mnist", str(root), console=console)
    assert "4 file(s) installed and verified" in out.getvalue()
    splits = data.load_splits("two-digit-mnist", root)
    assert splits.train.shape == (60000, 60, 60) and splits.eval.shape == (10000, 60, 60)
    mnist = data.load_splits("mnist", root)
    for split, images, digits in (("train", splits.train, mnist.train), ("test", splits.eval, mnist.eval)):
        layout = twodigit.load_layout(root / "two-digit-mnist", split)
        for i in range(0, len(images), 997):
            a, ra, ca, _, b, rb, cb, _ = layout[i]
            assert (images[i, ra : ra + 28, ca : ca + 28] >= digits[a]).all()
            assert (images[i, rb : rb + 28, cb : cb + 28] >= digits[b]).all()


def test_a_from_folder_that_does_not_exist_is_an_error_even_when_installed(server, tiny, tmp_path):
    server.mounts["m"] = tiny.raw_dir
    console, out = quiet_console()
    root = str(tmp_path / "data")
    download_cmd.download_command("tiny", root, source=server.url("m"), console=console)
    assert all(s == "ok" for s in verify.verify_dataset(tiny.spec, tmp_path / "data" / "tiny").values())
    with pytest.raises(DrawError, match="^--from /nonexistent: no such folder$"):
        download_cmd.download_command("tiny", root, source="/nonexistent", console=console)
