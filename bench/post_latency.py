"""Enqueue rate and latency of single-message JSON POSTs to a real hypercorn, vs a bare Quart route.

    .venv/bin/python bench/post_latency.py [--requests 3000] [--concurrency 16] [--workers 1] [--rate R]

Starts, one after the other, (1) ``hypercorn`` serving a bare Quart route that
parses the same JSON and answers 202 and (2) ``hypercorn asgi:app`` with a fresh
SQLite outbox (durable commits) whose in-process workers deliver to a sink in its
own process (Postfix's ``smtp-sink`` if installed, else ``bench/aiosmtpd_sink.py``).

Two loads from httpx (keep-alive), each after a warm-up:

- saturation: ``--concurrency`` requests always in flight (closed loop) gives the
  most accepted/s. Its latencies are mostly queueing (about concurrency / rate),
  for the bare route too, so they say little about the service.
- paced: requests started at a fixed rate (open loop; ``--rate``, default half the
  bare route's saturation rate, the issue's target load), each latency counted
  from the moment it was due to start, so a stalled client or server is not hidden
  (no coordinated omission). This is the p99 the issue's target is about.

The client runs on the same machine (2 cores here), so figures include its CPU use.
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

sys.path.insert(0, str(ROOT / "bench"))

from sinks import AiosmtpdSink, Sink, SmtpSink, smtp_sink_binary  # noqa: E402

BARE_APP = """
from quart import Quart, request
app = Quart(__name__)

@app.post("/api/messages")
async def accept():
    data = await request.get_json()
    return {"id": "x", "status": "queued", "n": len(data)}, 202
"""
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


async def paced(base: str, headers: dict[str, str], n: int, rate: float) -> tuple[float, list[float], int]:
    """``n`` requests started ``rate`` per second whatever the answers; latency from each one's due time."""
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:
        for _ in range(50):  # warm-up
            await client.post("/api/messages", json=BODY)

        async def one(due: float) -> None:
            nonlocal failures
            r = await client.post("/api/messages", json=BODY)
            latencies.append(time.perf_counter() - due)
            if r.status_code != 202:
                failures += 1

        tasks = []
        start = time.perf_counter() + 0.05
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return elapsed, latencies, failures


def report(name: str, elapsed: float, lat: list[float], failures: int) -> None:
    lat_ms = sorted(x * 1000 for x in lat)
    p99 = lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))]
    print(
        f"{name:<44} {len(lat) / elapsed:8.0f} req/s   p50 {statistics.median(lat_ms):6.2f} ms   "
        f"p99 {p99:6.2f} ms   max {lat_ms[-1]:7.2f} ms   non-202: {failures}"
    )


def start_sink() -> Sink:
    return (SmtpSink() if smtp_sink_binary() else AiosmtpdSink()).start()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="in-process delivery workers (0: enqueue only)")
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests/s of the paced run (default: half the bare route's saturation rate)",
    )
    args = ap.parse_args()
    sink = start_sink()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bare_rate = 0.0
            for name in ("bare Quart route", "mailsvc POST /api/messages"):
                port = free_port()
                env = {
                    **os.environ,
                    "PYTHONPATH": str(ROOT),
                    "MAIL_SERVER": "127.0.0.1",
                    "MAIL_PORT": str(sink.port),
                    "MAIL_DEFAULT_SENDER": "bench@example.com",
                    "MAILSVC_API_KEYS": "bench-key",
                    "MAILSVC_RATE_LIMIT": "0",
                    "MAILSVC_WORKERS": str(args.workers),
                    "MAILSVC_DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3",
                    "MAILSVC_MAX_PENDING": "10000000",
                }
                target = "asgi:app"
                if name.startswith("bare"):
                    Path(tmp, "bare_app.py").write_text(BARE_APP)
                    target = "bare_app:app"
                    env["PYTHONPATH"] = f"{tmp}{os.pathsep}{ROOT}"
                proc = subprocess.Popen(
                    [sys.executable, "-m", "hypercorn", target, "--bind", f"127.0.0.1:{port}"],
                    cwd=tmp,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                base = f"http://127.0.0.1:{port}"
                headers = {"Authorization": "Bearer bench-key"}
                try:
                    await wait_up(base + "/", proc)
                    run = await load(base, headers, args.requests, args.concurrency)
                    results.append((f"{name}, {args.concurrency} in flight", *run))
                    if name.startswith("bare"):
                        bare_rate = len(run[1]) / run[0]
                    rate = args.rate or bare_rate / 2
                    results.append((f"{name}, paced at {rate:.0f}/s", *await paced(base, headers, args.requests, rate)))
                finally:
                    proc.terminate()
                    await asyncio.to_thread(proc.wait)
            delivered = sink.count()
    finally:
        sink.stop()
    print(
        f"{args.requests} single-message POSTs per run; {args.workers} in-process worker(s); "
        f"delivered to the sink meanwhile: {delivered}"
    )
    for r in results:
        report(*r)


if __name__ == "__main__":
    asyncio.run(main())
