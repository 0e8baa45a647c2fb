"""The outbox contract: durable storage between "accepted" and "delivered".

Why a contract: the web layer and workers call only these methods, so the
embedded SQLite outbox and a PostgreSQL one (FOR UPDATE SKIP LOCKED claims,
many worker machines) are interchangeable. Both are :class:`~mailsvc.outbox.core.OutboxCore`
over a storage backend, and every implementation runs the same contract test suite
(``tests/test_outbox_contract.py``). The states a message and a recipient pass
through are declared in :mod:`.states`.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from ..config import ServiceConfig
from ..errors import MessageError
from ..message import Envelope
from .listing import Cursor, MessagePage, MessageQuery
from .states import MessageState, RecipientState

if TYPE_CHECKING:
    from .events import EventLog

__all__ = [
    "ClaimedMessage",
    "EnqueueResult",
    "Labels",
    "MessageState",
    "MessageStatus",
    "Outbox",
    "QueueStats",
    "RecipientOutcome",
    "RecipientState",
    "RecipientStatus",
    "ReportTarget",
    "Suppression",
    "fingerprint",
]

# The service's defaults, written once on ServiceConfig; an outbox opened without a config gets the same.
DEFAULT_MAX_PENDING: int = ServiceConfig.model_fields["max_pending"].default
DEFAULT_IDEMPOTENCY_TTL: float = ServiceConfig.model_fields["idempotency_ttl"].default


# Parts of a rendered message that differ between two renderings of the same
# request: the minted Message-ID, the Date, and random MIME boundaries.
_VOLATILE_HEADER = re.compile(rb"^(message-id|date):[^\r\n]*(\r?\n[ \t][^\r\n]*)*\r?\n", re.I | re.M)
_BOUNDARY = re.compile(rb'boundary="?([^";\r\n]+)"?', re.I)


def fingerprint(envelopes: Sequence[Envelope]) -> str:
    """A digest of what a request asked to send, stable across re-renderings.

    Why not hash the bytes: an idempotent retry builds the message again, which
    mints a new Message-ID and Date and new MIME boundaries; those are masked so
    the same request gives the same fingerprint and a different one does not.
    """
    h = hashlib.sha256()
    for env in envelopes:
        head, sep, body = env.data.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = env.data.partition(b"\n\n")
        data = _VOLATILE_HEADER.sub(b"", head + sep) + body
        for i, boundary in enumerate(dict.fromkeys(_BOUNDARY.findall(data))):
            data = data.replace(boundary, b"=b%d=" % i)
        for part in (
            env.sender,
            "\x00".join(env.recipients),
            "\x00".join(env.mail_options),
            "\x00".join(env.rcpt_options),
        ):
            h.update(part.encode("utf-8") + b"\x01")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def check_envelopes(envelopes: Sequence[Envelope], start: int = 0) -> None:
    """Every envelope needs a recipient (``start``: index of the first one in the whole enqueue)."""
    for i, env in enumerate(envelopes, start):
        if not env.recipients:
            raise MessageError(f"messages[{i}].recipients", "a message needs at least one recipient")


def check_count(expected: int, got: int) -> None:
    """What :meth:`Outbox.enqueue_stream` was promised is what arrived (else nothing is stored)."""
    if expected < 1 or got == 0:
        raise MessageError("messages", "nothing to enqueue: pass at least one message")
    if got != expected:
        raise MessageError("messages", f"enqueue_stream was told {expected} messages and got {got}; nothing was stored")


def need_fingerprint(idempotency_key: str | None, fingerprint: str | None) -> str:
    if idempotency_key is not None and not fingerprint:
        raise MessageError("fingerprint", "enqueue_stream needs the request's fingerprint with an idempotency key")
    return fingerprint or ""


@dataclass(frozen=True, slots=True)
class Labels:
    """What a request attaches to every message it queues: ``tags``, ``metadata``, ``send_at``.

    Stored with each message and returned by :meth:`Outbox.status` and listings; ``send_at``
    later than the enqueue's own clock makes the message ``scheduled`` and not due before then
    (an earlier one means now). The web layer caps and checks them; the outbox stores them as given.
    """

    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    send_at: datetime | None = None
    traceparent: str | None = None  # the accepting request's trace context (W3C), when tracing is on
    #: The relay route (MAILSVC_RELAYS_FILE's ``routes``) the message is sent by; None: the worker's default.
    route: str | None = None


NO_LABELS = Labels()


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """Ids handed back only after the commit. ``duplicate`` is True for an idempotent replay.

    ``suppressed``: recipients stored ``suppressed`` by this enqueue (for the metrics; 0 on a replay).
    """

    ids: list[str]
    batch_id: str | None = None
    duplicate: bool = False
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The queue as every node sees it, read at scrape time (:meth:`Outbox.queue_stats`).

    ``by_state``: messages not yet final, per message state (at most ``MAILSVC_MAX_PENDING`` rows are
    counted, so the read is bounded); ``oldest_due_seconds``: how long the message that has been due
    longest has waited for a worker (0 when nothing is overdue: the workers keep up).
    """

    by_state: dict[str, int]
    oldest_due_seconds: float


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A leased message with only the recipients still to be tried."""

    id: str
    envelope: Envelope  # recipients narrowed to the pending ones
    attempts: int
    first_queued_at: datetime
    traceparent: str | None = None  # the accepting request's trace context: the delivery span links to it
    route: str | None = None  # the relay route stored with it (None: the default route)


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """What a worker records for one recipient after an attempt."""

    recipient: str
    state: RecipientState  # one of states.OUTCOMES
    code: int | None = None
    reply: str = ""
    next_attempt_at: datetime | None = None
    relay: str | None = None  # the relay that answered (None: none did, or a single unnamed relay)


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    recipient: str
    state: RecipientState
    attempts: int
    last_code: int | None
    last_reply: str
    updated_at: datetime
    next_attempt_at: datetime | None = None
    relay: str | None = None  # the relay that gave the last reply


@dataclass(frozen=True, slots=True)
class MessageStatus:
    id: str
    message_id: str
    batch_id: str | None
    state: MessageState
    created_at: datetime
    recipients: list[RecipientStatus] = field(default_factory=list)
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    send_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address ``tenant`` must not mail on ``stream``: why (``reason``), what recorded it, when.

    ``tenant`` is ``''`` for an open service's requests; ``address`` is lower-cased, since
    mailbox providers treat local parts case-insensitively and an unsubscribe must hold for
    every spelling a later request uses.
    """

    tenant: str
    address: str
    stream: str
    reason: str
    source: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ReportTarget:
    """What a report about a message needs to know of it: whose it is, and to whom it went."""

    id: str
    tenant: str | None
    recipients: tuple[str, ...]


