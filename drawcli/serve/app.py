"""The web app of `draw serve`: the page (drawcli/serve/static/) and its JSON API under /api/.

Routes (docs/serve.md has examples):

    GET  /                    the page                  GET /static/app.js, /static/style.css
    GET  /api/models          the models and their cards
    POST /api/sample          {model, n, seed}                 -> n samples from the prior
    POST /api/glimpses        {model, n, seed, index}          -> one of them, glimpse by glimpse
    POST /api/reconstruct     {model, image, seed, fit, invert} -> a picture read and drawn again, with its ELBO
    POST /api/walk            {model, n, seed, a, b, steps}    -> a latent walk between two samples

Safe by default: only the static files named in STATIC are served (looked up by name, never
joined to a path); models are picked by id among the catalogue's (drawcli/serve/catalogue.py);
bodies, counts and pictures have limits (Limits); POST bodies must be JSON; a request whose Host
is not this machine's is refused while the server listens on a loopback address (DNS rebinding);
every error is a 4xx (or 503 when too busy) with one line of JSON, {"error": "..."}. Model work runs
in worker threads, at most ``workers`` at a time, with at most ``queue`` requests waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import sys
from importlib import resources

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drawcli.core.errors import DrawError
from drawcli.serve import images, work
from drawcli.serve.catalogue import Catalogue, UnknownModel

STATIC = {  # name -> media type: the only files served
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True)
class Limits:
    body: int = 1_000_000  # bytes of one request body
    samples: int = 256  # n of /api/sample, /api/glimpses and /api/walk
    walk_steps: int = 32  # pictures of one latent walk
    seed: int = 2**32 - 1
    workers: int = 2  # model calls at the same time (threads)
    queue: int = 64  # requests waiting for a worker; more get 503


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class Server:
    """The state behind the routes: the catalogue, the loaded models, the limits and the workers."""

    def __init__(self, catalogue: Catalogue, device: str = "auto", engine: str = "auto", limits: Limits = Limits()):
        self.catalogue, self.limits = catalogue, limits
        self.models = work.Models(catalogue, device, engine)
        self.static = {name: (resources.files("drawcli.serve") / "static" / name).read_bytes() for name in STATIC}
        # A fixed pool of worker threads for the model work: the same few threads (and their memory
        # arenas) serve every request, so memory settles under load instead of spreading over new threads.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="draw-serve")
        self.waiting = 0

    # ------------------------------------------------------------------ requests
    async def body(self, request: Request) -> dict:
        """The JSON object of a POST body, within the size limit (checked as it arrives)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, "send the request body as JSON (Content-Type: application/json)")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.body):
            raise ApiError(413, f"request body over {self.limits.body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limits.body:
                raise ApiError(413, f"request body over {self.limits.body} bytes")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    def integer(self, data: dict, key: str, default: int | None, low: int, high: int) -> int:
        value = data.get(key, default)
        if value is None:
            raise ApiError(400, f"{key}: missing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(400, f"{key}: expected an integer, got {json.dumps(value)[:40]}")
        if not low <= value <= high:
            raise ApiError(400, f"{key}: {value} is out of range ({low}..{high})")
        return value

    def flag(self, data: dict, key: str, default):
        value = data.get(key, default)
        if value is not None and not isinstance(value, bool):
            raise ApiError(400, f"{key}: expected true, false or null")
        return value

    def unknown_keys(self, data: dict, allowed: tuple[str, ...]) -> None:
        extra = sorted(set(data) - set(allowed))
        if extra:
            raise ApiError(400, f"unknown key {extra[0][:40]!r} (expected {', '.join(allowed)})")

    async def run(self, fn, *args):
        """Model work in one of the ``workers`` threads; at most ``queue`` requests wait for one (else 503)."""
        if self.waiting >= self.limits.queue + self.limits.workers:
            raise ApiError(503, "the server is busy; try again in a moment")
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.waiting -= 1

    # ------------------------------------------------------------------ routes
    async def page(self, request: Request) -> Response:
        return Response(self.static["index.html"], media_type=STATIC["index.html"])

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC or name == "index.html":
            raise ApiError(404, "not found")
        return Response(self.static[name], media_type=STATIC[name])

    async def list_models(self, request: Request) -> Response:
        listing = await anyio.to_thread.run_sync(self.catalogue.listing)
        return JSONResponse({"models": listing, "limits": dataclasses.asdict(self.limits)})

    def _counts(self, data: dict) -> tuple[int, int]:
        return (self.integer(data, "n", 16, 1, self.limits.samples), self.integer(data, "seed", 0, 0, self.limits.seed))

    async def sample(self, request: Request) -> Response:
        data = await self.body(request)
        self.unknown_keys(data, ("model", "n", "seed"))
        n, seed = self._counts(data)

        def job():
            entry, drawer = self.models.get(data.get("model"))
            return {"model": work.model_info(drawer, entry), **work.sample(drawer, n, seed)}

        return JSONResponse(await self.run(job))

    async def glimpses(self, request: Request) -> Response:
        data = await self.body(request)
        self.unknown_keys(data, ("model", "n", "seed", "index"))
        n, seed = self._counts(data)
        index = self.integer(data, "index", 0, 0, n - 1)

        def job():
            entry, drawer = self.models.get(data.get("model"))
            return {"model": work.model_info(drawer, entry), **work.glimpses(drawer, n, seed, index)}

        return JSONResponse(await self.run(job))

    async def walk(self, request: Request) -> Response:
        data = await self.body(request)
        self.unknown_keys(data, ("model", "n", "seed", "a", "b", "steps"))
        n, seed = self._counts(data)
        a = self.integer(data, "a", 0, 0, n - 1)
        b = self.integer(data, "b", min(1, n - 1), 0, n - 1)
        steps = self.integer(data, "steps", 8, 2, self.limits.walk_steps)

        def job():
            entry, drawer = self.models.get(data.get("model"))
            return {"model": work.model_info(drawer, entry), **work.walk(drawer, n, seed, a, b, steps)}

        return JSONResponse(await self.run(job))

    async def reconstruct(self, request: Request) -> Response:
        data = await self.body(request)
        self.unknown_keys(data, ("model", "image", "seed", "fit", "invert"))
        seed = self.integer(data, "seed", 0, 0, self.limits.seed)
        fit = self.flag(data, "fit", True)
        invert = self.flag(data, "invert", None)
        raw = images.decode_base64(data.get("image"))

        def job():
            entry, drawer = self.models.get(data.get("model"))
            picture = images.prepare(raw, drawer.image_shape, fit=bool(fit), invert=invert)
            return {"model": work.model_info(drawer, entry), **work.reconstruct(drawer, picture, seed)}

        return JSONResponse(await self.run(job))


def _errors(handler):
    """Every failure as a 4xx (or 503) with one line of JSON; a bug as a 500 with one line too,
    its traceback only on the server's stderr."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.message)
        except UnknownModel as e:
            return error_response(404, str(e))
        except DrawError as e:
            return error_response(400, str(e))
        except Exception as e:  # noqa: BLE001 - the client gets one line, the console the details
            import traceback

            traceback.print_exc(file=sys.stderr)
            return error_response(500, f"internal error ({type(e).__name__}); see the server's console")

    return wrapped


def _http_error(request: Request, exc: HTTPException) -> Response:
    return error_response(exc.status_code, "not found" if exc.status_code == 404 else exc.detail)


class Guard:
    """ASGI middleware: refuses requests whose Host is not a loopback name while the server listens on
    loopback (a page elsewhere cannot reach it by DNS rebinding), and adds the security headers."""

    def __init__(self, app, loopback_only: bool):
        self.app, self.loopback_only = app, loopback_only

    @staticmethod
    def host_name(value: str) -> str:
        value = value.strip().lower()
        if value.startswith("["):  # [::1]:8765
            return value[1:].split("]")[0]
        return value.rsplit(":", 1)[0] if value.count(":") == 1 else value

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.loopback_only:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if self.host_name(host) not in LOOPBACK_HOSTS:
                return await error_response(421, "this server answers only to 127.0.0.1 and localhost")(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, with_headers)


def create_app(catalogue: Catalogue, device: str = "auto", engine: str = "auto", limits: Limits = Limits(),
               loopback_only: bool = True):
    """The ASGI app: the page and its API, for the models of ``catalogue``."""
    server = Server(catalogue, device, engine, limits)
    routes = [
        Route("/", _errors(server.page), methods=["GET"]),
        Route("/static/{name}", _errors(server.static_file), methods=["GET"]),
        Route("/api/models", _errors(server.list_models), methods=["GET"]),
        Route("/api/sample", _errors(server.sample), methods=["POST"]),
        Route("/api/glimpses", _errors(server.glimpses), methods=["POST"]),
        Route("/api/reconstruct", _errors(server.reconstruct), methods=["POST"]),
        Route("/api/walk", _errors(server.walk), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.server = server
    return Guard(app, loopback_only)
