"""What a storage backend gives the outbox core: transactions that run queries, nothing else.

Why this seam (procrastinate's ``JobManager`` over its connector): every outbox operation is
one sequence of steps (check, replay, refuse, write, settle) written once in :mod:`.core`;
a backend supplies only the statements for each step, in its SQL dialect and its driver.
A step never decides anything the other backend would have to decide the same way.

A backend implements :class:`Store` (connections, the write and read transactions, waking
workers, readiness) and :class:`Tx` (one method per query). Ids are the outbox's message ids;
how a backend keys its rows (SQLite's integer ``pk``) stays inside it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime

from ..message import Envelope
from .base import Labels, QueueStats
from .base import Suppression as SuppressionRow
from .blobs import Splice
from .listing import Cursor, MessageQuery, MessageSummary
from .states import RecipientState

__all__ = [
    "BatchRow",
    "Body",
    "DueMessage",
    "KeyRecord",
    "ListedRow",
    "MessageRow",
    "OutcomeRow",
    "RecipientRow",
    "Store",
    "SuppressionRow",
    "Tx",
]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What an idempotency key answers: the request's fingerprint, the ids it got, its batch."""

    fingerprint: str
    ids: list[str]
    batch_id: str | None


@dataclass(frozen=True, slots=True)
class DueMessage:
    id: str
    message_id: str
    attempts: int
    created_at: datetime
    tenant: str | None = None
    stream: str | None = None  # None: no stream recorded (only every-stream suppressions apply)
    newest_suppression: datetime | None = None  # when its tenant last added one (None: never)
    traceparent: str | None = None
    route: str | None = None


