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
* **Schema** comes from versioned migrations (:mod:`.migrations`) applied under an
  advisory lock on :meth:`open` and by ``mailsvc db upgrade``.
* **Backpressure** counts undelivered messages inside the enqueue transaction; two
  nodes enqueueing at the same instant may together pass ``max_pending`` by one
  request's worth (a soft limit, rather than serialising every enqueue cluster-wide).

>>> outbox = PostgresOutbox("postgresql://postgres@127.0.0.1:5432/test", max_pending=100_000)
>>> # async with outbox: ids = (await outbox.enqueue([envelope])).ids
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from ..errors import IdempotencyConflictError, MessageError, NotFoundError, OutboxError, OutboxFullError
from ..message import Envelope
from . import migrations
from .base import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_MAX_PENDING,
    FINAL_STATES,
    ClaimedMessage,
    EnqueueResult,
    MessageStatus,
    Outbox,
    RecipientOutcome,
    RecipientStatus,
    check_count,
    check_envelopes,
    need_fingerprint,
)
from .base import fingerprint as envelope_fingerprint

__all__ = ["NOTIFY_CHANNEL", "PostgresOutbox", "asyncpg_dsn", "upgrade_schema"]

log = logging.getLogger("mailsvc.outbox.postgres")

NOTIFY_CHANNEL = "mailsvc_outbox"


