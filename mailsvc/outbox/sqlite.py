"""The embedded outbox's storage: one SQLite file in WAL mode with ``synchronous=FULL``.

Why these settings: WAL lets status readers run while a worker writes, and
``synchronous=FULL`` syncs the WAL on every commit so an accepted message
survives power loss, not only a crash of this process. Every write runs in
``BEGIN IMMEDIATE`` so that two processes (the service and ``mailsvc worker``)
sharing the file serialise on SQLite's write lock instead of failing half-way.

The schema (``migrations/sqlite/``) mirrors the PostgreSQL one, with the body in the
``messages`` row and recipients keyed by the message's integer ``pk``. This module
holds the statements and the driver only; the order of the steps is :mod:`.core`'s.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import MessageError, OutboxError
from ..message import Envelope
from . import migrations
from .base import DEFAULT_IDEMPOTENCY_TTL, DEFAULT_MAX_PENDING, NO_LABELS, Labels, QueueStats
from .blobs import Splice
from .core import OutboxCore
from .listing import Cursor, MessageQuery, MessageSummary
from .sqlite_events import SqliteEventLog
from .sqlite_writers import WriterQueue
from .states import (
    CANCELLABLE,
    FINAL,
    FINAL_MESSAGE,
    PENDING,
    MessageState,
    RecipientState,
    derive_state,
    sql_list,
)
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

__all__ = ["SqliteOutbox", "SqliteStore", "upgrade_schema"]

_GROUP_MAX = 100  # enqueues of more messages than this take a transaction of their own
_STEP_MESSAGES = 125  # a bulk is stored in steps of at most this many messages, each its own transaction (issue 18)
# Undelivered = not final = has a due time (the partial index answers without a table scan), or sealed in a
# stage and not activated yet (a stage's own count).
_COUNT_PENDING = (
    "SELECT (SELECT count(*) FROM messages WHERE due_at IS NOT NULL)"
    " + (SELECT coalesce(sum(waiting), 0) FROM stages WHERE sealed)"
)
# A message is seen (status, listing, batch) unless its stage is still open; a sealed stage's are queued.
_SEEN = "(stage IS NULL OR stage IN (SELECT id FROM stages WHERE sealed))"
_PENDING = sql_list(PENDING)
_FINAL = sql_list(FINAL)
_CANCELLABLE = sql_list(CANCELLABLE)
_UNSENT = sql_list({RecipientState.QUEUED, RecipientState.SCHEDULED})  # what an enqueue's suppression marks
# What a suppression may still stop: not yet sent, or taken by the claim that re-checks the list.
_UNSENT_OR_SENDING = sql_list({RecipientState.QUEUED, RecipientState.SCHEDULED, RecipientState.SENDING})


def _chunks(items: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    """Slices small enough for SQLite's limit on bound parameters."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


def _json_list(items: Sequence[str]) -> str:
    return json.dumps(list(items)) if items else "[]"


