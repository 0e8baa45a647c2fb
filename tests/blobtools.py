"""What an outbox holds on disk, read straight from its database (SQLite file or PostgreSQL schema).

Why here: the blob tests measure growth and count rows on both backends, through the
outbox's own connection (SQLite) or pool (PostgreSQL), never through the outbox's API,
so a bug in that API cannot hide what is stored.
"""

from __future__ import annotations

from mailsvc.outbox import Outbox
from mailsvc.outbox.postgres import PostgresOutbox
from mailsvc.outbox.sqlite import SqliteOutbox

__all__ = ["blob_rows", "stored_bytes"]

_PG_TABLES = ("mailsvc_message", "mailsvc_body", "mailsvc_recipient", "mailsvc_blob", "mailsvc_splice")


async def stored_bytes(outbox: Outbox) -> int:
    """Bytes the outbox's data takes: SQLite pages in use (after a checkpoint), PostgreSQL relations with TOAST."""
    if isinstance(outbox, SqliteOutbox):
        await outbox.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        values = []
        for pragma in ("page_count", "freelist_count", "page_size"):
            async with outbox.db.execute(f"PRAGMA {pragma}") as cur:
                row = await cur.fetchone()
                assert row is not None
                values.append(int(row[0]))
        pages, free, size = values
        return (pages - free) * size
    assert isinstance(outbox, PostgresOutbox)
    async with outbox.pool.acquire() as conn:
        total: int = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest($1::text[]) AS t", list(_PG_TABLES)
        )
    return total


async def blob_rows(outbox: Outbox) -> tuple[int, int]:
    """(blobs stored, splices recorded)."""
    if isinstance(outbox, SqliteOutbox):
        counts = []
        for table in ("blobs", "splices"):
            async with outbox.db.execute(f"SELECT count(*) FROM {table}") as cur:
                row = await cur.fetchone()
                assert row is not None
                counts.append(int(row[0]))
        return counts[0], counts[1]
    assert isinstance(outbox, PostgresOutbox)
    async with outbox.pool.acquire() as conn:
        blobs: int = await conn.fetchval("SELECT count(*) FROM mailsvc_blob")
        splices: int = await conn.fetchval("SELECT count(*) FROM mailsvc_splice")
    return blobs, splices