def asyncpg_dsn(url: str) -> str:
    """Accept ``postgresql://``, ``postgres://`` and SQLAlchemy-style ``postgresql+asyncpg://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in {"postgresql", "postgres"}:
        raise OutboxError(f"MAILSVC_DATABASE_URL: {url.split('@')[-1]!r} is not a postgresql:// URL")
    return f"postgresql://{rest}"


async def upgrade_schema(url: str) -> list[migrations.Migration]:
    """Apply missing migrations to the database at ``url`` (``mailsvc db upgrade``); return them."""
    with _translate("upgrade the outbox schema"):
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=30)
        try:
            return await migrations.upgrade(conn)
        finally:
            await conn.close()


class PostgresOutbox(Outbox):
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
        self.url = url
        self._dsn = asyncpg_dsn(url)
        self.max_pending = max_pending
        self.idempotency_ttl = idempotency_ttl
        self.pool_size = pool_size
        self.migrate = migrate
        self.command_timeout = command_timeout
        self.retention_days = retention_days
        self.retention_interval = retention_interval
        self._retention: asyncio.Task[None] | None = None
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._work: asyncio.Event | None = None
        self._listen_lock: asyncio.Lock | None = None

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        with _translate("open the outbox"):
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self.pool_size, command_timeout=self.command_timeout
            )
            try:
                async with pool.acquire() as conn:
                    if self.migrate:
                        await migrations.upgrade(conn)
                    elif not await migrations.applied_versions(conn):
                        raise OutboxError("the outbox schema does not exist; run `mailsvc db upgrade`")
            except BaseException as exc:
                await pool.close()
                if isinstance(exc, RuntimeError):  # schema newer than this code
                    raise OutboxError(str(exc)) from exc
                raise
            self._pool = pool
        self._work = asyncio.Event()
        self._listen_lock = asyncio.Lock()
        if self.retention_days > 0:
            self._retention = asyncio.create_task(self._retention_loop(), name="mailsvc-outbox-retention")

    async def close(self) -> None:
        task, self._retention = self._retention, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
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
    async def _tx(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        with _translate(what):
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn

    # -- enqueue --------------------------------------------------------------
    async def enqueue(
        self,
        envelopes: Sequence[Envelope],
        *,
        idempotency_key: str | None = None,
        batch: bool = False,
        fingerprint: str | None = None,
    ) -> EnqueueResult:
        envelopes = list(envelopes)
        if not envelopes:
            raise MessageError("messages", "nothing to enqueue: pass at least one message")
        for i, env in enumerate(envelopes):
            if not env.recipients:
                raise MessageError(f"messages[{i}].recipients", "a message needs at least one recipient")
        ids = [uuid.uuid4().hex for _ in envelopes]
        batch_id = uuid.uuid4().hex if batch else None
        digest = (fingerprint or envelope_fingerprint(envelopes)) if idempotency_key is not None else ""
        async with self._tx("enqueue") as conn:
            if idempotency_key is not None:
                claimed = await conn.fetchval(
                    """
                    INSERT INTO mailsvc_idempotency AS k (key, fingerprint, ids, batch_id)
                    VALUES ($1, $2, $3, $4)
                    ON CONFLICT (key) DO UPDATE
                        SET fingerprint = EXCLUDED.fingerprint, ids = EXCLUDED.ids,
                            batch_id = EXCLUDED.batch_id, created_at = now()
                        WHERE k.created_at < now() - make_interval(secs => $5)
                    RETURNING true
                    """,
                    idempotency_key,
                    digest,
                    ids,
                    batch_id,
                    float(self.idempotency_ttl),
                )
                if not claimed:
                    # Another transaction committed this key first (we waited for it on the index).
                    row = await conn.fetchrow(
                        "SELECT fingerprint, ids, batch_id FROM mailsvc_idempotency WHERE key = $1", idempotency_key
                    )
                    assert row is not None  # the conflict proves it exists and it is never deleted inside 24 h
                    if row["fingerprint"] != digest:
                        raise IdempotencyConflictError(idempotency_key)
                    return EnqueueResult(ids=list(row["ids"]), batch_id=row["batch_id"], duplicate=True)
            pending = await conn.fetchval("SELECT count(*) FROM mailsvc_message WHERE due_at IS NOT NULL")
            if pending + len(envelopes) > self.max_pending:
                raise OutboxFullError(pending, self.max_pending)
            await _insert(conn, ids, batch_id, envelopes)
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        return EnqueueResult(ids=ids, batch_id=batch_id)

    async def enqueue_stream(
        self,
        count: int,
        chunks: AsyncIterator[Sequence[Envelope]],
        *,
        fingerprint: str | None = None,
        idempotency_key: str | None = None,
        batch: bool = False,
    ) -> EnqueueResult:
        digest = need_fingerprint(idempotency_key, fingerprint)
        check_count(count, count)  # at least one
        batch_id = uuid.uuid4().hex if batch else None
        async with self._tx("enqueue") as conn:
            if idempotency_key is not None:
                # Take the key first (a concurrent request with it waits here); its ids come at the end.
                claimed = await conn.fetchval(
                    """
                    INSERT INTO mailsvc_idempotency AS k (key, fingerprint, ids, batch_id)
                    VALUES ($1, $2, '{}', $3)
                    ON CONFLICT (key) DO UPDATE
                        SET fingerprint = EXCLUDED.fingerprint, ids = EXCLUDED.ids,
                            batch_id = EXCLUDED.batch_id, created_at = now()
                        WHERE k.created_at < now() - make_interval(secs => $4)
                    RETURNING true
                    """,
                    idempotency_key,
                    digest,
                    batch_id,
                    float(self.idempotency_ttl),
                )
                if not claimed:
                    row = await conn.fetchrow(
                        "SELECT fingerprint, ids, batch_id FROM mailsvc_idempotency WHERE key = $1", idempotency_key
                    )
                    assert row is not None
                    if row["fingerprint"] != digest:
                        raise IdempotencyConflictError(idempotency_key)
                    return EnqueueResult(ids=list(row["ids"]), batch_id=row["batch_id"], duplicate=True)
            pending = await conn.fetchval("SELECT count(*) FROM mailsvc_message WHERE due_at IS NOT NULL")
            if pending + count > self.max_pending:
                raise OutboxFullError(pending, self.max_pending)
            ids: list[str] = []
            async for chunk in chunks:
                check_envelopes(chunk, len(ids))
                chunk_ids = [uuid.uuid4().hex for _ in chunk]
                await _insert(conn, chunk_ids, batch_id, chunk)
                ids.extend(chunk_ids)
            check_count(count, len(ids))
            if idempotency_key is not None:
                await conn.execute("UPDATE mailsvc_idempotency SET ids = $2 WHERE key = $1", idempotency_key, ids)
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        return EnqueueResult(ids=ids, batch_id=batch_id)

    # -- workers ----------------------------------------------------------------
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        if limit <= 0:
            return []
        async with self._tx("claim messages") as conn:
            rows = await conn.fetch(
                """
                SELECT m.id, m.message_id, m.attempts, m.created_at
                FROM mailsvc_message m
                WHERE m.due_at <= now()
                ORDER BY m.due_at, m.seq
                LIMIT $1
                FOR UPDATE SKIP LOCKED
                """,
                limit,
            )
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            # Only recipients still to be tried and due now; a delivered one is never sent again.
            rcpts = await conn.fetch(
                """
                UPDATE mailsvc_recipient SET state = 'sending'
                WHERE message_pk = ANY($1::text[])
                  AND state IN ('queued', 'sending', 'deferred')
                  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                RETURNING message_pk, position, address
                """,
                ids,
            )
            due: dict[str, list[tuple[int, str]]] = {}
            for r in rcpts:
                due.setdefault(r["message_pk"], []).append((r["position"], r["address"]))
            await conn.execute(
                """
                UPDATE mailsvc_message
                SET state = 'sending', lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
                    due_at = now() + make_interval(secs => $3), updated_at = now()
                WHERE id = ANY($1::text[])
                """,
                list(due),
                owner,
                float(lease_seconds),
            )
            # A message due with no due recipient should not exist; repair its due_at rather than spin.
            await _settle(conn, [i for i in ids if i not in due], [])
            bodies = await conn.fetch(
                "SELECT message_pk, sender, data, mail_options, rcpt_options FROM mailsvc_body "
                "WHERE message_pk = ANY($1::text[])",
                list(due),
            )
        body = {b["message_pk"]: b for b in bodies}
        claimed = []
        for r in rows:
            if r["id"] not in due:
                continue
            b = body[r["id"]]
            envelope = Envelope(
                sender=b["sender"],
                recipients=tuple(addr for _, addr in sorted(due[r["id"]])),
                data=bytes(b["data"]),
                message_id=r["message_id"],
                mail_options=tuple(b["mail_options"]),
                rcpt_options=tuple(b["rcpt_options"]),
            )
            claimed.append(
                ClaimedMessage(id=r["id"], envelope=envelope, attempts=r["attempts"], first_queued_at=r["created_at"])
            )
        return claimed

    async def record(self, id: str, owner: str, outcomes: Sequence[RecipientOutcome]) -> None:
        await self.record_many(owner, [(id, outcomes)])

    async def record_many(self, owner: str, items: Sequence[tuple[str, Sequence[RecipientOutcome]]]) -> None:
        """Record several messages' outcomes in one transaction (one commit, one round of fsyncs)."""
        if not items:
            return
        for _, outcomes in items:
            for o in outcomes:
                if o.state not in FINAL_STATES and o.state != "deferred":
                    raise OutboxError(f"cannot record state {o.state!r} for {o.recipient}: not an outcome")
        ids = sorted({id_ for id_, _ in items})
        rows = [(id_, o) for id_, outcomes in items for o in outcomes]
        async with self._tx("record an attempt") as conn:
            # Lock in id order so two workers recording overlapping groups cannot deadlock.
            holders = {
                r["id"]: r["lease_owner"]
                for r in await conn.fetch(
                    "SELECT id, lease_owner FROM mailsvc_message WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                    ids,
                )
            }
            for id_ in ids:
                if id_ not in holders:
                    raise NotFoundError("message", id_)
            if rows:
                # Never overwrite a final state: a delivered recipient stays delivered.
                await conn.execute(
                    """
                    UPDATE mailsvc_recipient r
                    SET state = u.state, attempts = r.attempts + 1, last_code = u.code, last_reply = u.reply,
                        next_attempt_at = u.next_at, updated_at = now()
                    FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[])
                         AS u(pk, address, state, code, reply, next_at)
                    WHERE r.message_pk = u.pk AND r.address = u.address
                      AND r.state NOT IN ('delivered', 'failed', 'expired')
                    """,
                    [i for i, _ in rows],
                    [o.recipient for _, o in rows],
                    [o.state for _, o in rows],
                    [o.code for _, o in rows],
                    [o.reply[:1000] for _, o in rows],
                    [o.next_attempt_at if o.state == "deferred" else None for _, o in rows],
                )
            await conn.execute("UPDATE mailsvc_message SET attempts = attempts + 1 WHERE id = ANY($1::text[])", ids)
            # Another worker took a message after our lease expired: leave its lease alone.
            mine = [i for i in ids if holders[i] is None or holders[i] == owner]
            await _settle(conn, mine, [i for i in ids if i not in set(mine)])

    async def extend(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        if not ids:
            return []
        async with self._tx("extend leases") as conn:
            rows = await conn.fetch(
                """
                UPDATE mailsvc_message
                SET lease_expires_at = now() + make_interval(secs => $3), due_at = now() + make_interval(secs => $3)
                WHERE id = ANY($1::text[]) AND lease_owner = $2 AND state = 'sending'
                RETURNING id
                """,
                list(ids),
                owner,
                float(lease_seconds),
            )
        return [r["id"] for r in rows]

    async def release(self, ids: Sequence[str], owner: str) -> None:
        if not ids:
            return
        async with self._tx("release messages") as conn:
            rows = await conn.fetch(
                "SELECT id FROM mailsvc_message WHERE id = ANY($1::text[]) AND lease_owner = $2 ORDER BY id FOR UPDATE",
                list(ids),
                owner,
            )
            await _settle(conn, [r["id"] for r in rows], [])
            if rows:
                await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)

    async def wait_for_work(self, timeout: float) -> None:
        """Return when an enqueue (on any node) is notified, or after ``timeout`` seconds.

        A notification that arrived while the caller was busy is kept, so the next
        call returns at once: no enqueue between a claim and the wait is missed.
        The timeout is the safety-net poll for retries and expired leases.
        """
        if self._work is None:
            raise OutboxError("the outbox is not open: call await outbox.open() (or use async with)")
        await self._ensure_listener()
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass
        self._work.clear()

    async def _ensure_listener(self) -> None:
        """One LISTEN connection per outbox, shared by every worker of the process."""
        assert self._listen_lock is not None
        async with self._listen_lock:
            if self._listener is None or self._listener.is_closed():
                await self._listen()

    async def _listen(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            # The slow poll still works without the listener; try again on the next wait.
            log.warning("outbox: cannot LISTEN on %s (%s); polling only", NOTIFY_CHANNEL, exc)
            return
        self._listener = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._work is not None:
            self._work.set()

    # -- status -----------------------------------------------------------------
    async def status(self, id: str) -> MessageStatus:
        with _translate("read a message's status"):
            async with self.pool.acquire() as conn:
                msg = await conn.fetchrow(
                    "SELECT id, message_id, batch_id, state, created_at FROM mailsvc_message WHERE id = $1", id
                )
                if msg is None:
                    raise NotFoundError("message", id)
                rcpts = await conn.fetch(
                    "SELECT address, state, attempts, last_code, last_reply, updated_at, next_attempt_at "
                    "FROM mailsvc_recipient WHERE message_pk = $1 ORDER BY position",
                    id,
                )
        return MessageStatus(
            id=msg["id"],
            message_id=msg["message_id"],
            batch_id=msg["batch_id"],
            state=msg["state"],
            created_at=msg["created_at"],
            recipients=[
                RecipientStatus(
                    recipient=r["address"],
                    state=r["state"],
                    attempts=r["attempts"],
                    last_code=r["last_code"],
                    last_reply=r["last_reply"],
                    updated_at=r["updated_at"],
                    next_attempt_at=r["next_attempt_at"] if r["state"] == "deferred" else None,
                )
                for r in rcpts
            ],
        )

    async def batch_status(self, batch_id: str) -> dict[str, int]:
        with _translate("read a batch's status"):
            rows = await self.pool.fetch(
                "SELECT state, count(*) AS n FROM mailsvc_message WHERE batch_id = $1 GROUP BY state", batch_id
            )
        if not rows:
            raise NotFoundError("batch", batch_id)
        return {r["state"]: r["n"] for r in rows}

    async def pending_count(self) -> int:
        with _translate("count pending messages"):
            n: int = await self.pool.fetchval("SELECT count(*) FROM mailsvc_message WHERE due_at IS NOT NULL")
        return n

    async def ping(self) -> None:
        with _translate("ping the outbox"):
            writable = await self.pool.fetchval(
                "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'"
            )
        if not writable:
            raise OutboxError("the outbox database is read-only (a standby, or default_transaction_read_only)")

    # -- retention ----------------------------------------------------------------
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

    async def purge(self, older_than_days: float, *, batch_size: int = 500) -> int:
        """Delete final messages (and bodies, recipients) older than ``older_than_days``; return how many.

        Why small batches: each DELETE takes at most ``batch_size`` rows (skipping
        rows someone holds), commits, and lets claims and enqueues in between, so
        the table is never locked for long however much is due for deletion.
        """
        if older_than_days < 0:
            raise OutboxError(f"retention days: must be >= 0, got {older_than_days}")
        total: int = 0
        while True:
            async with self._tx("delete old messages") as conn:
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
                    float(older_than_days) * 86400,
                    batch_size,
                )
            total += n
            if n < batch_size:
                break
            await asyncio.sleep(0)
        async with self._tx("delete old idempotency keys") as conn:
            await conn.execute(
                "DELETE FROM mailsvc_idempotency WHERE created_at < now() - make_interval(secs => $1)",
                float(self.idempotency_ttl),
            )
        return total


