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
    service = ServiceConfig(workers=1, lease_seconds=0.4, poll_interval=0.02, claim_batch=10, worker_concurrency=10,
                            dev_mode=False)
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
