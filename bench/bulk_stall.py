"""Does a big bulk POST stall everything else on SQLite? Single POSTs and lease renewals during its store.

    .venv/bin/python bench/bulk_stall.py                       # 100,000 recipients, singles at 50/s
    .venv/bin/python bench/bulk_stall.py --n 20000 --tree before=/tmp/mailsvc-before

It starts Postfix's ``smtp-sink`` on 127.0.0.1 and the service (``hypercorn asgi:app`` in its own process
group, SQLite outbox, MAILSVC_WORKERS at its default, delivering to the sink). Then, per target:

* quiet: ``--quiet`` seconds of single ``POST /api/messages`` paced at ``--rate`` per second;
* bulk: one ``POST /api/messages/bulk`` of ``--n`` personalised newsletters (``bench/workload.py``),
  and, from its first byte sent to its 202, the same paced single POSTs.

Why a paced asyncio client (httpx) and not wrk: at ~50 requests/s the client costs nothing, and a paced
client measures each request from the moment it was *due* (no coordinated omission: a stalled server
shows as the full stall, not as one slow request); wrk has no pacing (wrk2 is not installed).

Lease renewals: a worker renews its leases with one write transaction (``UPDATE messages SET due_at ...
WHERE lease_owner = ?``, :meth:`Tx.extend`). A probe thread in this process runs that statement in a
``BEGIN IMMEDIATE`` transaction on the same file every 100 ms, as a ``mailsvc worker`` process would, and
reports how many ran during each phase, the longest gap between two and the slowest one. (The service's
in-process workers renew through the same store lock the single POSTs wait on.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402
from post_wrk import BODY, Target, free_port, wait_up  # noqa: E402
from sinks import SmtpSink  # noqa: E402

KEY = "bench-key"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@dataclass
class Renewals:
    """What the probe saw: when each renewal transaction finished and how long it took."""

    done: list[float] = field(default_factory=list)  # perf_counter at each commit
    took: list[float] = field(default_factory=list)

    def between(self, start: float, end: float) -> tuple[int, float, float]:
        """Count, longest gap (s) and slowest renewal (s) in [start, end]."""
        marks = [start] + [t for t in self.done if start <= t <= end] + [end]
        took = [d for t, d in zip(self.done, self.took, strict=True) if start <= t <= end]
        gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        return len(marks) - 2, max(gaps), max(took, default=0.0)


def probe(db: Path, out: Renewals, stop: threading.Event) -> None:
    """A worker's lease renewal, every 100 ms: the write lock taken, one UPDATE, a durable commit."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=120)
    conn.execute("PRAGMA synchronous = FULL")
    while not stop.wait(0.1):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE messages SET due_at = ? WHERE id IN (?) AND lease_owner = ? AND state = 'sending'",
            (time.time() + 300, "bench-probe", "bench-prober"),
        )
        conn.execute("COMMIT")
        out.done.append(time.perf_counter())
        out.took.append(out.done[-1] - t0)
    conn.close()


async def singles(base: str, rate: float, until: threading.Event | float) -> tuple[list[float], int]:
    """Single POSTs started ``rate`` per second until the event is set (or for that many seconds)."""
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, limits=limits, timeout=120) as client:

        async def one(due: float) -> None:
            nonlocal failures
            try:
                r = await client.post("/api/messages", json=BODY)
                ok = r.status_code == 202
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - due)
            failures += not ok

        tasks = []
        start = time.perf_counter()
        i = 0
        while True:
            due = start + i / rate
            if isinstance(until, float) and due - start > until:
                break
            if isinstance(until, threading.Event) and until.is_set():
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
            i += 1
        await asyncio.gather(*tasks)
    return latencies, failures


def bulk_body(n: int) -> bytes:
    body = {"template": workload.TEMPLATE, "recipients": [{"to": [r], "context": c} for r, c in workload.contexts(n)]}
    return json.dumps(body).encode()


def post_bulk(base: str, body: bytes, done: threading.Event, result: dict[str, object]) -> None:
    req = urllib.request.Request(f"{base}/api/messages/bulk", data=body, method="POST", headers=HEADERS)
    try:
        with urllib.request.urlopen(req, timeout=1800) as resp:
            result["status"] = resp.status
            result["body"] = json.loads(resp.read())
    except Exception as exc:
        result["status"] = repr(exc)
    finally:
        result["end"] = time.perf_counter()
        done.set()


