"""The outbox's state vocabulary, declared once: every SQL statement and every caller uses these.

A recipient moves ``queued`` -> ``sending`` (while a worker holds the lease) -> ``delivered`` |
``deferred`` (retried at ``next_attempt_at``) | ``failed`` (a 5xx) | ``expired`` (retry lifetime
exceeded). A recipient on its tenant's suppression list when the message is queued starts (and
ends) ``suppressed``: it is never sent to. A message's state is derived from its recipients'
(:func:`derive_state`): it is never ``expired`` itself (a message whose recipients all expired is
``failed``), ``partial`` when its recipients ended some delivered, some not, and ``suppressed``
only when every recipient was (a suppressed recipient beside others does not count either way).

After delivery, an asynchronous report may change a ``delivered`` recipient (:mod:`mailsvc.bounces`):
``bounced`` (a DSN or bounce said the mailbox never got it) or ``complained`` (an ARF report: the
reader marked it as spam; ``bounced`` may become ``complained`` too, never the reverse). For the
message, ``bounced`` counts as ``failed`` (a message whose only recipient bounced is ``failed``, one
whose other recipients were delivered is ``partial``) and ``complained`` as ``delivered`` (the mail
did arrive). Both are final: a worker never touches them.

A message queued with a ``send_at`` in the future starts ``scheduled`` (it and its recipients): it is
not due before that time, and then moves on as ``queued`` does. ``cancelled`` is final: a recipient
not yet handed to a relay (queued, scheduled or deferred) when its message or batch is cancelled;
a message is ``cancelled`` when every recipient that was not suppressed was, and otherwise counts
a cancelled recipient as not delivered (``partial`` beside a delivered one, else ``failed``).

Why :class:`~enum.StrEnum`: members are plain strings, so rows read from either database compare
equal to them, JSON and f-strings print their value, and SQL is formatted from them with
:func:`sql_list`.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = [
    "CANCELLABLE",
    "FINAL",
    "FINAL_MESSAGE",
    "OUTCOMES",
    "PENDING",
    "REPORTED",
    "MessageState",
    "RecipientState",
    "derive_state",
    "sql_list",
]


class RecipientState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    BOUNCED = "bounced"  # delivered to the relay, then reported undeliverable (DSN, bounce): mailsvc.bounces
    COMPLAINED = "complained"  # delivered, then reported as spam by its reader (ARF): mailsvc.bounces
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"


class MessageState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"
    PARTIAL = "partial"
    SUPPRESSED = "suppressed"
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"


#: A recipient in one of these is never tried again, and its state is never overwritten.
FINAL: frozenset[RecipientState] = frozenset(
    {
        RecipientState.DELIVERED,
        RecipientState.FAILED,
        RecipientState.EXPIRED,
        RecipientState.SUPPRESSED,
        RecipientState.BOUNCED,
        RecipientState.COMPLAINED,
        RecipientState.CANCELLED,
    }
)
#: A recipient in one of these is still owed an attempt.
PENDING: frozenset[RecipientState] = frozenset(RecipientState) - FINAL
#: What a worker may record after an attempt (``suppressed`` is set at enqueue, ``cancelled`` by a cancel,
#: never by a worker; ``bounced`` and ``complained`` by a report that arrives after delivery).
OUTCOMES: frozenset[RecipientState] = (
    FINAL - {RecipientState.SUPPRESSED, RecipientState.CANCELLED, RecipientState.BOUNCED, RecipientState.COMPLAINED}
) | {RecipientState.DEFERRED}
#: What a report received after delivery may set, and over which states (:meth:`Outbox.record_report`).
REPORTED: dict[RecipientState, frozenset[RecipientState]] = {
    RecipientState.BOUNCED: frozenset({RecipientState.DELIVERED}),
    RecipientState.COMPLAINED: frozenset({RecipientState.DELIVERED, RecipientState.BOUNCED}),
}
#: What a cancel stops: recipients owed an attempt that no worker holds (``sending`` ones finish).
CANCELLABLE: frozenset[RecipientState] = frozenset(
    {RecipientState.QUEUED, RecipientState.SCHEDULED, RecipientState.DEFERRED}
)
#: A message in one of these is done: no worker will touch it again.
FINAL_MESSAGE: frozenset[MessageState] = frozenset(
    {
        MessageState.DELIVERED,
        MessageState.FAILED,
        MessageState.PARTIAL,
        MessageState.SUPPRESSED,
        MessageState.CANCELLED,
    }
)


def derive_state(states: Iterable[str]) -> MessageState:
    """A message's state from its recipients' states (PostgreSQL's ``_SETTLE`` is this rule in SQL).

    >>> derive_state(["delivered", "deferred"])
    <MessageState.DEFERRED: 'deferred'>
    >>> derive_state(["delivered", "expired"])
    <MessageState.PARTIAL: 'partial'>
    >>> derive_state(["suppressed", "delivered"]), derive_state(["suppressed"])
    (<MessageState.DELIVERED: 'delivered'>, <MessageState.SUPPRESSED: 'suppressed'>)
    >>> derive_state(["bounced"]), derive_state(["bounced", "delivered"]), derive_state(["complained"])
    (<MessageState.FAILED: 'failed'>, <MessageState.PARTIAL: 'partial'>, <MessageState.DELIVERED: 'delivered'>)
    >>> derive_state(["cancelled", "suppressed"]), derive_state(["delivered", "cancelled"])
    (<MessageState.CANCELLED: 'cancelled'>, <MessageState.PARTIAL: 'partial'>)
    """
    # A complaint means the mail arrived; a bounce that it did not (counted as a failure below).
    seen = {RecipientState.DELIVERED if s == RecipientState.COMPLAINED else s for s in states}
    if seen == {RecipientState.SUPPRESSED}:
        return MessageState.SUPPRESSED
    seen.discard(RecipientState.SUPPRESSED)
    if seen == {RecipientState.CANCELLED}:
        return MessageState.CANCELLED
    if not seen or seen <= FINAL:
        if seen == {RecipientState.DELIVERED}:
            return MessageState.DELIVERED
        return MessageState.PARTIAL if RecipientState.DELIVERED in seen else MessageState.FAILED
    if RecipientState.SENDING in seen:
        return MessageState.SENDING
    if RecipientState.DEFERRED in seen:
        return MessageState.DEFERRED
    if RecipientState.SCHEDULED in seen:
        return MessageState.SCHEDULED
    return MessageState.QUEUED


def sql_list(states: Iterable[str]) -> str:
    """``('a', 'b')`` for ``state IN ...``, in a stable order.

    >>> sql_list(FINAL)
    "('bounced', 'cancelled', 'complained', 'delivered', 'expired', 'failed', 'suppressed')"
    """
    values = sorted(str(s) for s in states)
    if not values or not all(v.isalpha() and v.islower() for v in values):
        raise ValueError(f"not a list of states: {values!r}")
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"