async def _insert(
    conn: asyncpg.Connection, ids: list[str], batch_id: str | None, envelopes: Sequence[Envelope]
) -> None:
    """All rows of one enqueue in three set-based INSERTs (fast for a 10,000-message batch)."""
    await conn.execute(
        """
        INSERT INTO mailsvc_message (id, message_id, batch_id, due_at)
        SELECT id, mid, $3, now() FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(id, mid, n)
        ORDER BY n
        """,
        ids,
        [e.message_id for e in envelopes],
        batch_id,
    )
    await conn.copy_records_to_table(
        "mailsvc_body",
        records=[
            (i, e.sender, e.data, list(e.mail_options), list(e.rcpt_options))
            for i, e in zip(ids, envelopes, strict=True)
        ],
        columns=["message_pk", "sender", "data", "mail_options", "rcpt_options"],
    )
    pks: list[str] = []
    positions: list[int] = []
    addrs: list[str] = []
    for i, e in zip(ids, envelopes, strict=True):
        for pos, addr in enumerate(e.recipients):
            pks.append(i)
            positions.append(pos)
            addrs.append(addr)
    await conn.execute(
        "INSERT INTO mailsvc_recipient (message_pk, position, address) "
        "SELECT * FROM unnest($1::text[], $2::int[], $3::text[])",
        pks,
        positions,
        addrs,
    )