@dataclass(frozen=True, slots=True)
class Body:
    """A message's stored data, and where shared blobs go back into it (none: the data is whole)."""

    sender: str
    data: bytes
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    splices: tuple[Splice, ...] = ()


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """One recipient's outcome, checked and trimmed by the core (``next_attempt_at`` only when deferred)."""

    id: str
    recipient: str
    state: RecipientState
    code: int | None
    reply: str
    next_attempt_at: datetime | None
    relay: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: str
    message_id: str
    batch_id: str | None
    state: str
    created_at: datetime
    tenant: str | None  # who created it; None: written before tenants existed
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    send_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ListedRow:
    """A listed message and its backend sort key as text (what a cursor carries back exactly)."""

    summary: MessageSummary
    key: str


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A batch's tenant (every message of a batch has its creator's) and its messages per state."""

    tenant: str | None
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class RecipientRow:
    address: str
    state: str
    attempts: int
    last_code: int | None
    last_reply: str
    updated_at: datetime
    next_attempt_at: datetime | None
    relay: str | None = None


class Tx(abc.ABC):
    """One open transaction. Writes become visible at commit, all of them or none."""

    # -- enqueue
    @abc.abstractmethod
    async def count_pending(self) -> int:
        """Messages not yet final."""

    @abc.abstractmethod
    async def queue_stats(self, tenant: str | None = None) -> QueueStats:
        """Not-final messages per state (over the due index only) and the oldest overdue one's wait
        (``tenant``'s messages only, unless None)."""

    @abc.abstractmethod
    async def count_suppressed(self, ids: Sequence[str]) -> int:
        """Recipients of these messages that are ``suppressed`` (after :meth:`suppress_recipients`)."""

    @abc.abstractmethod
    async def find_key(self, key: str, ttl: float) -> KeyRecord | None:
        """The key's record if it is younger than ``ttl`` seconds (an older one may be dropped)."""

    @abc.abstractmethod
    async def hold_key(self, key: str, record: KeyRecord, ttl: float) -> KeyRecord | None:
        """Store ``record`` under ``key``; if another transaction stored a live one first, return that instead."""

    @abc.abstractmethod
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
        """New queued messages (one id, batch id and tenant per envelope), due now.

        ``stage``: the rows belong to that open stage (:meth:`open_stage`): invisible and never due
        until it is sealed and they are activated. Only stores that store in steps take one.

        ``streams``: per envelope, the stream it is mailed on (empty: none for any).

        ``splices``: per envelope, where blobs were cut from its data (empty: none anywhere);
        every digest named is in the store already (:meth:`put_blobs`).
        ``labels``: per envelope (empty: none); a ``send_at`` after this transaction's clock makes
        the message and its recipients ``scheduled``, due (message and recipients) at ``send_at``.
        """

    @abc.abstractmethod
    async def put_blobs(self, blobs: Mapping[str, bytes]) -> None:
        """Store each blob under its digest unless it is there, and keep it until this transaction ends.

        Why "keep": a worker finishing the last message that used a blob deletes it
        (:meth:`drop_blobs`); a blob this enqueue is about to reference must survive that.
        """

    @abc.abstractmethod
    async def notify(self) -> None:
        """Wake waiting workers once this transaction commits."""

    # -- a bulk stored in steps (stores whose outbox has ``step_messages`` > 0; the others keep one transaction)
    async def open_stage(self, batch_id: str) -> int:
        """A new, unsealed stage for a batch about to be stored in steps; its id (never reused)."""
        raise NotImplementedError

    async def touch_stage(self, stage: int) -> bool:
        """Note a step of the stage's owner; False when the stage is gone or sealed (the store is given up)."""
        raise NotImplementedError

    async def seal_stage(self, stage: int, count: int) -> bool:
        """Make the stage's ``count`` messages visible and pending, at this commit; False when it is gone."""
        raise NotImplementedError

    async def drop_stage(self, stage: int) -> bool:
        """Forget an unsealed stage (its rows stay invisible until :meth:`discard_rows`); False when sealed."""
        raise NotImplementedError

    async def activate_stage(self, stage: int, limit: int) -> int:
        """Make up to ``limit`` of a sealed stage's messages due and evented; how many (fewer: it is done)."""
        raise NotImplementedError

    async def discard_rows(self, stage: int, limit: int) -> int:
        """Delete up to ``limit`` of a dropped stage's messages (and blobs only they used); how many."""
        raise NotImplementedError

    async def stages(self, stale_before: float) -> tuple[list[int], list[int]]:
        """Sealed stages still activating, and stages to discard: unsealed and untouched since
        ``stale_before`` (epoch seconds), or dropped with rows left."""
        raise NotImplementedError

    # -- claim
    @abc.abstractmethod
    async def due_messages(self, limit: int) -> list[DueMessage]:
        """Up to ``limit`` messages due now, oldest due first, locked against other claims.

        Each with its tenant's newest suppression time, read in the same statement (an index
        lookup per row, no round trip), so a claim with nothing new to check costs nothing more.
        """

    @abc.abstractmethod
    async def take_recipients(self, ids: Sequence[str]) -> dict[str, list[str]]:
        """Mark the pending recipients due now ``sending``; their addresses per message, in order."""

    @abc.abstractmethod
    async def lease(self, ids: Sequence[str], owner: str, lease_seconds: float) -> None:
        """Messages become ``sending``, held by ``owner``, due again when the lease lapses."""

    @abc.abstractmethod
    async def bodies(self, ids: Sequence[str]) -> dict[str, Body]:
        """Each message's stored data with its splices, in order."""

    @abc.abstractmethod
    async def blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        """The blobs with these digests (a non-final message's are never missing)."""

    # -- record, release, extend
    @abc.abstractmethod
    async def lock_messages(self, ids: Sequence[str]) -> dict[str, str | None]:
        """Lease owner per existing message (``ids`` sorted, so lockers never deadlock)."""

    @abc.abstractmethod
    async def held_by(self, ids: Sequence[str], owner: str) -> list[str]:
        """Those of ``ids`` whose lease ``owner`` holds, locked."""

    @abc.abstractmethod
    async def write_outcomes(self, rows: Sequence[OutcomeRow]) -> None:
        """Record attempts, leaving a recipient in a final state as it is."""

    @abc.abstractmethod
    async def count_attempts(self, ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    async def settle(self, release: Sequence[str], restate: Sequence[str]) -> None:
        """Derive messages' states and due times from their recipients.

        ``release``: the lease is dropped; recipients still ``sending`` were not
        attempted and go back to ``queued`` (never tried) or ``deferred`` (tried
        before), keeping their time; the message falls due at its earliest pending
        recipient. ``restate``: another worker holds the lease, so only the state
        is refreshed, and the due time cleared if the message is now final.
        The rule is :func:`mailsvc.outbox.states.derive_state`.
        """

    @abc.abstractmethod
    async def drop_blobs(self, ids: Sequence[str]) -> None:
        """Forget the splices of those of ``ids`` that are final now; delete blobs no message needs any more.

        Called after :meth:`settle`: a final message is never sent again, so only
        messages still owed an attempt keep a blob. A blob some enqueue in progress
        holds (:meth:`put_blobs`) may be left for that batch's own last message.
        """

    @abc.abstractmethod
    async def extend(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        """Renew the leases ``owner`` holds on ``sending`` messages; return their ids."""

    # -- cancel
    @abc.abstractmethod
    async def cancel_recipients(self, ids: Sequence[str]) -> list[str]:
        """Mark ``cancelled`` the recipients of these (locked) messages in a cancellable state
        (:data:`~.states.CANCELLABLE`); return the messages touched."""

    @abc.abstractmethod
    async def retry_recipients(self, id: str) -> int:
        """Make the ``deferred`` recipients of this (locked) message due now; how many there were."""

    @abc.abstractmethod
    async def batch_ids(self, batch_id: str) -> list[str]:
        """The ids of a batch's messages, sorted."""

    # -- status
    @abc.abstractmethod
    async def message(self, id: str) -> MessageRow | None: ...

    @abc.abstractmethod
    async def list_messages(
        self, query: MessageQuery, tenant: str | None, after: Cursor | None, limit: int, scan: int
    ) -> list[ListedRow]:
        """Up to ``limit`` rows matching ``query`` (and ``tenant`` unless None), newest first, strictly
        after ``after``, among the first ``scan`` rows of the index range (see :mod:`.listing`)."""

    @abc.abstractmethod
    async def scan_end(self, query: MessageQuery, tenant: str | None, after: Cursor | None, scan: int) -> Cursor | None:
        """The ``scan``-th row of the same index range (where the next page goes on), None if it has fewer."""

    @abc.abstractmethod
    async def recipients(self, id: str) -> list[RecipientRow]:
        """In the order the message named them."""

    @abc.abstractmethod
    async def batch(self, batch_id: str) -> BatchRow | None:
        """The batch's tenant and its counts per state; None when no message has that batch id."""

    # -- suppressions
    @abc.abstractmethod
    async def add_suppressions(self, rows: Sequence[SuppressionRow]) -> int:
        """Store each row unless its (tenant, stream, address) is there already (the first reason stays).

        Returns how many were new.
        """

    @abc.abstractmethod
    async def has_suppressions(self, tenant: str, stream: str) -> bool:
        """Whether ``tenant`` suppresses any address on ``stream`` or on every stream (none: skip the lookups)."""

    @abc.abstractmethod
    async def find_suppressions(self, tenants: Sequence[str], addresses: Sequence[str]) -> list[SuppressionRow]:
        """The entries of ``tenants`` for these address keys (:func:`.suppressions.address_key`), any stream."""

    @abc.abstractmethod
    async def mark_suppressed(self, items: Sequence[tuple[str, str, str]]) -> None:
        """``(message id, address as stored, reply)``: that recipient, if still queued or sending, becomes
        ``suppressed`` with the reply as its last one (a final state: never sent)."""

    @abc.abstractmethod
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
        """Up to ``limit`` of ``tenant``'s entries, filtered, in (stream, address) order after ``after``."""

    @abc.abstractmethod
    async def remove_suppressions(self, tenant: str, address: str, stream: str | None) -> int:
        """Delete ``tenant``'s entries for the address key (on ``stream`` only, if given); how many went."""

    @abc.abstractmethod
    async def message_tenants(self, ids: Sequence[str]) -> dict[str, str | None]:
        """The tenant of each existing message of ``ids``."""

    @abc.abstractmethod
    async def suppressions(self, tenant: str) -> list[SuppressionRow]:
        """``tenant``'s suppressions, oldest first."""

    @abc.abstractmethod
    async def mark_reported(
        self, id: str, recipient: str, state: RecipientState, code: int | None, reply: str, over: Sequence[str]
    ) -> bool:
        """Set ``recipient`` of message ``id`` to ``state`` (with its last reply) if it is in one of ``over``."""

    # -- signed-out sessions
    @abc.abstractmethod
    async def revoke_session(self, sid: str, until: datetime) -> None:
        """Remember ``sid`` as signed out until ``until`` (and forget those whose time has passed)."""

    @abc.abstractmethod
    async def session_revoked(self, sid: str) -> bool:
        """Whether ``sid`` was signed out (and its record has not expired)."""


class Store(abc.ABC):
    """Connections to one database, and the transactions the core runs on them."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (:mod:`.migrations`); call inside the running loop."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def write(self, what: str) -> AbstractAsyncContextManager[Tx]:
        """A write transaction; storage failures become :class:`OutboxError` saying it could not ``what``."""

    @abc.abstractmethod
    def read(self, what: str) -> AbstractAsyncContextManager[Tx]:
        """A consistent read."""

    @abc.abstractmethod
    async def wait_for_work(self, timeout: float) -> None:
        """Return when :meth:`Tx.notify` was committed (here or, where possible, elsewhere), or after ``timeout``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`OutboxError` unless the database is writable now."""

    def wake(self) -> None:  # noqa: B027 (an optional hook: a no-op where nothing waits)
        """Wake this process's waiters in :meth:`wait_for_work`, as a commit here would."""

    def on_work(self, tell: Callable[[], None]) -> None:  # noqa: B027 (an optional hook)
        """Call ``tell()`` after each commit of this process that made work due, for other processes
        that cannot learn of it from the database itself (stores with a cross-process NOTIFY ignore it)."""
