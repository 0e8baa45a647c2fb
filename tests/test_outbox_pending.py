"""MAILSVC_MAX_PENDING while single enqueues carry the pending count between group commits (outbox/pending.py).

Real SQLite files throughout; a second ``SqliteOutbox`` on the same file stands for another process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from mailsvc import Message
from mailsvc.errors import OutboxFullError
from mailsvc.message import Envelope
from mailsvc.outbox import SqliteOutbox
from mailsvc.outbox.base import RecipientOutcome
from mailsvc.outbox.states import RecipientState


def envelopes(n: int, prefix: str = "u") -> list[Envelope]:
    return [
        Message(f"n{i}", recipients=[f"{prefix}{i}@example.com"], body="x", sender="s@example.com").build()
        for i in range(n)
    ]


async def chunks(items: Sequence[Envelope]) -> AsyncIterator[Sequence[Envelope]]:
    yield items


async def opened(path: Path, max_pending: int) -> SqliteOutbox:
    outbox = SqliteOutbox(path, max_pending=max_pending)
    await outbox.open()
    return outbox


async def counts_of(outbox: SqliteOutbox) -> list[str]:
    """The statements SQLite runs from now on that count the pending messages."""
    seen: list[str] = []
    await outbox.db.set_trace_callback(lambda sql: seen.append(sql) if "count(*)" in sql else None)
    return seen


async def test_concurrent_single_enqueues_stop_exactly_at_the_limit(tmp_path: Path) -> None:
    outbox = await opened(tmp_path / "o.sqlite3", max_pending=20)
    try:
        results = await asyncio.gather(
            *(outbox.enqueue(envelopes(1, f"a{i}-")) for i in range(25)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 20
        assert all(isinstance(r, OutboxFullError) for r in results if isinstance(r, BaseException))
        with pytest.raises(OutboxFullError):
            await outbox.enqueue(envelopes(1))
        assert await outbox.pending_count() == 20
    finally:
        await outbox.close()


async def test_below_half_the_limit_the_count_is_carried_not_read_again(tmp_path: Path) -> None:
    outbox = await opened(tmp_path / "o.sqlite3", max_pending=1000)
    try:
        await outbox.enqueue(envelopes(1))  # counted once
        seen = await counts_of(outbox)
        for i in range(5):
            await outbox.enqueue(envelopes(1, f"b{i}-"))
        assert seen == []
        assert await outbox.pending_count() == 6
    finally:
        await outbox.close()


async def test_past_half_the_limit_every_group_counts(tmp_path: Path) -> None:
    outbox = await opened(tmp_path / "o.sqlite3", max_pending=10)
    try:
        await outbox.enqueue(envelopes(5))
        seen = await counts_of(outbox)
        await outbox.enqueue(envelopes(1, "c"))
        await outbox.enqueue(envelopes(1, "d"))
        assert len(seen) == 2
    finally:
        await outbox.close()


async def test_delivered_messages_make_room_again(tmp_path: Path) -> None:
    outbox = await opened(tmp_path / "o.sqlite3", max_pending=4)
    try:
        await outbox.enqueue(envelopes(4))
        with pytest.raises(OutboxFullError):
            await outbox.enqueue(envelopes(1, "x"))
        for claimed in await outbox.claim("w", 2, 60):
            await outbox.record(
                claimed.id, "w", [RecipientOutcome(claimed.envelope.recipients[0], RecipientState.DELIVERED, 250)]
            )
        await outbox.enqueue(envelopes(1, "y"))
        await outbox.enqueue(envelopes(1, "z"))
        with pytest.raises(OutboxFullError):
            await outbox.enqueue(envelopes(1, "w"))
        assert await outbox.pending_count() == 4
    finally:
        await outbox.close()


async def test_a_stream_of_this_process_is_counted_by_the_next_group(tmp_path: Path) -> None:
    outbox = await opened(tmp_path / "o.sqlite3", max_pending=10)
    try:
        await outbox.enqueue(envelopes(1))  # carried: 1
        await outbox.enqueue_stream(8, chunks(envelopes(8, "s")), batch=True)  # 9 now
        with pytest.raises(OutboxFullError):
            await outbox.enqueue(envelopes(2, "t"))
        await outbox.enqueue(envelopes(1, "t"))
        assert await outbox.pending_count() == 10
    finally:
        await outbox.close()


async def test_another_process_s_messages_are_counted_near_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    mine, other = await opened(path, max_pending=4), await opened(path, max_pending=4)
    try:
        await mine.enqueue(envelopes(2))  # half the limit: the next group counts
        await other.enqueue(envelopes(2, "o"))
        with pytest.raises(OutboxFullError):
            await mine.enqueue(envelopes(1, "m"))
        assert await mine.pending_count() == 4
    finally:
        await mine.close()
        await other.close()


async def test_another_process_s_messages_are_counted_once_the_count_is_stale(tmp_path: Path) -> None:
    """Below half the limit the carried count is read again after ``recount_seconds`` (0 here: always stale)."""
    path = tmp_path / "o.sqlite3"
    mine, other = await opened(path, max_pending=10), await opened(path, max_pending=10)
    try:
        await mine.enqueue(envelopes(1))
        mine.pending.recount_seconds = 0.0
        await other.enqueue(envelopes(9, "o"))
        with pytest.raises(OutboxFullError):
            await mine.enqueue(envelopes(1, "m"))
        assert await mine.pending_count() == 10
    finally:
        await mine.close()
        await other.close()
