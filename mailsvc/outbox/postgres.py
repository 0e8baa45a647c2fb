"""The outbox on PostgreSQL: many service nodes and many worker machines on one database.

Why these choices (the ones Oban, River, GoodJob and procrastinate made):

* **Claims** lock a batch of due rows with ``FOR UPDATE SKIP LOCKED`` and lease
  them in the same short transaction, so any number of workers claim concurrently
  without ever taking the same message and without waiting on each other.
  Records and releases are set-based too: one statement per step for a whole group.
* **Leases** are a row's ``lease_owner`` and expiry; ``due_at`` becomes the lease
  expiry, so a worker that dies simply lets its messages fall due again. Nothing
  is reset at start-up.
* **LISTEN/NOTIFY**: enqueue notifies ``mailsvc_outbox`` in the same transaction
  (delivered at commit), so idle workers blocked in :meth:`wait_for_work` wake at
  once; their timeout is the slow safety-net poll for retries and expired leases.
* **Idempotency** is a primary key on the key itself: the same key posted to two
  nodes at the same moment makes the second INSERT wait for the first commit and
  then see the conflict, so there is one message.
* **Schema** comes from versioned migrations (``migrations/postgres/``) applied under
  an advisory lock on :meth:`open` and by ``mailsvc db upgrade``.
* **Backpressure** counts undelivered messages inside the enqueue transaction; two
  nodes enqueueing at the same instant may together pass ``max_pending`` by one
  request's worth (a soft limit, rather than serialising every enqueue cluster-wide).

This module holds the statements and the driver only; the order of the steps is :mod:`.core`'s.

>>> outbox = PostgresOutbox("postgresql://postgres@127.0.0.1:5432/test", max_pending=100_000)
>>> # async with outbox: ids = (await outbox.enqueue([envelope])).ids
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any

import asyncpg

from ..dburl import parse_database_url
from ..errors import ConfigError, MessageError, OutboxError
from ..message import Envelope
from . import migrations
from .base import DEFAULT_IDEMPOTENCY_TTL, DEFAULT_MAX_PENDING, NO_LABELS, Labels, QueueStats
from .blobs import Splice
from .core import OutboxCore
from .listing import Cursor, MessageQuery, MessageSummary
from .postgres_events import PostgresEventLog
from .states import CANCELLABLE, FINAL, PENDING, MessageState, RecipientState, sql_list
from .store import (
    BatchRow,
    Body,
    DueMessage,
    KeyRecord,
    ListedRow,
    MessageRow,
    OutcomeRow,
    RecipientRow,
    Store,
    SuppressionRow,
    Tx,
)
from .suppressions import ALL_STREAMS

__all__ = ["NOTIFY_CHANNEL", "PostgresOutbox", "PostgresStore", "asyncpg_dsn", "upgrade_schema"]

log = logging.getLogger("mailsvc.outbox.postgres")

NOTIFY_CHANNEL = "mailsvc_outbox"
# An arbitrary constant shared by every node: pg_advisory_lock's key (a bigint).
LOCK_KEY = 0x6D61696C737663  # "mailsvc"
# The first key of the (int, int) advisory locks that serialise deleting one blob (a space apart from LOCK_KEY's).
BLOB_LOCK_CLASS = 0x626C6F62  # "blob"
_PUT_BLOB_TRIES = 5
_FINAL = sql_list(FINAL)
_PENDING = sql_list(PENDING)
_CANCELLABLE = sql_list(CANCELLABLE)
_UNSENT = sql_list({RecipientState.QUEUED, RecipientState.SCHEDULED})
# What a suppression may still stop: not yet sent, or taken by the claim that re-checks the list.
_UNSENT_OR_SENDING = sql_list({RecipientState.QUEUED, RecipientState.SCHEDULED, RecipientState.SENDING})
# A new row's state: scheduled while its send_at ($sa) is after the transaction's clock.
_NEW_STATE = f"CASE WHEN sa > now() THEN '{RecipientState.SCHEDULED}' ELSE '{RecipientState.QUEUED}' END"


def asyncpg_dsn(url: str) -> str:
    """Accept ``postgresql://``, ``postgres://`` and SQLAlchemy-style ``postgresql+asyncpg://``."""
    try:
        parsed = parse_database_url(url)
    except ConfigError:
        parsed = None
    if parsed is None or parsed.dsn is None:
        raise OutboxError(f"MAILSVC_DATABASE_URL: {url.split('@')[-1]!r} is not a postgresql:// URL")
    return parsed.dsn


async def upgrade_schema(url: str) -> list[migrations.Migration]:
    """Apply missing migrations to the database at ``url`` (``mailsvc db upgrade``); return them."""
    with _translate("upgrade the outbox schema"):
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=30)
        try:
            return await migrations.upgrade(Schema(conn))
        finally:
            await conn.close()


class Schema:
    """The migration runner's view of a PostgreSQL schema: an advisory lock and ``mailsvc_schema_version``.

    Why a session lock: every node runs the upgrade at start-up, so several may start at once;
    the first applies what is missing, each later one finds the version table current.
    Each file runs in its own transaction with the row that records it.
    """

    backend: migrations.Backend = "postgres"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        await self.conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await self.conn.execute(
                "CREATE TABLE IF NOT EXISTS mailsvc_schema_version (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            yield
        finally:
            await self.conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)

    async def applied(self) -> set[int]:
        if not await self.conn.fetchval("SELECT to_regclass('mailsvc_schema_version') IS NOT NULL"):
            return set()
        return {r["version"] for r in await self.conn.fetch("SELECT version FROM mailsvc_schema_version")}

    async def apply(self, migration: migrations.Migration) -> None:
        async with self.conn.transaction():
            await self.conn.execute(migration.sql)
            await self.conn.execute(
                "INSERT INTO mailsvc_schema_version (version, name) VALUES ($1, $2)", migration.version, migration.name
            )


