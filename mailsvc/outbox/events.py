"""Delivery events and webhook deliveries: the outbox's record of what happened, read in commit order.

Why triggers write the events (migrations ``*_events.sql``): every recipient state change, by whichever
code path (enqueue, claim, outcome, suppression, bounce, cancel), produces exactly one event in the same
transaction, so an event can be neither lost (it commits with its change) nor invented (it cannot commit
without one). Nothing in Python has to remember to write it.

Why a cursor and not timestamps: a client that was down asks for "everything after the last event I
saw" and gets exactly that. SQLite writes one transaction at a time, so its ``seq`` is commit order;
PostgreSQL's is not (transactions overlap), so its cursor is ``(xid, seq)`` read only below the oldest
running transaction (see the PostgreSQL migration). The cursor is opaque to clients: ``s<seq>`` or
``x<xid>.<seq>``.

Webhook deliveries live beside the events: an endpoint's cursor moves through the events and each event of
a type it wants becomes a delivery row, in the transaction that moves the cursor (none skipped, none
doubled); senders claim due rows with a lease, one per message and endpoint at a time (a message's events
arrive in order), and record 2xx as delivered, anything else as failing with a next attempt, or failed
once the endpoint has been given up on.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..errors import MailError
from ..webhookconfig import EVENT_TYPES

__all__ = [
    "EVENT_TYPES",
    "CURSOR_PATTERN",
    "CursorError",
    "Delivery",
    "DeliveryJob",
    "DeliveryOutcome",
    "Event",
    "EventLog",
    "EventPage",
    "MinuteCounts",
    "decode_cursor",
]

#: An opaque cursor as either backend writes it (ASCII digits only: the OpenAPI document states this pattern).
CURSOR_PATTERN = r"^(?:s([0-9]{1,18})|x([0-9]{1,20})\.([0-9]{1,18}))$"
_CURSOR = re.compile(CURSOR_PATTERN)


class CursorError(MailError, ValueError):
    """A cursor this outbox did not hand out (or one from the other backend)."""


def decode_cursor(cursor: str, backend: str) -> tuple[int, int]:
    """``(xid, seq)`` of an opaque cursor; SQLite's have xid 0.

    >>> decode_cursor("s42", "sqlite"), decode_cursor("x7.42", "postgres")
    ((0, 42), (7, 42))
    """
    m = _CURSOR.fullmatch(cursor)
    if m is None or (m.group(1) is not None) != (backend == "sqlite"):
        raise CursorError(f"{cursor[:40]!r} is not a cursor from this outbox; use the 'next' of a previous page")
    if m.group(1) is not None:
        return 0, int(m.group(1))
    return int(m.group(2)), int(m.group(3))


def encode_cursor(xid: int, seq: int, backend: str) -> str:
    return f"s{seq}" if backend == "sqlite" else f"x{xid}.{seq}"


@dataclass(frozen=True, slots=True)
class Event:
    """One state change of one recipient (or an address's unsubscribe), as clients and webhooks see it."""

    cursor: str
    type: str
    message: str | None
    address: str
    code: int | None
    reply: str
    attempt: int
    at: datetime
    tenant: str | None
    tags: tuple[str, ...] = ()  # the message's, while the message exists
    metadata: dict[str, str] | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "cursor": self.cursor,
            "type": self.type,
            "message": self.message,
            "recipient": self.address,
            "code": self.code,
            "reply": self.reply,
            "attempt": self.attempt,
            "at": self.at.isoformat(),
            "tags": list(self.tags),
            "metadata": dict(self.metadata or {}),
        }


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[Event]
    next: str | None  # the cursor to ask with next time (the last event's, or the one asked with)


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """Events of one type per minute, oldest minute first, from ``start`` (the outbox page's chart).

    ``partial``: the read stopped at its scan bound before reaching ``start`` (more events in the
    window than it may read), so the earliest minutes undercount.
    """

    start: datetime
    counts: list[int]
    partial: bool


#: Events the per-minute read looks at, newest first, at most (one index range, bounded).
MINUTE_SCAN = 50_000


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """A claimed webhook delivery: which endpoint, and the event to POST."""

    id: int
    endpoint: str
    attempts: int
    created_at: datetime
    event: Event


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    id: int
    status: str  # delivered | failing | failed
    error: str
    next_at: datetime | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook delivery as operators see it (GET /api/webhooks/deliveries)."""

    id: int
    endpoint: str
    cursor: str
    message: str
    status: str
    attempts: int
    last_error: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime | None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "event": self.cursor,
            "message": self.message,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "next_attempt_at": self.due_at.isoformat() if self.due_at is not None else None,
        }


class EventLog(abc.ABC):
    """The events and webhook deliveries of one outbox (one implementation per backend)."""

    backend: str

    @abc.abstractmethod
    async def read(
        self,
        tenant: str | None,
        after: str | None,
        types: Sequence[str],
        message: str | None,
        limit: int,
        tag: str | None = None,
    ) -> EventPage:
        """Events after the cursor (from the first when None), oldest first; ``tenant`` None reads all.

        ``tag``: only events of messages with this tag (an address-level event has none).
        """

    @abc.abstractmethod
    async def per_minute(
        self, tenant: str | None, type: str, start: datetime, minutes: int, scan: int = MINUTE_SCAN
    ) -> MinuteCounts:
        """Events of ``type`` (``tenant``'s, or all when None) per minute from ``start`` for ``minutes`` minutes.

        Why bounded by ``scan`` and not by an index on the time: the newest ``scan`` events (by the
        cursor's index, which follows the clock closely) are read and counted, so a page view costs
        at most that many rows however busy the hour, and no migration is needed.
        """

    @abc.abstractmethod
    async def fanout(self, endpoint: str, types: Sequence[str], limit: int) -> int:
        """Turn up to ``limit`` events after ``endpoint``'s cursor into its deliveries; return how many events
        were passed (a new endpoint starts at the newest event: it is sent what happens from now on)."""

    @abc.abstractmethod
    async def claim(self, endpoints: Sequence[str], limit: int, lease_seconds: float) -> list[DeliveryJob]:
        """Due deliveries, at most one per (endpoint, message), leased for ``lease_seconds``."""

    @abc.abstractmethod
    async def record(self, outcomes: Sequence[DeliveryOutcome]) -> None: ...

    @abc.abstractmethod
    async def deliveries(self, status: str | None, after: int | None, limit: int) -> list[Delivery]: ...

    @abc.abstractmethod
    async def replay(self, id: int) -> bool:
        """Make a failed (or failing) delivery due now again; False when there is no such delivery."""

    @abc.abstractmethod
    async def backlog(self) -> int:
        """Deliveries not yet final (for /metrics)."""
