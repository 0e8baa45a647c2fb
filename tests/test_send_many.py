"""Bulk sending: a result per message and per recipient; nothing stops the others; nothing twice."""

from __future__ import annotations

from collections import Counter

from mailsvc import Message
from tests.helpers import config, standalone
from tests.servers import ConnectionCounter, RecordingHandler, smtp_server

N = 1000
POOL = 4


def refused_addr(i: int) -> str:
    return f"gone{i}@example.com"


async def test_thousand_messages_with_refusals_each_delivered_exactly_once() -> None:
    refuse: dict[str, str] = {}
    messages: list[Message] = []
    expected_delivered: dict[str, set[str]] = {}  # message id -> accepted recipients
    for i in range(N):
        to = [f"user{i}@example.com"]
        if i % 10 == 0:  # one refused recipient next to a good one
            to.append(refused_addr(i))
            refuse[refused_addr(i)] = "550 5.1.1 no such user"
        if i % 97 == 0:  # nobody accepts this one; a temporary refusal
            to = [f"busy{i}@example.com"]
            refuse[to[0]] = "450 4.2.1 mailbox busy"
        msg = Message(f"bulk {i}", recipients=to, body=f"message number {i}")
        messages.append(msg)
        expected_delivered[msg.msgId] = {t for t in to if t not in refuse}
    bad = Message("bad\r\nBcc: victim@example.com", recipients=["x@example.com"], body="x")
    messages.insert(500, bad)

    handler, counter = RecordingHandler(refuse=refuse), ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port, pool_size=POOL, timeout=30.0)) as mail:
            results = await mail.send_many(messages)

    assert len(results) == N + 1
    bad_result = results.pop(500)
    messages.pop(500)
    assert [r.status for r in bad_result.recipients] == ["failed"]
    assert "subject" in bad_result.recipients[0].reply

    seen = Counter(r.message["Message-ID"] for r in handler.received)
    assert all(count == 1 for count in seen.values()), "a message was delivered twice"
    assert set(seen) == {mid for mid, ok in expected_delivered.items() if ok}
    by_id = {r.message["Message-ID"]: r for r in handler.received}

    for i, (msg, result) in enumerate(zip(messages, results, strict=True)):
        assert result.message_id == msg.msgId
        statuses = {r.recipient: r for r in result.recipients}
        assert set(statuses) == set(msg.recipients)
        for rcpt, r in statuses.items():
            if rcpt in refuse:
                code = int(refuse[rcpt][:3])
                assert (r.status, r.code, r.reply) == ("refused", code, refuse[rcpt][4:])
                assert r.transient is (code == 450)
            else:
                assert (r.status, r.code) == ("delivered", 250)
        if expected_delivered[msg.msgId]:
            got = by_id[msg.msgId]
            assert sorted(got.rcpt_tos) == sorted(expected_delivered[msg.msgId])
            assert got.message["Subject"] == f"bulk {i}"
            assert got.message.get_content().strip() == f"message number {i}"
    assert 1 <= counter.count <= POOL  # persistent connections, bounded by MAIL_POOL_SIZE


async def test_one_failed_message_does_not_stop_the_others() -> None:
    """A DATA-stage 5xx on one message and a dropped connection on another leave the rest delivered."""

    class Faulty(RecordingHandler):
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            if "drop@example.com" in envelope.rcpt_tos:
                server.transport.close()
                return "250 never seen"
            if "reject@example.com" in envelope.rcpt_tos:
                return "554 5.6.0 content rejected"
            return await super().handle_DATA(server, session, envelope)

    handler = Faulty()
    targets = ["a@example.com", "drop@example.com", "b@example.com", "reject@example.com", "c@example.com"]
    async with smtp_server(handler) as port:
        async with standalone(config(port, pool_size=2)) as mail:
            results = await mail.send_many([Message("x", recipients=[t], body="x") for t in targets])
    status = {r.recipients[0].recipient: r.recipients[0] for r in results}
    assert status["drop@example.com"].status == "failed" and status["drop@example.com"].code is None
    assert (status["reject@example.com"].status, status["reject@example.com"].code) == ("refused", 554)
    assert all(status[t].status == "delivered" for t in ("a@example.com", "b@example.com", "c@example.com"))
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["a@example.com", "b@example.com", "c@example.com"]


async def test_empty_batch() -> None:
    async with standalone(config(1)) as mail:
        assert await mail.send_many([]) == []


async def test_send_many_reconnects_after_max_emails() -> None:
    """Workers hold a connection across messages, but MAIL_MAX_EMAILS still bounds each one."""
    handler, counter = RecordingHandler(), ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port, max_emails=3, pool_size=2)) as mail:
            results = await mail.send_many(
                [Message(f"n{i}", recipients=[f"u{i}@example.com"], body="x") for i in range(12)]
            )
    assert [r.ok for r in results] == [True] * 12
    assert sorted(r.message["Subject"] for r in handler.received) == sorted(f"n{i}" for i in range(12))
    assert counter.count == 4  # 12 messages, 3 per connection


async def test_send_many_goes_on_after_421_closes_a_connection() -> None:
    """A server closing the connection (421) fails that message only; the next ones take a new connection."""

    class Closing(RecordingHandler):
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            if "bye@example.com" in envelope.rcpt_tos:
                return "421 4.3.2 shutting down"
            return await super().handle_DATA(server, session, envelope)

    handler, counter = Closing(), ConnectionCounter()
    targets = ["a@example.com", "bye@example.com", "b@example.com", "c@example.com", "bye@example.com", "d@example.com"]
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port, pool_size=1)) as mail:
            results = await mail.send_many([Message("x", recipients=[t], body="x") for t in targets])
    assert [(r.recipients[0].status, r.recipients[0].code) for r in results] == [
        ("delivered", 250),
        ("refused", 421),
        ("delivered", 250),
        ("delivered", 250),
        ("refused", 421),
        ("delivered", 250),
    ]
    assert sorted(r.rcpt_tos[0] for r in handler.received) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    ]
    assert counter.count == 3


async def test_send_many_to_an_unreachable_server_fails_each_message() -> None:
    async with smtp_server(RecordingHandler()) as port:
        pass  # the port is closed again: nothing listens there
    async with standalone(config(port, pool_size=2, timeout=5.0)) as mail:
        results = await mail.send_many([Message("x", recipients=[f"u{i}@example.com"], body="x") for i in range(5)])
    assert [[r.status for r in res.recipients] for res in results] == [["failed"]] * 5
    assert all(res.recipients[0].code is None and res.recipients[0].reply for res in results)