class PostgresStore(Store):
    """An asyncpg pool, and one LISTEN connection shared by every worker of the process."""

    def __init__(self, dsn: str, *, pool_size: int, migrate: bool, command_timeout: float) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.migrate = migrate
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._work: asyncio.Event | None = None
        self._listen_lock: asyncio.Lock | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        with _translate("open the outbox"):
            pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, command_timeout=self.command_timeout
            )
            try:
                async with pool.acquire() as conn:
                    if self.migrate:
                        await migrations.upgrade(Schema(conn))
                    elif not await Schema(conn).applied():
                        raise OutboxError("the outbox schema does not exist; run `mailsvc db upgrade`")
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
        self._work = asyncio.Event()
        self._listen_lock = asyncio.Lock()

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            await listener.close(timeout=5)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise OutboxError("the outbox is not open: call await outbox.open() (or use async with)")
        return self._pool

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        with _translate(what):
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn

    @asynccontextmanager
    async def write(self, what: str) -> AsyncIterator[Tx]:
        async with self._transaction(what) as conn:
            yield _PgTx(conn)

    @asynccontextmanager
    async def read(self, what: str) -> AsyncIterator[Tx]:
        with _translate(what):
            async with self.pool.acquire() as conn:
                yield _PgTx(conn)

    async def wait_for_work(self, timeout: float) -> None:
        """Return when an enqueue (on any node) is notified, or after ``timeout`` seconds.

        A notification that arrived while the caller was busy is kept, so the next
        call returns at once: no enqueue between a claim and the wait is missed.
        """
        if self._work is None:
            raise OutboxError("the outbox is not open: call await outbox.open() (or use async with)")
        await self._ensure_listener()
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass
        self._work.clear()

    def wake(self) -> None:
        if self._work is not None:
            self._work.set()

    async def _ensure_listener(self) -> None:
        assert self._listen_lock is not None
        async with self._listen_lock:
            if self._listener is None or self._listener.is_closed():
                await self._listen()

    async def _listen(self) -> None:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=10)
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
            # The slow poll still works without the listener; try again on the next wait.
            log.warning("outbox: cannot LISTEN on %s (%s); polling only", NOTIFY_CHANNEL, exc)
            return
        self._listener = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._work is not None:
            self._work.set()

    async def ping(self) -> None:
        with _translate("ping the outbox"):
            writable = await self.pool.fetchval(
                "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'"
            )
        if not writable:
            raise OutboxError("the outbox database is read-only (a standby, or default_transaction_read_only)")

    async def purge(self, older_than_seconds: float, batch_size: int) -> int:
        """Delete up to ``batch_size`` final messages older than that, and unused blobs, skipping rows others hold."""
        async with self._transaction("delete old messages") as conn:
            n: int = await conn.fetchval(
                """
                WITH old AS (
                    SELECT id FROM mailsvc_message
                    WHERE due_at IS NULL AND updated_at < now() - make_interval(secs => $1)
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                ), gone AS (
                    DELETE FROM mailsvc_message m USING old WHERE m.id = old.id RETURNING 1
                )
                SELECT count(*) FROM gone
                """,
                older_than_seconds,
                batch_size,
            )
            # Blobs no message needs (normally gone when their last message became final; this also
            # takes one an enqueue held when that happened and then rolled back).
            await _delete_unused_blobs(conn, None)
        return n

    async def purge_keys(self, ttl: float) -> None:
        async with self._transaction("delete old idempotency keys") as conn:
            await conn.execute(
                "DELETE FROM mailsvc_idempotency WHERE created_at < now() - make_interval(secs => $1)", ttl
            )


