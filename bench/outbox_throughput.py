"""Delivery throughput of a bulk batch through the durable outbox to Postfix's smtp-sink.

Run from the repository root (needs ``smtp-sink`` from Debian's ``postfix`` package;
the postfix daemon is not started):

    .venv/bin/python bench/outbox_throughput.py                  # 5,000 messages, in-process workers
    .venv/bin/python bench/outbox_throughput.py --processes 2    # two `mailsvc worker` processes
    .venv/bin/python bench/outbox_throughput.py --database-url postgresql://postgres@127.0.0.1/test

It enqueues the batch in one transaction (timed), then delivers it with the
service's own workers (connection pool of MAIL_POOL_SIZE) and prints messages/s,
checking at the sink that every Message-ID arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailsvc import MailConfig, Message  # noqa: E402
from mailsvc.config import ServiceConfig  # noqa: E402
from mailsvc.message import Envelope  # noqa: E402
from mailsvc.outbox import Outbox, open_outbox  # noqa: E402
from mailsvc.worker import WorkerGroup  # noqa: E402
from tests.smtp_sink import SMTPSink  # noqa: E402


def batch(n: int, size: int) -> list[Envelope]:
    msg = Message("Your weekly digest", recipients=["x@example.com"], body="x" * size, sender="news@example.com")
    base = msg.build()
    return [
        dataclasses.replace(
            base,
            recipients=(f"reader{i}@example.com",),
            message_id=f"<bench{i}@bench>",
            data=base.data.replace(base.message_id.encode(), f"<bench{i}@bench>".encode()),
        )
        for i in range(n)
    ]


async def deliver_in_process(outbox: Outbox, port: int, args: argparse.Namespace) -> None:
    service = ServiceConfig(
        poll_interval=0.02,
        claim_batch=args.claim_batch,
        worker_concurrency=args.concurrency,
        dev_mode=False,
        workers=args.loops,
    )
    group = WorkerGroup.from_service(
        outbox, MailConfig(server="127.0.0.1", port=port, pool_size=args.pool_size), service
    )
    await group.start()
    try:
        while await outbox.pending_count():
            await asyncio.sleep(0.02)
    finally:
        await group.stop()


def deliver_in_processes(url: str, port: int, args: argparse.Namespace, workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    env.update(
        PYTHONPATH=str(REPO),
        MAILSVC_SETTINGS_MODULE="settings",
        MAIL_SERVER="127.0.0.1",
        MAIL_DEFAULT_SENDER="bench@example.com",
        MAIL_PORT=str(port),
        MAILSVC_DATABASE_URL=url,
        MAIL_POOL_SIZE=str(args.pool_size),
        MAILSVC_POLL_INTERVAL="0.02",
        MAILSVC_CLAIM_BATCH=str(args.claim_batch),
        MAILSVC_WORKER_CONCURRENCY=str(args.concurrency),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mailsvc.cli", "worker", "--until-empty", "--log-level", "ERROR"],
            cwd=workdir,
            env=env,
        )
        for _ in range(args.processes)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a worker process exited with {p.returncode}")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        url = args.database_url or f"sqlite:///{workdir / 'outbox.sqlite3'}"
        envelopes = batch(args.messages, args.size)
        with contextlib.nullcontext(None) if args.sink_port else SMTPSink(workdir / "sink") as sink:
            port = args.sink_port or sink.port
            async with open_outbox(url, max_pending=max(args.messages, 100_000)) as outbox:
                t0 = time.perf_counter()
                result = await outbox.enqueue(envelopes, batch=True)
                t_enqueue = time.perf_counter() - t0
                assert result.batch_id is not None
                t1 = time.perf_counter()
                if args.processes:
                    deliver_in_processes(url, port, args, workdir)
                else:
                    await deliver_in_process(outbox, port, args)
                t_deliver = time.perf_counter() - t1
                counts = await outbox.batch_status(result.batch_id)
            seen = sink.message_ids() if sink is not None else None
        lost = args.messages - len(seen) if seen is not None else "?"
        dup = sum(c - 1 for c in seen.values()) if seen is not None else "?"
        how = f"{args.processes} `mailsvc worker` process(es)" if args.processes else f"{args.loops} in-process loop(s)"
        backend = url.partition(":")[0]
        print(f"outbox={backend} messages={args.messages} size={args.size}B pool={args.pool_size} via {how}")
        print(f"enqueue: {t_enqueue:.3f}s for the batch ({args.messages / t_enqueue:,.0f} messages/s, one transaction)")
        print(f"deliver: {t_deliver:.2f}s -> {args.messages / t_deliver:,.0f} messages/s to smtp-sink")
        distinct = len(seen) if seen is not None else "?"
        print(f"states: {counts}; at sink: {distinct} distinct, lost {lost}, duplicated {dup}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--size", type=int, default=2000, help="body bytes per message (default 2000)")
    p.add_argument("--pool-size", type=int, default=4, help="MAIL_POOL_SIZE (default 4)")
    p.add_argument("--loops", type=int, default=1, help="in-process claim loops (default 1)")
    p.add_argument("--processes", type=int, default=0, help="run N `mailsvc worker` processes instead")
    p.add_argument("--claim-batch", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument(
        "--sink-port",
        type=int,
        default=0,
        help="deliver to an smtp-sink already listening there, without -d (the dumping sink writes a file per"
        " message and is then the bottleneck); the sink's count is not checked",
    )
    p.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    asyncio.run(main(p.parse_args()))
