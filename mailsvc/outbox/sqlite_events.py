"""The event log and webhook deliveries on SQLite (the statements only; what they mean is :mod:`.events`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .events import (
    Delivery,
    DeliveryJob,
    DeliveryOutcome,
    Event,
    EventLog,
    EventPage,
    MinuteCounts,
    decode_cursor,
    encode_cursor,
)

if TYPE_CHECKING:
    import aiosqlite

    from .sqlite import SqliteStore
    from .store import Tx

__all__ = ["SqliteEventLog"]

_EVENT_COLUMNS = "e.seq, e.type, e.message, e.address, e.code, e.reply, e.attempt, e.at, e.tenant, m.tags, m.metadata"
_WITH_MESSAGE = "events AS e LEFT JOIN messages AS m ON m.pk = e.msg"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _event(row: Sequence[Any]) -> Event:
    seq, type_, message, address, code, reply, attempt, at, tenant, tags, meta = row
    return Event(
        encode_cursor(0, seq, "sqlite"),
        type_,
        message,
        address,
        code,
        reply,
        attempt,
        _dt(at),
        tenant,
        tuple(json.loads(tags)) if tags and tags != "[]" else (),
        dict(json.loads(meta)) if meta and meta != "{}" else None,
    )


def _db(tx: Tx) -> tuple[aiosqlite.Connection, float]:
    """The SQLite transaction's connection and clock (every Tx of a SqliteStore is a ``_SqliteTx``)."""
    return tx.db, tx.now  # type: ignore[attr-defined]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


