"""Every outbox operation, written once, over a :class:`~mailsvc.outbox.store.Store`.

Why one core (procrastinate's ``JobManager`` over its connector): the order of an
operation's steps is where the promises live (a replayed key answers before the pending
limit is looked at; nothing is refused after something was written; ids go back only
after the commit; a final recipient is never overwritten). Written once here, each promise
holds for SQLite and PostgreSQL alike, and a new column or state is added in one place.
The backends (:mod:`.sqlite`, :mod:`.postgres`) hold only their SQL and their driver.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from ..errors import IdempotencyConflictError, NotFoundError, OutboxError, OutboxFullError
from ..message import Envelope
from .base import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_MAX_PENDING,
    NO_LABELS,
    ClaimedMessage,
    EnqueueResult,
    Labels,
    MessageStatus,
    Outbox,
    QueueStats,
    RecipientOutcome,
    RecipientStatus,
    ReportTarget,
    Suppression,
    check_count,
    check_envelopes,
    need_fingerprint,
)
from .base import fingerprint as envelope_fingerprint
from .blobs import SharedBlobs, Splice, check_blobs, reassemble
from .groups import GroupCommit
from .listing import DEFAULT_PAGE, MAX_PAGE, SCAN_ROWS, Cursor, MessagePage, MessageQuery, encode_cursor
from .pending import PendingCount
from .states import OUTCOMES, REPORTED, MessageState, RecipientState
from .store import Body, DueMessage, KeyRecord, MessageRow, OutcomeRow, Store, Tx
from .suppressions import ALL_STREAMS, Reason, address_key, covers, hard_bounce

__all__ = ["OutboxCore"]

log = logging.getLogger("mailsvc.outbox")

StoreT = TypeVar("StoreT", bound=Store)
_REPLY_MAX = 1000  # characters of a server's reply kept per recipient
_SOURCE_MAX = 300  # characters of what recorded a suppression
# The claim re-checks a message's recipients only when its tenant added a suppression since the message
# was queued, less this margin: an entry committed while the enqueue's transaction ran may carry an
# earlier time than the message and was not seen by it.
_RECHECK_MARGIN = timedelta(hours=1)
_STAGE_STALE = 300.0  # seconds without a step after which an unsealed stage's owner is taken for dead
_SWEEP_EVERY = 60.0  # seconds between a claimer's sweeps of stages left behind


@dataclass(frozen=True, slots=True)
class _Request:
    """One enqueue: ``count`` envelopes (``envelopes`` when they are all at hand) for ``tenant``."""

    count: int
    key: str | None
    digest: str
    batch: bool
    tenant: str | None
    envelopes: list[Envelope] = field(default_factory=list)
    labels: Labels = NO_LABELS
    stream: str | None = None


async def _one(envelopes: Sequence[Envelope]) -> AsyncIterator[Sequence[Envelope]]:
    yield envelopes


def _scope(tenant: str | None) -> str:
    """The suppression list's key for a tenant: an open service's requests (no tenant) share ``''``."""
    return tenant or ""


def _suppressed_reply(reason: str) -> str:
    return f"suppressed: {reason}"


async def _suppress(tx: Tx, messages: Sequence[tuple[str, str, str | None, Sequence[str]]]) -> dict[str, set[str]]:
    """Mark suppressed the recipients of ``(id, tenant key, stream, recipients)`` their tenant's list stops.

    One lookup for all of them (addresses keyed in Python, :func:`address_key`); returns, per message
    touched, the addresses (as stored) now ``suppressed``.
    """
    keys = sorted({address_key(a) for _, _, _, rcpts in messages for a in rcpts})
    tenants = sorted({t for _, t, _, _ in messages})
    if not keys:
        return {}
    entries: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for row in await tx.find_suppressions(tenants, keys):
        entries.setdefault((row.tenant, row.address), []).append((row.stream, row.reason))
    if not entries:
        return {}
    hits: dict[str, set[str]] = {}
    marks: list[tuple[str, str, str]] = []
    for id_, tenant, stream, rcpts in messages:
        for address in dict.fromkeys(rcpts):
            found = [reason for st, reason in entries.get((tenant, address_key(address)), ()) if covers(st, stream)]
            if found:
                hits.setdefault(id_, set()).add(address)
                marks.append((id_, address, _suppressed_reply(found[0])))
    if marks:
        await tx.mark_suppressed(marks)
    return hits


def _with_suppressed(outcome: EnqueueResult | Exception, hits: dict[str, set[str]]) -> EnqueueResult | Exception:
    """A grouped request's result, with how many of its recipients were suppressed at enqueue (for /metrics)."""
    if isinstance(outcome, Exception) or outcome.duplicate:
        return outcome
    n = sum(len(hits.get(i, ())) for i in outcome.ids)
    return replace(outcome, suppressed=n) if n else outcome


