"""The send feed (``transports/feed.py``): envelopes submitted one at a time, sent back to back on pooled connections.

Against real aiosmtpd servers (the pipelining tests' handler, which notes when the
next ``MAIL FROM`` was already waiting behind a message's final dot), and the
delivery worker through it over a real SQLite outbox.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mailsvc import MailConfig, Message
from mailsvc.errors import DeliveryError
from mailsvc.mailstate import MailState
from mailsvc.message import Envelope
from mailsvc.outbox import SqliteOutbox
from mailsvc.transports.feed import Gone, SendFeed
from tests.servers import ConnectionCounter, smtp_server
from tests.test_pipestream import StreamHandler
from tests.test_worker import until, workers


def _envelope(i: int, rcpt: str | None = None) -> Envelope:
    m = Message(f"message {i}", recipients=[rcpt or f"m{i}@example.com"], body=f"body {i}", sender="s@example.com")
    return m.build()


class _Feed:
    """A feed on a real pool, with what its hooks saw."""

    def __init__(self, port: int, pool_size: int, refuse: set[int] | None = None) -> None:
        self.state = MailState(MailConfig(server="127.0.0.1", port=port, pool_size=pool_size, timeout=5))
        self.admitted: list[int] = []
        self.troubles: list[DeliveryError] = []
        self.refuse = refuse or set()
        self.feed: SendFeed[int] = SendFeed(lambda: self.state.pool, pool_size, self._admit, self.troubles.append)

    def _admit(self, tag: int) -> bool:
        if tag in self.refuse:
            return False
        self.admitted.append(tag)
        return True

    async def close(self) -> None:
        await self.feed.close()
        await self.state.aclose()


async def test_submissions_go_back_to_back_on_at_most_the_pools_connections() -> None:
    handler, connections = StreamHandler(), ConnectionCounter()
    async with smtp_server(handler, connections=connections) as port:
        f = _Feed(port, pool_size=2)
        sent = await asyncio.gather(*(f.feed.submit(_envelope(i), i) for i in range(40)))
        await f.close()
    assert all(result.ok and not broken for result, broken in sent)
    assert [r.recipients[0].recipient for r, _ in sent] == [f"m{i}@example.com" for i in range(40)]
    assert sorted(r.message["Subject"] for r in handler.received) == sorted(f"message {i}" for i in range(40))
    assert connections.count == 2  # both of the pool's connections, never more
    assert handler.crossed > 0  # a content went out with the next message's MAIL FROM behind it
    assert sorted(f.admitted) == list(range(40))


async def test_a_refused_admission_is_gone_and_never_reaches_the_server() -> None:
    handler = StreamHandler()
    async with smtp_server(handler) as port:
        f = _Feed(port, pool_size=1, refuse={1, 3})
        futures = [f.feed.submit(_envelope(i), i) for i in range(5)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        await f.close()
    assert [isinstance(o, Gone) for o in outcomes] == [False, True, False, True, False]
    assert sorted(r.message["Subject"] for r in handler.received) == ["message 0", "message 2", "message 4"]


async def test_admission_is_asked_only_once_a_connection_is_free() -> None:
    """A message waiting for a busy pool is judged when it can go, not when it queued (the relay may pause)."""
    handler = StreamHandler()
    async with smtp_server(handler) as port:
        f = _Feed(port, pool_size=1)
        pool = f.state.pool
        await pool._sem.acquire()  # the one connection is taken elsewhere
        waiting = f.feed.submit(_envelope(0), 0)
        await asyncio.sleep(0.2)
        assert f.admitted == []
        f.refuse.add(0)  # meanwhile its sender changed its mind (a paused relay, a stale lease)
        pool._sem.release()
        with pytest.raises(Gone):
            await waiting
        await f.close()
    assert handler.received == []


async def test_a_connection_lost_on_a_content_fails_that_message_alone_as_the_connections_failure() -> None:
    """Message 3's content makes the server hang up: 3 fails (broken), 4 goes on a new connection."""
    handler, connections = StreamHandler(drop_on={"x@example.com"}), ConnectionCounter()
    async with smtp_server(handler, connections=connections) as port:
        f = _Feed(port, pool_size=1)
        envelopes = [_envelope(i, "x@example.com" if i == 3 else None) for i in range(8)]
        sent = await asyncio.gather(*(f.feed.submit(e, i) for i, e in enumerate(envelopes)))
        await f.close()
    assert [broken for _, broken in sent] == [i == 3 for i in range(8)]
    assert [r.recipients[0].status for r, _ in sent] == ["failed" if i == 3 else "delivered" for i in range(8)]
    assert len(f.troubles) == 1 and connections.count == 2
    assert sorted(r.message["Subject"] for r in handler.received) == sorted(f"message {i}" for i in range(8) if i != 3)


async def test_a_relay_that_refuses_connections_fails_each_taken_message_and_reports_the_trouble() -> None:
    with_nothing_listening = _unused_port()
    f = _Feed(with_nothing_listening, pool_size=1)
    sent = await asyncio.gather(*(f.feed.submit(_envelope(i), i) for i in range(3)))
    await f.close()
    assert all(broken and r.recipients[0].status == "failed" for r, broken in sent)
    assert len(f.troubles) == 3


async def test_a_withdrawn_submission_and_one_left_at_close_are_never_sent() -> None:
    handler = StreamHandler()
    async with smtp_server(handler) as port:
        f = _Feed(port, pool_size=1)
        withdrawn = f.feed.submit(_envelope(0), 0)
        withdrawn.cancel()  # before any connection took it
        kept = f.feed.submit(_envelope(1), 1)
        assert (await kept)[0].ok
        left = f.feed.submit(_envelope(2), 2)
        await f.close()  # before the connection it started took it
        with pytest.raises(Gone):
            await left
        with pytest.raises(Gone):
            f.feed.submit(_envelope(3), 3)
    assert [r.message["Subject"] for r in handler.received] == ["message 1"]
    assert f.admitted == [1]


async def test_the_worker_pipelines_claimed_messages_across_transactions(tmp_path: Path) -> None:
    handler, connections = StreamHandler(), ConnectionCounter()
    sink = smtp_server(handler, connections=connections)
    async with SqliteOutbox(tmp_path / "outbox.sqlite3") as outbox, sink as port:
        result = await outbox.enqueue([_envelope(i) for i in range(60)], batch=True)
        async with workers(outbox, port, pool_size=2):
            for id_ in result.ids:
                await until(outbox, id_, lambda s: s.state == "delivered")
    assert len(handler.received) == 60
    assert connections.count <= 2
    assert handler.crossed > 0


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
