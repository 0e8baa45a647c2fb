"""What only the SQLite outbox promises: the file, its durability settings, and failing cleanly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailsvc import Message
from mailsvc.errors import ConfigError, OutboxError
from mailsvc.outbox import SqliteOutbox, open_outbox


def envelopes(n: int) -> list:  # type: ignore[type-arg]
    return [
        Message(f"n{i}", recipients=[f"u{i}@example.com"], body="x", sender="s@example.com").build() for i in range(n)
    ]


async def test_file_is_created_with_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "outbox.sqlite3"
    async with open_outbox(f"sqlite:///{path}") as outbox:
        assert isinstance(outbox, SqliteOutbox)
        await outbox.enqueue(envelopes(1))
        async with outbox.db.execute("PRAGMA synchronous") as cur:
            assert (await cur.fetchone()) == (2,)  # FULL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (1,)
    conn.close()


async def test_a_messages_bytes_live_apart_from_the_row_the_workers_update(tmp_path: Path) -> None:
    """Migration 0011: a claim and a record rewrite the small ``messages`` row; the bytes are written once."""
    path = tmp_path / "outbox.sqlite3"
    env = Message("big", recipients=["a@example.com"], body="x" * 5000, sender="s@example.com").build()
    async with SqliteOutbox(path) as outbox:
        await outbox.enqueue([env])
        [claimed] = await outbox.claim("w", 10, 60)
        assert claimed.envelope.data == env.data
    with sqlite3.connect(path) as conn:
        assert "data" not in [c[1] for c in conn.execute("PRAGMA table_info(messages)")]
        assert conn.execute("SELECT data FROM contents").fetchall() == [(env.data,)]
    conn.close()


def test_urls() -> None:
    assert open_outbox(None).path == Path("var/mailsvc.sqlite3")  # type: ignore[attr-defined]
    assert open_outbox("sqlite:///var/x.db").path == Path("var/x.db")  # type: ignore[attr-defined]
    assert open_outbox("sqlite:////abs/x.db").path == Path("/abs/x.db")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="MAILSVC_DATABASE_URL"):
        open_outbox("mysql://x")
    with pytest.raises(ConfigError, match="MAILSVC_DATABASE_URL"):
        open_outbox("sqlite:x.db")


async def test_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutboxError, match="cannot open the outbox database"):
        await open_outbox(f"sqlite:///{tmp_path / 'file' / 'outbox.sqlite3'}").open()


async def test_enqueue_while_database_cannot_be_written_leaves_nothing(tmp_path: Path) -> None:
    """Another process holds the write lock past our busy timeout: clear error, nothing half-queued."""
    path = tmp_path / "outbox.sqlite3"
    outbox = SqliteOutbox(path, busy_timeout=0.2)
    await outbox.open()
    try:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(OutboxError, match="cannot be written"):
                await outbox.enqueue(envelopes(50), batch=True, idempotency_key="k")
            with pytest.raises(OutboxError):
                await outbox.ping()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await outbox.pending_count() == 0
        await outbox.ping()
        # The key was not burnt by the failed attempt: the retry is a first enqueue.
        result = await outbox.enqueue(envelopes(50), batch=True, idempotency_key="k")
        assert not result.duplicate and await outbox.pending_count() == 50
    finally:
        await outbox.close()


async def test_failure_mid_transaction_rolls_back_the_whole_batch(tmp_path: Path) -> None:
    """The disk fills up half-way through a batch: none of it stays."""
    path = tmp_path / "outbox.sqlite3"
    async with SqliteOutbox(path) as outbox:
        assert isinstance(outbox, SqliteOutbox)
        await outbox.enqueue(envelopes(1))
        async with outbox.db.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
        assert row is not None
        await outbox.db.execute(f"PRAGMA max_page_count = {row[0] + 2}")
        with pytest.raises(OutboxError, match="full"):
            await outbox.enqueue(envelopes(200), batch=True)
        assert await outbox.pending_count() == 1