def _even_step(n: int, most: int) -> int:
    """Messages per step for ``n`` in steps of at most ``most``, alike: 250 by 100 is 84+83+83, not 100+100+50."""
    parts = max(1, -(-n // most))
    return max(1, -(-n // parts))


def _new_ids(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


def _visible(owner: str | None, tenant: str | None) -> bool:
    """A row is seen by its own tenant, and by every caller when ``tenant`` is None (admin, CLI).

    Rows written before tenants (``owner`` None) are therefore seen only unrestricted.
    """
    return tenant is None or owner == tenant


def outcome_rows(items: Sequence[tuple[str, Sequence[RecipientOutcome]]]) -> list[OutcomeRow]:
    """What a worker reports, checked (only outcomes) and trimmed for storage."""
    rows = []
    for id_, outcomes in items:
        for o in outcomes:
            if o.state not in OUTCOMES:
                raise OutboxError(f"cannot record state {o.state!r} for {o.recipient}: not an outcome")
            state = RecipientState(o.state)
            next_at = o.next_attempt_at if state is RecipientState.DEFERRED else None
            rows.append(OutcomeRow(id_, o.recipient, state, o.code, o.reply[:_REPLY_MAX], next_at, o.relay))
    return rows


class OutboxCore(Outbox, Generic[StoreT]):
    """The :class:`Outbox` contract over a store (see the module docstring).

    ``group_max`` > 0 lets enqueues of up to that many messages share a transaction
    (:mod:`.groups`); larger ones, and all when it is 0, take one of their own.

    ``step_messages`` > 0 stores a streamed enqueue (a bulk) in steps of at most that many messages,
    each its own short transaction, into a stage that one last small transaction seals: visible,
    due and idempotent all at once, at that commit (:meth:`_enqueue_steps`). 0: one transaction.
    """

    def __init__(
        self,
        store: StoreT,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        group_max: int = 0,
        step_messages: int = 0,
    ) -> None:
        self.store = store
        self.step_messages = step_messages  # tests make it small
        self.stage_stale = _STAGE_STALE
        self._next_sweep = 0.0
        self._discards: set[asyncio.Task[None]] = set()
        self.max_pending = max_pending
        self.idempotency_ttl = idempotency_ttl
        self.group_max = group_max
        self.scan_rows = SCAN_ROWS  # rows of history one listing page may read (tests make it small)
        self._groups: GroupCommit[_Request, EnqueueResult] = GroupCommit(self._enqueue_group)
        self.pending = PendingCount()  # what a group checks max_pending against, carried between groups

    async def open(self) -> None:
        await self.store.open()
        if self.step_messages > 0:
            await self.sweep_stages()

    async def close(self) -> None:
        await self.store.close()

    # -- enqueue ---------------------------------------------------------------
    async def enqueue(
        self,
        envelopes: Sequence[Envelope],
        *,
        idempotency_key: str | None = None,
        batch: bool = False,
        fingerprint: str | None = None,
        tenant: str | None = None,
        labels: Labels = NO_LABELS,
        stream: str | None = None,
    ) -> EnqueueResult:
        envelopes = list(envelopes)
        check_count(len(envelopes), len(envelopes))  # at least one
        check_envelopes(envelopes)
        digest = (fingerprint or envelope_fingerprint(envelopes)) if idempotency_key is not None else None
        if len(envelopes) <= self.group_max:
            request = _Request(len(envelopes), idempotency_key, digest or "", batch, tenant, envelopes, labels, stream)
            return await self._groups.join(request)
        return await self.enqueue_stream(
            len(envelopes),
            _one(envelopes),
            fingerprint=digest,
            idempotency_key=idempotency_key,
            batch=batch,
            tenant=tenant,
            labels=labels,
            suppress_stream=stream,
        )

    async def enqueue_stream(
        self,
        count: int,
        chunks: AsyncIterator[Sequence[Envelope]],
        *,
        fingerprint: str | None = None,
        idempotency_key: str | None = None,
        batch: bool = False,
        tenant: str | None = None,
        shared: Sequence[bytes] = (),
        suppress_stream: str | None = None,
        labels: Labels = NO_LABELS,
    ) -> EnqueueResult:
        request = _Request(count, idempotency_key, need_fingerprint(idempotency_key, fingerprint), batch, tenant)
        check_count(count, count)  # at least one
        blobs = await asyncio.to_thread(SharedBlobs, shared) if shared else None  # hashed before the lock
        try:
            if self.step_messages > 0 and count > self.step_messages:
                return await self._enqueue_steps(request, chunks, blobs, suppress_stream, labels)
            return await self._enqueue_whole(request, chunks, blobs, suppress_stream, labels)
        finally:
            self.pending.forget()  # what it stored is not in the count a group carries

    async def _enqueue_whole(
        self,
        request: _Request,
        chunks: AsyncIterator[Sequence[Envelope]],
        blobs: SharedBlobs | None,
        suppress_stream: str | None,
        labels: Labels,
    ) -> EnqueueResult:
        """The stream stored in one transaction."""
        count = request.count
        async with self.store.write("enqueue") as tx:
            result = await self._admit(tx, request)
            if result.duplicate:
                return result
            written = suppressed = 0
            stored: set[str] = set()
            # Looked up in this transaction, so an unsubscribe committed before it is honoured;
            # an entry committed after it is the claim's to catch.
            scope = _scope(request.tenant)
            suppressing = await tx.has_suppressions(scope, suppress_stream or ALL_STREAMS)
            async for chunk in chunks:
                check_envelopes(chunk, written)
                end = written + len(chunk)
                if end > count:
                    check_count(count, end)
                rows, splices = (chunk, []) if blobs is None else await _cut(tx, blobs, chunk, stored)
                suppressed += await _store_rows(
                    tx, result, request.tenant, written, chunk, rows, splices, labels, suppress_stream, suppressing
                )
                written = end
            check_count(count, written)
            await tx.notify()
        return replace(result, suppressed=suppressed) if suppressed else result

    async def _enqueue_steps(
        self,
        request: _Request,
        chunks: AsyncIterator[Sequence[Envelope]],
        blobs: SharedBlobs | None,
        suppress_stream: str | None,
        labels: Labels,
    ) -> EnqueueResult:
        """The stream stored a step at a time into a stage; sealed (and the key held) by one last transaction.

        Why: SQLite has one writer, and a 100,000-message batch in one transaction held it for the
        whole store, so single POSTs and lease renewals waited behind it. Each step holds the lock for
        at most ``step_messages`` (a chunk cut in even steps; a single POST waits for one step).
        Nothing is half-queued: staged rows are invisible and never due (:meth:`Tx.insert` with
        ``stage``) until the seal commits; the key is held only by the seal, so a retry after a failure
        starts afresh; a stage never sealed is discarded (here, or by :meth:`sweep_stages`).
        After the seal, the batch is made due a step at a time (any process may finish that).
        """
        scope = _scope(request.tenant)
        ids = await asyncio.to_thread(_new_ids, request.count)  # 100,000: half a second; off the loop, unlocked
        async with self.store.write("enqueue") as tx:
            if request.key is not None:
                found = await tx.find_key(request.key, self.idempotency_ttl)
                if found is not None:
                    return _replay(request, found)
            self._room(await tx.count_pending(), request.count)
            result = EnqueueResult(ids=ids, batch_id=uuid.uuid4().hex if request.batch else None)
            stage = await tx.open_stage(result.batch_id or "")
            # Looked up once: an entry committed after this step is the claim's to catch.
            suppressing = await tx.has_suppressions(scope, suppress_stream or ALL_STREAMS)
        sealed = False
        try:
            written = suppressed = 0
            stored: set[str] = set()
            async for chunk in chunks:
                check_envelopes(chunk, written)
                if written + len(chunk) > request.count:
                    check_count(request.count, written + len(chunk))
                size = _even_step(len(chunk), self.step_messages)
                for at in range(0, len(chunk), size):
                    step = chunk[at : at + size]
                    ids = result.ids[written : written + len(step)]
                    cut = await _cut_off(blobs, step) if blobs is not None else None  # before the lock
                    async with self.store.write("store a step of a batch") as tx:
                        if not await tx.touch_stage(stage):
                            raise OutboxError("the batch was given up while it was stored (no step for too long)")
                        rows: Sequence[Envelope] = step
                        splices: Sequence[Sequence[Splice]] = []
                        if blobs is not None and cut is not None:
                            rows, splices = await _put_cut(tx, blobs, cut, step, stored)
                        suppressed += await _store_rows(
                            tx, result, request.tenant, written, step, rows, splices, labels, suppress_stream,
                            suppressing, stage,
                        )  # fmt: skip
                    written += len(step)
            check_count(request.count, written)
            async with self.store.write("seal a batch") as tx:
                found = await tx.find_key(request.key, self.idempotency_ttl) if request.key is not None else None
                if found is None:
                    self._room(await tx.count_pending(), request.count)
                    if request.key is not None:
                        record = KeyRecord(request.digest, result.ids, result.batch_id)
                        await tx.hold_key(request.key, record, self.idempotency_ttl)
                    if not await tx.seal_stage(stage, request.count):
                        raise OutboxError("the batch was given up while it was stored (no step for too long)")
            if found is not None:  # a retry of this request was sealed first: it stands, this one goes
                await self._discard(stage)
                return _replay(request, found)
            sealed = True  # committed (a failed COMMIT raised above: the stage is discarded)
        except asyncio.CancelledError:
            if not sealed:  # the request is gone; its stage goes in the background (or at the next sweep)
                task = asyncio.ensure_future(self._discard(stage))
                self._discards.add(task)
                task.add_done_callback(self._discards.discard)
            raise
        except BaseException:
            if not sealed:
                await self._discard(stage)
            raise
        try:
            await self._activate(stage)
        except OutboxError as exc:  # sealed, so queued: the answer stays 202 and a claimer's sweep finishes it
            log.warning("a sealed batch is not all due yet (the next sweep makes it so): %s", exc)
        return replace(result, suppressed=suppressed) if suppressed else result

    async def _activate(self, stage: int) -> None:
        """A sealed stage's messages made due, a step at a time (idempotent: the sweep may do it too).

        A step is ``step_messages``: each writes their events too, and a larger one held the lock past 100 ms.
        """
        step = max(self.step_messages, 1)
        while True:
            async with self.store.write("make a stored batch due") as tx:
                n = await tx.activate_stage(stage, step)
            if n < step:
                return

    async def _discard(self, stage: int) -> None:
        """An unsealed stage's rows deleted a step at a time; failures are left to the next sweep."""
        step = max(self.step_messages, 1)
        try:
            async with self.store.write("give up a stored batch") as tx:
                if not await tx.drop_stage(stage):
                    return  # sealed meanwhile: it stands
            while True:
                async with self.store.write("give up a stored batch") as tx:
                    n = await tx.discard_rows(stage, step)
                if n < step:
                    return
        except OutboxError as exc:
            log.warning("could not yet delete an unsealed batch's rows (the next sweep will): %s", exc)

    async def sweep_stages(self, stale: float | None = None) -> None:
        """Finish what stores in steps left behind: activate sealed stages, discard dead unsealed ones.

        Run at :meth:`open` and by claimers every minute. ``stale``: seconds without a step after
        which an unsealed stage's owner is taken for dead (default :attr:`stage_stale`).
        """
        limit = time.time() - (self.stage_stale if stale is None else stale)
        async with self.store.write("sweep batches stored in steps") as tx:
            sealed, dead = await tx.stages(limit)
        for stage in sealed:
            await self._activate(stage)
        for stage in dead:
            await self._discard(stage)

    async def _enqueue_group(self, take: Callable[[], list[_Request]]) -> list[EnqueueResult | Exception]:
        """Each request's checks in turn, then all their messages in one set of INSERTs."""
        try:
            return await self._commit_group(take)
        except BaseException:
            self.pending.forget()  # what was carried may be wrong now (a failed COMMIT may have stored it all)
            raise

    async def _commit_group(self, take: Callable[[], list[_Request]]) -> list[EnqueueResult | Exception]:
        async with self.store.write("enqueue") as tx:
            group = take()
            pending, token = await self.pending.read(tx.count_pending, sum(r.count for r in group), self.max_pending)
            outcomes: list[EnqueueResult | Exception] = []
            ids: list[str] = []
            batch_ids: list[str | None] = []
            tenants: list[str | None] = []
            streams: list[str | None] = []
            envelopes: list[Envelope] = []
            labels: list[Labels] = []
            for request in group:
                try:
                    result = await self._admit(tx, request, pending)
                except (OutboxFullError, IdempotencyConflictError) as exc:
                    outcomes.append(exc)
                    continue
                outcomes.append(result)
                if not result.duplicate:
                    pending += request.count
                    ids.extend(result.ids)
                    batch_ids.extend(result.batch_id for _ in result.ids)
                    tenants.extend(request.tenant for _ in result.ids)
                    streams.extend(request.stream for _ in result.ids)
                    envelopes.extend(request.envelopes)
                    labels.extend(request.labels for _ in result.ids)
            if envelopes:
                await tx.insert(ids, batch_ids, tenants, envelopes, (), labels, streams)
                checked = zip(ids, tenants, streams, envelopes, strict=True)
                hits = await _suppress(tx, [(i, _scope(t), st, env.recipients) for i, t, st, env in checked])
                if hits:
                    await tx.settle(sorted(hits), [])  # all suppressed: final now, never claimed
                    outcomes = [_with_suppressed(o, hits) for o in outcomes]
                await tx.notify()
        self.pending.carry(pending, token)  # committed: suppressed ones are final, so this errs high
        return outcomes

    def _room(self, pending: int, count: int) -> None:
        """OutboxFullError unless ``count`` more messages fit beside the ``pending`` ones (MAILSVC_MAX_PENDING)."""
        if pending + count > self.max_pending:
            raise OutboxFullError(pending, self.max_pending)

    async def _admit(self, tx: Tx, request: _Request, pending: int | None = None) -> EnqueueResult:
        """Replay a known key, refuse past the pending limit, or mint ids and hold the key.

        Nothing is written before a refusal, so a refused request in a group leaves no trace.
        ``pending``: the count a group keeps as it admits requests (else it is read here).
        """
        if request.key is not None:
            found = await tx.find_key(request.key, self.idempotency_ttl)
            if found is not None:
                return _replay(request, found)
        self._room(await tx.count_pending() if pending is None else pending, request.count)
        result = EnqueueResult(ids=_new_ids(request.count), batch_id=uuid.uuid4().hex if request.batch else None)
        if request.key is not None:
            record = KeyRecord(request.digest, result.ids, result.batch_id)
            found = await tx.hold_key(request.key, record, self.idempotency_ttl)
            if found is not None:  # another node committed this key while we checked
                return _replay(request, found)
        return result

    # -- workers ---------------------------------------------------------------
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        if limit <= 0:
            return []
        await self._sweep_now_and_then()
        async with self.store.write("claim messages") as tx:
            taken = await _claim_in(tx, owner, limit, lease_seconds)
        return await _claimed(*taken)

    async def _sweep_now_and_then(self) -> None:
        """Every _SWEEP_EVERY seconds, from whoever claims: finish or drop what crashed bulk requests staged."""
        if self.step_messages > 0 and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + _SWEEP_EVERY
            await self.sweep_stages()

    async def record(self, id: str, owner: str, outcomes: Sequence[RecipientOutcome]) -> None:
        await self.record_many(owner, [(id, outcomes)])

    async def record_many(self, owner: str, items: Sequence[tuple[str, Sequence[RecipientOutcome]]]) -> None:
        """Record several messages' outcomes in one transaction (one commit, one round of fsyncs)."""
        if not items:
            return
        async with self.store.write("record an attempt") as tx:
            await _record_in(tx, owner, items)

    async def extend(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        if not ids:
            return []
        async with self.store.write("extend leases") as tx:
            return await tx.extend(ids, owner, lease_seconds)

    async def release(self, ids: Sequence[str], owner: str) -> None:
        if not ids:
            return
        async with self.store.write("release messages") as tx:
            mine = await tx.held_by(sorted(ids), owner)
            await tx.settle(mine, [])
            await tx.drop_blobs(mine)
            if mine:
                await tx.notify()

    async def wait_for_work(self, timeout: float) -> None:
        await self.store.wait_for_work(timeout)

    def wake(self) -> None:
        self.store.wake()

    def on_work(self, tell: Callable[[], None]) -> None:
        self.store.on_work(tell)

    # -- status ----------------------------------------------------------------
    async def status(self, id: str, *, tenant: str | None = None) -> MessageStatus:
        async with self.store.read("read a message's status") as tx:
            return await _status(tx, await _visible_message(tx, id, tenant))

    async def list_messages(
        self, query: MessageQuery, *, tenant: str | None = None, after: Cursor | None = None, limit: int = DEFAULT_PAGE
    ) -> MessagePage:
        limit = max(1, min(limit, MAX_PAGE))
        async with self.store.read("list messages") as tx:
            rows = await tx.list_messages(query, tenant, after, limit + 1, self.scan_rows)
            if len(rows) > limit:
                rows = rows[:limit]
                following: Cursor | None = Cursor(rows[-1].key, rows[-1].summary.id)
            else:  # the window ran out (more may match further on) or the range did (nothing more)
                following = await tx.scan_end(query, tenant, after, self.scan_rows)
        return MessagePage([r.summary for r in rows], encode_cursor(following) if following else None)

    # -- cancel ----------------------------------------------------------------
    async def cancel(self, id: str, *, tenant: str | None = None) -> MessageStatus:
        async with self.store.write("cancel a message") as tx:
            msg = await _visible_message(tx, id, tenant)
            await self._cancel(tx, [id])
            return await _status(tx, await tx.message(id) or msg)

    async def retry_now(self, id: str, *, tenant: str | None = None) -> MessageStatus:
        async with self.store.write("retry a message now") as tx:
            msg = await _visible_message(tx, id, tenant)
            holders = await tx.lock_messages([id])
            if await tx.retry_recipients(id) and id in holders and holders[id] is None:
                await tx.settle([id], [])  # due at its earliest pending recipient: now
                await tx.notify()
            return await _status(tx, await tx.message(id) or msg)

    async def cancel_batch(self, batch_id: str, *, tenant: str | None = None) -> dict[str, int]:
        async with self.store.write("cancel a batch") as tx:
            batch = await tx.batch(batch_id)
            if batch is None or not batch.counts or not _visible(batch.tenant, tenant):
                raise NotFoundError("batch", batch_id)
            await self._cancel(tx, await tx.batch_ids(batch_id))
            after = await tx.batch(batch_id)
        return after.counts if after is not None else batch.counts

    async def _cancel(self, tx: Tx, ids: list[str]) -> None:
        """The one place recipients become ``cancelled`` (an event row for the transition goes here).

        The messages are locked first (PostgreSQL: ``FOR UPDATE``, which a claim's ``SKIP LOCKED``
        passes over; SQLite: the write lock), so a claim either committed before (its recipients
        are ``sending`` and are left to finish) or sees them final and due never.
        """
        holders = await tx.lock_messages(sorted(ids))
        touched = await tx.cancel_recipients(sorted(holders))
        if not touched:
            return
        await tx.settle([i for i in touched if holders[i] is None], [i for i in touched if holders[i] is not None])
        await tx.drop_blobs(touched)

    async def batch_status(self, batch_id: str, *, tenant: str | None = None) -> dict[str, int]:
        async with self.store.read("read a batch's status") as tx:
            batch = await tx.batch(batch_id)
        if batch is None or not batch.counts or not _visible(batch.tenant, tenant):
            raise NotFoundError("batch", batch_id)
        return batch.counts

    # -- suppressions ----------------------------------------------------------
    async def suppress(
        self, tenant: str | None, addresses: Sequence[str], stream: str | None, *, reason: str, source: str
    ) -> int:
        now = datetime.now(UTC)
        where = stream or ALL_STREAMS
        return await self.add_suppressions(
            [Suppression(_scope(tenant), a, where, reason, source, now) for a in addresses]
        )

    async def add_suppressions(self, rows: Sequence[Suppression]) -> int:
        keyed = {(r.tenant, r.stream, address_key(r.address)): r for r in reversed(rows)}  # the first of each stays
        if not keyed:
            return 0
        stored = [replace(r, address=k[2], source=r.source[:_SOURCE_MAX]) for k, r in sorted(keyed.items())]
        async with self.store.write("record a suppression") as tx:
            return await tx.add_suppressions(stored)

    async def suppressions(self, tenant: str | None) -> list[Suppression]:
        async with self.store.read("read the suppression list") as tx:
            return await tx.suppressions(_scope(tenant))

    # -- reports after delivery (mailsvc.bounces) -------------------------------
    async def report_target(self, id: str) -> ReportTarget | None:
        async with self.store.read("read a message for a report") as tx:
            msg = await tx.message(id)
            if msg is None:
                return None
            rcpts = await tx.recipients(id)
        return ReportTarget(msg.id, msg.tenant, tuple(r.address for r in rcpts))

    async def record_report(
        self,
        id: str,
        recipient: str,
        state: RecipientState,
        *,
        code: int | None,
        reply: str,
        suppress: tuple[str, str] | None,
    ) -> bool:
        over = REPORTED.get(state)
        if over is None:
            raise ValueError(f"not a reported state: {state!r}")
        async with self.store.write("record a bounce or complaint") as tx:
            msg = await tx.message(id)
            if msg is None:
                raise NotFoundError("message", id)
            changed = await tx.mark_reported(id, recipient, state, code, reply[:_REPLY_MAX], sorted(over))
            if changed:
                await tx.settle([], [id])
            if suppress is not None:
                reason, source = suppress
                row = Suppression(
                    _scope(msg.tenant), address_key(recipient), ALL_STREAMS, reason, source, datetime.now(UTC)
                )
                await tx.add_suppressions([row])
        return changed

    async def list_suppressions(
        self,
        tenant: str | None,
        *,
        reason: str | None = None,
        stream: str | None = None,
        address: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> list[Suppression]:
        key = address_key(address) if address is not None else None
        async with self.store.read("read the suppression list") as tx:
            return await tx.list_suppressions(
                _scope(tenant), reason=reason, stream=stream, address=key, after=after, limit=limit
            )

    async def unsuppress(self, tenant: str | None, address: str, stream: str | None = None) -> int:
        async with self.store.write("remove a suppression") as tx:
            return await tx.remove_suppressions(_scope(tenant), address_key(address), stream)

    # -- signed-out sessions ---------------------------------------------------
    async def revoke_session(self, sid: str, until: datetime) -> None:
        async with self.store.write("record a sign-out") as tx:
            await tx.revoke_session(sid, until)

    async def session_revoked(self, sid: str) -> bool:
        async with self.store.read("check a session") as tx:
            return await tx.session_revoked(sid)

    async def pending_count(self) -> int:
        async with self.store.read("count pending messages") as tx:
            return await tx.count_pending()

    async def queue_stats(self, *, tenant: str | None = None) -> QueueStats:
        async with self.store.read("read the queue's depth") as tx:
            return await tx.queue_stats(tenant)

    async def ping(self) -> None:
        await self.store.ping()


async def _cut(
    tx: Tx, blobs: SharedBlobs, chunk: Sequence[Envelope], stored: set[str]
) -> tuple[list[Envelope], list[tuple[Splice, ...]]]:
    """The chunk with the shared blobs cut out (off the loop), storing each blob the first time one is cut.

    ``stored``: digests this enqueue has put already. A blob found in no message is never stored.
    """
    cuts = await asyncio.to_thread(blobs.cut_all, [env.data for env in chunk])
    new = {s.digest for _, splices in cuts for s in splices} - stored
    if new:
        await tx.put_blobs({d: blobs.by_digest[d] for d in sorted(new)})
        stored |= new
    rows = [env if not splices else replace(env, data=data) for env, (data, splices) in zip(chunk, cuts, strict=True)]
    return rows, [splices for _, splices in cuts]


async def _store_rows(
    tx: Tx,
    result: EnqueueResult,
    tenant: str | None,
    at: int,
    chunk: Sequence[Envelope],
    rows: Sequence[Envelope],
    splices: Sequence[Sequence[Splice]],
    labels: Labels,
    suppress_stream: str | None,
    suppressing: bool,
    stage: int | None = None,
) -> int:
    """A chunk of a stream inserted as the messages ``result.ids[at:]`` (into ``stage``, when given),
    its suppressed recipients settled at once; how many recipients were suppressed."""
    n = len(chunk)
    ids = result.ids[at : at + n]
    await tx.insert(
        ids, [result.batch_id] * n, [tenant] * n, rows, splices, [labels] * n, [suppress_stream] * n, stage=stage
    )
    if not suppressing:
        return 0
    scope = _scope(tenant)
    hits = await _suppress(tx, [(i, scope, suppress_stream, e.recipients) for i, e in zip(ids, chunk, strict=True)])
    if hits:
        await tx.settle(sorted(hits), [])  # all suppressed: final now, never claimed
    return sum(len(a) for a in hits.values())


async def _claim_in(
    tx: Tx, owner: str, limit: int, lease_seconds: float
) -> tuple[list[DueMessage], dict[str, list[str]], dict[str, Body], dict[str, bytes]]:
    """The claim's statements inside ``tx``: lease up to ``limit`` due messages, read their bodies."""
    rows = await tx.due_messages(limit)
    if not rows:
        return [], {}, {}, {}
    # Only recipients still to be tried and due now; a delivered one is never sent again.
    due = await tx.take_recipients([r.id for r in rows])
    await _recheck(tx, rows, due)
    await tx.lease(list(due), owner, lease_seconds)
    # A message due with no due recipient should not exist; repair its due time rather than spin.
    await tx.settle([r.id for r in rows if r.id not in due], [])
    await tx.drop_blobs([r.id for r in rows if r.id not in due])
    bodies = await tx.bodies(list(due))
    digests = sorted({s.digest for b in bodies.values() for s in b.splices})
    blobs = await tx.blobs(digests) if digests else {}
    return rows, due, bodies, blobs


async def _claimed(
    rows: list[DueMessage], due: dict[str, list[str]], bodies: dict[str, Body], blobs: dict[str, bytes]
) -> list[ClaimedMessage]:
    """The claimed messages, whole (blobs put back in a thread), in the order they came due."""
    if blobs:
        bodies = await asyncio.to_thread(_whole, bodies, blobs)
    claimed = []
    for r in rows:
        if r.id in due:
            b = bodies[r.id]
            envelope = Envelope(
                sender=b.sender,
                recipients=tuple(due[r.id]),
                data=b.data,
                message_id=r.message_id,
                mail_options=b.mail_options,
                rcpt_options=b.rcpt_options,
            )
            claimed.append(ClaimedMessage(r.id, envelope, r.attempts, r.created_at, r.traceparent, r.route))
    return claimed


async def _record_in(tx: Tx, owner: str, items: Sequence[tuple[str, Sequence[RecipientOutcome]]]) -> None:
    """The record's statements inside ``tx``; NotFoundError when a message is gone (the caller rolls back)."""
    rows = outcome_rows(items)
    ids = sorted({id_ for id_, _ in items})
    holders = await tx.lock_messages(ids)
    for id_ in ids:
        if id_ not in holders:
            raise NotFoundError("message", id_)
    if rows:
        await tx.write_outcomes(rows)
        await _hard_bounces(tx, rows)
    await tx.count_attempts(ids)
    # Another worker took a message after our lease lapsed: leave its lease alone.
    mine = [i for i in ids if holders[i] in (None, owner)]
    await tx.settle(mine, [i for i in ids if holders[i] not in (None, owner)])
    await tx.drop_blobs(ids)


async def _cut_off(blobs: SharedBlobs, chunk: Sequence[Envelope]) -> list[tuple[bytes, tuple[Splice, ...]]]:
    """Each message's data with the shared blobs cut out, and where (off the loop, outside any transaction)."""
    return await asyncio.to_thread(blobs.cut_all, [e.data for e in chunk])


async def _put_cut(
    tx: Tx,
    blobs: SharedBlobs,
    cuts: Sequence[tuple[bytes, tuple[Splice, ...]]],
    chunk: Sequence[Envelope],
    stored: set[str],
) -> tuple[list[Envelope], list[tuple[Splice, ...]]]:
    """:func:`_cut`'s second half: the blobs not stored by this enqueue yet put, the rows to insert."""
    new = {s.digest for _, splices in cuts for s in splices} - stored
    if new:
        await tx.put_blobs({d: blobs.by_digest[d] for d in sorted(new)})
        stored |= new
    rows = [env if not splices else replace(env, data=data) for env, (data, splices) in zip(chunk, cuts, strict=True)]
    return rows, [splices for _, splices in cuts]


def _whole(bodies: dict[str, Body], blobs: dict[str, bytes]) -> dict[str, Body]:
    """Bodies with their blobs put back (each blob checked against its digest once per claim)."""
    check_blobs(blobs)
    return {
        id_: replace(b, data=reassemble(b.data, b.splices, blobs), splices=()) if b.splices else b
        for id_, b in bodies.items()
    }


def _replay(request: _Request, found: KeyRecord) -> EnqueueResult:
    if found.fingerprint != request.digest:
        raise IdempotencyConflictError(request.key or "")
    return EnqueueResult(ids=list(found.ids), batch_id=found.batch_id, duplicate=True)


async def _visible_message(tx: Tx, id: str, tenant: str | None) -> MessageRow:
    msg = await tx.message(id)
    if msg is None or not _visible(msg.tenant, tenant):
        raise NotFoundError("message", id)  # another tenant's id reads exactly as an unknown one
    return msg


async def _status(tx: Tx, msg: MessageRow) -> MessageStatus:
    rcpts = await tx.recipients(msg.id)
    return MessageStatus(
        id=msg.id,
        message_id=msg.message_id,
        batch_id=msg.batch_id,
        state=MessageState(msg.state),
        created_at=msg.created_at,
        recipients=[
            RecipientStatus(
                recipient=r.address,
                state=RecipientState(r.state),
                attempts=r.attempts,
                last_code=r.last_code,
                last_reply=r.last_reply,
                updated_at=r.updated_at,
                next_attempt_at=r.next_attempt_at if r.state == RecipientState.DEFERRED else None,
                relay=r.relay,
            )
            for r in rcpts
        ],
        tags=msg.tags,
        metadata=msg.metadata,
        send_at=msg.send_at,
    )


async def _recheck(tx: Tx, rows: Sequence[DueMessage], due: dict[str, list[str]]) -> None:
    """Leave out of a claim the recipients suppressed since their message was queued (marked ``suppressed``).

    Why here: a batch may wait in the queue for hours while readers unsubscribe and addresses
    bounce. Cheap when nothing changed: each claimed row carries its tenant's newest entry time
    (:meth:`Tx.due_messages`), and only messages queued before it (less :data:`_RECHECK_MARGIN`)
    are looked up, in one query. A message left with no recipient to send to is settled by the
    caller (``due`` loses it).
    """
    stale = [
        r
        for r in rows
        if r.id in due and r.newest_suppression is not None and r.newest_suppression >= r.created_at - _RECHECK_MARGIN
    ]
    if not stale:
        return
    hits = await _suppress(tx, [(r.id, _scope(r.tenant), r.stream, due[r.id]) for r in stale])
    for id_, addresses in hits.items():
        left = [a for a in due[id_] if a not in addresses]
        if left:
            due[id_] = left
        else:
            del due[id_]


async def _hard_bounces(tx: Tx, rows: Sequence[OutcomeRow]) -> None:
    """Put on its tenant's list, for every stream, each address a relay refused as nonexistent (5.1.x).

    In the transaction that records the refusal, so no later message is queued between the two.
    """
    bounced = [r for r in rows if r.state is RecipientState.FAILED and hard_bounce(r.code, r.reply)]
    if not bounced:
        return
    tenants = await tx.message_tenants(sorted({r.id for r in bounced}))
    now = datetime.now(UTC)
    entries = {
        (_scope(tenants.get(r.id)), address_key(r.recipient)): Suppression(
            _scope(tenants.get(r.id)),
            address_key(r.recipient),
            ALL_STREAMS,
            Reason.HARD_BOUNCE,
            f"smtp:{r.code} {r.reply}"[:_SOURCE_MAX],
            now,
        )
        for r in bounced
        if r.id in tenants
    }
    await tx.add_suppressions([entries[k] for k in sorted(entries)])
