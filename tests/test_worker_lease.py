"""Lease renewal: a send slower than the lease is not taken and sent again by another worker.

Run against every outbox implementation (``tests/outbox_impls.py``): two worker
groups, each with its own outbox connection and connection pool (as two
``mailsvc worker`` processes have), and a real aiosmtpd server that stalls
before answering DATA for several times the lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mailsvc import MailConfig, Message
from mailsvc.config import ServiceConfig
from mailsvc.outbox import Outbox
from mailsvc.worker import WorkerGroup
from tests.outbox_impls import IMPLEMENTATIONS
from tests.servers import RecordingHandler, smtp_server


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def open_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[Outbox]]]:
    """Connections to one store (same SQLite file, same PostgreSQL schema)."""
    opened: list[Outbox] = []

    async def make() -> Outbox:
        opened.append(await IMPLEMENTATIONS[request.param](tmp_path))
        return opened[-1]

    yield make
    for ob in opened:
        await ob.close()


async def test_send_longer_than_the_lease_is_renewed_not_duplicated(
    open_outbox: Callable[[], Awaitable[Outbox]],
) -> None:
    handler = RecordingHandler(stall_seconds=1.5)  # DATA answered after 1.5 s; the lease is 0.4 s
    env = Message("Slow", recipients=["ann@example.com"], body="hi", sender="shop@example.com").build()
    first, second = await open_outbox(), await open_outbox()
    [id_] = (await first.enqueue([env])).ids
    service = ServiceConfig(
        workers=1, lease_seconds=0.4, poll_interval=0.02, claim_batch=10, worker_concurrency=10, dev_mode=False
    )
    async with smtp_server(handler) as port:
        mail = MailConfig(server="127.0.0.1", port=port, timeout=20, pool_size=1)
        a = WorkerGroup.from_service(first, mail, service)
        await a.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # liveness bounds, not timing assertions
        while a.stats.claimed == 0:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        # Without renewal, the second group takes the message when a's lease lapses mid-send and sends it again.
        b = WorkerGroup.from_service(second, mail, service)
        await b.start()
        try:
            while (await first.status(id_)).state != "delivered":
                assert loop.time() < deadline, await first.status(id_)
                await asyncio.sleep(0.05)
        finally:
            await b.stop()  # each waits for a send still on the wire, so a duplicate would be counted
            await a.stop()
    assert [r.data.count(env.message_id.encode()) for r in handler.received] == [1]
    assert a.stats.renewed > 0 and b.stats.claimed == 0
    status = await first.status(id_)
    assert [(r.state, r.attempts) for r in status.recipients] == [("delivered", 1)]


async def test_a_give_back_whose_release_failed_is_not_renewed_forever(tmp_path: Path) -> None:
    """A message given back unsent whose release failed (database locked by another process) must
    have its lease left to lapse, as the worker logs; renewing it would keep it from ever being sent."""
    import sqlite3

    from mailsvc.outbox import SqliteOutbox

    handler = RecordingHandler()
    path = tmp_path / "outbox.sqlite3"
    env = Message("Hi", recipients=["ann@example.com"], body="hi", sender="shop@example.com").build()
    service = ServiceConfig(
        workers=1,
        lease_seconds=1.5,
        poll_interval=0.02,
        relay_backoff=1.0,
        relay_backoff_max=1.0,
        claim_batch=10,
        worker_concurrency=10,
        dev_mode=False,
    )
    async with SqliteOutbox(path, busy_timeout=0.05) as ob, smtp_server(handler) as port:
        [id_] = (await ob.enqueue([env])).ids
        group = WorkerGroup.from_service(ob, MailConfig(server="127.0.0.1", port=port, timeout=5, pool_size=1), service)
        w = group.workers[0]
        pool = w.mail.pool
        await pool._sem.acquire()  # the one connection slot is busy: the claimed message waits for it
        await group.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        try:
            while w.stats.claimed == 0:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            # Another process holds the write lock. Taken off the loop: a worker transaction open at this moment
            # needs the loop to reach its COMMIT, and waiting on the loop deadlocked until the busy timeout.
            other = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
            await asyncio.to_thread(other.execute, "BEGIN IMMEDIATE")
            w.backoff.trouble()  # relay paused: the message is given back unsent, and its release fails
            pool._sem.release()
            await asyncio.sleep(0.3)
            other.execute("ROLLBACK")
            other.close()
            while (await ob.status(id_)).state != "delivered":
                assert loop.time() < deadline, await ob.status(id_)
                await asyncio.sleep(0.05)
        finally:
            await group.stop()
    assert len(handler.received) == 1