class _PgTx(Tx):
    """Statements on one pooled connection (inside a transaction for writes)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    # -- enqueue
    async def count_pending(self) -> int:
        n: int = await self.conn.fetchval("SELECT count(*) FROM mailsvc_message WHERE due_at IS NOT NULL")
        return n

    async def queue_stats(self, tenant: str | None = None) -> QueueStats:
        # Only rows with a due time (not final: at most MAILSVC_MAX_PENDING); the minimum is one index probe.
        rows = await self.conn.fetch(
            "SELECT state, count(*) FROM mailsvc_message WHERE due_at IS NOT NULL"
            " AND ($1::text IS NULL OR tenant = $1) GROUP BY state",
            tenant,
        )
        wait = await self.conn.fetchval(
            "SELECT extract(epoch FROM now() - min(due_at)) FROM mailsvc_message"
            " WHERE due_at IS NOT NULL AND due_at <= now() AND ($1::text IS NULL OR tenant = $1)",
            tenant,
        )
        return QueueStats({str(r[0]): int(r[1]) for r in rows}, max(float(wait or 0.0), 0.0))

    async def count_suppressed(self, ids: Sequence[str]) -> int:
        n: int = await self.conn.fetchval(
            f"SELECT count(*) FROM mailsvc_recipient WHERE message_pk = ANY($1::text[])"
            f" AND state = '{RecipientState.SUPPRESSED}'",
            list(ids),
        )
        return n

    async def find_key(self, key: str, ttl: float) -> KeyRecord | None:
        row = await self.conn.fetchrow(
            "SELECT fingerprint, ids, batch_id FROM mailsvc_idempotency"
            " WHERE key = $1 AND created_at >= now() - make_interval(secs => $2)",
            key,
            float(ttl),
        )
        return None if row is None else KeyRecord(row["fingerprint"], list(row["ids"]), row["batch_id"])

    async def hold_key(self, key: str, record: KeyRecord, ttl: float) -> KeyRecord | None:
        """INSERT the key: a concurrent transaction holding it makes this wait for its commit, then conflict."""
        held = await self.conn.fetchval(
            """
            INSERT INTO mailsvc_idempotency AS k (key, fingerprint, ids, batch_id)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, ids = EXCLUDED.ids,
                    batch_id = EXCLUDED.batch_id, created_at = now()
                WHERE k.created_at < now() - make_interval(secs => $5)
            RETURNING true
            """,
            key,
            record.fingerprint,
            record.ids,
            record.batch_id,
            float(ttl),
        )
        if held:
            return None
        # Another transaction committed this key first; it is never deleted while live.
        return await self.find_key(key, ttl)

    async def insert(
        self,
        ids: Sequence[str],
        batch_ids: Sequence[str | None],
        tenants: Sequence[str | None],
        envelopes: Sequence[Envelope],
        splices: Sequence[Sequence[Splice]] = (),
        labels: Sequence[Labels] = (),
        streams: Sequence[str | None] = (),
        stage: int | None = None,
    ) -> None:
        """All rows in set-based statements (fast for a 10,000-message batch).

        No stages here: a bulk is one transaction (``step_messages`` 0), which PostgreSQL's row locks allow.
        """
        if stage is not None:
            raise NotImplementedError("the PostgreSQL outbox stores a bulk in one transaction, never in stages")
        labs = list(labels) if labels else [NO_LABELS] * len(ids)
        await self.conn.execute(
            f"""
            INSERT INTO mailsvc_message
                (id, message_id, batch_id, tenant, due_at, state, send_at, tags, metadata, stream, traceparent,
                 relay_route)
            SELECT id, mid, bid, ten, greatest(now(), sa), {_NEW_STATE}, sa,
                   ARRAY(SELECT jsonb_array_elements_text(tg::jsonb)), md::jsonb, st, tp, rr
            FROM unnest(
                $1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::text[],
                $9::text[], $10::text[]
            ) WITH ORDINALITY AS t(id, mid, bid, ten, sa, tg, md, st, tp, rr, n)
            ORDER BY n
            """,
            list(ids),
            [e.message_id for e in envelopes],
            list(batch_ids),
            list(tenants),
            [lab.send_at for lab in labs],
            [json.dumps(list(lab.tags)) for lab in labs],
            [json.dumps(lab.metadata) for lab in labs],
            list(streams) if streams else [None] * len(ids),
            [lab.traceparent for lab in labs],
            [lab.route for lab in labs],
        )
        await self.conn.copy_records_to_table(
            "mailsvc_body",
            records=[
                (i, e.sender, e.data, list(e.mail_options), list(e.rcpt_options))
                for i, e in zip(ids, envelopes, strict=True)
            ],
            columns=["message_pk", "sender", "data", "mail_options", "rcpt_options"],
        )
        rcpts = [
            (i, pos, addr, lab.send_at)
            for i, e, lab in zip(ids, envelopes, labs, strict=True)
            for pos, addr in enumerate(e.recipients)
        ]
        await self.conn.execute(
            "INSERT INTO mailsvc_recipient (message_pk, position, address, state, next_attempt_at) "
            f"SELECT pk, pos, addr, {_NEW_STATE}, CASE WHEN sa > now() THEN sa END"
            " FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[]) AS t(pk, pos, addr, sa)",
            [r[0] for r in rcpts],
            [r[1] for r in rcpts],
            [r[2] for r in rcpts],
            [r[3] for r in rcpts],
        )
        cuts = [
            (i, pos, sp.at, sp.digest)
            for i, c in zip(ids, splices or [()] * len(ids), strict=True)
            for pos, sp in enumerate(c)
        ]
        if cuts:
            await self.conn.execute(
                "INSERT INTO mailsvc_splice (message_pk, position, at, digest) "
                "SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[])",
                *(list(col) for col in zip(*cuts, strict=True)),
            )

    async def put_blobs(self, blobs: Mapping[str, bytes]) -> None:
        """Each blob present and share-locked (``FOR KEY SHARE``) until this transaction ends.

        Why the lock: a worker deleting a blob (:meth:`drop_blobs`) locks it ``FOR UPDATE
        SKIP LOCKED``, so it leaves alone one an enqueue in progress is about to reference,
        and an enqueue never waits for more than such a short delete. Concurrent enqueues
        of the same blob share the lock and never wait for each other. One deleted under
        us is inserted again (the loop); the bytes travel only when the row is missing.
        """
        missing = sorted(blobs)
        for _ in range(_PUT_BLOB_TRIES):
            held = await self.conn.fetch(
                "SELECT digest FROM mailsvc_blob WHERE digest = ANY($1::text[]) ORDER BY digest FOR KEY SHARE", missing
            )
            missing = sorted(set(missing) - {r["digest"] for r in held})
            if not missing:
                return
            await self.conn.execute(
                "INSERT INTO mailsvc_blob (digest, data) SELECT * FROM unnest($1::text[], $2::bytea[])"
                " ON CONFLICT (digest) DO NOTHING",
                missing,
                [blobs[d] for d in missing],
            )
        raise OutboxError(f"could not enqueue: blob {missing[0][:12]} kept being deleted while it was stored")

    async def notify(self) -> None:
        await self.conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)  # delivered at commit

    # -- claim
    async def due_messages(self, limit: int) -> list[DueMessage]:
        rows = await self.conn.fetch(
            """
            SELECT id, message_id, attempts, created_at, tenant, stream,
                   (SELECT max(s.created_at) FROM mailsvc_suppression s WHERE s.tenant = coalesce(m.tenant, '')),
                   traceparent, relay_route
            FROM mailsvc_message m
            WHERE due_at <= now() ORDER BY due_at, seq LIMIT $1
            FOR UPDATE SKIP LOCKED
            """,
            limit,
        )
        return [DueMessage(*r) for r in rows]

    async def take_recipients(self, ids: Sequence[str]) -> dict[str, list[str]]:
        rows = await self.conn.fetch(
            f"""
            UPDATE mailsvc_recipient SET state = '{RecipientState.SENDING}'
            WHERE message_pk = ANY($1::text[]) AND state IN {_PENDING}
              AND (next_attempt_at IS NULL OR next_attempt_at <= now())
            RETURNING message_pk, position, address
            """,
            list(ids),
        )
        due: dict[str, list[str]] = {}
        for r in sorted(rows, key=lambda r: r["position"]):
            due.setdefault(r["message_pk"], []).append(r["address"])
        return due

    async def lease(self, ids: Sequence[str], owner: str, lease_seconds: float) -> None:
        await self.conn.execute(
            f"""
            UPDATE mailsvc_message
            SET state = '{MessageState.SENDING}', lease_owner = $2,
                lease_expires_at = now() + make_interval(secs => $3),
                due_at = now() + make_interval(secs => $3), updated_at = now()
            WHERE id = ANY($1::text[])
            """,
            list(ids),
            owner,
            float(lease_seconds),
        )

    async def bodies(self, ids: Sequence[str]) -> dict[str, Body]:
        rows = await self.conn.fetch(
            "SELECT message_pk, sender, data, mail_options, rcpt_options FROM mailsvc_body"
            " WHERE message_pk = ANY($1::text[])",
            list(ids),
        )
        cuts: dict[str, list[Splice]] = {}
        for r in await self.conn.fetch(
            "SELECT message_pk, at, digest FROM mailsvc_splice WHERE message_pk = ANY($1::text[])"
            " ORDER BY message_pk, position",
            list(ids),
        ):
            cuts.setdefault(r["message_pk"], []).append(Splice(r["at"], r["digest"]))
        return {
            b["message_pk"]: Body(
                b["sender"],
                bytes(b["data"]),
                tuple(b["mail_options"]),
                tuple(b["rcpt_options"]),
                tuple(cuts.get(b["message_pk"], ())),
            )
            for b in rows
        }

    async def blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        rows = await self.conn.fetch(
            "SELECT digest, data FROM mailsvc_blob WHERE digest = ANY($1::text[])", list(digests)
        )
        return {r["digest"]: bytes(r["data"]) for r in rows}

    # -- record, release, extend
    async def lock_messages(self, ids: Sequence[str]) -> dict[str, str | None]:
        rows = await self.conn.fetch(
            "SELECT id, lease_owner FROM mailsvc_message WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", list(ids)
        )
        return {r["id"]: r["lease_owner"] for r in rows}

    async def held_by(self, ids: Sequence[str], owner: str) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT id FROM mailsvc_message WHERE id = ANY($1::text[]) AND lease_owner = $2 ORDER BY id FOR UPDATE",
            list(ids),
            owner,
        )
        return [r["id"] for r in rows]

    async def write_outcomes(self, rows: Sequence[OutcomeRow]) -> None:
        await self.conn.execute(
            f"""
            UPDATE mailsvc_recipient r
            SET state = u.state, attempts = r.attempts + 1, last_code = u.code, last_reply = u.reply,
                next_attempt_at = u.next_at, updated_at = now(), relay = coalesce(u.relay, r.relay)
            FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[], $7::text[])
                 AS u(pk, address, state, code, reply, next_at, relay)
            WHERE r.message_pk = u.pk AND r.address = u.address AND r.state NOT IN {_FINAL}
            """,
            [r.id for r in rows],
            [r.recipient for r in rows],
            [str(r.state) for r in rows],
            [r.code for r in rows],
            [r.reply for r in rows],
            [r.next_attempt_at for r in rows],
            [r.relay for r in rows],
        )

    async def count_attempts(self, ids: Sequence[str]) -> None:
        await self.conn.execute("UPDATE mailsvc_message SET attempts = attempts + 1 WHERE id = ANY($1::text[])", ids)

    async def settle(self, release: Sequence[str], restate: Sequence[str]) -> None:
        """One statement per step for the whole group; the CASE is :func:`~.states.derive_state` in SQL."""
        if not release and not restate:
            return
        if release:
            await self.conn.execute(_UNLEASE_RECIPIENTS, list(release))
        await self.conn.execute(_SETTLE, list(release), list(restate))

    async def drop_blobs(self, ids: Sequence[str]) -> None:
        """Forget final messages' splices; delete their blobs unless a message or an enqueue still has them.

        Two workers finishing the last two messages of a blob at once would each still see
        the other's splice, and neither delete it: an advisory lock per blob, taken after the
        splices are gone, makes the second look after the first committed. The blob row is
        then locked ``FOR UPDATE SKIP LOCKED`` (an enqueue holding it will reference it),
        and the delete runs in a statement of its own, whose snapshot sees every splice
        committed before the lock.
        """
        if not ids:
            return
        gone = await self.conn.fetch(_DROP_SPLICES, list(ids))
        digests = sorted({r["digest"] for r in gone})
        if not digests:
            return
        for key in sorted({_blob_lock(d) for d in digests}):
            await self.conn.execute("SELECT pg_advisory_xact_lock($1::int, $2::int)", BLOB_LOCK_CLASS, key)
        await _delete_unused_blobs(self.conn, digests)

    async def extend(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        rows = await self.conn.fetch(
            f"""
            UPDATE mailsvc_message
            SET lease_expires_at = now() + make_interval(secs => $3), due_at = now() + make_interval(secs => $3)
            WHERE id = ANY($1::text[]) AND lease_owner = $2 AND state = '{MessageState.SENDING}'
            RETURNING id
            """,
            list(ids),
            owner,
            float(lease_seconds),
        )
        return [r["id"] for r in rows]

    # -- cancel
    async def cancel_recipients(self, ids: Sequence[str]) -> list[str]:
        rows = await self.conn.fetch(
            f"""
            UPDATE mailsvc_recipient
            SET state = '{RecipientState.CANCELLED}', next_attempt_at = NULL, updated_at = now()
            WHERE message_pk = ANY($1::text[]) AND state IN {_CANCELLABLE}
            RETURNING message_pk
            """,
            list(ids),
        )
        touched = {r[0] for r in rows}
        return [i for i in ids if i in touched]

    async def retry_recipients(self, id: str) -> int:
        done = await self.conn.execute(
            f"UPDATE mailsvc_recipient SET next_attempt_at = now()"
            f" WHERE message_pk = $1 AND state = '{RecipientState.DEFERRED}'",
            id,
        )
        return int(str(done).rsplit(" ", 1)[-1])

    async def batch_ids(self, batch_id: str) -> list[str]:
        rows = await self.conn.fetch("SELECT id FROM mailsvc_message WHERE batch_id = $1 ORDER BY id", batch_id)
        return [r[0] for r in rows]

    # -- status
    async def message(self, id: str) -> MessageRow | None:
        r = await self.conn.fetchrow(
            "SELECT id, message_id, batch_id, state, created_at, tenant, tags, metadata, send_at"
            " FROM mailsvc_message WHERE id = $1",
            id,
        )
        if r is None:
            return None
        return MessageRow(
            r["id"],
            r["message_id"],
            r["batch_id"],
            r["state"],
            r["created_at"],
            r["tenant"],
            tuple(r["tags"]),
            json.loads(r["metadata"]),
            r["send_at"],
        )

    @staticmethod
    def _range(query: MessageQuery, tenant: str | None, after: Cursor | None) -> tuple[str, list[Any]]:
        """The index range a listing walks: (tenant | batch), created_at bounds, after the cursor."""
        where: list[str] = ["true"]
        params: list[Any] = []
        for cond, value in (
            ("tenant = ${}", tenant),
            ("batch_id = ${}", query.batch_id),
            ("created_at >= ${}", query.since),
            ("created_at < ${}", query.until),
        ):
            if value is not None:
                params.append(value)
                where.append(cond.format(len(params)))
        if after is not None:
            params.extend((_cursor_key(after.key), after.id))
            where.append(f"(created_at, id) < (${len(params) - 1}, ${len(params)})")
        return " AND ".join(where), params

    async def list_messages(
        self, query: MessageQuery, tenant: str | None, after: Cursor | None, limit: int, scan: int
    ) -> list[ListedRow]:
        where, params = self._range(query, tenant, after)
        params.append(scan)
        window = f"SELECT id FROM mailsvc_message WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ${len(params)}"
        filters = ""
        for cond, value in (
            ("m.state = ${}", None if query.state is None else str(query.state)),
            ("${} = ANY(m.tags)", query.tag),
            ("EXISTS (SELECT 1 FROM mailsvc_recipient r WHERE r.message_pk = m.id AND r.address = ${})", query.to),
        ):
            if value is not None:
                params.append(value)
                filters += " AND " + cond.format(len(params))
        params.append(limit)
        rows = await self.conn.fetch(
            f"""
            WITH w AS ({window})
            SELECT m.id, m.message_id, m.batch_id, m.state, m.created_at, m.send_at, m.tags, m.metadata
            FROM mailsvc_message m JOIN w ON w.id = m.id
            WHERE true{filters}
            ORDER BY m.created_at DESC, m.id DESC LIMIT ${len(params)}
            """,
            *params,
        )
        return [
            ListedRow(
                MessageSummary(
                    r["id"],
                    r["message_id"],
                    r["batch_id"],
                    MessageState(r["state"]),
                    r["created_at"],
                    r["send_at"],
                    tuple(r["tags"]),
                    json.loads(r["metadata"]),
                ),
                r["created_at"].isoformat(),
            )
            for r in rows
        ]

    async def scan_end(self, query: MessageQuery, tenant: str | None, after: Cursor | None, scan: int) -> Cursor | None:
        where, params = self._range(query, tenant, after)
        params.append(scan - 1)
        r = await self.conn.fetchrow(
            f"SELECT created_at, id FROM mailsvc_message WHERE {where}"
            f" ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ${len(params)}",
            *params,
        )
        return None if r is None else Cursor(r["created_at"].isoformat(), r["id"])

    async def recipients(self, id: str) -> list[RecipientRow]:
        rows = await self.conn.fetch(
            "SELECT address, state, attempts, last_code, last_reply, updated_at, next_attempt_at, relay "
            "FROM mailsvc_recipient WHERE message_pk = $1 ORDER BY position",
            id,
        )
        return [RecipientRow(*r) for r in rows]

    async def batch(self, batch_id: str) -> BatchRow | None:
        """Counts per state, and the tenant of one row (every message of a batch has its creator's)."""
        rows = await self.conn.fetch(
            "SELECT state, count(*) AS n, min(tenant) AS tenant FROM mailsvc_message WHERE batch_id = $1"
            " GROUP BY state",
            batch_id,
        )
        if not rows:
            return None
        return BatchRow(rows[0]["tenant"], {r["state"]: r["n"] for r in rows})

    async def mark_reported(
        self, id: str, recipient: str, state: RecipientState, code: int | None, reply: str, over: Sequence[str]
    ) -> bool:
        rows = await self.conn.fetch(
            "UPDATE mailsvc_recipient SET state = $3, last_code = $4, last_reply = $5, updated_at = now()"
            " WHERE message_pk = $1 AND lower(address) = lower($2) AND state = ANY($6::text[]) RETURNING 1",
            id,
            recipient,
            str(state),
            code,
            reply,
            list(over),
        )
        return bool(rows)

    # -- suppressions
    async def add_suppressions(self, rows: Sequence[SuppressionRow]) -> int:
        added = await self.conn.fetch(
            "INSERT INTO mailsvc_suppression (tenant, address, stream, reason, source, created_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])"
            " ON CONFLICT DO NOTHING RETURNING address",
            [r.tenant for r in rows],
            [r.address for r in rows],
            [r.stream for r in rows],
            [r.reason for r in rows],
            [r.source for r in rows],
            [r.created_at for r in rows],
        )
        return len(added)

    async def has_suppressions(self, tenant: str, stream: str) -> bool:
        found = await self.conn.fetchval(
            f"SELECT true FROM mailsvc_suppression WHERE tenant = $1 AND stream IN ($2, '{ALL_STREAMS}') LIMIT 1",
            tenant,
            stream,
        )
        return bool(found)

    async def find_suppressions(self, tenants: Sequence[str], addresses: Sequence[str]) -> list[SuppressionRow]:
        rows = await self.conn.fetch(
            "SELECT tenant, address, stream, reason, source, created_at FROM mailsvc_suppression"
            " WHERE tenant = ANY($1::text[]) AND address = ANY($2::text[])",
            list(tenants),
            list(addresses),
        )
        return [SuppressionRow(*r) for r in rows]

    async def mark_suppressed(self, items: Sequence[tuple[str, str, str]]) -> None:
        await self.conn.execute(
            f"""
            UPDATE mailsvc_recipient r
            SET state = '{RecipientState.SUPPRESSED}', last_reply = t.reply, updated_at = now()
            FROM unnest($1::text[], $2::text[], $3::text[]) AS t(id, address, reply)
            WHERE r.message_pk = t.id AND r.address = t.address
              AND r.state IN {_UNSENT_OR_SENDING}
            """,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
        )

    async def list_suppressions(
        self,
        tenant: str,
        *,
        reason: str | None,
        stream: str | None,
        address: str | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[SuppressionRow]:
        rows = await self.conn.fetch(
            "SELECT tenant, address, stream, reason, source, created_at FROM mailsvc_suppression"
            " WHERE tenant = $1 AND ($2::text IS NULL OR reason = $2) AND ($3::text IS NULL OR stream = $3)"
            " AND ($4::text IS NULL OR address = $4) AND ($5::text IS NULL OR (stream, address) > ($5, $6::text))"
            " ORDER BY stream, address LIMIT $7",
            tenant,
            reason,
            stream,
            address,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
        return [SuppressionRow(*r) for r in rows]

    async def remove_suppressions(self, tenant: str, address: str, stream: str | None) -> int:
        gone = await self.conn.fetch(
            "DELETE FROM mailsvc_suppression WHERE tenant = $1 AND address = $2 AND ($3::text IS NULL OR stream = $3)"
            " RETURNING 1",
            tenant,
            address,
            stream,
        )
        return len(gone)

    async def message_tenants(self, ids: Sequence[str]) -> dict[str, str | None]:
        rows = await self.conn.fetch("SELECT id, tenant FROM mailsvc_message WHERE id = ANY($1::text[])", list(ids))
        return {r["id"]: r["tenant"] for r in rows}

    async def suppressions(self, tenant: str) -> list[SuppressionRow]:
        rows = await self.conn.fetch(
            "SELECT tenant, address, stream, reason, source, created_at FROM mailsvc_suppression"
            " WHERE tenant = $1 ORDER BY created_at, address",
            tenant,
        )
        return [SuppressionRow(*r) for r in rows]

    # -- signed-out sessions
    async def revoke_session(self, sid: str, until: datetime) -> None:
        await self.conn.execute("DELETE FROM mailsvc_revoked_session WHERE expires_at <= now()")
        await self.conn.execute(
            "INSERT INTO mailsvc_revoked_session (sid, expires_at) VALUES ($1, $2) ON CONFLICT (sid)"
            " DO UPDATE SET expires_at = greatest(mailsvc_revoked_session.expires_at, EXCLUDED.expires_at)",
            sid,
            until,
        )

    async def session_revoked(self, sid: str) -> bool:
        found = await self.conn.fetchval(
            "SELECT true FROM mailsvc_revoked_session WHERE sid = $1 AND expires_at > now()", sid
        )
        return bool(found)


def _cursor_key(key: str) -> datetime:
    try:
        at = datetime.fromisoformat(key)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise MessageError("cursor", "not a cursor this outbox handed out (pass a page's 'next' unchanged)")
    return at


def _blob_lock(digest: str) -> int:
    """The second key of a blob's advisory lock: its digest's first 32 bits, signed (an int)."""
    return int.from_bytes(bytes.fromhex(digest[:8]), "big", signed=True)


async def _delete_unused_blobs(conn: asyncpg.Connection, digests: Sequence[str] | None) -> int:
    """Delete the blobs (of ``digests``; all when None) that no splice names and nobody holds; return how many."""
    locked = await conn.fetch(
        "SELECT digest FROM mailsvc_blob b WHERE ($1::text[] IS NULL OR digest = ANY($1::text[]))"
        " AND NOT EXISTS (SELECT 1 FROM mailsvc_splice s WHERE s.digest = b.digest)"
        " ORDER BY digest FOR UPDATE SKIP LOCKED",
        None if digests is None else list(digests),
    )
    if not locked:
        return 0
    deleted = await conn.fetch(
        "DELETE FROM mailsvc_blob b WHERE digest = ANY($1::text[])"
        " AND NOT EXISTS (SELECT 1 FROM mailsvc_splice s WHERE s.digest = b.digest) RETURNING 1",
        [r["digest"] for r in locked],
    )
    return len(deleted)


# The splices of those of $1 that are final now: no worker will send them again.
_DROP_SPLICES = """
DELETE FROM mailsvc_splice s USING mailsvc_message m
WHERE m.id = ANY($1::text[]) AND m.due_at IS NULL AND s.message_pk = m.id
RETURNING s.digest
"""
# Recipients still marked sending were not attempted: back to queued (never tried) or deferred.
_UNLEASE_RECIPIENTS = f"""
UPDATE mailsvc_recipient
SET state = CASE WHEN attempts = 0 THEN '{RecipientState.QUEUED}' ELSE '{RecipientState.DEFERRED}' END
WHERE message_pk = ANY($1::text[]) AND state = '{RecipientState.SENDING}'
"""
# A complaint means the mail arrived: it counts as delivered for the message (states.derive_state).
_AS_DELIVERED = frozenset({RecipientState.DELIVERED, RecipientState.COMPLAINED})
# $1: messages whose lease is dropped (due at their earliest pending recipient); $2: state only.
_SETTLE = f"""
WITH agg AS (
    SELECT message_pk,
           bool_and(state = '{RecipientState.SUPPRESSED}') AS all_suppressed,
           bool_and(state IN {sql_list(_AS_DELIVERED | {RecipientState.SUPPRESSED})}) AS all_delivered,
           bool_and(state IN {_FINAL}) AS all_final,
           bool_or(state IN {sql_list(_AS_DELIVERED)}) AS any_delivered,
           bool_or(state = '{RecipientState.SENDING}') AS any_sending,
           bool_or(state = '{RecipientState.DEFERRED}') AS any_deferred,
           bool_or(state = '{RecipientState.SCHEDULED}') AS any_scheduled,
           bool_and(state IN ('{RecipientState.CANCELLED}', '{RecipientState.SUPPRESSED}'))
               AND bool_or(state = '{RecipientState.CANCELLED}') AS all_cancelled,
           min(CASE WHEN state NOT IN {_FINAL} THEN coalesce(next_attempt_at, now()) END) AS next_due
    FROM mailsvc_recipient
    WHERE message_pk = ANY($1::text[]) OR message_pk = ANY($2::text[])
    GROUP BY message_pk
)
UPDATE mailsvc_message m
SET state = CASE WHEN a.all_suppressed THEN '{MessageState.SUPPRESSED}'
                 WHEN a.all_cancelled THEN '{MessageState.CANCELLED}'
                 WHEN a.all_delivered THEN '{MessageState.DELIVERED}'
                 WHEN a.all_final AND a.any_delivered THEN '{MessageState.PARTIAL}'
                 WHEN a.all_final THEN '{MessageState.FAILED}'
                 WHEN a.any_sending THEN '{MessageState.SENDING}'
                 WHEN a.any_deferred THEN '{MessageState.DEFERRED}'
                 WHEN a.any_scheduled THEN '{MessageState.SCHEDULED}'
                 ELSE '{MessageState.QUEUED}' END,
    due_at = CASE WHEN a.all_final THEN NULL
                  WHEN m.id = ANY($1::text[]) THEN a.next_due
                  ELSE m.due_at END,
    lease_owner = CASE WHEN m.id = ANY($1::text[]) THEN NULL ELSE m.lease_owner END,
    lease_expires_at = CASE WHEN m.id = ANY($1::text[]) THEN NULL ELSE m.lease_expires_at END,
    updated_at = now()
FROM agg a
WHERE m.id = a.message_pk
"""


class PostgresOutbox(OutboxCore[PostgresStore]):
    """Outbox on a PostgreSQL database reached through an asyncpg pool.

    ``max_pending`` is the backpressure limit (undelivered messages),
    ``idempotency_ttl`` how long a key is remembered (s), ``pool_size`` the
    connections this process may hold; ``migrate=False`` refuses to start on a
    schema nobody created (when only ``mailsvc db upgrade`` may change it).
    ``retention_days`` > 0 runs :meth:`purge` at open and every
    ``retention_interval`` seconds while open (every node may: purges skip
    rows another holds).
    """

    def __init__(
        self,
        url: str,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        pool_size: int = 10,
        migrate: bool = True,
        command_timeout: float = 60.0,
        retention_days: float = 0.0,
        retention_interval: float = 3600.0,
    ) -> None:
        store = PostgresStore(asyncpg_dsn(url), pool_size=pool_size, migrate=migrate, command_timeout=command_timeout)
        self.events = PostgresEventLog(store)
        super().__init__(store, max_pending=max_pending, idempotency_ttl=idempotency_ttl)
        self.url = url
        self.retention_days = retention_days
        self.retention_interval = retention_interval
        self._retention: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    async def open(self) -> None:
        await super().open()
        if self.retention_days > 0 and self._retention is None:
            self._retention = asyncio.create_task(self._retention_loop(), name="mailsvc-outbox-retention")

    async def close(self) -> None:
        task, self._retention = self._retention, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await super().close()

    async def _retention_loop(self) -> None:
        while True:
            try:
                deleted = await self.purge(self.retention_days)
            except OutboxError as exc:
                log.warning("outbox retention: %s; trying again in %gs", exc, self.retention_interval)
            else:
                if deleted:
                    log.info("outbox retention: deleted %d messages older than %g days", deleted, self.retention_days)
            await asyncio.sleep(self.retention_interval)

    async def take_relay_quota(self, relay: str, window: str, limit: int) -> bool:
        """One message against ``relay``'s shared counter for this second or UTC day, atomically.

        The upsert counts only while ``used < limit`` (a concurrent taker waits on the row lock and
        sees the new count), so every machine together stays within the limit. A new window's row
        also deletes that relay's windows older than a day (the primary key's prefix finds them).
        """
        with _translate("count a relay's messages"):
            row = await self.pool.fetchrow(_TAKE_QUOTA, relay, window, limit)
            if row is not None and row["fresh"]:
                await self.pool.execute(_OLD_WINDOWS, relay, window)
        return row is not None

    async def relay_usage_today(self) -> dict[str, int]:
        with _translate("read the relays' counters"):
            rows = await self.pool.fetch(
                "SELECT relay, used FROM mailsvc_relay_usage WHERE win = 'd'"
                f" AND window_start = {_WINDOW_START.replace('$2::text', chr(39) + 'd' + chr(39))}"
            )
        return {r["relay"]: int(r["used"]) for r in rows}

    async def give_back_relay_quota(self, relay: str, window: str) -> None:
        with _translate("give back a relay's count"):
            await self.pool.execute(_GIVE_BACK_QUOTA, relay, window)

    async def purge(self, older_than_days: float, *, batch_size: int = 500) -> int:
        """Delete final messages (and bodies, recipients) older than ``older_than_days``; return how many.

        Why small batches: each DELETE takes at most ``batch_size`` rows (skipping
        rows someone holds), commits, and lets claims and enqueues in between, so
        the table is never locked for long however much is due for deletion.
        """
        if older_than_days < 0:
            raise OutboxError(f"retention days: must be >= 0, got {older_than_days}")
        total = 0
        while True:
            n = await self.store.purge(float(older_than_days) * 86400, batch_size)
            total += n
            if n < batch_size:
                break
            await asyncio.sleep(0)
        await self.store.purge_keys(float(self.idempotency_ttl))
        return total


# The server or the connection is gone: a network error, a closed or killed connection, or asyncpg's
# InternalClientError from a connection whose operation was cut off by the server (not an InterfaceError).
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)


@contextmanager
def _translate(what: str) -> Iterator[None]:
    """Map driver and network errors to :class:`OutboxError`, chained; ours pass through."""
    try:
        yield
    except OutboxError:
        raise
    except asyncpg.PostgresError as exc:
        raise OutboxError(f"could not {what}: PostgreSQL said {exc.sqlstate} {exc}") from exc
    except _UNREACHABLE as exc:
        raise OutboxError(f"could not {what}: cannot reach PostgreSQL ({exc})") from exc


# A relay's window starts at the second or the UTC day (clock_timestamp: not the transaction's start).
_WINDOW_START = (
    "CASE WHEN $2::text = 's' THEN date_trunc('second', clock_timestamp())"
    " ELSE date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' END"
)
_TAKE_QUOTA = f"""
    INSERT INTO mailsvc_relay_usage AS u (relay, win, window_start, used) VALUES ($1, $2, {_WINDOW_START}, 1)
    ON CONFLICT (relay, win, window_start) DO UPDATE SET used = u.used + 1 WHERE u.used < $3
    RETURNING (xmax = 0) AS fresh
"""
_GIVE_BACK_QUOTA = f"""
    UPDATE mailsvc_relay_usage SET used = used - 1
    WHERE relay = $1 AND win = $2 AND window_start = {_WINDOW_START} AND used > 0
"""
_OLD_WINDOWS = """
    DELETE FROM mailsvc_relay_usage WHERE relay = $1 AND win = $2
    AND window_start < clock_timestamp() - CASE WHEN $2 = 's' THEN interval '1 minute' ELSE interval '2 days' END
"""
