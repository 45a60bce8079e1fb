"""How `draw serve` holds up on this machine: a 64-sample grid's latency, and a load test.

    python benchmarks/serve.py                       # @mnist: grid latency, then 32 clients x 20 requests
    python benchmarks/serve.py --clients 8 --requests 5 --grid-requests 10     # a quick look
    python benchmarks/serve.py --out serve.json

It starts the real command (`python -m drawcli serve @mnist --port 0`, on 127.0.0.1 only) and talks
to it over HTTP with the standard library, nothing else:

1. grid: ``--grid-requests`` requests of /api/sample with n = 64, one at a time, each with a new
   seed (what the page sends when you press Sample): p50, p95 and max latency, after warm-up;
2. load: ``--clients`` threads, each with its own connection, each sending ``--requests`` requests
   that cycle through the page's calls (models, sample n = 16, glimpses of one sample, reconstruct
   a 280 x 280 drawing, a latent walk of 8, a 64-sample grid), all at once: errors (anything but
   200), latency p50, p95 and max, requests per second, and the server's resident memory before
   the load and after each of ``--rounds`` identical rounds (stable memory: later rounds add little).

Every request has a 120 s timeout and the whole run stops by itself; the server is stopped with
Ctrl-C (SIGINT) at the end. Numbers are printed, never asserted (tests/test_serve.py tests the app).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(model: str, engine: str, workers: int) -> tuple[subprocess.Popen, str, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "drawcli", "serve", model, "--port", "0", "--engine", engine,
                             "--workers", str(workers), "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "serving" in line:
            url = next(w for w in line.split() if w.startswith("http://"))
            host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, host, int(port)
    proc.kill()
    raise SystemExit(f"draw serve did not start: {line!r}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Client:
    def __init__(self, host: str, port: int):
        self.conn = http.client.HTTPConnection(host, port, timeout=120)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, float]:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        t = time.perf_counter()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            status = 0
        return status, time.perf_counter() - t


def drawing() -> str:
    from PIL import Image, ImageDraw

    pad = Image.new("L", (280, 280))
    ImageDraw.Draw(pad).line([(80, 60), (200, 60), (120, 230)], fill=255, width=18)
    buf = io.BytesIO()
    pad.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def page_calls(model: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/api/models", None),
        ("POST", "/api/sample", {"model": model, "n": 16, "seed": 1}),
        ("POST", "/api/glimpses", {"model": model, "n": 16, "seed": 1, "index": 3}),
        ("POST", "/api/reconstruct", {"model": model, "image": drawing(), "seed": 0}),
        ("POST", "/api/walk", {"model": model, "n": 16, "seed": 1, "a": 0, "b": 5, "steps": 8}),
        ("POST", "/api/sample", {"model": model, "n": 64, "seed": 2}),
    ]


def percentiles(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    q = statistics.quantiles(ms, n=20, method="inclusive") if len(ms) > 1 else ms * 19
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(q[18], 1), "max_ms": round(ms[-1], 1), "count": len(ms)}


def grid(host: str, port: int, model: str, requests: int) -> dict:
    client = Client(host, port)
    for seed in range(3):  # warm-up: the model loads, the first calls settle
        client.call("POST", "/api/sample", {"model": model, "n": 64, "seed": 10_000 + seed})
    times, errors = [], 0
    for seed in range(requests):
        status, took = client.call("POST", "/api/sample", {"model": model, "n": 64, "seed": seed})
        errors += status != 200
        times.append(took)
    return {"errors": errors, **percentiles(times)}


def load(host: str, port: int, model: str, clients: int, requests: int) -> dict:
    calls = page_calls(model)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients)

    def worker(k: int) -> None:
        client = Client(host, port)
        start_gate.wait()
        mine = []
        for i in range(requests):
            method, path, body = calls[(k + i) % len(calls)]
            mine.append(client.call(method, path, body))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    wall = time.perf_counter() - t
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    errors = sum(n for s, n in statuses.items() if s != "200") + clients * requests - len(results)
    return {"clients": clients, "requests": clients * requests, "errors": errors, "statuses": statuses,
            "wall_s": round(wall, 1), "requests_per_s": round(len(results) / wall, 1), **percentiles([d for _, d in results])}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="@mnist")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--grid-requests", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="load rounds, one after the other (memory: does it settle?)")
    ap.add_argument("--out", help="also write the numbers as JSON")
    args = ap.parse_args()

    proc, host, port = start(args.model, args.engine, args.workers)
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "model": args.model,
              "engine": args.engine, "workers": args.workers}
    try:
        report["rss_start_mib"] = round(rss_mib(proc.pid), 1)
        report["grid64"] = grid(host, port, args.model, args.grid_requests)
        print(f"grid of 64: p50 {report['grid64']['p50_ms']} ms, p95 {report['grid64']['p95_ms']} ms, "
              f"max {report['grid64']['max_ms']} ms over {args.grid_requests} requests, {report['grid64']['errors']} errors", flush=True)
        report["rss_before_load_mib"] = round(rss_mib(proc.pid), 1)
        rounds = []
        for r in range(args.rounds):
            result = load(host, port, args.model, args.clients, args.requests)
            result["rss_after_mib"] = round(rss_mib(proc.pid), 1)
            rounds.append(result)
            print(f"load round {r + 1}: {result['clients']} clients x {args.requests} requests: {result['errors']} errors, "
                  f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms, "
                  f"{result['requests_per_s']} requests/s; RSS {result['rss_after_mib']} MiB", flush=True)
        report["load"] = rounds
        after = ", ".join(f"{r['rss_after_mib']} after round {i + 1}" for i, r in enumerate(rounds))
        print(f"RSS (MiB): {report['rss_start_mib']} at start, {report['rss_before_load_mib']} before the load, {after}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"{report['cpu']}, {report['cores']} cores, {report['date']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