class Outbox(abc.ABC):
    """Durable queue of envelopes with per-recipient state."""

    #: The delivery events and webhook deliveries (:mod:`.events`); every real backend has one.
    events: EventLog | None = None

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or upgrade the schema and connect; call inside the running loop."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
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
        """Store all envelopes in one transaction or none, owned by ``tenant``, each with ``labels``.

        ``stream``: the list they are mailed on; recipients ``tenant``'s suppression list
        stops there (:mod:`.suppressions`) are stored ``suppressed``, as :meth:`enqueue_stream`'s.
        With no stream, only the entries for every stream apply.

        ``idempotency_key`` seen within the idempotency window (24 h) returns the
        first call's result with ``duplicate=True`` and stores nothing. Whether
        the content matches is judged by ``fingerprint`` when the caller passes
        one (e.g. a hash of the request body), else by :func:`fingerprint` of the
        envelopes. ``batch=True`` mints a ``batch_id`` shared by all of them.
        ``tenant`` is recorded on every message: :meth:`status` and :meth:`batch_status`
        asked for another tenant answer as for an unknown id. The key is not scoped
        here: a caller serving several tenants puts the tenant into the key.

        Raises :class:`OutboxFullError` past the pending limit,
        :class:`IdempotencyConflictError` for a reused key with other content,
        :class:`OutboxError` when storage fails (nothing is half-written).
        """

    @abc.abstractmethod
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
        """:meth:`enqueue` for a batch too big to hold rendered at once: every chunk in one transaction, or none.

        Why: a 100,000-message batch is ~300 MB rendered; built and stored a chunk
        at a time it never is all in memory. ``count`` is how many envelopes the
        chunks will yield (checked against the pending limit before the first
        chunk is asked for, and against what arrived before the commit).
        ``fingerprint`` is required with ``idempotency_key`` (the caller hashes
        the request, since the envelopes are not all at hand); a replayed key
        returns before ``chunks`` is started. An exception raised by ``chunks``
        rolls everything back and propagates unchanged.

        ``shared``: bytes many of the envelopes contain verbatim (a bulk attachment's
        encoded body, :func:`mailsvc.mimewriter.attachment_body`). Each one of 4 KiB or
        more is stored once, cut from every message where its exact bytes occur, and
        put back at the recorded offsets when the message is claimed, so a worker sends
        exactly the bytes given here; it is deleted when the last message that needs
        it is final (:mod:`.blobs`).

        ``suppress_stream``: the stream the messages are mailed on (recorded on each); recipients
        ``tenant`` suppresses on it or on every stream (:meth:`suppress`) are stored ``suppressed``,
        a final state, and never sent; a message with no other recipient is stored final
        (``suppressed``) and still has its id in the result. A claim checks again for entries
        added since (:meth:`claim`).
        """

    @abc.abstractmethod
    async def suppress(
        self, tenant: str | None, addresses: Sequence[str], stream: str | None, *, reason: str, source: str
    ) -> int:
        """Add ``addresses`` to ``tenant``'s suppression list for ``stream`` (None: every stream).

        Returns how many were not there yet. Why in the outbox's database: the enqueue that
        must honour it reads it in its own transaction, on every node.
        """

    @abc.abstractmethod
    async def add_suppressions(self, rows: Sequence[Suppression]) -> int:
        """Store entries (addresses keyed by :func:`.suppressions.address_key`; stream ``'*'``: every stream).

        An entry already there keeps its first reason and source; returns how many were new.
        ``created_at`` should be now: a claim re-checks messages against entries newer than them.
        """

    @abc.abstractmethod
    async def suppressions(self, tenant: str | None) -> list[Suppression]:
        """``tenant``'s suppression list, oldest first."""

    @abc.abstractmethod
    async def report_target(self, id: str) -> ReportTarget | None:
        """The tenant and recipient addresses of message ``id``, for a report about it; None if unknown."""

    @abc.abstractmethod
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
        """Record an asynchronous report (a bounce, a complaint) about ``recipient`` of message ``id``.

        ``state`` is ``bounced`` or ``complained``; it replaces only the states :data:`.states.REPORTED`
        allows (a second copy of a report changes nothing), with ``code`` and ``reply`` as the last
        reply, and the message's state is derived again. ``suppress`` (reason, source) puts the address
        on the message's tenant's suppression list (every stream), in the same transaction.
        Returns whether the recipient's state changed.
        """

    @abc.abstractmethod
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
        """A page of ``tenant``'s list in (stream, address) order, after the ``(stream, address)`` ``after``.

        Filters are exact (``address`` keyed first); ``stream='*'`` finds the every-stream entries.
        """

    @abc.abstractmethod
    async def unsuppress(self, tenant: str | None, address: str, stream: str | None = None) -> int:
        """Remove ``tenant``'s entries for ``address`` (on ``stream`` only, when given); how many were removed."""

    @abc.abstractmethod
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        """Lease up to ``limit`` due messages (queued, deferred and due, or lease expired).

        A recipient its tenant suppressed after the message was queued is not handed out: it
        becomes ``suppressed`` (and a message left with none is settled, never sent).
        """

    @abc.abstractmethod
    async def record(self, id: str, owner: str, outcomes: Sequence[RecipientOutcome]) -> None:
        """Record an attempt's outcomes and release the lease (if ``owner`` still holds it).

        A ``failed`` recipient whose reply says the address does not exist (5.1.0, 5.1.1, 5.1.10:
        :func:`.suppressions.hard_bounce`) goes on its tenant's list for every stream, as a ``hard_bounce``.
        """

    @abc.abstractmethod
    async def release(self, ids: Sequence[str], owner: str) -> None:
        """Give leased messages back untouched (graceful stop)."""

    @abc.abstractmethod
    async def extend(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        """Renew the lease of messages ``owner`` still holds to ``lease_seconds`` from now; return their ids.

        Why: a send slower than the lease (a stalled relay, a queue for a
        connection) would otherwise come due again mid-send, and another worker
        would send it too. A message whose lease already went to another worker,
        or that is recorded or released, is left alone and not returned.
        """

    @abc.abstractmethod
    async def record_many(self, owner: str, items: Sequence[tuple[str, Sequence[RecipientOutcome]]]) -> None:
        """Record several messages' outcomes in one transaction.

        Why: a commit with ``synchronous=FULL`` costs an fsync, so a worker
        finishing hundreds of messages a second records them in groups.
        """

    @abc.abstractmethod
    async def wait_for_work(self, timeout: float) -> None:
        """Return when new mail may be due, or after ``timeout`` seconds.

        SQLite wakes in-process workers at once on enqueue, PostgreSQL uses
        LISTEN/NOTIFY; the timeout is the poll for retries and expired leases.
        """

    def wake(self) -> None:  # noqa: B027 (an optional hook: a no-op where nothing waits)
        """Wake this process's workers in :meth:`wait_for_work` now: another process says work is due
        (the service's delivery worker process is told so by the service, :mod:`mailsvc.workerprocess`)."""

    def on_work(self, tell: Callable[[], None]) -> None:  # noqa: B027 (an optional hook)
        """Call ``tell()`` after each of this process's commits that made mail due, where the database
        itself cannot wake other processes (SQLite; PostgreSQL's NOTIFY already does, and ignores this)."""

    @abc.abstractmethod
    async def status(self, id: str, *, tenant: str | None = None) -> MessageStatus:
        """Raise :class:`NotFoundError` for an unknown id, or one ``tenant`` did not create.

        ``tenant=None`` sees every message (an admin key, the CLI); a tenant never sees
        another's, nor those written before tenants existed.
        """

    @abc.abstractmethod
    async def batch_status(self, batch_id: str, *, tenant: str | None = None) -> dict[str, int]:
        """Counts of messages per state; :class:`NotFoundError` for an unknown batch (``tenant`` as :meth:`status`)."""

    @abc.abstractmethod
    async def list_messages(
        self, query: MessageQuery, *, tenant: str | None = None, after: Cursor | None = None, limit: int = 50
    ) -> MessagePage:
        """``tenant``'s messages matching ``query``, newest first, up to ``limit``, after ``after``.

        Keyset pagination on (created_at, id), each page reading a bounded index range
        (:mod:`.listing`); ``query.batch_id`` of another tenant's batch lists nothing (the
        caller checks the batch with :meth:`batch_status` first to answer 404).
        """

    @abc.abstractmethod
    async def cancel(self, id: str, *, tenant: str | None = None) -> MessageStatus:
        """Cancel what of the message no relay has been handed yet; return its status after.

        In one transaction that holds the message against claims: its ``queued``,
        ``scheduled`` and ``deferred`` recipients become ``cancelled`` (final); ``sending``
        ones (a worker holds the lease) are left to finish, final ones stay. Calling it
        again changes nothing. :class:`NotFoundError` as :meth:`status`.
        """

    @abc.abstractmethod
    async def retry_now(self, id: str, *, tenant: str | None = None) -> MessageStatus:
        """Make the message's ``deferred`` recipients (and so the message) due now; return its status after.

        Why: an operator who fixed what the relay complained about should not wait out the backoff.
        In one transaction that holds the message against claims; recipients in any other state are
        left alone (a ``sending`` message's deferred recipients become due when its worker records).
        Their state does not change, so no event is written for it; the attempt that follows writes its
        own. :class:`NotFoundError` as :meth:`status`.
        """

    @abc.abstractmethod
    async def cancel_batch(self, batch_id: str, *, tenant: str | None = None) -> dict[str, int]:
        """:meth:`cancel` for every message of a batch in one transaction; the batch's counts after."""

    @abc.abstractmethod
    async def revoke_session(self, sid: str, until: datetime) -> None:
        """Record that the form session ``sid`` signed out; it stays refused until ``until``.

        Why in the outbox's database: every node of the service shares it, so a cookie
        replayed to any node after sign-out is refused, and a restart forgets nothing.
        ``until`` is when every cookie of the session has expired anyway; the record goes then.
        """

    @abc.abstractmethod
    async def session_revoked(self, sid: str) -> bool:
        """Whether the session ``sid`` signed out (see :meth:`revoke_session`)."""

    @abc.abstractmethod
    async def pending_count(self) -> int:
        """Messages not yet in a final state (for backpressure and readiness)."""

    @abc.abstractmethod
    async def queue_stats(self, *, tenant: str | None = None) -> QueueStats:
        """Pending messages per state and the wait of the longest-due one (``GET /metrics``; ``tenant``'s only
        when given, for the outbox page)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`OutboxError` unless the store is writable now."""

    async def take_relay_quota(self, relay: str, window: str, limit: int) -> bool | None:
        """Count one message sent through ``relay`` in the current window ('s': second, 'd': UTC day).

        True: counted, within ``limit``; False: the window is full, nothing counted. None: this outbox
        shares no counters between processes (SQLite: one process sends), so the worker counts alone.
        Why here: on PostgreSQL every worker machine sends through the same relays, and a relay's
        limit is the account's, not one process's.
        """
        return None

    async def relay_usage_today(self) -> dict[str, int]:
        """Messages each relay took today (UTC) by the shared counters; empty where there are none (SQLite)."""
        return {}

    async def give_back_relay_quota(self, relay: str, window: str) -> None:
        """Undo one :meth:`take_relay_quota` for a message that was not sent (its relay failed first)."""
        return None

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
