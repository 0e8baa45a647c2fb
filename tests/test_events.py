"""Delivery events: one per recipient state change, in commit order, read by cursor; on SQLite and PostgreSQL.

Real outboxes (the contract suite's implementations); the PostgreSQL test holds a transaction open on a
second connection to prove the cursor never passes an event that commits later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mailsvc import Message
from mailsvc.outbox import Outbox, RecipientOutcome
from mailsvc.outbox.events import CursorError, Event, EventLog
from tests.outbox_impls import IMPLEMENTATIONS


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outbox]:
    ob = await IMPLEMENTATIONS[request.param](tmp_path)
    try:
        yield ob
    finally:
        await ob.close()


def log_of(outbox: Outbox) -> EventLog:
    assert outbox.events is not None
    return outbox.events


def envelope(*recipients: str, subject: str = "Hi") -> Any:
    return Message(subject, recipients=list(recipients), body="x", sender="shop@example.com").build()


async def all_events(log: EventLog, page: int = 3, **kw: Any) -> list[Event]:
    """Every event, read page by page with the cursor (as a client catching up does)."""
    out: list[Event] = []
    cursor = None
    while True:
        got = await log.read(kw.get("tenant"), cursor, kw.get("types", []), kw.get("message"), page)
        out += got.events
        if not got.events:
            return out
        cursor = got.next


async def test_every_state_change_is_one_event_in_order(outbox: Outbox) -> None:
    log = log_of(outbox)
    [id_] = (await outbox.enqueue([envelope("ann@example.com", "bob@example.com")])).ids
    [claimed] = await outbox.claim("w", 10, 30)
    past = datetime(2000, 1, 1, tzinfo=UTC)  # due again at once
    await outbox.record(
        id_,
        "w",
        [
            RecipientOutcome("ann@example.com", "delivered", 250, "2.0.0 ok"),
            RecipientOutcome("bob@example.com", "deferred", 451, "4.3.0 try later", next_attempt_at=past),
        ],
    )
    [again] = await outbox.claim("w", 10, 30)
    assert again.envelope.recipients == ("bob@example.com",)
    await outbox.record(id_, "w", [RecipientOutcome("bob@example.com", "failed", 550, "5.1.1 no such user")])

    events = await all_events(log)
    assert [(e.address, e.type) for e in events] == [
        ("ann@example.com", "queued"),
        ("bob@example.com", "queued"),
        ("ann@example.com", "sending"),
        ("bob@example.com", "sending"),
        ("ann@example.com", "delivered"),
        ("bob@example.com", "deferred"),
        ("bob@example.com", "sending"),
        ("bob@example.com", "failed"),
    ]
    assert all(e.message == id_ for e in events)
    assert len({e.cursor for e in events}) == len(events)  # nothing read twice across pages
    deferred, failed = events[5], events[7]
    assert (deferred.code, deferred.reply, deferred.attempt) == (451, "4.3.0 try later", 1)
    assert (failed.code, failed.reply, failed.attempt) == (550, "5.1.1 no such user", 2)
    # A recorded outcome that changes nothing (a final state is never overwritten) invents no event.
    await outbox.record(id_, "w", [RecipientOutcome("ann@example.com", "failed", 550, "late")])
    assert len(await all_events(log)) == len(events)


async def test_filters_and_a_caught_up_cursor(outbox: Outbox) -> None:
    log = log_of(outbox)
    a = (await outbox.enqueue([envelope("ann@example.com")], tenant="t1")).ids[0]
    await outbox.enqueue([envelope("bob@example.com")], tenant="t2")
    mine = await all_events(log, tenant="t1")
    assert [(e.message, e.type) for e in mine] == [(a, "queued")]
    assert await all_events(log, types=["delivered"]) == []
    assert [e.message for e in await all_events(log, message=a)] == [a]
    last = await log.read(None, None, [], None, 100)
    caught_up = await log.read(None, last.next, [], None, 100)
    assert caught_up.events == [] and caught_up.next == last.next  # asking again with it is safe


async def test_suppression_at_enqueue_and_an_unsubscribe_are_events(outbox: Outbox) -> None:
    log = log_of(outbox)
    await outbox.suppress(None, ["gone@example.com"], "default", reason="unsubscribe", source="test")
    await outbox.enqueue_stream(1, _chunks([envelope("gone@example.com")]), batch=True, suppress_stream="default")
    types = [(e.address, e.type) for e in await all_events(log)]
    assert types == [
        ("gone@example.com", "unsubscribed"),
        ("gone@example.com", "queued"),
        ("gone@example.com", "suppressed"),
    ]


async def _chunks(items: list[Any]) -> AsyncIterator[list[Any]]:
    yield items


async def test_a_cursor_from_the_other_backend_or_made_up_is_refused(outbox: Outbox) -> None:
    log = log_of(outbox)
    bad = "x1.1" if log.backend == "sqlite" else "s1"
    for cursor in (bad, "s-1", "zzz", "s" + "9" * 40, "x1.", "\ud800"):
        with pytest.raises(CursorError):
            await log.read(None, cursor, [], None, 10)


async def test_postgres_cursor_never_passes_an_event_that_commits_later(tmp_path: Path) -> None:
    """Transaction A changes a state first (lower xid) and commits last; B's event must not move the cursor
    past A's. With a plain sequence cursor the reader would skip A's event for ever."""
    from tests.pgtools import postgres_outbox

    outbox = await postgres_outbox(tmp_path)
    try:
        log = log_of(outbox)
        [first] = (await outbox.enqueue([envelope("ann@example.com")])).ids
        start = await log.read(None, None, [], None, 100)
        pool = outbox.store.pool  # type: ignore[attr-defined]
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("UPDATE mailsvc_recipient SET state = 'failed' WHERE message_pk = $1", first)
            [second] = (await outbox.enqueue([envelope("bob@example.com")])).ids  # commits while A is open
            while_open = await log.read(None, start.next, [], None, 100)
            assert while_open.events == []  # B committed, but reading it would pass A's lower xid
            await tx.commit()
        # Visible once no older transaction runs anywhere on the server (other clients' ones too): poll.
        for _ in range(500):
            after = await log.read(None, start.next, [], None, 100)
            if after.events:
                break
            await asyncio.sleep(0.02)
        assert [(e.message, e.type) for e in after.events] == [(first, "failed"), (second, "queued")]
    finally:
        await outbox.close()


async def test_scheduled_and_cancelled_are_events_and_a_repeat_cancel_adds_none(outbox: Outbox) -> None:
    from datetime import timedelta

    from mailsvc.outbox.base import Labels

    log = log_of(outbox)
    later = datetime.now(UTC) + timedelta(hours=1)
    [id_] = (await outbox.enqueue([envelope("ann@example.com")], labels=Labels(send_at=later))).ids
    await outbox.cancel(id_)
    await outbox.cancel(id_)  # idempotent: nothing changes, so no event
    assert [e.type for e in await all_events(log, message=id_)] == ["scheduled", "cancelled"]


async def test_each_event_has_the_time_of_its_change(outbox: Outbox) -> None:
    """A claim's UPDATE leaves updated_at alone; the event's time is still when the recipient started sending."""
    import asyncio

    log = log_of(outbox)
    await outbox.enqueue([envelope("ann@example.com")])
    await asyncio.sleep(0.05)
    await outbox.claim("w", 10, 30)
    queued, sending = await all_events(log)
    assert (queued.type, sending.type) == ("queued", "sending")
    assert (sending.at - queued.at).total_seconds() >= 0.04


async def test_events_carry_their_message_tags_and_metadata_and_filter_by_tag(outbox: Outbox) -> None:
    from mailsvc.outbox.base import Labels

    log = log_of(outbox)
    news = Labels(tags=("news", "dec"), metadata={"campaign": "c-42"})
    [tagged] = (await outbox.enqueue([envelope("ann@example.com")], labels=news)).ids
    [plain] = (await outbox.enqueue([envelope("bob@example.com")])).ids
    events = await all_events(log)
    by_message = {e.message: e for e in events}
    assert by_message[tagged].tags == ("news", "dec") and by_message[tagged].metadata == {"campaign": "c-42"}
    assert by_message[plain].tags == () and not by_message[plain].metadata
    assert by_message[tagged].as_json()["tags"] == ["news", "dec"]
    page = await log.read(None, None, [], None, 100, "news")
    assert [e.message for e in page.events] == [tagged]
    assert (await log.read(None, None, [], None, 100, "nope")).events == []
