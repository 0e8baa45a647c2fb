"""Delivery workers against real SMTP servers with injected faults, over a real SQLite outbox.

Schedules are fractions of a second; waits are liveness bounds ("within 20 s"),
never timing assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as SMTPServerProtocol

from mailsvc import MailConfig, Message
from mailsvc.config import ServiceConfig
from mailsvc.message import Envelope
from mailsvc.outbox import MessageStatus, Outbox, SqliteOutbox
from mailsvc.worker import WorkerGroup
from tests.servers import ConnectionCounter, RecordingHandler, smtp_server

FAST = dict(
    retry_first=0.05,
    retry_max=0.2,
    retry_lifetime=60.0,
    retry_jitter=0.1,
    relay_backoff=0.05,
    relay_backoff_max=0.2,
    poll_interval=0.02,
    lease_seconds=30.0,
    claim_batch=50,
    worker_concurrency=100,
    workers=1,
    dev_mode=False,
)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[SqliteOutbox]:
    async with SqliteOutbox(tmp_path / "outbox.sqlite3") as ob:
        yield ob  # type: ignore[misc]


@asynccontextmanager
async def workers(
    outbox: Outbox, port: int, *, timeout: float = 2.0, pool_size: int = 4, **service: Any
) -> AsyncIterator[WorkerGroup]:
    group = WorkerGroup.from_service(
        outbox,
        MailConfig(server="127.0.0.1", port=port, timeout=timeout, pool_size=pool_size),
        ServiceConfig(**{**FAST, **service}),
    )
    await group.start()
    try:
        yield group
    finally:
        await group.stop()


async def until(outbox: Outbox, id_: str, pred: Callable[[MessageStatus], bool], within: float = 20.0) -> MessageStatus:
    """Poll a message's status until ``pred`` holds (a liveness bound, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        status = await outbox.status(id_)
        if pred(status):
            return status
        if loop.time() > deadline:
            pytest.fail(f"status never satisfied the condition: {status}")
        await asyncio.sleep(0.02)


def envelope(*recipients: str, subject: str = "Hello") -> Envelope:
    return Message(
        subject, recipients=list(recipients or ["ann@example.com"]), body="hi", sender="shop@example.com"
    ).build()


def bulk(n: int) -> list[Envelope]:
    base = envelope()
    return [
        dataclasses.replace(
            base,
            recipients=(f"u{i}@example.com",),
            message_id=f"<bulk{i}@test>",
            data=base.data.replace(base.message_id.encode(), f"<bulk{i}@test>".encode()),
        )
        for i in range(n)
    ]


def message_ids(handler: RecordingHandler) -> list[str]:
    return [str(r.message["Message-ID"]) for r in handler.received]


def rcpt(status: MessageStatus, address: str) -> Any:
    return next(r for r in status.recipients if r.recipient == address)


