"""`draw serve`: the page and JSON API of drawcli/serve/ on a local address, until Ctrl-C."""

from __future__ import annotations

import importlib
import ipaddress
import socket
import sys

from drawcli.core.errors import DrawError

INSTALL_HINT = 'draw serve needs the serve extra: pip install "drawcli[serve]" (in a clone: pip install -e ".[serve]")'


def check_installed() -> None:
    """One line saying what to install when the serve extra is missing."""
    missing = []
    for name in ("starlette", "uvicorn", "anyio"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DrawError(f"{INSTALL_HINT}; missing: {', '.join(missing)}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_socket(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so that a port in use is one clear line (and --port 0 picks a free one)."""
    if not 0 <= port <= 65535:
        raise DrawError(f"--port: expected 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise DrawError(f"--host {host}: cannot use this address ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise DrawError(f"port {port} on {host} is in use; pick another with --port (0: any free port)") from None
        raise DrawError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if shown in ("::",):
        shown = "::1"
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def serve_command(models: list[str] | None, host: str, port: int, runs_dir: str, device: str = "auto",
                  engine: str = "auto", workers: int = 2, console=None) -> None:
    check_installed()
    from drawcli.core.progress import make_console
    from drawcli.serve.catalogue import Catalogue
    from drawcli.settings import check_command_options

    console = console or make_console()
    check_command_options(device=device, engine=engine)
    if workers < 1 or workers > 64:
        raise DrawError(f"--workers: expected 1..64, got {workers}")
    catalogue = Catalogue(models or None, runs_dir, device)
    count = len(catalogue.entries())
    if count == 0:
        raise DrawError(f"no models to serve: no built-in models and no runs with a checkpoint in {runs_dir}")
    loopback = is_loopback(host)
    sock = open_socket(host, port)

    import dataclasses

    import uvicorn

    from drawcli.serve.app import Limits, create_app

    app = create_app(catalogue, device=device, engine=engine, limits=dataclasses.replace(Limits(), workers=workers),
                     loopback_only=loopback)
    if not loopback:
        console.print(f"warning: --host {host}: anyone on the network who can reach this machine can use the page and its API",
                      style="yellow", highlight=False)
    console.print(f"serving {count} model{'s' * (count != 1)} at {url_of(host, sock)} (Ctrl-C stops it)", highlight=False)
    sys.stdout.flush()  # the URL line, at once, also when stdout is a pipe
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again
        pass
    finally:
        sock.close()
    console.print("stopped", highlight=False)