def _json_tuple(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text != "[]" else ()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


async def _connect(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise OutboxError(f"cannot open the outbox database {str(path)!r}: {exc}") from exc
    try:
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        await db.close()
        raise OutboxError(f"cannot prepare the outbox database {str(path)!r}: {exc}") from exc
    return db


async def upgrade_schema(path: Path, busy_timeout: float = 10.0) -> list[migrations.Migration]:
    """Apply missing migrations to the SQLite outbox at ``path`` (``mailsvc db upgrade``); return them."""
    db = await _connect(path, busy_timeout)
    try:
        return await _upgrade(db, path)
    finally:
        await db.close()


async def _upgrade(db: aiosqlite.Connection, path: Path) -> list[migrations.Migration]:
    try:
        return await migrations.upgrade(Schema(db))
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot prepare the outbox database {str(path)!r}: {exc}") from exc


class Schema:
    """The migration runner's view of a SQLite file: the write lock, and ``PRAGMA user_version``.

    Every missing migration runs in the one ``BEGIN IMMEDIATE`` transaction that read the
    version, so a second process starting at the same moment waits and then finds it current.
    """

    backend: migrations.Backend = "sqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        await self.db.execute("COMMIT")

    async def applied(self) -> set[int]:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return set(range(1, int(row[0]) + 1)) if row else set()

    async def apply(self, migration: migrations.Migration) -> None:
        for statement in _statements(migration.sql):
            await self.db.execute(statement)
        await self.db.execute(f"PRAGMA user_version = {int(migration.version)}")


def _statements(script: str) -> Iterator[str]:
    """A script's statements one by one (``executescript`` would commit the transaction first)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending  # comments after the last statement


class SqliteStore(Store):
    """One connection to the file; an asyncio lock keeps this process's transactions apart, and a
    :class:`~.sqlite_writers.WriterQueue` this process's from other processes'."""

    def __init__(self, path: Path, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._work: asyncio.Event | None = None
        self._writers: WriterQueue | None = None
        self._tell: list[Callable[[], None]] = []

    async def open(self) -> None:
        if self._db is not None:
            return
        self._lock = asyncio.Lock()
        self._work = asyncio.Event()
        db = await _connect(self.path, self.busy_timeout)
        try:
            await _upgrade(db, self.path)
            self._writers = WriterQueue(self.path)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def close(self) -> None:
        db, self._db = self._db, None
        writers, self._writers = self._writers, None
        if writers is not None:
            writers.close()
        if db is not None:
            await db.close()

    def wake(self) -> None:
        if self._work is not None:
            self._work.set()

    def on_work(self, tell: Callable[[], None]) -> None:
        """SQLite has no NOTIFY: a process's commit wakes only its own workers, and ``tell`` for others."""
        self._tell.append(tell)

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise OutboxError("the outbox is not open: call await outbox.open() (or use async with)")
        return self._db

    @asynccontextmanager
    async def write(self, what: str) -> AsyncIterator[Tx]:
        """One ``BEGIN IMMEDIATE`` transaction; any failure rolls back and becomes OutboxError."""
        db = self.db
        assert self._lock is not None and self._work is not None and self._writers is not None
        async with self._lock:
            writers = self._writers
            await writers.acquire(self.busy_timeout)
            try:
                try:
                    await db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise OutboxError(f"the outbox database {str(self.path)!r} cannot be written: {exc}") from exc
                tx = _SqliteTx(db)
                try:
                    yield tx
                    await db.execute("COMMIT")
                except BaseException as exc:
                    try:
                        await db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    if isinstance(exc, sqlite3.Error):
                        raise OutboxError(f"the outbox database {str(self.path)!r} cannot be written: {exc}") from exc
                    raise
            finally:
                writers.release()
        if tx.woken:
            self._work.set()
            for tell in self._tell:
                tell()

    @asynccontextmanager
    async def read(self, what: str) -> AsyncIterator[Tx]:
        """A consistent snapshot for multi-query reads."""
        db = self.db
        assert self._lock is not None
        async with self._lock:
            try:
                await db.execute("BEGIN")
                try:
                    yield _SqliteTx(db)
                finally:
                    await db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the outbox database {str(self.path)!r}: {exc}") from exc

    async def wait_for_work(self, timeout: float) -> None:
        assert self._work is not None
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass
        self._work.clear()

    async def ping(self) -> None:
        """Take the write lock and let go: proves the file is writable now, writes nothing."""
        async with self.write("ping"):
            pass


class _SqliteTx(Tx):
    """Statements on one connection inside one transaction; ``now`` is the transaction's clock."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.now = time.time()
        self.woken = False
        self._pks: dict[str, int] = {}  # message id -> pk, for the rows this transaction looked up
        self._bodies: dict[str, Body] = {}  # read along with the claim's rows
        self._next_pk: int | None = None

    # One hop to the database thread per statement (execute, fetch and close there): a cursor used
    # from here costs three, and each hop waits for the event loop, which is busy sending meanwhile.
    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self.db.execute_fetchall(sql, params))

    # -- enqueue
    async def count_pending(self) -> int:
        row = await self._one(_COUNT_PENDING)
        return int(row[0]) if row else 0

    async def queue_stats(self, tenant: str | None = None) -> QueueStats:
        # Only rows with a due time (not final: at most MAILSVC_MAX_PENDING); the minimum is one index probe.
        mine, who = ("", ()) if tenant is None else (" AND tenant = ?", (tenant,))
        rows = await self._all(
            f"SELECT state, count(*) FROM messages WHERE due_at IS NOT NULL{mine} GROUP BY state", who
        )
        oldest = await self._one(
            f"SELECT min(due_at) FROM messages WHERE due_at IS NOT NULL AND due_at <= ?{mine}", (self.now, *who)
        )
        wait = self.now - oldest[0] if oldest and oldest[0] is not None else 0.0
        counts = {str(state): int(n) for state, n in rows}
        staged = await self._one(
            f"SELECT count(*) FROM messages WHERE stage IN (SELECT id FROM stages WHERE sealed) AND due_at IS NULL"
            f" AND state NOT IN {sql_list(FINAL_MESSAGE)}{mine}",
            who,
        )
        if staged and staged[0]:  # sealed, not activated yet: queued (or scheduled: counted as queued)
            counts[MessageState.QUEUED] = counts.get(MessageState.QUEUED, 0) + int(staged[0])
        return QueueStats(counts, max(wait, 0.0))

    async def count_suppressed(self, ids: Sequence[str]) -> int:
        total = 0
        for chunk in _chunks([self._pks[i] for i in ids]):
            row = await self._one(
                f"SELECT count(*) FROM recipients WHERE msg IN ({_marks(chunk)})"
                f" AND state = '{RecipientState.SUPPRESSED}'",
                chunk,
            )
            total += int(row[0]) if row else 0
        return total

    async def find_key(self, key: str, ttl: float) -> KeyRecord | None:
        row = await self._one("SELECT fingerprint, ids, batch_id, created_at FROM idempotency WHERE key = ?", (key,))
        if row is None:
            return None
        if row[3] < self.now - ttl:
            await self.db.execute("DELETE FROM idempotency WHERE key = ?", (key,))
            return None
        return KeyRecord(row[0], json.loads(row[1]), row[2])

    async def hold_key(self, key: str, record: KeyRecord, ttl: float) -> KeyRecord | None:
        # One writer at a time: nobody can have stored the key since find_key looked.
        await self.db.execute(
            "INSERT INTO idempotency (key, fingerprint, ids, batch_id, created_at) VALUES (?, ?, ?, ?, ?)",
            (key, record.fingerprint, json.dumps(record.ids), record.batch_id, self.now),
        )
        return None

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
        """Rows numbered on from the highest ``pk``, so recipients and splices need no lookup of their message's.

        A staged row has no due time until :meth:`activate_stage` gives it the one it would have had.
        """
        if self._next_pk is None:
            row = await self._one("SELECT coalesce(max(pk), 0) FROM messages")
            self._next_pk = (int(row[0]) if row else 0) + 1
        first, now = self._next_pk, self.now
        self._next_pk += len(envelopes)
        stored = [_stored_labels(labels[i] if labels else NO_LABELS, now) for i in range(len(envelopes))]
        # The row and its bytes (in contents, migration 0011) through the view's INSTEAD OF trigger: one statement.
        await self.db.executemany(
            "INSERT INTO new_messages (pk, id, message_id, batch_id, tenant, created_at, updated_at, due_at, sender,"
            " data, mail_options, rcpt_options, state, send_at, tags, metadata, stream, traceparent, relay_route,"
            " stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (first + i, ids[i], env.message_id, batch_ids[i], tenants[i], now, now)
                + (stored[i].due if stage is None else None, env.sender)
                + (env.data, _json_list(env.mail_options), _json_list(env.rcpt_options), stored[i].state)
                + (stored[i].send_at, stored[i].tags, stored[i].metadata, streams[i] if streams else None)
                + ((labels[i].traceparent if labels else None), stored[i].route, stage)
                for i, env in enumerate(envelopes)
            ],
        )
        await self.db.executemany(
            "INSERT INTO recipients (msg, position, address, updated_at, state, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (first + i, pos, rcpt, now, stored[i].state, stored[i].later)
                for i, env in enumerate(envelopes)
                for pos, rcpt in enumerate(env.recipients)
            ],
        )
        if splices:
            await self.db.executemany(
                "INSERT INTO splices (msg, position, at, digest) VALUES (?, ?, ?, ?)",
                [(first + i, pos, sp.at, sp.digest) for i, cuts in enumerate(splices) for pos, sp in enumerate(cuts)],
            )

    async def put_blobs(self, blobs: Mapping[str, bytes]) -> None:
        """One writer at a time: a blob found here stays until this transaction commits."""
        digests = list(blobs)
        have = {r[0] for r in await self._all(f"SELECT digest FROM blobs WHERE digest IN ({_marks(digests)})", digests)}
        await self.db.executemany(
            "INSERT INTO blobs (digest, data) VALUES (?, ?)", [(d, blobs[d]) for d in digests if d not in have]
        )

    async def notify(self) -> None:
        self.woken = True  # the store wakes in-process workers after the commit

    # -- a bulk stored in steps
    async def open_stage(self, batch_id: str) -> int:
        row = await self._one(
            "INSERT INTO stages (batch_id, touched_at) VALUES (?, ?) RETURNING id", (batch_id, self.now)
        )
        return int(row[0])

    async def touch_stage(self, stage: int) -> bool:
        rows = await self._all(
            "UPDATE stages SET touched_at = ? WHERE id = ? AND sealed = 0 RETURNING id", (self.now, stage)
        )
        return bool(rows)

    async def seal_stage(self, stage: int, count: int) -> bool:
        rows = await self._all(
            "UPDATE stages SET sealed = 1, waiting = ?, touched_at = ? WHERE id = ? AND sealed = 0 RETURNING id",
            (count, self.now, stage),
        )
        return bool(rows)

    async def drop_stage(self, stage: int) -> bool:
        sealed = await self._one("SELECT sealed FROM stages WHERE id = ?", (stage,))
        if sealed is not None and sealed[0]:
            return False
        await self.db.execute("DELETE FROM stages WHERE id = ?", (stage,))
        return True

    async def _staged(self, stage: int, limit: int) -> list[int]:
        return [
            r[0] for r in await self._all("SELECT pk FROM messages WHERE stage = ? ORDER BY pk LIMIT ?", (stage, limit))
        ]

    async def activate_stage(self, stage: int, limit: int) -> int:
        """Due as :meth:`insert` would have made them (now: their ``created_at``; or ``send_at``), unless final;
        each recipient's first event (``queued``/``scheduled``), then its state's if a suppression changed it."""
        pks = await self._staged(stage, limit)
        if pks:
            where = f"r.msg IN ({_marks(pks)})"
            scheduled, queued = RecipientState.SCHEDULED, RecipientState.QUEUED
            first = f"CASE WHEN m.send_at > m.created_at THEN '{scheduled}' ELSE '{queued}' END"
            for kind, extra in ((first, ""), ("r.state", f" AND r.state NOT IN {_UNSENT}")):
                await self.db.execute(
                    "INSERT INTO events (message, msg, tenant, address, type, code, reply, attempt, at)"
                    f" SELECT m.id, m.pk, m.tenant, r.address, {kind}, r.last_code, r.last_reply, r.attempts, ?"
                    f" FROM recipients r JOIN messages m ON m.pk = r.msg WHERE {where}{extra}"
                    " ORDER BY r.msg, r.position",
                    (self.now, *pks),
                )
            await self.db.execute(
                f"UPDATE messages SET stage = NULL, due_at = CASE WHEN state IN {sql_list(FINAL_MESSAGE)} THEN NULL"
                f" WHEN send_at > created_at THEN send_at ELSE created_at END WHERE pk IN ({_marks(pks)})",
                pks,
            )
            self.woken = True
        if len(pks) < limit:
            await self.db.execute("DELETE FROM stages WHERE id = ?", (stage,))
        else:
            await self.db.execute("UPDATE stages SET waiting = max(waiting - ?, 0) WHERE id = ?", (len(pks), stage))
        return len(pks)

    async def discard_rows(self, stage: int, limit: int) -> int:
        """Contents, recipients and splices go with their message (ON DELETE CASCADE); a staged row has no events."""
        pks = await self._staged(stage, limit)
        if not pks:
            return 0
        digests = [
            r[0] for r in await self._all(f"SELECT DISTINCT digest FROM splices WHERE msg IN ({_marks(pks)})", pks)
        ]
        await self.db.execute(f"DELETE FROM messages WHERE pk IN ({_marks(pks)})", pks)
        for chunk in _chunks(digests):
            await self.db.execute(
                f"DELETE FROM blobs WHERE digest IN ({_marks(chunk)})"
                " AND NOT EXISTS (SELECT 1 FROM splices WHERE splices.digest = blobs.digest)",
                chunk,
            )
        return len(pks)

    async def stages(self, stale_before: float) -> tuple[list[int], list[int]]:
        sealed = [r[0] for r in await self._all("SELECT id FROM stages WHERE sealed ORDER BY id")]
        dead = [
            r[0]
            for r in await self._all(
                "SELECT id FROM stages WHERE NOT sealed AND touched_at < ?"
                " UNION SELECT DISTINCT stage FROM messages WHERE stage IS NOT NULL"
                " AND stage NOT IN (SELECT id FROM stages) ORDER BY 1",
                (stale_before,),
            )
        ]
        return sealed, dead

    # -- claim
    async def due_messages(self, limit: int) -> list[DueMessage]:
        rows = await self._all(
            "SELECT pk, id, message_id, attempts, created_at, sender,"
            " (SELECT data FROM contents WHERE contents.msg = messages.pk), mail_options, rcpt_options, tenant, stream,"
            " (SELECT max(s.created_at) FROM suppressions s WHERE s.tenant = coalesce(messages.tenant, '')),"
            " traceparent, relay_route"
            " FROM messages WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
            (self.now, limit),
        )
        due = []
        for (
            pk,
            id_,
            message_id,
            attempts,
            created_at,
            sender,
            data,
            mopts,
            ropts,
            tenant,
            stream,
            newest,
            tp,
            route,
        ) in rows:
            self._pks[id_] = pk
            self._bodies[id_] = Body(sender, bytes(data), _json_tuple(mopts), _json_tuple(ropts))
            newest_at = None if newest is None else _dt(newest)
            due.append(DueMessage(id_, message_id, attempts, _dt(created_at), tenant, stream, newest_at, tp, route))
        return due

    async def take_recipients(self, ids: Sequence[str]) -> dict[str, list[str]]:
        pks = [self._pks[i] for i in ids]
        ids_by_pk = dict(zip(pks, ids, strict=True))
        where = f"msg IN ({_marks(pks)}) AND state IN {_PENDING} AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
        due: dict[str, list[str]] = {}
        for msg, address in await self._all(
            f"SELECT msg, address FROM recipients WHERE {where} ORDER BY msg, position", (*pks, self.now)
        ):
            due.setdefault(ids_by_pk[msg], []).append(address)
        await self.db.execute(
            f"UPDATE recipients SET state = '{RecipientState.SENDING}' WHERE {where}", (*pks, self.now)
        )
        return due

    async def lease(self, ids: Sequence[str], owner: str, lease_seconds: float) -> None:
        await self.db.executemany(
            f"UPDATE messages SET state = '{MessageState.SENDING}', lease_owner = ?, due_at = ?, updated_at = ?"
            " WHERE pk = ?",
            [(owner, self.now + lease_seconds, self.now, self._pks[i]) for i in ids],
        )

    async def bodies(self, ids: Sequence[str]) -> dict[str, Body]:
        """The rows read with the claim, with their splices (a message without any keeps its data whole)."""
        ids_by_pk = {self._pks[i]: i for i in ids}
        cuts: dict[str, list[Splice]] = {}
        for chunk in _chunks(list(ids_by_pk)):
            for msg, at, digest in await self._all(
                f"SELECT msg, at, digest FROM splices WHERE msg IN ({_marks(chunk)}) ORDER BY msg, position", chunk
            ):
                cuts.setdefault(ids_by_pk[msg], []).append(Splice(at, digest))
        return {i: replace(self._bodies[i], splices=tuple(cuts[i])) if i in cuts else self._bodies[i] for i in ids}

    async def blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for chunk in _chunks(digests):
            for digest, data in await self._all(
                f"SELECT digest, data FROM blobs WHERE digest IN ({_marks(chunk)})", chunk
            ):
                found[digest] = bytes(data)
        return found

    # -- record, release, extend
    async def lock_messages(self, ids: Sequence[str]) -> dict[str, str | None]:
        """No row locks in SQLite: the transaction holds the file's write lock."""
        owners: dict[str, str | None] = {}
        for chunk in _chunks(ids):
            for id_, pk, lease_owner in await self._all(
                f"SELECT id, pk, lease_owner FROM messages WHERE id IN ({_marks(chunk)})", chunk
            ):
                self._pks[id_] = pk
                owners[id_] = lease_owner
        return owners

    async def held_by(self, ids: Sequence[str], owner: str) -> list[str]:
        return [i for i, lease_owner in (await self.lock_messages(ids)).items() if lease_owner == owner]

    async def write_outcomes(self, rows: Sequence[OutcomeRow]) -> None:
        if not any(r.relay is not None for r in rows):  # one relay, unnamed: the statement of before
            await self.db.executemany(
                "UPDATE recipients SET state = ?, attempts = attempts + 1, last_code = ?, last_reply = ?,"
                f" updated_at = ?, next_attempt_at = ? WHERE msg = ? AND address = ? AND state NOT IN {_FINAL}",
                [
                    (r.state, r.code, r.reply, self.now, _ts(r.next_attempt_at), self._pks[r.id], r.recipient)
                    for r in rows
                ],
            )
            return
        await self.db.executemany(
            "UPDATE recipients SET state = ?, attempts = attempts + 1, last_code = ?, last_reply = ?,"
            " updated_at = ?, next_attempt_at = ?, relay = coalesce(?, relay)"
            f" WHERE msg = ? AND address = ? AND state NOT IN {_FINAL}",
            [
                (r.state, r.code, r.reply, self.now, _ts(r.next_attempt_at), r.relay, self._pks[r.id], r.recipient)
                for r in rows
            ],
        )

    async def count_attempts(self, ids: Sequence[str]) -> None:
        await self.db.executemany(
            "UPDATE messages SET attempts = attempts + 1 WHERE pk = ?", [(self._pks[i],) for i in ids]
        )

    async def settle(self, release: Sequence[str], restate: Sequence[str]) -> None:
        """The states are derived in Python (:func:`derive_state`) from the recipients' rows."""
        if release:
            await self._release([self._pks[i] for i in release])
        if restate:
            await self._restate([self._pks[i] for i in restate])

    async def _release(self, pks: Sequence[int]) -> None:
        for chunk in _chunks(pks):
            await self.db.execute(
                f"UPDATE recipients SET state = CASE WHEN attempts = 0 THEN '{RecipientState.QUEUED}'"
                f" ELSE '{RecipientState.DEFERRED}' END"
                f" WHERE msg IN ({_marks(chunk)}) AND state = '{RecipientState.SENDING}'",
                chunk,
            )
        rows = await self._recipient_states(pks)
        await self.db.executemany(
            # A staged message stays without a due time: its activation gives it one.
            "UPDATE messages SET state = ?, due_at = CASE WHEN stage IS NULL THEN ? END, lease_owner = NULL,"
            " updated_at = ? WHERE pk = ?",
            [(derive_state(st for st, _ in rs), _next_due(rs, self.now), self.now, pk) for pk, rs in rows.items()],
        )

    async def _restate(self, pks: Sequence[int]) -> None:
        states = {pk: derive_state(st for st, _ in rs) for pk, rs in (await self._recipient_states(pks)).items()}
        await self.db.executemany(
            "UPDATE messages SET state = ?, updated_at = ?, due_at = CASE WHEN ? THEN NULL ELSE due_at END"
            " WHERE pk = ?",
            [(state, self.now, state in FINAL_MESSAGE, pk) for pk, state in states.items()],
        )

    async def _recipient_states(self, pks: Sequence[int]) -> dict[int, list[tuple[str, float | None]]]:
        rows: dict[int, list[tuple[str, float | None]]] = {pk: [] for pk in pks}
        for chunk in _chunks(pks):
            for msg, state, next_at in await self._all(
                f"SELECT msg, state, next_attempt_at FROM recipients WHERE msg IN ({_marks(chunk)})", chunk
            ):
                rows[msg].append((state, next_at))
        return rows

    async def drop_blobs(self, ids: Sequence[str]) -> None:
        """One writer at a time: no enqueue can be about to use a blob this deletes."""
        digests: set[str] = set()
        for chunk in _chunks([self._pks[i] for i in ids]):
            rows = await self._all(
                f"DELETE FROM splices WHERE msg IN (SELECT pk FROM messages WHERE pk IN ({_marks(chunk)})"
                " AND due_at IS NULL) RETURNING digest",
                chunk,
            )
            digests.update(r[0] for r in rows)
        for chunk in _chunks(sorted(digests)):
            await self.db.execute(
                f"DELETE FROM blobs WHERE digest IN ({_marks(chunk)})"
                " AND NOT EXISTS (SELECT 1 FROM splices WHERE splices.digest = blobs.digest)",
                chunk,
            )

    async def extend(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        kept: list[str] = []
        for chunk in _chunks(ids):
            rows = await self._all(
                f"UPDATE messages SET due_at = ? WHERE id IN ({_marks(chunk)}) AND lease_owner = ?"
                f" AND state = '{MessageState.SENDING}' RETURNING id",
                (self.now + lease_seconds, *chunk, owner),
            )
            kept.extend(r[0] for r in rows)
        return kept

    # -- cancel
    async def cancel_recipients(self, ids: Sequence[str]) -> list[str]:
        touched: set[int] = set()
        for chunk in _chunks([self._pks[i] for i in ids]):
            rows = await self._all(
                f"UPDATE recipients SET state = '{RecipientState.CANCELLED}', next_attempt_at = NULL, updated_at = ?"
                f" WHERE msg IN ({_marks(chunk)}) AND state IN {_CANCELLABLE} RETURNING msg",
                (self.now, *chunk),
            )
            touched.update(r[0] for r in rows)
        return [i for i in ids if self._pks[i] in touched]

    async def retry_recipients(self, id: str) -> int:
        rows = await self._all(
            f"UPDATE recipients SET next_attempt_at = ? WHERE msg = ? AND state = '{RecipientState.DEFERRED}'"
            " RETURNING msg",
            (self.now, self._pks[id]),
        )
        return len(rows)

    async def batch_ids(self, batch_id: str) -> list[str]:
        return [r[0] for r in await self._all("SELECT id FROM messages WHERE batch_id = ? ORDER BY id", (batch_id,))]

    # -- status
    async def message(self, id: str) -> MessageRow | None:
        row = await self._one(
            "SELECT id, message_id, batch_id, state, created_at, tenant, tags, metadata, send_at FROM messages"
            f" WHERE id = ? AND {_SEEN}",
            (id,),
        )
        if row is None:
            return None
        send_at = None if row[8] is None else _dt(row[8])
        return MessageRow(row[0], row[1], row[2], row[3], _dt(row[4]), row[5], _tags(row[6]), _meta(row[7]), send_at)

    def _range(self, query: MessageQuery, tenant: str | None, after: Cursor | None) -> tuple[str, list[Any]]:
        """The index range a listing walks: (tenant | batch), created_at bounds, after the cursor."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if query.batch_id is not None:
            where.append("batch_id = ?")
            params.append(query.batch_id)
        if query.since is not None:
            where.append("created_at >= ?")
            params.append(query.since.timestamp())
        if query.until is not None:
            where.append("created_at < ?")
            params.append(query.until.timestamp())
        if after is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend((_cursor_key(after.key), after.id))
        return " AND ".join(where), params

    async def list_messages(
        self, query: MessageQuery, tenant: str | None, after: Cursor | None, limit: int, scan: int
    ) -> list[ListedRow]:
        where, params = self._range(query, tenant, after)
        window = f"SELECT pk FROM messages WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?"
        filters, fparams = [], []
        if query.state is not None:
            filters.append("m.state = ?")
            fparams.append(str(query.state))
        if query.tag is not None:
            filters.append("EXISTS (SELECT 1 FROM json_each(m.tags) WHERE json_each.value = ?)")
            fparams.append(query.tag)
        if query.to is not None:
            filters.append("EXISTS (SELECT 1 FROM recipients r WHERE r.msg = m.pk AND r.address = ?)")
            fparams.append(query.to)
        rows = await self._all(
            "SELECT m.id, m.message_id, m.batch_id, m.state, m.created_at, m.send_at, m.tags, m.metadata"
            f" FROM messages m WHERE m.pk IN ({window}) AND {_SEEN} {''.join(' AND ' + f for f in filters)}"
            " ORDER BY m.created_at DESC, m.id DESC LIMIT ?",
            (*params, scan, *fparams, limit),
        )
        return [
            ListedRow(
                MessageSummary(
                    id_,
                    mid,
                    bid,
                    MessageState(st),
                    _dt(created),
                    None if send_at is None else _dt(send_at),
                    _tags(tags),
                    _meta(meta),
                ),
                repr(float(created)),
            )
            for id_, mid, bid, st, created, send_at, tags, meta in rows
        ]

    async def scan_end(self, query: MessageQuery, tenant: str | None, after: Cursor | None, scan: int) -> Cursor | None:
        where, params = self._range(query, tenant, after)
        row = await self._one(
            f"SELECT created_at, id FROM messages WHERE {where} ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
            (*params, scan - 1),
        )
        return None if row is None else Cursor(repr(float(row[0])), row[1])

    async def recipients(self, id: str) -> list[RecipientRow]:
        rows = await self._all(
            "SELECT address, state, attempts, last_code, last_reply, updated_at, next_attempt_at, relay"
            " FROM recipients WHERE msg = (SELECT pk FROM messages WHERE id = ?) ORDER BY position",
            (id,),
        )
        return [
            RecipientRow(a, st, n, code, reply, _dt(updated), None if next_at is None else _dt(next_at), relay)
            for a, st, n, code, reply, updated, next_at, relay in rows
        ]

    async def batch(self, batch_id: str) -> BatchRow | None:
        """The counts from the (batch_id, state) index alone; the tenant from one row (a batch has one)."""
        owner = await self._one(f"SELECT tenant, {_SEEN} FROM messages WHERE batch_id = ? LIMIT 1", (batch_id,))
        if owner is None or not owner[1]:  # a batch is staged whole: one row says whether it is seen
            return None
        rows = await self._all("SELECT state, count(*) FROM messages WHERE batch_id = ? GROUP BY state", (batch_id,))
        return BatchRow(owner[0], {state: int(n) for state, n in rows})

    # -- suppressions
    async def add_suppressions(self, rows: Sequence[SuppressionRow]) -> int:
        """Rows added (the cursor's count: ``total_changes`` would also count the event a trigger writes)."""
        cur = await self.db.executemany(
            "INSERT INTO suppressions (tenant, address, stream, reason, source, created_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [(r.tenant, r.address, r.stream, r.reason, r.source, r.created_at.timestamp()) for r in rows],
        )
        return max(cur.rowcount, 0)

    async def has_suppressions(self, tenant: str, stream: str) -> bool:
        row = await self._one(
            f"SELECT 1 FROM suppressions WHERE tenant = ? AND stream IN (?, '{ALL_STREAMS}') LIMIT 1", (tenant, stream)
        )
        return row is not None

    async def find_suppressions(self, tenants: Sequence[str], addresses: Sequence[str]) -> list[SuppressionRow]:
        found: list[SuppressionRow] = []
        for chunk in _chunks(addresses, 400):
            rows = await self._all(
                "SELECT tenant, address, stream, reason, source, created_at FROM suppressions"
                f" WHERE tenant IN ({_marks(tenants)}) AND address IN ({_marks(chunk)})",
                (*tenants, *chunk),
            )
            found.extend(SuppressionRow(t, a, st, r, src, _dt(at)) for t, a, st, r, src, at in rows)
        return found

    async def mark_suppressed(self, items: Sequence[tuple[str, str, str]]) -> None:
        """Keyed by ``pk`` (looked up here for new messages, and remembered for :meth:`settle`)."""
        unknown = sorted({id_ for id_, _, _ in items} - self._pks.keys())
        for chunk in _chunks(unknown):
            for pk, id_ in await self._all(f"SELECT pk, id FROM messages WHERE id IN ({_marks(chunk)})", chunk):
                self._pks[id_] = pk
        await self.db.executemany(
            f"UPDATE recipients SET state = '{RecipientState.SUPPRESSED}', last_reply = ?, updated_at = ?"
            f" WHERE msg = ? AND address = ? AND state IN {_UNSENT_OR_SENDING}",
            [(reply, self.now, self._pks[id_], address) for id_, address, reply in items],
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
        where, args = ["tenant = ?"], [tenant]
        for column, value in (("reason", reason), ("stream", stream), ("address", address)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if after is not None:
            where.append("(stream, address) > (?, ?)")
            args.extend(after)
        rows = await self._all(
            "SELECT tenant, address, stream, reason, source, created_at FROM suppressions"
            f" WHERE {' AND '.join(where)} ORDER BY stream, address LIMIT ?",
            (*args, limit),
        )
        return [SuppressionRow(t, a, st, r, src, _dt(at)) for t, a, st, r, src, at in rows]

    async def remove_suppressions(self, tenant: str, address: str, stream: str | None) -> int:
        before = self.db.total_changes
        if stream is None:
            await self.db.execute("DELETE FROM suppressions WHERE tenant = ? AND address = ?", (tenant, address))
        else:
            await self.db.execute(
                "DELETE FROM suppressions WHERE tenant = ? AND address = ? AND stream = ?", (tenant, address, stream)
            )
        return self.db.total_changes - before

    async def message_tenants(self, ids: Sequence[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for chunk in _chunks(ids):
            for id_, tenant in await self._all(f"SELECT id, tenant FROM messages WHERE id IN ({_marks(chunk)})", chunk):
                found[id_] = tenant
        return found

    async def mark_reported(
        self, id: str, recipient: str, state: RecipientState, code: int | None, reply: str, over: Sequence[str]
    ) -> bool:
        row = await self._one("SELECT pk FROM messages WHERE id = ?", (id,))
        if row is None:
            return False
        self._pks[id] = row[0]
        before = self.db.total_changes
        await self.db.execute(
            f"UPDATE recipients SET state = ?, last_code = ?, last_reply = ?, updated_at = ?"
            f" WHERE msg = ? AND lower(address) = lower(?) AND state IN ({_marks(over)})",
            (str(state), code, reply, self.now, row[0], recipient, *over),
        )
        return self.db.total_changes > before

    async def suppressions(self, tenant: str) -> list[SuppressionRow]:
        rows = await self._all(
            "SELECT tenant, address, stream, reason, source, created_at FROM suppressions"
            " WHERE tenant = ? ORDER BY created_at, address",
            (tenant,),
        )
        return [SuppressionRow(t, a, st, r, src, _dt(at)) for t, a, st, r, src, at in rows]

    # -- signed-out sessions
    async def revoke_session(self, sid: str, until: datetime) -> None:
        await self.db.execute("DELETE FROM revoked_sessions WHERE expires_at <= ?", (self.now,))
        await self.db.execute(
            "INSERT INTO revoked_sessions (sid, expires_at) VALUES (?, ?)"
            " ON CONFLICT (sid) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
            (sid, until.timestamp()),
        )

    async def session_revoked(self, sid: str) -> bool:
        row = await self._one("SELECT 1 FROM revoked_sessions WHERE sid = ? AND expires_at > ?", (sid, self.now))
        return row is not None


@dataclass(frozen=True, slots=True)
class _StoredLabels:
    """A message's labels as its row stores them, and what ``send_at`` makes of it at ``now``."""

    state: str
    due: float
    later: float | None  # send_at when it is after now (recipients wait for it), else None
    send_at: float | None
    tags: str
    metadata: str
    route: str | None


def _stored_labels(labels: Labels, now: float) -> _StoredLabels:
    send_at = _ts(labels.send_at)
    later = send_at if send_at is not None and send_at > now else None
    state = RecipientState.SCHEDULED if later is not None else RecipientState.QUEUED
    tags = json.dumps(list(labels.tags)) if labels.tags else "[]"
    meta = json.dumps(labels.metadata) if labels.metadata else "{}"
    return _StoredLabels(str(state), later if later is not None else now, later, send_at, tags, meta, labels.route)


def _tags(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text != "[]" else ()


def _meta(text: str) -> dict[str, str]:
    return dict(json.loads(text)) if text != "{}" else {}


def _cursor_key(key: str) -> float:
    try:
        return float(key)
    except ValueError:
        raise MessageError("cursor", "not a cursor this outbox handed out (pass a page's 'next' unchanged)") from None


def _next_due(rows: list[tuple[str, float | None]], now: float) -> float | None:
    """The earliest time a pending recipient may be tried (None once every one is final)."""
    pending = [t if t is not None else now for st, t in rows if st not in FINAL]
    return min(pending) if pending else None


class SqliteOutbox(OutboxCore[SqliteStore]):
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
        store = SqliteStore(Path(path), busy_timeout)
        self.events = SqliteEventLog(store)
        super().__init__(
            store,
            max_pending=max_pending,
            idempotency_ttl=idempotency_ttl,
            group_max=_GROUP_MAX,
            step_messages=_STEP_MESSAGES,
        )

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def db(self) -> aiosqlite.Connection:
        """The open connection (tests tune its pragmas)."""
        return self.store.db