async def _settle(conn: asyncpg.Connection, release: list[str], restate: list[str]) -> None:
    """Recompute messages' state and ``due_at`` from their recipients (their rows are locked).

    For ``release`` the lease is dropped: recipients still marked ``sending`` were
    not attempted and go back to ``queued`` (never tried) or ``deferred`` (tried
    before), keeping their time, and the message falls due at its earliest
    pending recipient. For ``restate`` another worker holds the lease, so only the
    state is refreshed, and ``due_at`` cleared if the message is now final.
    The CASE mirrors :func:`mailsvc.outbox.base.derive_state`.
    """
    if not release and not restate:
        return
    if release:
        await conn.execute(
            """
            UPDATE mailsvc_recipient SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END
            WHERE message_pk = ANY($1::text[]) AND state = 'sending'
            """,
            release,
        )
    await conn.execute(
        """
        WITH agg AS (
            SELECT message_pk,
                   bool_and(state = 'delivered') AS all_delivered,
                   bool_and(state IN ('delivered', 'failed', 'expired')) AS all_final,
                   bool_or(state = 'delivered') AS any_delivered,
                   bool_or(state = 'sending') AS any_sending,
                   bool_or(state = 'deferred') AS any_deferred,
                   min(CASE WHEN state NOT IN ('delivered', 'failed', 'expired')
                            THEN coalesce(next_attempt_at, now()) END) AS next_due
            FROM mailsvc_recipient
            WHERE message_pk = ANY($1::text[]) OR message_pk = ANY($2::text[])
            GROUP BY message_pk
        )
        UPDATE mailsvc_message m
        SET state = CASE WHEN a.all_delivered THEN 'delivered'
                         WHEN a.all_final AND a.any_delivered THEN 'partial'
                         WHEN a.all_final THEN 'failed'
                         WHEN a.any_sending THEN 'sending'
                         WHEN a.any_deferred THEN 'deferred'
                         ELSE 'queued' END,
            due_at = CASE WHEN a.all_final THEN NULL
                          WHEN m.id = ANY($1::text[]) THEN a.next_due
                          ELSE m.due_at END,
            lease_owner = CASE WHEN m.id = ANY($1::text[]) THEN NULL ELSE m.lease_owner END,
            lease_expires_at = CASE WHEN m.id = ANY($1::text[]) THEN NULL ELSE m.lease_expires_at END,
            updated_at = now()
        FROM agg a
        WHERE m.id = a.message_pk
        """,
        release,
        restate,
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
    except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise OutboxError(f"could not {what}: cannot reach PostgreSQL ({exc})") from exc
