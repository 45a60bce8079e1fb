"""`draw serve`'s app without a browser (tests/test_serve_browser.py drives the page): the JSON API
gives the Python API's numbers, models are picked by id only, every bad request is a 4xx with one
line of JSON, and the command starts, warns and stops as it says.

Skipped without the serve extra (pip install -e ".[serve]"; the test extra has it)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason='the serve extra is not installed (pip install -e ".[serve]")')
pytest.importorskip("uvicorn", reason='the serve extra is not installed (pip install -e ".[serve]")')
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (in the test extra)")

from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import drawcli  # noqa: E402
from drawcli.core.errors import DrawError  # noqa: E402
from drawcli.serve import images, work  # noqa: E402
from drawcli.serve.app import Limits, create_app  # noqa: E402
from drawcli.serve.catalogue import Catalogue  # noqa: E402

from helpers import make_colour_run, start_server, url_in  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decoded(text: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.uint8).reshape(shape)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(runs dir, a run outside it): a colour run 'rgb' in runs/, and one in other/ that no request may reach."""
    root = tmp_path_factory.mktemp("serve")
    pictures = root / "pictures"
    pictures.mkdir()
    g = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(g.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(pictures / f"{i:02d}.png")
    make_colour_run(root / "runs", "rgb", pictures, root / "data")
    make_colour_run(root / "other", "secret", pictures, root / "data")
    (root / "runs" / "empty").mkdir()  # a folder with no run in it
    return root / "runs", root / "other"


@pytest.fixture(scope="module")
def client(folders):
    app = create_app(Catalogue(None, folders[0], "cpu"), device="cpu", engine="python",
                     limits=Limits(body=200_000, samples=64, walk_steps=12))
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        yield c


@pytest.fixture(scope="module")
def mnist():
    return drawcli.load("@mnist", device="cpu", engine="python")


def post(client, path, body, **kw):
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json", **kw.pop("headers", {})}, **kw)


def one_line_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in r.text
    return error


# ----------------------------------------------------------------------------- the page and the models
def test_the_page_and_its_files_are_served_with_safe_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script src="/static/app.js"' in r.text and "http://" not in r.text and "https://" not in r.text  # no CDN
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and r.headers["x-content-type-options"] == "nosniff"
    assert "fetch(" in client.get("/static/app.js").text


def test_models_lists_the_builtins_and_the_runs_with_a_checkpoint(client):
    data = client.get("/api/models").json()
    ids = [m["id"] for m in data["models"]]
    assert ids == ["@mnist", "rgb"]  # not 'empty' (no run), not 'secret' (another folder)
    card = data["models"][0]
    assert card["test_elbo"] == 80.94 and card["settings"]["glimpses"] == 64 and card["shape"] == [1, 28, 28]
    assert data["models"][1]["kind"] == "run" and data["models"][1]["dataset"].startswith("folder:")
    assert data["limits"]["samples"] == 64


def test_a_run_trained_while_serving_appears(folders, tmp_path):
    runs = tmp_path / "runs"
    catalogue = Catalogue(None, runs, "cpu")
    assert [m["id"] for m in catalogue.listing()] == ["@mnist"]
    make_colour_run(runs, "later", folders[0] / "rgb", tmp_path / "data")
    assert [m["id"] for m in catalogue.listing()] == ["@mnist", "later"]
    assert catalogue.get("later").id == "later"


def test_models_named_on_the_command_line_are_the_only_ones(folders):
    catalogue = Catalogue(["rgb"], folders[0], "cpu")
    assert [m["id"] for m in catalogue.listing()] == ["rgb"]
    with pytest.raises(DrawError, match="unknown model '@mnist'"):
        catalogue.get("@mnist")
    with pytest.raises(DrawError, match="not found"):
        Catalogue(["nope"], folders[0], "cpu")
    with pytest.raises(DrawError, match="two models"):
        Catalogue(["@mnist", "@mnist"], folders[0], "cpu")


# ----------------------------------------------------------------------------- the numbers are the library's
def test_sample_gives_drawer_sample(client, mnist):
    r = post(client, "/api/sample", {"model": "@mnist", "n": 6, "seed": 3})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["shape"] == [6, 1, 28, 28] and data["model"]["glimpses"] == 64 and data["model"]["write_n"] == 5
    want = np.rint(mnist.sample(6, seed=3).numpy() * 255)
    assert np.abs(decoded(data["images"], data["shape"]).astype(int) - want).max() <= 1


def test_glimpses_give_one_sample_of_the_grid_glimpse_by_glimpse(client, mnist):
    data = post(client, "/api/glimpses", {"model": "@mnist", "n": 6, "seed": 3, "index": 4}).json()
    assert data["shape"] == [64, 1, 28, 28] and len(data["write"]) == 64 and len(data["write"][0]) == 5 and data["read"] is None
    film = mnist.sample_glimpses(6, seed=3)
    frames = decoded(data["canvases"], data["shape"]).astype(int)
    assert np.abs(frames - np.rint(film.canvases[:, 4].numpy() * 255)).max() <= 1
    assert np.allclose(data["write"], film.write[:, 4].numpy(), atol=1e-3)
    assert frames[0].mean() != frames[-1].mean()  # the canvas changes as it is drawn


def test_walk_starts_and_ends_at_the_two_samples(client, mnist):
    data = post(client, "/api/walk", {"model": "@mnist", "n": 6, "seed": 3, "a": 1, "b": 4, "steps": 5}).json()
    row = decoded(data["images"], data["shape"]).astype(int)
    want = np.rint(mnist.sample(6, seed=3).numpy() * 255)
    assert row.shape == (5, 1, 28, 28)
    assert np.abs(row[0] - want[1]).max() <= 1 and np.abs(row[-1] - want[4]).max() <= 1
    assert np.abs(row[2] - want[1]).mean() > 5 and np.abs(row[2] - want[4]).mean() > 5  # the middle is neither


def test_slerp_keeps_the_norm_between_the_two_ends():
    g = np.random.default_rng(0)
    a, b = g.standard_normal((4, 3)), g.standard_normal((4, 3))
    path = work.slerp(a, b, 7)
    assert np.allclose(path[0], a, atol=1e-6) and np.allclose(path[-1], b, atol=1e-6)
    norms = np.linalg.norm(path.reshape(7, -1), axis=1)
    assert np.allclose(norms, np.linspace(np.linalg.norm(a), np.linalg.norm(b), 7), rtol=1e-5)
    assert np.allclose(work.slerp(a, a, 3), a, atol=1e-6)  # the same point: no division by zero


def test_reconstruct_a_drawing_gives_the_apis_canvases_and_elbo(client, mnist):
    pad = np.zeros((280, 280), np.uint8)
    pad[60:220, 130:150] = 255  # a '1', drawn large
    r = post(client, "/api/reconstruct", {"model": "@mnist", "image": "data:image/png;base64," + b64(png_bytes(pad)), "seed": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["shape"] == [64, 1, 28, 28] and len(data["read"]) == 64 and len(data["write"]) == 64
    image = decoded(data["image"], (1, 28, 28))[0]
    ys, xs = np.nonzero(image > 25)
    assert ys.max() - ys.min() + 1 == 20 and 11 <= xs.mean() <= 16  # fitted as MNIST's digits are: 20 high, centred
    seen = mnist.attention(image, seed=2)
    assert np.array_equal(decoded(data["input"], (1, 28, 28)), (seen.inputs[0].numpy() * 255).astype(np.uint8))
    assert np.abs(decoded(data["canvases"], data["shape"]).astype(int) - np.rint(seen.canvases[:, 0].numpy() * 255)).max() <= 1
    b = mnist.bounds(image, samples=1, seed=2)
    assert data["elbo"] == pytest.approx(float(b.elbo[0]), abs=1e-2) and data["elbo"] == pytest.approx(data["lx"] + data["lz"], abs=1e-2)
    assert 5 < data["elbo"] < 300


def test_a_colour_run_works_everywhere(client):
    sample = post(client, "/api/sample", {"model": "rgb", "n": 3, "seed": 0}).json()
    assert sample["shape"] == [3, 3, 12, 10] and sample["model"]["shape"] == [3, 12, 10]
    film = post(client, "/api/glimpses", {"model": "rgb", "n": 3, "seed": 0, "index": 2}).json()
    assert film["shape"] == [3, 3, 12, 10]
    walk = post(client, "/api/walk", {"model": "rgb", "n": 3, "seed": 0, "a": 0, "b": 2, "steps": 4}).json()
    assert walk["shape"] == [4, 3, 12, 10]
    picture = np.zeros((24, 20, 3), np.uint8)
    picture[..., 0] = 200  # red
    data = post(client, "/api/reconstruct", {"model": "rgb", "image": b64(png_bytes(picture))}).json()
    seen = decoded(data["image"], (3, 12, 10))
    assert (seen[0] == 200).all() and (seen[1:] == 0).all()  # resized, channels first, not made grey
    assert data["shape"] == [3, 3, 12, 10] and np.isfinite(data["elbo"])


# ----------------------------------------------------------------------------- pictures
def test_pictures_are_made_grey_inverted_and_fitted():
    paper = np.full((100, 60), 255, np.uint8)
    paper[20:80, 25:35] = 0  # dark ink on white paper
    out = images.prepare(png_bytes(paper), (1, 28, 28))
    assert out.shape == (28, 28) and out[0, 0] == 0 and out.max() > 200  # inverted: white ink on black
    ys, xs = np.nonzero(out > 25)
    assert ys.max() - ys.min() + 1 == 20 and abs(xs.mean() - 13.5) < 1.5
    whole = images.prepare(png_bytes(paper), (1, 28, 28), fit=False, invert=False)
    assert whole[0, 0] == 255  # as it is, resized
    assert not images.prepare(png_bytes(np.zeros((50, 50), np.uint8)), (1, 28, 28)).any()  # nothing drawn: black


@pytest.mark.parametrize("payload, message", [
    ("", "expected a base64"),
    ("not base64!", "not valid base64"),
    (b64(b"GIF89a this is no picture"), "not a picture"),
    (b64(b"%PDF-1.4"), "not a picture"),
])
def test_bad_pictures_are_one_line(payload, message):
    with pytest.raises(DrawError, match=message):
        images.prepare(images.decode_base64(payload), (1, 28, 28))


def test_a_huge_picture_is_refused_before_it_is_decoded():
    buf = io.BytesIO()
    Image.new("L", (5000, 10)).save(buf, format="PNG")  # a few hundred bytes, 5000 pixels wide
    with pytest.raises(DrawError, match="too large"):
        images.prepare(buf.getvalue(), (1, 28, 28))


# ----------------------------------------------------------------------------- safety
@pytest.mark.parametrize("model", [
    "../other/secret", "../../etc/passwd", "/etc/passwd", str(Path("/tmp").resolve()), "runs/rgb", "rgb/../rgb",
    "..%2Fother%2Fsecret", "%2e%2e/other/secret", "..\\other\\secret", "@mnist/../rgb", "@../mnist", "secret", "empty",
    "rgb/checkpoints/last.pt", "", None, 3, ["rgb"],
])
def test_models_are_picked_by_id_only(client, model):
    r = post(client, "/api/sample", {"model": model, "n": 1})
    assert r.status_code in (400, 404)
    one_line_error(r, r.status_code)


@pytest.mark.parametrize("path", [
    "/static/../cli.py", "/static/..%2f..%2fcli.py", "/static/%2e%2e%2fapi.py", "/static/index.html", "/static/",
    "/static/app.js/../../cli.py", "/api/../drawcli/cli.py", "/api/models/..%2f..%2fetc%2fpasswd", "//etc/passwd",
    "/static/%2Fetc%2Fpasswd", "/nope",
])
def test_no_route_reads_a_path_the_client_gives(path, folders):
    """Raw requests, not normalised by a client library, to the real server."""
    status, body = raw_request(server_url(folders), "GET", path)
    assert status == 404, (path, status, body)
    assert json.loads(body) == {"error": "not found"}


@pytest.mark.parametrize("body, status, message", [
    ({"model": "@mnist", "n": 65}, 400, "n: 65 is out of range (1..64)"),
    ({"model": "@mnist", "n": 0}, 400, "out of range"),
    ({"model": "@mnist", "n": "4"}, 400, "expected an integer"),
    ({"model": "@mnist", "n": True}, 400, "expected an integer"),
    ({"model": "@mnist", "seed": -1}, 400, "seed"),
    ({"model": "@mnist", "seed": 2**40}, 400, "seed"),
    ({"model": "@mnist", "path": "/etc/passwd"}, 400, "unknown key 'path'"),
])
def test_bad_sample_requests_are_4xx_json(client, body, status, message):
    assert message in one_line_error(post(client, "/api/sample", body), status)


def test_bad_bodies_are_4xx_json(client):
    assert "over 200000 bytes" in one_line_error(post(client, "/api/reconstruct", {"model": "@mnist", "image": "A" * 300_000}), 413)
    big = json.dumps({"model": "@mnist", "image": "A" * 300_000}).encode()
    chunks = (big[i: i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: counted as it arrives
    r = client.post("/api/reconstruct", content=chunks, headers={"Content-Type": "application/json"})
    one_line_error(r, 413)
    assert "JSON" in one_line_error(client.post("/api/sample", content="n=4", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert "not valid JSON" in one_line_error(client.post("/api/sample", content="{", headers={"Content-Type": "application/json"}), 400)
    assert "JSON object" in one_line_error(post(client, "/api/sample", [1, 2]), 400)
    one_line_error(post(client, "/api/glimpses", {"model": "@mnist", "n": 4, "index": 4}), 400)
    one_line_error(post(client, "/api/walk", {"model": "@mnist", "n": 4, "steps": 13}), 400)
    one_line_error(post(client, "/api/reconstruct", {"model": "@mnist", "image": b64(b"no picture")}), 400)
    one_line_error(post(client, "/api/reconstruct", {"model": "@mnist", "image": b64(png_bytes(np.zeros((9, 9), np.uint8))), "fit": "yes"}), 400)
    one_line_error(client.get("/api/sample"), 405)
    one_line_error(client.post("/api/models"), 405)
    one_line_error(client.get("/api/nope"), 404)


def test_another_host_name_is_refused_on_loopback(client):
    assert "127.0.0.1" in one_line_error(client.get("/api/models", headers={"Host": "evil.example:8765"}), 421)
    assert client.get("/api/models", headers={"Host": "localhost:8765"}).status_code == 200
    assert client.get("/api/models", headers={"Host": "[::1]:8765"}).status_code == 200


def test_too_many_waiting_requests_get_503(folders):
    app = create_app(Catalogue(None, folders[0], "cpu"), device="cpu", engine="python", limits=Limits(workers=1, queue=0))
    server = app.app.state.server
    server.waiting = 1  # one request holds the only worker
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert "busy" in one_line_error(post(c, "/api/sample", {"model": "@mnist", "n": 1}), 503)


# ----------------------------------------------------------------------------- the command
_SERVERS: dict = {}


def server_url(folders) -> str:
    """One real server for the raw-request tests, stopped at the end of the session."""
    if "url" not in _SERVERS:
        proc, lines = start_server(["--runs-dir", str(folders[0]), "--device", "cpu", "--engine", "python"], folders[0].parent)
        _SERVERS.update(proc=proc, url=url_in(lines))
    return _SERVERS["url"]


@pytest.fixture(scope="module", autouse=True)
def _stop_servers():
    yield
    proc = _SERVERS.pop("proc", None)
    _SERVERS.clear()
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def raw_request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    return r.status, r.read().decode()


def test_serve_prints_the_url_warns_on_the_network_and_stops_on_ctrl_c(folders):
    proc, lines = start_server(["@mnist", "--host", "0.0.0.0", "--device", "cpu"], folders[0].parent)
    try:
        assert lines[0].startswith("warning: --host 0.0.0.0: anyone on the network"), lines
        url = url_in(lines)
        assert url.startswith("http://127.0.0.1:") and lines[-1].startswith("serving 1 model at")
        status, body = raw_request(url, "GET", "/api/models", headers={"Host": "192.0.2.1"})
        assert status == 200 and [m["id"] for m in json.loads(body)["models"]] == ["@mnist"]  # any host name off loopback
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert out.strip().splitlines()[-1] == "stopped" and "Traceback" not in out


def test_serve_without_the_extra_says_what_to_install(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name in ('starlette', 'uvicorn'):\n            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    r = subprocess.run([sys.executable, "-m", "drawcli", "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        'error: draw serve needs the serve extra: pip install "drawcli[serve]" (in a clone: pip install -e ".[serve]"); '
        "missing: starlette, uvicorn"]


def test_serve_options_are_checked_in_one_line(folders):
    from helpers import run_cli

    r = run_cli("serve", "nope", "--runs-dir", str(folders[0]))
    assert r.exit_code == 1 and "run 'nope' not found" in r.output
    r = run_cli("serve", "--workers", "0")
    assert r.exit_code == 1 and "--workers" in r.output
    r = run_cli("serve", "--device", "tpu")
    assert r.exit_code == 1 and "tpu" in r.output


def test_a_port_in_use_is_one_line(folders):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        from helpers import run_cli

        r = run_cli("serve", "@mnist", "--port", str(port))
    assert r.exit_code == 1 and f"port {port} on 127.0.0.1 is in use" in r.output

