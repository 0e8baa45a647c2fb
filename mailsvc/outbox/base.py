"""The outbox contract: durable storage between "accepted" and "delivered".

Why a contract: the web layer and workers call only these methods, so the
embedded SQLite outbox and a PostgreSQL one (FOR UPDATE SKIP LOCKED claims,
many worker machines) are interchangeable. Every implementation runs the same
contract test suite (``tests/test_outbox_contract.py``).

States of a recipient: ``queued`` -> (``sending`` while leased) -> ``delivered`` |
``deferred`` (retry at ``next_attempt_at``) | ``failed`` (5xx) | ``expired``
(retry lifetime exceeded). A message's state is derived: ``delivered`` when all
recipients are, ``failed`` when all are final and none delivered, ``partial``
when final with a mix, otherwise ``queued``/``sending``/``deferred``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ..message import Envelope

__all__ = [
    "ClaimedMessage",
    "EnqueueResult",
    "MessageStatus",
    "Outbox",
    "RecipientOutcome",
    "RecipientStatus",
    "RecipientState",
]

RecipientState = Literal["queued", "sending", "delivered", "deferred", "failed", "expired"]
FINAL_STATES: frozenset[str] = frozenset({"delivered", "failed", "expired"})


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """Ids handed back only after the commit. ``duplicate`` is True for an idempotent replay."""

    ids: list[str]
    batch_id: str | None = None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A leased message with only the recipients still to be tried."""

    id: str
    envelope: Envelope  # recipients narrowed to the pending ones
    attempts: int
    first_queued_at: datetime


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """What a worker records for one recipient after an attempt."""

    recipient: str
    state: RecipientState  # delivered | deferred | failed | expired
    code: int | None = None
    reply: str = ""
    next_attempt_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    recipient: str
    state: RecipientState
    attempts: int
    last_code: int | None
    last_reply: str
    updated_at: datetime
    next_attempt_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MessageStatus:
    id: str
    message_id: str
    batch_id: str | None
    state: str
    created_at: datetime
    recipients: list[RecipientStatus] = field(default_factory=list)


class Outbox(abc.ABC):
    """Durable queue of envelopes with per-recipient state."""

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
    ) -> EnqueueResult:
        """Store all envelopes in one transaction or none.

        Raises :class:`OutboxFullError` past the pending limit,
        :class:`IdempotencyConflictError` for a reused key with other content,
        :class:`OutboxError` when storage fails (nothing is half-written).
        """

    @abc.abstractmethod
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        """Lease up to ``limit`` due messages (queued, deferred and due, or lease expired)."""

    @abc.abstractmethod
    async def record(self, id: str, owner: str, outcomes: Sequence[RecipientOutcome]) -> None:
        """Record an attempt's outcomes and release the lease (if ``owner`` still holds it)."""

    @abc.abstractmethod
    async def release(self, ids: Sequence[str], owner: str) -> None:
        """Give leased messages back untouched (graceful stop)."""

    @abc.abstractmethod
    async def status(self, id: str) -> MessageStatus:
        """Raise :class:`NotFoundError` for an unknown id."""

    @abc.abstractmethod
    async def batch_status(self, batch_id: str) -> dict[str, int]:
        """Counts of messages per state; raise :class:`NotFoundError` for an unknown batch."""

    @abc.abstractmethod
    async def pending_count(self) -> int:
        """Messages not yet in a final state (for backpressure and readiness)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`OutboxError` unless the store is writable now."""

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
