"""The event log and webhook deliveries on PostgreSQL (the statements only; what they mean is :mod:`.events`).

xid8 values go over the wire as text (``::text`` / ``::text::xid8``): asyncpg has no codec of its own for them.
Only events of transactions older than every running one are read (``xid < pg_snapshot_xmin``), ordered by
``(xid, seq)``, so a cursor never passes an event that commits later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
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
    import asyncpg

    from .postgres import PostgresStore
    from .store import Tx

__all__ = ["PostgresEventLog"]

_EVENT_COLUMNS = (
    "e.xid::text AS xid, e.seq, e.type, e.message, e.address, e.code, e.reply, e.attempt, e.at, e.tenant,"
    " m.tags AS tags, m.metadata::text AS metadata"
)
_WITH_MESSAGE = "mailsvc_event AS e LEFT JOIN mailsvc_message AS m ON m.id = e.message"
_VISIBLE = "e.xid < pg_snapshot_xmin(pg_current_snapshot())"


def _conn(tx: Tx) -> asyncpg.Connection:
    return tx.conn  # type: ignore[attr-defined]


def _event(r: Any) -> Event:
    return Event(
        encode_cursor(int(r["xid"]), r["seq"], "postgres"),
        r["type"],
        r["message"],
        r["address"],
        r["code"],
        r["reply"],
        r["attempt"],
        r["at"],
        r["tenant"],
        tuple(r["tags"] or ()),
        dict(json.loads(r["metadata"])) if r["metadata"] and r["metadata"] != "{}" else None,
    )


class PostgresEventLog(EventLog):
    backend = "postgres"

    def __init__(self, store: PostgresStore) -> None:
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
        xid, seq = decode_cursor(after, "postgres") if after else (0, 0)
        where = [_VISIBLE, "(e.xid, e.seq) > ($1::text::xid8, $2::bigint)"]
        params: list[object] = [str(xid), seq]
        if tenant is not None:
            params.append(tenant)
            where.append(f"e.tenant = ${len(params)}")
        if types:
            params.append(list(types))
            where.append(f"e.type = ANY(${len(params)}::text[])")
        if message is not None:
            params.append(message)
            where.append(f"e.message = ${len(params)}")
        if tag is not None:
            params.append(tag)
            where.append(f"${len(params)} = ANY(m.tags)")
        params.append(limit)
        async with self.store.read("read events") as tx:
            rows = await _conn(tx).fetch(
                f"SELECT {_EVENT_COLUMNS} FROM {_WITH_MESSAGE} WHERE {' AND '.join(where)}"
                f" ORDER BY e.xid, e.seq LIMIT ${len(params)}",
                *params,
            )
        events = [_event(r) for r in rows]
        return EventPage(events, events[-1].cursor if events else after)

    async def per_minute(
        self, tenant: str | None, type: str, start: datetime, minutes: int, scan: int = 50_000
    ) -> MinuteCounts:
        # The newest events by (xid, seq): the order index (or the tenant's), read backwards and cut at ``scan``.
        def newest(scan_at: int, tenant_at: int) -> str:
            mine = f"e.tenant = ${tenant_at}" if tenant is not None else f"${tenant_at}::text IS NULL"
            return (
                f"SELECT e.at, e.type FROM mailsvc_event AS e WHERE {mine}"
                f" ORDER BY e.xid DESC, e.seq DESC LIMIT ${scan_at}"
            )

        async with self.store.read("count events per minute") as tx:
            conn = _conn(tx)
            rows = await conn.fetch(
                "SELECT floor(extract(epoch FROM n.at - $1::timestamptz) / 60)::int AS m, count(*) AS c"
                f" FROM ({newest(3, 4)}) AS n WHERE n.type = $2 AND n.at >= $1 GROUP BY m",
                start,
                type,
                scan,
                tenant,
            )
            edge = await conn.fetchrow(
                f"SELECT count(*) AS c, min(n.at) AS oldest FROM ({newest(1, 2)}) AS n", scan, tenant
            )
        counts = [0] * minutes
        for r in rows:
            if 0 <= r["m"] < minutes:
                counts[r["m"]] = int(r["c"])
        partial = edge is not None and edge["c"] >= scan and edge["oldest"] is not None and edge["oldest"] > start
        return MinuteCounts(start, counts, partial)

    async def fanout(self, endpoint: str, types: Sequence[str], limit: int) -> int:
        async with self.store.write("fan events out to a webhook") as tx:
            conn = _conn(tx)
            row = await conn.fetchrow(
                "SELECT xid::text AS xid, seq FROM mailsvc_webhook_cursor WHERE endpoint = $1 FOR UPDATE", endpoint
            )
            if row is None:  # a new endpoint hears what happens from now on
                await conn.execute(
                    "INSERT INTO mailsvc_webhook_cursor (endpoint, xid, seq)"
                    " VALUES ($1, pg_snapshot_xmin(pg_current_snapshot()), 0) ON CONFLICT (endpoint) DO NOTHING",
                    endpoint,
                )
                return 0
            rows = await conn.fetch(
                "SELECT e.xid::text AS xid, e.seq, e.type, coalesce(e.message, 'address:' || e.address) AS key"
                f" FROM mailsvc_event AS e WHERE {_VISIBLE} AND (e.xid, e.seq) > ($1::text::xid8, $2::bigint)"
                " ORDER BY e.xid, e.seq LIMIT $3",
                row["xid"],
                row["seq"],
                limit,
            )
            if not rows:
                return 0
            wanted = set(types)
            keep = [r for r in rows if not wanted or r["type"] in wanted]
            if keep:
                await conn.execute(
                    "INSERT INTO mailsvc_webhook_delivery (endpoint, seq, message, due_at)"
                    " SELECT $1, s, m, now() FROM unnest($2::bigint[], $3::text[]) AS u(s, m)"
                    " ON CONFLICT (endpoint, seq) DO NOTHING",
                    endpoint,
                    [r["seq"] for r in keep],
                    [r["key"] for r in keep],
                )
            await conn.execute(
                "UPDATE mailsvc_webhook_cursor SET xid = $2::text::xid8, seq = $3 WHERE endpoint = $1",
                endpoint,
                rows[-1]["xid"],
                rows[-1]["seq"],
            )
            return len(rows)

    async def claim(self, endpoints: Sequence[str], limit: int, lease_seconds: float) -> list[DeliveryJob]:
        if not endpoints or limit <= 0:
            return []
        async with self.store.write("claim webhook deliveries") as tx:
            rows = await _conn(tx).fetch(
                f"""
                WITH due AS (
                    SELECT d.id FROM mailsvc_webhook_delivery AS d
                    WHERE d.due_at IS NOT NULL AND d.due_at <= now() AND d.endpoint = ANY($1::text[])
                      AND NOT EXISTS (SELECT 1 FROM mailsvc_webhook_delivery AS p WHERE p.endpoint = d.endpoint
                                      AND p.message = d.message AND p.due_at IS NOT NULL AND p.id < d.id)
                    ORDER BY d.due_at, d.id LIMIT $2 FOR UPDATE SKIP LOCKED
                ), leased AS (
                    UPDATE mailsvc_webhook_delivery AS d
                    SET due_at = now() + make_interval(secs => $3), updated_at = now()
                    FROM due WHERE d.id = due.id
                    RETURNING d.id, d.endpoint, d.attempts, d.created_at, d.seq
                )
                SELECT l.id AS delivery, l.endpoint, l.attempts AS tries, l.created_at AS created, {_EVENT_COLUMNS}
                FROM leased AS l JOIN mailsvc_event AS e ON e.seq = l.seq
                LEFT JOIN mailsvc_message AS m ON m.id = e.message ORDER BY l.id
                """,
                list(endpoints),
                limit,
                lease_seconds,
            )
        return [DeliveryJob(r["delivery"], r["endpoint"], r["tries"], r["created"], _event(r)) for r in rows]

    async def record(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        if not outcomes:
            return
        async with self.store.write("record webhook deliveries") as tx:
            await _conn(tx).execute(
                """
                UPDATE mailsvc_webhook_delivery AS d
                SET status = u.status, attempts = d.attempts + 1, last_error = u.error, due_at = u.next_at,
                    updated_at = now()
                FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[]) AS u(id, status, error, next_at)
                WHERE d.id = u.id
                """,
                [o.id for o in outcomes],
                [o.status for o in outcomes],
                [o.error[:500] for o in outcomes],
                [o.next_at for o in outcomes],
            )

    async def deliveries(self, status: str | None, after: int | None, limit: int) -> list[Delivery]:
        async with self.store.read("read webhook deliveries") as tx:
            rows = await _conn(tx).fetch(
                "SELECT d.id, d.endpoint, d.seq, e.xid::text AS xid, d.message, d.status, d.attempts, d.last_error,"
                " d.created_at, d.updated_at, d.due_at FROM mailsvc_webhook_delivery AS d"
                " JOIN mailsvc_event AS e ON e.seq = d.seq"
                " WHERE d.id > $1 AND ($2::text IS NULL OR d.status = $2) ORDER BY d.id LIMIT $3",
                after or 0,
                status,
                limit,
            )
        return [
            Delivery(
                r["id"],
                r["endpoint"],
                encode_cursor(int(r["xid"]), r["seq"], "postgres"),
                r["message"],
                r["status"],
                r["attempts"],
                r["last_error"],
                r["created_at"],
                r["updated_at"],
                r["due_at"],
            )
            for r in rows
        ]

    async def replay(self, id: int) -> bool:
        async with self.store.write("replay a webhook delivery") as tx:
            done = await _conn(tx).execute(
                "UPDATE mailsvc_webhook_delivery SET status = 'pending', due_at = now(), updated_at = now()"
                " WHERE id = $1 AND status IN ('failed', 'failing', 'delivered')",
                id,
            )
        return str(done).endswith(" 1")

    async def backlog(self) -> int:
        async with self.store.read("count webhook backlog") as tx:
            n = await _conn(tx).fetchval("SELECT count(*) FROM mailsvc_webhook_delivery WHERE due_at IS NOT NULL")
        return int(n)
