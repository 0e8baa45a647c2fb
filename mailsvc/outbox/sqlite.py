"""The embedded outbox: one SQLite file in WAL mode with ``synchronous=FULL``.

Why these settings: WAL lets status readers run while a worker writes, and
``synchronous=FULL`` syncs the WAL on every commit so an accepted message
survives power loss, not only a crash of this process. Every write runs in
``BEGIN IMMEDIATE`` so that two processes (the service and ``mailsvc worker``)
sharing the file serialise on SQLite's write lock instead of failing half-way.

Schema (mirrors the PostgreSQL one): ``messages`` is the queue, with ``due_at``
meaning "when a worker may take it" (the next attempt while queued/deferred,
the lease expiry while sending, NULL once final), so one partial index serves
every claim and a dead worker's lease simply comes due again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import IdempotencyConflictError, NotFoundError, OutboxError, OutboxFullError
from ..message import Envelope
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
    derive_state,
    need_fingerprint,
)
from .base import fingerprint as envelope_fingerprint

__all__ = ["SqliteOutbox"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    pk           INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    message_id   TEXT    NOT NULL,
    batch_id     TEXT,
    state        TEXT    NOT NULL DEFAULT 'queued',
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL    NOT NULL,
    updated_at   REAL    NOT NULL,
    due_at       REAL,
    lease_owner  TEXT,
    sender       TEXT    NOT NULL,
    data         BLOB    NOT NULL,
    mail_options TEXT    NOT NULL DEFAULT '[]',
    rcpt_options TEXT    NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (due_at) WHERE due_at IS NOT NULL;
-- Counts per state of a batch (GET /api/batches/<id>, polled while it is sent) from the index alone.
DROP INDEX IF EXISTS messages_batch;
CREATE INDEX IF NOT EXISTS messages_batch_state ON messages (batch_id, state) WHERE batch_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS recipients (
    msg             INTEGER NOT NULL REFERENCES messages (pk) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    address         TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'queued',
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_code       INTEGER,
    last_reply      TEXT    NOT NULL DEFAULT '',
    updated_at      REAL    NOT NULL,
    next_attempt_at REAL,
    PRIMARY KEY (msg, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    ids         TEXT NOT NULL,
    batch_id    TEXT,
    created_at  REAL NOT NULL
);
"""
_PENDING_SQL = "('queued', 'sending', 'deferred')"
# Undelivered = not final = has a due time; the partial index answers this without a table scan.
_COUNT_PENDING = "SELECT count(*) FROM messages WHERE due_at IS NOT NULL"