@asynccontextmanager
async def serve_on(handler: Any, port: int) -> AsyncIterator[int]:
    """aiosmtpd on a given port: only to bring a server back *up* where it was before."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTPServerProtocol(handler, hostname="mx.test", loop=loop),
        host="127.0.0.1",
        port=port,
        reuse_address=True,
    )
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


# -- delivery --------------------------------------------------------------------


async def test_bulk_batch_is_delivered_once_each(
    outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler
) -> None:
    result = await outbox.enqueue(bulk(500), batch=True)
    assert result.batch_id is not None
    async with workers(outbox, smtp_port) as group:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await outbox.pending_count() and loop.time() < deadline:
            await asyncio.sleep(0.05)
    assert await outbox.batch_status(result.batch_id) == {"delivered": 500}
    ids = message_ids(handler)
    assert len(ids) == 500 and set(ids) == {f"<bulk{i}@test>" for i in range(500)}
    assert group.stats.delivered == 500


async def test_server_down_at_enqueue_then_up_loses_nothing(outbox: SqliteOutbox) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        pass  # the port is ours and now nobody listens on it
    ids = (await outbox.enqueue([envelope(f"u{i}@example.com", subject=f"n{i}") for i in range(20)])).ids
    async with workers(outbox, port):
        down = await until(outbox, ids[0], lambda s: s.recipients[0].attempts >= 1)
        assert down.state == "deferred" and down.recipients[0].last_code is None
        assert "connect" in down.recipients[0].last_reply
        async with serve_on(handler, port):
            for id_ in ids:
                await until(outbox, id_, lambda s: s.state == "delivered")
    assert sorted(message_ids(handler)) == sorted([(await outbox.status(i)).message_id for i in ids])


async def test_421_greeting_defers_backs_off_relay_and_expires(outbox: SqliteOutbox) -> None:
    counter = ConnectionCounter()
    async with smtp_server(
        RecordingHandler(), greeting_reply="421 mx.test busy, try later", connections=counter
    ) as port:
        ids = (await outbox.enqueue(bulk(30))).ids
        # A long relay pause: after the first failures nothing more is tried for a minute.
        async with workers(outbox, port, relay_backoff=60, relay_backoff_max=60, pool_size=2):
            first = await until(outbox, ids[0], lambda s: s.recipients[0].attempts >= 1)
            assert first.state == "deferred" and first.recipients[0].last_code == 421
            await asyncio.sleep(0.3)
            untried = [s for s in [await outbox.status(i) for i in ids] if s.recipients[0].attempts == 0]
            assert len(untried) >= 20  # the relay is not hammered with all 30
            assert counter.count <= 4
        # With a short pause and a short lifetime, retries go on until the message expires.
        async with workers(outbox, port, retry_lifetime=0.5):
            final = await until(outbox, ids[0], lambda s: s.state == "failed")
    r = final.recipients[0]
    assert (r.state, r.last_code) == ("expired", 421) and r.attempts >= 2
    assert "gave up" in r.last_reply and "busy" in r.last_reply


async def test_451_on_rcpt_is_retried_until_accepted(
    outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler
) -> None:
    handler.refuse["ann@example.com"] = "451 4.7.1 greylisted"
    [id_] = (await outbox.enqueue([envelope("ann@example.com")])).ids
    async with workers(outbox, smtp_port):
        deferred = await until(outbox, id_, lambda s: s.recipients[0].attempts >= 2)
        assert deferred.state == "deferred" and deferred.recipients[0].last_code == 451
        assert "greylisted" in deferred.recipients[0].last_reply
        del handler.refuse["ann@example.com"]
        done = await until(outbox, id_, lambda s: s.state == "delivered")
    assert done.recipients[0].attempts >= 3 and len(handler.received) == 1


async def test_550_on_rcpt_fails_at_once(outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler) -> None:
    handler.refuse["nobody@example.com"] = "550 5.1.1 no such user"
    [id_] = (await outbox.enqueue([envelope("nobody@example.com")])).ids
    async with workers(outbox, smtp_port):
        status = await until(outbox, id_, lambda s: s.state == "failed")
        await asyncio.sleep(0.2)  # give a wrong retry the chance to happen
    r = (await outbox.status(id_)).recipients[0]
    assert (r.state, r.last_code, r.attempts) == ("failed", 550, 1)
    assert "no such user" in status.recipients[0].last_reply and handler.received == []


async def test_554_after_data_fails(outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler) -> None:
    handler.data_reply = "554 5.6.0 message rejected"
    [id_] = (await outbox.enqueue([envelope("ann@example.com", "bob@example.com")])).ids
    async with workers(outbox, smtp_port):
        status = await until(outbox, id_, lambda s: s.state == "failed")
    assert [(r.state, r.last_code, r.attempts) for r in status.recipients] == [("failed", 554, 1)] * 2


async def test_drop_after_data_is_transient(outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler) -> None:
    handler.drop_after_data = True
    [id_] = (await outbox.enqueue([envelope("ann@example.com")])).ids
    async with workers(outbox, smtp_port):
        dropped = await until(outbox, id_, lambda s: s.recipients[0].attempts >= 1)
        assert dropped.state == "deferred" and dropped.recipients[0].last_code is None
        handler.drop_after_data = False
        done = await until(outbox, id_, lambda s: s.state == "delivered")
    assert done.recipients[0].attempts >= 2
    assert message_ids(handler) == [done.message_id]


async def test_stall_past_deadline_is_transient_and_message_id_is_stable(
    outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler
) -> None:
    handler.stall_seconds = 1.0
    [id_] = (await outbox.enqueue([envelope("ann@example.com")])).ids
    async with workers(outbox, smtp_port, timeout=0.3):
        stalled = await until(outbox, id_, lambda s: s.recipients[0].attempts >= 1)
        assert stalled.state == "deferred" and "MAIL_TIMEOUT" in stalled.recipients[0].last_reply
        handler.stall_seconds = 0
        done = await until(outbox, id_, lambda s: s.state == "delivered")
    await asyncio.sleep(1.0)  # let the stalled server-side session finish its late 250
    # A lost 250 can mean a copy arrived anyway; every copy carries the same Message-ID.
    assert set(message_ids(handler)) == {done.message_id}


async def test_mixed_recipients_only_the_transient_one_is_retried(
    outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler
) -> None:
    handler.refuse.update({"bad@example.com": "550 5.1.1 unknown", "later@example.com": "451 4.3.0 later"})
    [id_] = (await outbox.enqueue([envelope("ok@example.com", "bad@example.com", "later@example.com")])).ids
    async with workers(outbox, smtp_port):
        mid = await until(outbox, id_, lambda s: rcpt(s, "later@example.com").attempts >= 2)
        del handler.refuse["later@example.com"]
        done = await until(outbox, id_, lambda s: s.state == "partial")
    assert mid.state == "deferred"
    assert [(r.recipient, r.state, r.last_code) for r in done.recipients] == [
        ("ok@example.com", "delivered", 250),
        ("bad@example.com", "failed", 550),
        ("later@example.com", "delivered", 250),
    ]
    assert rcpt(done, "ok@example.com").attempts == 1 and rcpt(done, "bad@example.com").attempts == 1
    assert [r.rcpt_tos for r in handler.received] == [["ok@example.com"], ["later@example.com"]]
    assert len(set(message_ids(handler))) == 1


async def test_graceful_stop_finishes_in_flight_and_releases_the_rest(
    outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler
) -> None:
    handler.stall_seconds = 0.05
    ids = (await outbox.enqueue(bulk(200))).ids
    async with workers(outbox, smtp_port, pool_size=2, lease_seconds=600) as group:
        await until(outbox, ids[0], lambda s: s.state == "delivered")
    # After stop(): nothing is left leased; what was not sent is claimable at once (not in 600 s).
    states = [(await outbox.status(i)).state for i in ids]
    assert "sending" not in states
    pending = states.count("queued")
    assert pending > 0 and group.stats.released > 0
    assert len(await outbox.claim("another", 1000, 60)) == pending
    assert len(handler.received) == states.count("delivered") == group.stats.delivered


async def test_message_waiting_past_its_lease_for_a_connection_keeps_it_and_is_sent_once(
    outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler
) -> None:
    """One connection, 40 slow sends (~2 s in all), a 1 s lease and two claim loops: messages
    still queued for a slot when their first lease would lapse must not be claimed and sent
    again. The worker renews the leases of what it holds (before renewal, it gave them back)."""
    handler.stall_seconds = 0.05
    ids = (await outbox.enqueue(bulk(40))).ids
    async with workers(outbox, smtp_port, pool_size=1, lease_seconds=1.0, workers=2) as group:
        for id_ in ids:
            await until(outbox, id_, lambda s: s.state == "delivered", within=60)
    assert group.stats.renewed > 0
    assert sorted(message_ids(handler)) == sorted(f"<bulk{i}@test>" for i in range(40))


@dataclasses.dataclass
class RecordedAtAcceptance(RecordingHandler):
    """Accepts like RecordingHandler and, at each accepted message, reads how many the outbox has recorded delivered.

    ``gaps``: for each acceptance, messages the server holds that the outbox has not recorded yet:
    what a SIGKILL of the worker at that instant would send again.
    """

    db_path: Path | None = None
    gaps: list[int] = dataclasses.field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        assert self.db_path is not None
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:  # a reader beside the writer (WAL)
            (recorded,) = db.execute("SELECT count(*) FROM recipients WHERE state = 'delivered'").fetchone()
        self.gaps.append(len(self.received) - recorded)
        return reply


async def test_sent_and_unrecorded_never_exceeds_the_concurrency(tmp_path: Path) -> None:
    """Issue 18's crash window, watched from the server: however many are claimed ahead, never more than
    ``worker_concurrency`` messages are accepted by the relay and not yet recorded."""
    path = tmp_path / "outbox.sqlite3"
    watch = RecordedAtAcceptance(db_path=path)
    concurrency, n = 6, 300
    async with SqliteOutbox(path) as outbox, smtp_server(watch) as port:
        batch = (await outbox.enqueue(bulk(n), batch=True)).batch_id
        assert batch is not None
        async with workers(outbox, port, worker_concurrency=concurrency, claim_batch=20):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while await outbox.pending_count() and loop.time() < deadline:
                await asyncio.sleep(0.05)
        assert await outbox.batch_status(batch) == {"delivered": n}
    assert len(watch.gaps) == n
    assert max(watch.gaps) <= concurrency, f"sent and unrecorded reached {max(watch.gaps)} (> {concurrency})"


async def test_outcomes_that_arrive_during_a_flush_do_not_wait_for_the_poll_interval(
    outbox: SqliteOutbox, smtp_port: int, handler: RecordingHandler
) -> None:
    """A long poll interval (the default is 1 s) paces retries, never recording: with every slot held until
    its outcome commits, a pause between flushes stalled all sending (93 msg/s at the default, issue 18)."""
    n = 600
    batch = (await outbox.enqueue(bulk(n), batch=True)).batch_id
    assert batch is not None
    async with workers(outbox, smtp_port, poll_interval=120.0, worker_concurrency=20, claim_batch=20):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60  # a liveness bound: with a pause per flush this takes 30 pauses of 120 s
        while await outbox.pending_count() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert await outbox.batch_status(batch) == {"delivered": n}
