"""PostgreSQL scale-out benchmark: delivery rate with 1, 2 and 4 ``mailsvc worker`` processes,
and enqueue rate through two hypercorn nodes, all on one PostgreSQL database.

    .venv/bin/python bench/postgres_scaling.py                  # 5,000 messages per row
    .venv/bin/python bench/postgres_scaling.py --n 2000 --workers 1,2 --sink aiosmtpd

Why it is shaped like this:
- the worker processes are started (and idle, LISTENing) before the messages are
  committed in one bulk enqueue, so a row times claim -> SMTP -> record, not
  Python start-up; the clock stops when the outbox has nothing pending *and* the
  sink has counted every message (a row that lost mail says so);
- each row gets a fresh database (``CREATE DATABASE``), dropped afterwards;
- the enqueue row posts ``POST /api/messages/bulk`` batches to two nodes at once,
  the path a campaign takes in production.

Needs PostgreSQL at ``--url`` (default ``MAILSVC_TEST_POSTGRES_URL`` or
postgresql://postgres@127.0.0.1:5432/test) and, for the default sink, Postfix's
``smtp-sink`` (Debian's ``postfix`` package; ``--sink aiosmtpd`` otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from sinks import AiosmtpdSink, Sink, SmtpSink, smtp_sink_binary  # noqa: E402

from mailsvc.message import Envelope, Message  # noqa: E402
from mailsvc.outbox.postgres import PostgresOutbox  # noqa: E402

DEFAULT_URL = os.environ.get("MAILSVC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
API_KEY = "bench-key"


@dataclass
class Row:
    what: str
    n: int
    seconds: float
    arrived: int

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


@asynccontextmanager
async def fresh_database(url: str) -> AsyncIterator[str]:
    name = f"mailsvc_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(url, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def env_for(db_url: str, smtp_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        MAILSVC_DATABASE_URL=db_url,
        MAIL_SERVER="127.0.0.1",
        MAIL_DEFAULT_SENDER="bench@example.com",
        MAIL_PORT=str(smtp_port),
        MAILSVC_WORKERS="0",
        MAILSVC_API_KEYS=API_KEY,
        MAILSVC_SECRET_KEY="bench-secret-key-not-for-production",
        MAILSVC_RATE_LIMIT="1000000",
        MAILSVC_RATE_BURST="1000000",
        MAILSVC_MAX_PENDING="10000000",
        MAILSVC_POLL_INTERVAL="0.5",
    )
    return env


async def spawn(args: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailsvc.cli",
        *args,
        cwd=ROOT,
        env=env,
        pass_fds=pass_fds,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), 60)
        except TimeoutError:
            p.kill()
            await p.wait()


def envelopes(n: int) -> list[Envelope]:
    return [
        Message(
            f"Campaign {i}",
            recipients=[f"user{i}@example.com"],
            sender="shop@example.com",
            body=f"Hello user {i},\n\nthis is message {i} of the benchmark.\n" * 5,
        ).build(msgid_domain="bench")
        for i in range(n)
    ]


async def delivery_row(url: str, sink: Sink, workers: int, n: int) -> Row:
    async with fresh_database(url) as db_url:
        outbox = PostgresOutbox(db_url, max_pending=10 * n)
        await outbox.open()  # creates the schema before the workers open it
        env = env_for(db_url, sink.port)
        procs = [await spawn(["worker", "--log-level", "WARNING"], env) for _ in range(workers)]
        try:
            await asyncio.sleep(3.0)  # let the workers import, connect and LISTEN (not timed)
            envs = envelopes(n)
            before = sink.count()
            t0 = time.perf_counter()
            await outbox.enqueue(envs, batch=True)
            while await outbox.pending_count() > 0 or sink.count() - before < n:
                if any(p.returncode is not None for p in procs):
                    raise RuntimeError("a worker exited during the run")
                if time.perf_counter() - t0 > 600:
                    break
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - t0
            arrived = sink.count() - before
        finally:
            await stop(procs)
            await outbox.close()
    return Row(f"deliver, {workers} worker process{'es' if workers > 1 else ''}", n, seconds, arrived)


async def enqueue_row(url: str, sink: Sink, n: int, per_batch: int) -> Row:
    async with fresh_database(url) as db_url:
        outbox = PostgresOutbox(db_url)
        await outbox.open()
        await outbox.close()
        env = env_for(db_url, sink.port)
        procs, bases, socks = [], [], []
        for _ in range(2):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(512)
            sock.set_inheritable(True)
            socks.append(sock)
            bases.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
            procs.append(await spawn(["serve", "--bind", f"fd://{sock.fileno()}"], env, (sock.fileno(),)))
        for s in socks:
            s.close()
        try:
            async with httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
                for base in bases:
                    for _ in range(600):
                        try:
                            if (await client.get(f"{base}/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            await asyncio.sleep(0.1)
                batches: list[dict[str, object]] = [
                    {
                        "subject": "Campaign {{ n }}",
                        "text": "Hello {{ name }}, message {{ n }}.",
                        "recipients": [
                            {"to": [f"user{b}-{i}@example.com"], "context": {"n": i, "name": f"U{i}"}}
                            for i in range(per_batch)
                        ],
                    }
                    for b in range(max(1, n // per_batch))
                ]
                sem = asyncio.Semaphore(4)  # two requests in flight per node

                async def post(i: int, body: dict[str, object]) -> None:
                    async with sem:
                        r = await client.post(f"{bases[i % 2]}/api/messages/bulk", json=body)
                    if r.status_code != 202:
                        raise RuntimeError(f"bulk enqueue answered {r.status_code}: {r.text[:300]}")

                t0 = time.perf_counter()
                await asyncio.gather(*(post(i, b) for i, b in enumerate(batches)))
                seconds = time.perf_counter() - t0
        finally:
            await stop(procs)
        total = len(batches) * per_batch
    return Row(f"enqueue via 2 nodes (bulk of {per_batch})", total, seconds, total)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL server (a database per row is created on it)")
    p.add_argument("--n", type=int, default=5000, help="messages per row (default 5000)")
    p.add_argument("--workers", default="1,2,4", help="worker process counts, comma-separated (default 1,2,4)")
    p.add_argument(
        "--sink",
        choices=["smtp-sink", "aiosmtpd"],
        default=None,
        help="SMTP sink (default smtp-sink when installed, else aiosmtpd)",
    )
    p.add_argument("--no-enqueue", action="store_true", help="skip the enqueue-through-two-nodes row")
    args = p.parse_args()
    use = args.sink or ("smtp-sink" if smtp_sink_binary() else "aiosmtpd")
    sink: Sink = SmtpSink() if use == "smtp-sink" else AiosmtpdSink()
    rows: list[Row] = []
    with sink:
        for k in (int(x) for x in args.workers.split(",")):
            rows.append(await delivery_row(args.url, sink, k, args.n))
            print(f"  {rows[-1].what}: {rows[-1].rate:,.0f} msg/s", file=sys.stderr, flush=True)
        if not args.no_enqueue:
            rows.append(await enqueue_row(args.url, sink, args.n, 500))
            print(f"  {rows[-1].what}: {rows[-1].rate:,.0f} msg/s", file=sys.stderr, flush=True)
    print(
        f"\nPostgreSQL outbox, {args.n} messages per row, sink: {sink.name}; "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs\n"
    )
    print("| row | messages | seconds | msg/s | arrived at sink |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        flag = "" if r.arrived >= r.n else " (LOST MAIL)"
        print(f"| {r.what} | {r.n} | {r.seconds:.2f} | {r.rate:,.0f} | {r.arrived}{flag} |")


if __name__ == "__main__":
    asyncio.run(main())