def _chunks(items: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    """Slices small enough for SQLite's limit on bound parameters."""
    return [items[i : i + size] for i in range(0, len(items), size)]


_GROUP_MAX = 100  # enqueues of more messages than this take a transaction of their own


@dataclass(slots=True)
class _Join:
    """One enqueue waiting for the next group commit."""

    envelopes: list[Envelope]
    key: str | None
    digest: str
    batch: bool
    future: asyncio.Future[EnqueueResult]


async def _one(envelopes: Sequence[Envelope]) -> AsyncIterator[Sequence[Envelope]]:
    yield envelopes


def _json_list(items: Sequence[str]) -> str:
    return json.dumps(list(items)) if items else "[]"


def _json_tuple(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text != "[]" else ()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def path_from_url(url: str | None) -> Path:
    """``sqlite:///var/x.db`` -> ``var/x.db`` (relative); ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url:
        return Path("var/mailsvc.sqlite3")
    if not url.startswith("sqlite:///"):
        raise OutboxError(f"MAILSVC_DATABASE_URL: {url!r} is not a sqlite:///path URL")
    rest = url.removeprefix("sqlite:///")
    if not rest:
        raise OutboxError("MAILSVC_DATABASE_URL: sqlite:/// needs a file path, e.g. sqlite:///var/mailsvc.sqlite3")
    return Path(rest)


class SqliteOutbox(Outbox):
    """The outbox in one SQLite file.

    >>> outbox = SqliteOutbox("var/mailsvc.sqlite3", max_pending=50_000)
    >>> # async with outbox: result = await outbox.enqueue([envelope])

    ``busy_timeout`` is how long a write waits for another process's write lock
    before failing with :class:`OutboxError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.max_pending = max_pending
        self.idempotency_ttl = idempotency_ttl
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._work: asyncio.Event | None = None
        self._joining: list[_Join] = []
        self._committer: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        if self._db is not None:
            return
        self._lock = asyncio.Lock()
        self._work = asyncio.Event()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the outbox database {str(self.path)!r}: {exc}") from exc
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.executescript(_SCHEMA)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            await db.close()
            raise OutboxError(f"cannot prepare the outbox database {str(self.path)!r}: {exc}") from exc
        self._db = db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise OutboxError("the outbox is not open: call await outbox.open() (or use async with)")
        return self._db

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; any failure rolls back and becomes OutboxError."""
        db = self.db
        assert self._lock is not None
        async with self._lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise OutboxError(f"the outbox database {str(self.path)!r} cannot be written: {exc}") from exc
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException as exc:
                try:
                    await db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise OutboxError(f"the outbox database {str(self.path)!r} cannot be written: {exc}") from exc
                raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """A consistent snapshot for multi-query reads."""
        db = self.db
        assert self._lock is not None
        async with self._lock:
            try:
                await db.execute("BEGIN")
                try:
                    yield db
                finally:
                    await db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the outbox database {str(self.path)!r}: {exc}") from exc

    # -- enqueue ---------------------------------------------------------------
    async def enqueue(
        self,
        envelopes: Sequence[Envelope],
        *,
        idempotency_key: str | None = None,
        batch: bool = False,
        fingerprint: str | None = None,
    ) -> EnqueueResult:
        envelopes = list(envelopes)
        check_count(len(envelopes), len(envelopes))  # at least one
        check_envelopes(envelopes)
        digest = (fingerprint or envelope_fingerprint(envelopes)) if idempotency_key is not None else None
        if len(envelopes) > _GROUP_MAX:
            return await self.enqueue_stream(
                len(envelopes), _one(envelopes), fingerprint=digest, idempotency_key=idempotency_key, batch=batch
            )
        # Group commit: requests that arrive while a transaction is open share the next one (one fsync
        # for all; each request is checked before anything is written, and a failed INSERT fails the
        # whole group, committing nothing). Every caller still gets its ids only after the commit.
        fut: asyncio.Future[EnqueueResult] = asyncio.get_running_loop().create_future()
        self._joining.append(_Join(envelopes, idempotency_key, digest or "", batch, fut))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_groups())
        return await asyncio.shield(fut)  # a cancelled caller's message may still be committed, never half

    async def _commit_groups(self) -> None:
        while self._joining:
            group: list[_Join] = []
            outcomes: list[EnqueueResult | Exception] = []
            try:
                async with self._write() as db:
                    group, self._joining = self._joining, []
                    outcomes = await self._enqueue_group(db, group)
            except Exception as exc:  # the transaction failed: nobody's message is stored
                if not group:  # it failed to begin: those waiting for it fail with it
                    group, self._joining = self._joining, []
                for j in group:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            except BaseException:
                if not group:
                    group, self._joining = self._joining, []
                for j in group:
                    if not j.future.done():
                        j.future.set_exception(OutboxError("the outbox was closing; nothing was stored"))
                raise
            assert self._work is not None
            self._work.set()
            for j, outcome in zip(group, outcomes, strict=True):
                if j.future.done():
                    continue
                if isinstance(outcome, Exception):
                    j.future.set_exception(outcome)
                else:
                    j.future.set_result(outcome)

    async def _enqueue_group(self, db: aiosqlite.Connection, group: list[_Join]) -> list[EnqueueResult | Exception]:
        """Every request's checks in order, then all their rows in one set of INSERTs.

        A request is refused (full, reused key) before it writes anything, so no
        savepoints are needed; a key used twice in one group is answered from the group.
        """
        now = time.time()
        async with db.execute(_COUNT_PENDING) as cur:
            row = await cur.fetchone()
        pending = int(row[0]) if row else 0
        async with db.execute("SELECT coalesce(max(pk), 0) FROM messages") as cur:
            row = await cur.fetchone()
        first_pk = (int(row[0]) if row else 0) + 1
        outcomes: list[EnqueueResult | Exception] = []
        ids: list[str] = []
        batch_ids: list[str | None] = []
        envelopes: list[Envelope] = []
        keys: dict[str, tuple[str, EnqueueResult]] = {}
        for j in group:
            try:
                if j.key is not None:
                    if j.key in keys:
                        digest, first = keys[j.key]
                        if digest != j.digest:
                            raise IdempotencyConflictError(j.key)
                        outcomes.append(EnqueueResult(ids=first.ids, batch_id=first.batch_id, duplicate=True))
                        continue
                    replay = await self._idempotent_replay(db, j.key, j.digest, now)
                    if replay is not None:
                        outcomes.append(replay)
                        continue
                if pending + len(j.envelopes) > self.max_pending:
                    raise OutboxFullError(pending, self.max_pending)
            except (OutboxFullError, IdempotencyConflictError) as exc:
                outcomes.append(exc)
                continue
            batch_id = uuid.uuid4().hex if j.batch else None
            result = EnqueueResult(ids=[uuid.uuid4().hex for _ in j.envelopes], batch_id=batch_id)
            pending += len(result.ids)
            ids.extend(result.ids)
            batch_ids.extend(batch_id for _ in j.envelopes)
            envelopes.extend(j.envelopes)
            if j.key is not None:
                keys[j.key] = (j.digest, result)
            outcomes.append(result)
        if envelopes:
            await self._insert(db, first_pk, ids, batch_ids, now, envelopes)
        if keys:
            await db.executemany(
                "INSERT INTO idempotency (key, fingerprint, ids, batch_id, created_at) VALUES (?, ?, ?, ?, ?)",
                [(k, d, json.dumps(r.ids), r.batch_id, now) for k, (d, r) in keys.items()],
            )
        return outcomes

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
        now = time.time()
        # One write transaction while the chunks are built: SQLite has one writer at a time, so
        # other writes (claims, single POSTs) wait for the commit; PostgreSQL's do not.
        async with self._write() as db:
            if idempotency_key is not None:
                replay = await self._idempotent_replay(db, idempotency_key, digest, now)
                if replay is not None:
                    return replay
            async with db.execute(_COUNT_PENDING) as cur:
                row = await cur.fetchone()
            pending = int(row[0]) if row else 0
            if pending + count > self.max_pending:
                raise OutboxFullError(pending, self.max_pending)
            batch_id = uuid.uuid4().hex if batch else None
            ids: list[str] = []
            cur = await db.execute("SELECT coalesce(max(pk), 0) FROM messages")
            row = await cur.fetchone()
            await cur.close()
            next_pk = (int(row[0]) if row else 0) + 1
            async for chunk in chunks:
                check_envelopes(chunk, len(ids))
                chunk_ids = [uuid.uuid4().hex for _ in chunk]
                await self._insert(db, next_pk, chunk_ids, batch_id, now, chunk)
                next_pk += len(chunk)
                ids.extend(chunk_ids)
            check_count(count, len(ids))
            if idempotency_key is not None:
                await db.execute(
                    "INSERT INTO idempotency (key, fingerprint, ids, batch_id, created_at) VALUES (?, ?, ?, ?, ?)",
                    (idempotency_key, digest, json.dumps(ids), batch_id, now),
                )
        assert self._work is not None
        self._work.set()
        return EnqueueResult(ids=ids, batch_id=batch_id)

    @staticmethod
    async def _insert(
        db: aiosqlite.Connection,
        first_pk: int,
        ids: list[str],
        batch_id: str | None | list[str | None],
        now: float,
        envelopes: Sequence[Envelope],
    ) -> None:
        """Rows for ``envelopes`` from ``first_pk`` on; ``batch_id`` one for all or one per envelope."""
        batch_ids = batch_id if isinstance(batch_id, list) else [batch_id] * len(envelopes)
        await db.executemany(
            "INSERT INTO messages (pk, id, message_id, batch_id, created_at, updated_at, due_at, sender, data,"
            " mail_options, rcpt_options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    first_pk + i,
                    ids[i],
                    env.message_id,
                    batch_ids[i],
                    now,
                    now,
                    now,
                    env.sender,
                    env.data,
                    _json_list(env.mail_options),
                    _json_list(env.rcpt_options),
                )
                for i, env in enumerate(envelopes)
            ],
        )
        await db.executemany(
            "INSERT INTO recipients (msg, position, address, updated_at) VALUES (?, ?, ?, ?)",
            [
                (first_pk + i, pos, rcpt, now)
                for i, env in enumerate(envelopes)
                for pos, rcpt in enumerate(env.recipients)
            ],
        )

    async def _idempotent_replay(
        self, db: aiosqlite.Connection, key: str, digest: str, now: float
    ) -> EnqueueResult | None:
        async with db.execute(
            "SELECT fingerprint, ids, batch_id, created_at FROM idempotency WHERE key = ?", (key,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        if row[3] < now - self.idempotency_ttl:
            await db.execute("DELETE FROM idempotency WHERE key = ?", (key,))
            return None
        if row[0] != digest:
            raise IdempotencyConflictError(key)
        return EnqueueResult(ids=json.loads(row[1]), batch_id=row[2], duplicate=True)

    # -- workers ---------------------------------------------------------------
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        now = time.time()
        async with self._write() as db:
            async with db.execute(
                "SELECT pk, id, message_id, attempts, created_at, sender, data, mail_options, rcpt_options"
                " FROM messages WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
                (now, limit),
            ) as cur:
                rows = list(await cur.fetchall())
            if not rows:
                return []
            pks = [r[0] for r in rows]
            marks = ",".join("?" * len(pks))
            async with db.execute(
                f"SELECT msg, address FROM recipients WHERE msg IN ({marks}) AND state IN {_PENDING_SQL}"
                " AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY msg, position",
                (*pks, now),
            ) as cur:
                due: dict[int, list[str]] = {}
                for msg, address in await cur.fetchall():
                    due.setdefault(msg, []).append(address)
            await db.execute(
                f"UPDATE recipients SET state = 'sending' WHERE msg IN ({marks}) AND state IN {_PENDING_SQL}"
                " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)",
                (*pks, now),
            )
            await db.executemany(
                "UPDATE messages SET state = 'sending', lease_owner = ?, due_at = ?, updated_at = ? WHERE pk = ?",
                [(owner, now + lease_seconds, now, pk) for pk in pks if pk in due],
            )
            # A message due with no due recipient should not exist; repair its due_at rather than spin.
            for pk in pks:
                if pk not in due:
                    await self._settle(db, [pk], now)
        claimed = []
        for pk, id_, message_id, attempts, created_at, sender, data, mopts, ropts in rows:
            if pk not in due:
                continue
            env = Envelope(
                sender=sender,
                recipients=tuple(due[pk]),
                data=bytes(data),
                message_id=message_id,
                mail_options=_json_tuple(mopts),
                rcpt_options=_json_tuple(ropts),
            )
            created = _dt(created_at)
            assert created is not None
            claimed.append(ClaimedMessage(id=id_, envelope=env, attempts=attempts, first_queued_at=created))
        return claimed

    async def _recipient_rows(
        self, db: aiosqlite.Connection, pks: Sequence[int]
    ) -> dict[int, list[tuple[str, float | None]]]:
        rows: dict[int, list[tuple[str, float | None]]] = {pk: [] for pk in pks}
        for chunk in _chunks(pks):
            marks = ",".join("?" * len(chunk))
            async with db.execute(
                f"SELECT msg, state, next_attempt_at FROM recipients WHERE msg IN ({marks})", tuple(chunk)
            ) as cur:
                for msg, state, next_at in await cur.fetchall():
                    rows[msg].append((state, next_at))
        return rows

    async def _settle(self, db: aiosqlite.Connection, pks: Sequence[int], now: float) -> None:
        """Recompute messages' states and due times from their recipients; drop the leases.

        Recipients still marked ``sending`` were not attempted: they go back to
        ``queued`` (never tried) or ``deferred`` (tried before), keeping their time.
        """
        if not pks:
            return
        for chunk in _chunks(pks):
            marks = ",".join("?" * len(chunk))
            await db.execute(
                "UPDATE recipients SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END"
                f" WHERE msg IN ({marks}) AND state = 'sending'",
                tuple(chunk),
            )
        updates = []
        for pk, rows in (await self._recipient_rows(db, pks)).items():
            pending_times = [t if t is not None else now for st, t in rows if st not in FINAL_STATES]
            due_at = min(pending_times) if pending_times else None
            updates.append((derive_state(st for st, _ in rows), due_at, now, pk))
        await db.executemany(
            "UPDATE messages SET state = ?, due_at = ?, lease_owner = NULL, updated_at = ? WHERE pk = ?", updates
        )

    async def _restate(self, db: aiosqlite.Connection, pks: Sequence[int], now: float) -> None:
        """Recompute states only (another worker holds the lease); final messages lose their due time."""
        if not pks:
            return
        updates = []
        for pk, rows in (await self._recipient_rows(db, pks)).items():
            state = derive_state(st for st, _ in rows)
            updates.append((state, now, state in ("delivered", "failed", "partial"), pk))
        await db.executemany(
            "UPDATE messages SET state = ?, updated_at = ?, due_at = CASE WHEN ? THEN NULL ELSE due_at END"
            " WHERE pk = ?",
            updates,
        )

    async def record(self, id: str, owner: str, outcomes: Sequence[RecipientOutcome]) -> None:
        await self.record_many(owner, [(id, outcomes)])

    async def record_many(self, owner: str, items: Sequence[tuple[str, Sequence[RecipientOutcome]]]) -> None:
        if not items:
            return
        for _, outcomes in items:
            for o in outcomes:
                if o.state not in FINAL_STATES and o.state != "deferred":
                    raise OutboxError(f"cannot record state {o.state!r} for {o.recipient}: not an outcome")
        now = time.time()
        async with self._write() as db:
            found = await self._lookup(db, [id_ for id_, _ in items])
            ours: list[int] = []
            theirs: list[int] = []
            rcpt_updates: list[tuple[Any, ...]] = []
            for id_, outcomes in items:
                if id_ not in found:
                    raise NotFoundError("message", id_)
                pk, lease_owner = found[id_]
                # Another worker took the message after our lease lapsed: leave its lease alone.
                (ours if lease_owner in (owner, None) else theirs).append(pk)
                rcpt_updates.extend(
                    (
                        o.state,
                        o.code,
                        o.reply[:1000],
                        now,
                        _ts(o.next_attempt_at) if o.state == "deferred" else None,
                        pk,
                        o.recipient,
                    )
                    for o in outcomes
                )
            # Never overwrite a final state: a delivered recipient stays delivered.
            await db.executemany(
                "UPDATE recipients SET state = ?, attempts = attempts + 1, last_code = ?, last_reply = ?,"
                " updated_at = ?, next_attempt_at = ? WHERE msg = ? AND address = ?"
                " AND state NOT IN ('delivered', 'failed', 'expired')",
                rcpt_updates,
            )
            await db.executemany(
                "UPDATE messages SET attempts = attempts + 1 WHERE pk = ?", [(found[i][0],) for i, _ in items]
            )
            await self._settle(db, ours, now)
            await self._restate(db, theirs, now)

    async def _lookup(self, db: aiosqlite.Connection, ids: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        found: dict[str, tuple[int, str | None]] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            async with db.execute(
                f"SELECT id, pk, lease_owner FROM messages WHERE id IN ({marks})", tuple(chunk)
            ) as cur:
                for id_, pk, lease_owner in await cur.fetchall():
                    found[id_] = (pk, lease_owner)
        return found

    async def extend(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        if not ids:
            return []
        now = time.time()
        kept: list[str] = []
        async with self._write() as db:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                async with db.execute(
                    f"UPDATE messages SET due_at = ? WHERE id IN ({marks}) AND lease_owner = ? AND state = 'sending'"
                    " RETURNING id",
                    (now + lease_seconds, *chunk, owner),
                ) as cur:
                    kept.extend(r[0] for r in await cur.fetchall())
        return kept

    async def release(self, ids: Sequence[str], owner: str) -> None:
        if not ids:
            return
        now = time.time()
        async with self._write() as db:
            found = await self._lookup(db, ids)
            await self._settle(db, [pk for pk, lease_owner in found.values() if lease_owner == owner], now)
        assert self._work is not None
        self._work.set()

    async def wait_for_work(self, timeout: float) -> None:
        assert self._work is not None
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass
        self._work.clear()

    # -- status ----------------------------------------------------------------
    async def status(self, id: str) -> MessageStatus:
        async with self._read() as db:
            async with db.execute(
                "SELECT pk, id, message_id, batch_id, state, created_at FROM messages WHERE id = ?", (id,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise NotFoundError("message", id)
            async with db.execute(
                "SELECT address, state, attempts, last_code, last_reply, updated_at, next_attempt_at"
                " FROM recipients WHERE msg = ? ORDER BY position",
                (row[0],),
            ) as cur:
                rcpts = list(await cur.fetchall())
        created = _dt(row[5])
        assert created is not None
        return MessageStatus(
            id=row[1],
            message_id=row[2],
            batch_id=row[3],
            state=row[4],
            created_at=created,
            recipients=[
                RecipientStatus(
                    recipient=r[0],
                    state=r[1],
                    attempts=r[2],
                    last_code=r[3],
                    last_reply=r[4],
                    updated_at=_dt(r[5]) or created,
                    next_attempt_at=_dt(r[6]) if r[1] == "deferred" else None,
                )
                for r in rcpts
            ],
        )

    async def batch_status(self, batch_id: str) -> dict[str, int]:
        async with self._read() as db:
            async with db.execute(
                "SELECT state, count(*) FROM messages WHERE batch_id = ? GROUP BY state", (batch_id,)
            ) as cur:
                counts = {state: int(n) for state, n in await cur.fetchall()}
        if not counts:
            raise NotFoundError("batch", batch_id)
        return counts

    async def pending_count(self) -> int:
        async with self._read() as db:
            async with db.execute(_COUNT_PENDING) as cur:
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def ping(self) -> None:
        """Take the write lock and let go: proves the file is writable now, writes nothing."""
        async with self._write() as db:
            await db.execute("SELECT 1")