class SqliteEventLog(EventLog):
    backend = "sqlite"

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def read(
        self,
        tenant: str | None,
        after: str | None,
        types: Sequence[str],
        message: str | None,
        limit: int,
        tag: str | None = None,
    ) -> EventPage:
        _, seq = decode_cursor(after, "sqlite") if after else (0, 0)
        where, params = ["e.seq > ?"], [seq]  # type: tuple[list[str], list[object]]
        if tenant is not None:
            where.append("e.tenant = ?")
            params.append(tenant)
        if types:
            where.append(f"e.type IN ({_marks(types)})")
            params += list(types)
        if message is not None:
            where.append("e.message = ?")
            params.append(message)
        if tag is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(m.tags) WHERE json_each.value = ?)")
            params.append(tag)
        async with self.store.read("read events") as tx:
            db, _ = _db(tx)
            rows = await db.execute_fetchall(
                f"SELECT {_EVENT_COLUMNS} FROM {_WITH_MESSAGE} WHERE {' AND '.join(where)} ORDER BY e.seq LIMIT ?",
                (*params, limit),
            )
        events = [_event(r) for r in rows]
        return EventPage(events, events[-1].cursor if events else after)

    async def per_minute(
        self, tenant: str | None, type: str, start: datetime, minutes: int, scan: int = 50_000
    ) -> MinuteCounts:
        since = start.timestamp()
        mine, who = ("", ()) if tenant is None else ("WHERE tenant = ? ", (tenant,))
        newest = f"SELECT at, type FROM events {mine}ORDER BY seq DESC LIMIT ?"
        async with self.store.read("count events per minute") as tx:
            db, _ = _db(tx)
            rows = await db.execute_fetchall(
                f"SELECT CAST((at - ?) / 60 AS INTEGER) AS m, count(*) FROM ({newest})"
                " WHERE type = ? AND at >= ? GROUP BY m",
                (since, *who, scan, type, since),
            )
            edge = await db.execute_fetchall(f"SELECT count(*), min(at) FROM ({newest})", (*who, scan))
        counts = [0] * minutes
        for m, n in rows:
            if 0 <= m < minutes:
                counts[m] = int(n)
        seen, oldest = next(iter(edge))
        return MinuteCounts(start, counts, seen >= scan and oldest is not None and oldest > since)

    async def fanout(self, endpoint: str, types: Sequence[str], limit: int) -> int:
        async with self.store.write("fan events out to a webhook") as tx:
            db, now = _db(tx)
            row = await (
                await db.execute("SELECT cursor FROM webhook_cursors WHERE endpoint = ?", (endpoint,))
            ).fetchone()
            if row is None:  # a new endpoint hears what happens from now on
                await db.execute(
                    "INSERT INTO webhook_cursors (endpoint, cursor) SELECT ?, coalesce(max(seq), 0) FROM events",
                    (endpoint,),
                )
                return 0
            rows = list(
                await db.execute_fetchall(
                    "SELECT seq, type, coalesce(message, 'address:' || address) FROM events WHERE seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (row[0], limit),
                )
            )
            if not rows:
                return 0
            wanted = set(types)
            await db.executemany(
                "INSERT OR IGNORE INTO webhook_deliveries (endpoint, seq, message, due_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(endpoint, seq, key, now, now, now) for seq, type_, key in rows if not wanted or type_ in wanted],
            )
            await db.execute("UPDATE webhook_cursors SET cursor = ? WHERE endpoint = ?", (rows[-1][0], endpoint))
            return len(rows)

    async def claim(self, endpoints: Sequence[str], limit: int, lease_seconds: float) -> list[DeliveryJob]:
        if not endpoints or limit <= 0:
            return []
        async with self.store.write("claim webhook deliveries") as tx:
            db, now = _db(tx)
            rows = list(
                await db.execute_fetchall(
                    f"SELECT d.id, d.endpoint, d.attempts, d.created_at, {_EVENT_COLUMNS}"
                    " FROM webhook_deliveries AS d JOIN events AS e ON e.seq = d.seq"
                    " LEFT JOIN messages AS m ON m.pk = e.msg"
                    f" WHERE d.due_at IS NOT NULL AND d.due_at <= ? AND d.endpoint IN ({_marks(endpoints)})"
                    " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries AS p WHERE p.endpoint = d.endpoint"
                    " AND p.message = d.message AND p.due_at IS NOT NULL AND p.id < d.id)"
                    " ORDER BY d.due_at, d.id LIMIT ?",
                    (now, *endpoints, limit),
                )
            )
            await db.executemany(
                "UPDATE webhook_deliveries SET due_at = ?, updated_at = ? WHERE id = ?",
                [(now + lease_seconds, now, r[0]) for r in rows],
            )
        return [DeliveryJob(r[0], r[1], r[2], _dt(r[3]), _event(r[4:])) for r in rows]

    async def record(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        if not outcomes:
            return
        async with self.store.write("record webhook deliveries") as tx:
            db, now = _db(tx)
            await db.executemany(
                "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, last_error = ?, due_at = ?,"
                " updated_at = ? WHERE id = ?",
                [(o.status, o.error[:500], o.next_at.timestamp() if o.next_at else None, now, o.id) for o in outcomes],
            )

    async def deliveries(self, status: str | None, after: int | None, limit: int) -> list[Delivery]:
        where, params = ["id > ?"], [after or 0]  # type: tuple[list[str], list[object]]
        if status is not None:
            where.append("status = ?")
            params.append(status)
        async with self.store.read("read webhook deliveries") as tx:
            db, _ = _db(tx)
            rows = await db.execute_fetchall(
                "SELECT id, endpoint, seq, message, status, attempts, last_error, created_at, updated_at, due_at"
                f" FROM webhook_deliveries WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                (*params, limit),
            )
        return [
            Delivery(
                r[0],
                r[1],
                encode_cursor(0, r[2], "sqlite"),
                r[3],
                r[4],
                r[5],
                r[6],
                _dt(r[7]),
                _dt(r[8]),
                _dt(r[9]) if r[9] is not None else None,
            )
            for r in rows
        ]

    async def replay(self, id: int) -> bool:
        async with self.store.write("replay a webhook delivery") as tx:
            db, now = _db(tx)
            cur = await db.execute(
                "UPDATE webhook_deliveries SET status = 'pending', due_at = ?, updated_at = ?"
                " WHERE id = ? AND status IN ('failed', 'failing', 'delivered')",
                (now, now, id),
            )
            return bool(cur.rowcount)

    async def backlog(self) -> int:
        async with self.store.read("count webhook backlog") as tx:
            db, _ = _db(tx)
            rows = await db.execute_fetchall("SELECT count(*) FROM webhook_deliveries WHERE due_at IS NOT NULL")
        return int(next(iter(rows))[0])
