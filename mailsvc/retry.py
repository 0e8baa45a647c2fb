"""What to do after an attempt: reply code -> delivered / deferred / failed / expired.

Why a module of its own: the schedule is policy (Postfix-like: first retry
after 5 minutes, doubling to a 4,000 s cap, jittered, give up after 5 days), and
the worker should only ask it questions. Every number is configurable; tests
set them to fractions of a second.

A reply is *transient* when it is 4xx, when there was no reply at all (timeout,
dropped connection) or when it was garbage (not a 2xx/4xx/5xx code); only a 5xx
is permanent. A 421 or a connection failure says the relay itself is unwell,
so :class:`RelayBackoff` pauses all claiming instead of hammering it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from .config import ServiceConfig
from .outbox.base import RecipientOutcome
from .outbox.states import RecipientState
from .results import RecipientResult

_SERVICE = ServiceConfig.model_fields

__all__ = ["RelayBackoff", "RetryPolicy", "Verdict", "classify"]

Verdict = Literal["delivered", "transient", "permanent"]


def classify(result: RecipientResult) -> Verdict:
    """One recipient's verdict from its result.

    >>> classify(RecipientResult("a@example.com", "refused", 550, "no such user"))
    'permanent'
    >>> classify(RecipientResult("a@example.com", "failed", None, "connection dropped"))
    'transient'
    """
    if result.ok:
        return "delivered"
    code = result.code
    if result.status == "refused" and code is not None and 500 <= code <= 599:
        return "permanent"
    return "transient"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry schedule.

    >>> RetryPolicy(jitter=0).delay(1), RetryPolicy(jitter=0).delay(5), RetryPolicy(jitter=0).delay(20)
    (300.0, 4000.0, 4000.0)
    """

    # The defaults are the service's (ServiceConfig), written once there.
    first: float = _SERVICE["retry_first"].default
    maximum: float = _SERVICE["retry_max"].default
    lifetime: float = _SERVICE["retry_lifetime"].default
    jitter: float = _SERVICE["retry_jitter"].default  # +/- this fraction of the delay
    relay_first: float = _SERVICE["relay_backoff"].default
    relay_maximum: float = _SERVICE["relay_backoff_max"].default

    @classmethod
    def from_service(cls, service: ServiceConfig) -> RetryPolicy:
        return cls(
            first=service.retry_first,
            maximum=service.retry_max,
            lifetime=service.retry_lifetime,
            jitter=service.retry_jitter,
            relay_first=service.relay_backoff,
            relay_maximum=service.relay_backoff_max,
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), jittered."""
        base = min(self.first * 2.0 ** max(attempt - 1, 0), self.maximum)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return float(base)

    def outcome(
        self, result: RecipientResult, attempt: int, first_queued_at: datetime, now: datetime | None = None
    ) -> RecipientOutcome:
        """The outcome to record for one recipient after attempt number ``attempt``."""
        now = now or datetime.now(UTC)
        verdict = classify(result)
        reply = result.reply or ""
        if verdict == "delivered":
            return RecipientOutcome(result.recipient, RecipientState.DELIVERED, result.code, reply)
        if verdict == "permanent":
            return RecipientOutcome(result.recipient, RecipientState.FAILED, result.code, reply)
        if (now - first_queued_at).total_seconds() >= self.lifetime:
            return RecipientOutcome(
                result.recipient,
                RecipientState.EXPIRED,
                result.code,
                f"gave up after {self.lifetime:g}s; last reply: {reply}",
            )
        retry_at = now + timedelta(seconds=self.delay(attempt))
        return RecipientOutcome(result.recipient, RecipientState.DEFERRED, result.code, reply, retry_at)


@dataclass(slots=True)
class RelayBackoff:
    """Pause towards the relay after a connection failure or 421, doubling while it lasts.

    >>> b = RelayBackoff(RetryPolicy(relay_first=1, relay_maximum=4, jitter=0))
    >>> b.trouble(now=0.0), b.trouble(now=0.0), b.trouble(now=0.0), b.trouble(now=0.0)
    (1.0, 2.0, 4.0, 4.0)
    """

    policy: RetryPolicy
    until: float = 0.0  # time.monotonic() before which nothing is sent
    _strikes: int = field(default=0)

    def trouble(self, now: float | None = None) -> float:
        """Record relay trouble; return the pause in seconds."""
        now = time.monotonic() if now is None else now
        pause = float(min(self.policy.relay_first * 2**self._strikes, self.policy.relay_maximum))
        self._strikes += 1
        self.until = max(self.until, now + pause)
        return pause

    def ok(self) -> None:
        """The relay answered: forget past trouble."""
        self._strikes = 0

    def remaining(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return max(0.0, self.until - now)
