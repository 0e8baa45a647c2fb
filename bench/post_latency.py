"""Enqueue rate and latency of single-message JSON POSTs to a real hypercorn, vs a bare Quart route.

    .venv/bin/python bench/post_latency.py [--requests 3000] [--concurrency 16] [--workers 1]

Starts, one after the other, (1) ``hypercorn asgi:app`` with a fresh SQLite
outbox whose in-process workers deliver to an aiosmtpd sink run by this script,
and (2) ``hypercorn`` serving a bare Quart route that parses the same JSON and
answers 202. Each gets the same load from httpx (keep-alive, ``--concurrency``
requests in flight) after a warm-up; prints accepted/s, p50 and p99 latency.
The client runs on the same machine, so absolute numbers include its CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RecordingHandler, smtp_server  # noqa: E402

BARE_APP = '''
from quart import Quart, request
app = Quart(__name__)

@app.post("/api/messages")
async def accept():
    data = await request.get_json()
    return {"id": "x", "status": "queued", "n": len(data)}, 202
'''
BODY = {"to": "Ann <ann@example.com>", "subject": "Benchmark", "text": "Hello from the benchmark.\n" * 10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(400):
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                await c.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise SystemExit("server did not start")


async def load(base: str, headers: dict[str, str], n: int, concurrency: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    failures = 0
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:
        for _ in range(50):  # warm-up
            await client.post("/api/messages", json=BODY)

        async def user() -> None:
            nonlocal failures
            for _ in todo:
                t0 = time.perf_counter()
                r = await client.post("/api/messages", json=BODY)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 202:
                    failures += 1

        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return elapsed, latencies, failures


def report(name: str, elapsed: float, lat: list[float], failures: int) -> None:
    lat_ms = sorted(x * 1000 for x in lat)
    p99 = lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))]
    print(f"{name:<28} {len(lat) / elapsed:8.0f} req/s   p50 {statistics.median(lat_ms):6.2f} ms   "
          f"p99 {p99:6.2f} ms   non-202: {failures}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="in-process delivery workers (0: enqueue only)")
    args = ap.parse_args()
    handler = RecordingHandler()
    with tempfile.TemporaryDirectory() as tmp:
        async with smtp_server(handler) as smtp_port:
            results = []
            for name in ("mailsvc POST /api/messages", "bare Quart route"):
                port = free_port()
                env = {**os.environ, "PYTHONPATH": str(ROOT), "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(smtp_port),
                       "MAIL_DEFAULT_SENDER": "bench@example.com", "MAILSVC_API_KEYS": "bench-key",
                       "MAILSVC_RATE_LIMIT": "0", "MAILSVC_WORKERS": str(args.workers),
                       "MAILSVC_DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3", "MAILSVC_MAX_PENDING": "10000000"}
                target = "asgi:app"
                if name.startswith("bare"):
                    Path(tmp, "bare_app.py").write_text(BARE_APP)
                    target = "bare_app:app"
                    env["PYTHONPATH"] = f"{tmp}{os.pathsep}{ROOT}"
                proc = subprocess.Popen([sys.executable, "-m", "hypercorn", target, "--bind", f"127.0.0.1:{port}"],
                                        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                base = f"http://127.0.0.1:{port}"
                try:
                    await wait_up(base + "/", proc)
                    results.append((name, *await load(base, {"Authorization": "Bearer bench-key"},
                                                      args.requests, args.concurrency)))
                finally:
                    proc.terminate()
                    await asyncio.to_thread(proc.wait)
            print(f"{args.requests} single-message POSTs, {args.concurrency} in flight, "
                  f"{args.workers} in-process worker(s); delivered to the sink meanwhile: {len(handler.received)}")
            for r in results:
                report(*r)


if __name__ == "__main__":
    asyncio.run(main())