def row(name: str, lat: list[float], failures: int, renew: tuple[int, float, float], seconds: float) -> str:
    ms = sorted(x * 1000 for x in lat)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    n, gap, slow = renew
    return (
        f"| {name} | {seconds:.1f} | {len(ms)} | {statistics.median(ms):.1f} | {p99:.1f} | {ms[-1]:.0f} | {failures} "
        f"| {n} | {gap * 1000:.0f} | {slow * 1000:.0f} |"
    )


def run_target(target: Target, args: argparse.Namespace, sink: SmtpSink, body: bytes, tmp: Path) -> list[str]:
    port = free_port()
    db = tmp / f"{target.name.replace(' ', '_')}.sqlite3"
    env = {
        **os.environ,
        "PYTHONPATH": str(target.root),
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(sink.port),
        "MAIL_DEFAULT_SENDER": workload.SENDER,
        "MAILSVC_DATABASE_URL": f"sqlite:///{db}",
        "MAILSVC_TEMPLATES": str(workload.TEMPLATES.parent),
        "MAILSVC_API_KEYS": KEY,
        "MAILSVC_MAX_BATCH": str(args.n),
        "MAILSVC_MAX_REQUEST_BYTES": str(512 * 1024 * 1024),
        "MAILSVC_MAX_PENDING": str(10 * args.n + 100_000),
        "MAILSVC_RATE_LIMIT": "0",
    }
    log = open(tmp / f"{target.name.replace(' ', '_')}.log", "wb")
    proc = subprocess.Popen(
        [target.python, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
        cwd=target.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    renewals = Renewals()
    stop = threading.Event()
    prober: threading.Thread | None = None
    try:
        wait_up(f"{base}/healthz", proc, 60)
        asyncio.run(singles(base, args.rate, 2.0))  # warm-up; also creates the schema's rows
        prober = threading.Thread(target=probe, args=(db, renewals, stop), daemon=True)
        prober.start()
        t0 = time.perf_counter()
        lat, bad = asyncio.run(singles(base, args.rate, float(args.quiet)))
        t1 = time.perf_counter()
        quiet = row(f"{target.name}: quiet", lat, bad, renewals.between(t0, t1), t1 - t0)
        done = threading.Event()
        result: dict[str, object] = {}
        poster = threading.Thread(target=post_bulk, args=(base, body, done, result), daemon=True)
        t2 = time.perf_counter()
        poster.start()
        lat, bad = asyncio.run(singles(base, args.rate, done))
        poster.join()
        t3 = float(result["end"])  # type: ignore[arg-type]
        if result.get("status") != 202:
            raise SystemExit(f"{target.name}: the bulk POST answered {result.get('status')}: {result.get('body')}")
        during = row(f"{target.name}: during the bulk POST", lat, bad, renewals.between(t2, t3), t3 - t2)
        return [quiet, during]
    finally:
        stop.set()
        if prober is not None:
            prober.join(130)
        os.killpg(proc.pid, 9)
        proc.wait()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="recipients of the bulk POST (default 100,000)")
    ap.add_argument("--rate", type=float, default=50.0, help="single POSTs per second (default 50)")
    ap.add_argument("--quiet", type=float, default=15.0, help="seconds of singles without a bulk (default 15)")
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout to measure first")
    args = ap.parse_args()
    targets = []
    for spec in args.tree:
        name, _, path = spec.partition("=")
        root = Path(path).resolve()
        py = root / ".venv" / "bin" / "python"
        targets.append(Target(f"mailsvc ({name})", "asgi:app", root, str(py if py.exists() else sys.executable)))
    targets.append(Target("mailsvc (this checkout)", "asgi:app", ROOT, sys.executable))
    body = bulk_body(args.n)
    lines = []
    with tempfile.TemporaryDirectory() as tmpname, SmtpSink() as sink:
        assert isinstance(sink, SmtpSink)
        for t in targets:
            lines += run_target(t, args, sink, body, Path(tmpname))
    print(f"single POSTs paced at {args.rate:.0f}/s (latency from each one's due time); bulk: {args.n:,} recipients")
    print("renewals: a lease-renewal transaction tried every 100 ms from another connection\n")
    print("| phase | s | singles | p50 ms | p99 ms | max ms | non-202 | renewals | longest gap ms | slowest ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
