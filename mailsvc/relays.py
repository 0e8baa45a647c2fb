"""The relays a worker group sends through: one pool, backoff, pacer and gate per named relay.

Why per relay: a relay that is down must not stop the others (its own :class:`RelayBackoff`),
a relay's limits are its own (:class:`Pacer`: messages per second as a token bucket, messages per
UTC day as a counter, halved for a while when the relay throttles), and its pool size bounds its
connections (the gate). :mod:`mailsvc.worker` walks a message's route through :meth:`RelaySet.route`
and takes the first relay that is up and has room today.

On SQLite (one sending process) the pacer counts alone; on PostgreSQL the worker checks both
windows against counters in the database shared by every machine (``Outbox.take_relay_quota``),
and the pacer only keeps this process's view for ``/readyz`` and the throttled rate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .mailstate import MailState
from .relayconfig import RelayRate, RelaysConfig, RelaySpec
from .results import RecipientResult
from .retry import RelayBackoff, RetryPolicy
from .transports.factory import TransportFactory

__all__ = ["Pacer", "Relay", "RelaySet", "is_throttle", "next_utc_midnight"]

_UNLIMITED_SLOW_START = 10.0  # messages/s a relay without a rate is slowed to on its first throttling reply


def is_throttle(result: RecipientResult) -> bool:
    """A reply asking to slow down (421 4.7.0, 454, 451 4.7.x), not saying the relay is broken."""
    code, reply = result.code, (result.reply or "").lstrip()
    if code == 454:
        return True
    return code in (421, 451) and reply.startswith("4.7.")


def next_utc_midnight(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)


@dataclass(slots=True)
class Pacer:
    """Messages per second (token bucket, a one-second burst) and per UTC day, for one relay in this process.

    >>> p = Pacer(RelayRate(per_second=2, per_day=3), clock=lambda: 0.0)
    >>> [p.delay() for _ in range(4)], [p.take_day() for _ in range(4)]
    ([0.0, 0.0, 0.5, 1.0], [True, True, True, False])
    """

    rate: RelayRate
    clock: Any = time.monotonic
    slow_for: float = 30.0  # how long a throttling reply halves the rate
    _tokens: float = 0.0
    _at: float | None = None
    _factor: float = 1.0
    _slow_until: float = 0.0
    _slow_rate: float | None = None  # the rate while slowed, for a relay with no per_second of its own
    _day: date | None = None
    used_today: int = 0
    _sent: list[float] = field(default_factory=list)  # recent send times of an unlimited relay (to halve)

    def current_rate(self) -> float | None:
        """Messages per second now (None: unlimited)."""
        if self._slow_until and self.clock() >= self._slow_until:
            self._factor, self._slow_until, self._slow_rate = 1.0, 0.0, None
        if self._slow_rate is not None:
            return self._slow_rate
        if self.rate.per_second is None:
            return None
        return self.rate.per_second * self._factor

    @property
    def slowed_until(self) -> float:
        return self._slow_until

    def delay(self) -> float:
        """Reserve one message's token; the seconds to wait before sending it (0: now)."""
        rate = self.current_rate()
        now = self.clock()
        if rate is None:
            if self.rate.per_second is None:
                self._sent.append(now)
                if len(self._sent) > 256:
                    del self._sent[:128]
            return 0.0
        burst = max(rate, 1.0)
        if self._at is None:
            self._tokens, self._at = burst, now
        self._tokens = min(burst, self._tokens + (now - self._at) * rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / rate

    def throttled(self) -> None:
        """The relay asked us to slow down: halve the rate (again) for ``slow_for`` seconds."""
        now = self.clock()
        if self.rate.per_second is None:
            recent = sum(1 for t in self._sent if t >= now - 1.0)
            base = self._slow_rate if self._slow_rate is not None else max(float(recent), _UNLIMITED_SLOW_START)
            self._slow_rate = max(base / 2, 0.5)
        else:
            self._factor = max(self._factor / 2, 1 / 64)
        self._slow_until = now + self.slow_for
        self._tokens = min(self._tokens, 0.0)

    def take_day(self, n: int = 1, today: date | None = None) -> bool:
        """Count ``n`` messages against today's limit (UTC); False, counting nothing, if they do not fit."""
        today = today or datetime.now(UTC).date()
        if today != self._day:
            self._day, self.used_today = today, 0
        if self.rate.per_day is not None and self.used_today + n > self.rate.per_day:
            return False
        self.used_today += n
        return True

    def count_day(self, n: int = 1, today: date | None = None) -> None:
        """Count messages whose limit a shared counter (PostgreSQL) checked: for ``used_today`` only."""
        today = today or datetime.now(UTC).date()
        if today != self._day:
            self._day, self.used_today = today, 0
        self.used_today += n

    def give_back_day(self, n: int = 1) -> None:
        """Messages counted but not sent (the relay failed before anything was sent)."""
        self.used_today = max(self.used_today - n, 0)


class Relay:
    """One named relay: its pool (:class:`MailState`), backoff, pacer and connection gate."""

    def __init__(self, spec: RelaySpec, policy: RetryPolicy, *, transport: TransportFactory | None = None) -> None:
        self.name = spec.name
        self.spec = spec
        self.mail = MailState(spec.mail, transport=transport)
        self.backoff = RelayBackoff(policy)
        self.pacer = Pacer(spec.rate, slow_for=policy.relay_first)
        self.gate = asyncio.Semaphore(spec.mail.pool_size)

    def describe(self) -> dict[str, Any]:
        """Its state for ``GET /readyz`` and ``mailsvc status``: up or down until when, pace, used today."""
        down = self.backoff.remaining()
        rate = self.pacer.current_rate()
        slowed = self.pacer.slowed_until - time.monotonic()
        return {
            "state": "down" if down > 0 else "up",
            "down_until": _wall(down) if down > 0 else None,
            "rate_per_second": rate,
            "slowed_until": _wall(slowed) if slowed > 0 else None,
            "used_today": self.pacer.used_today,
            "per_day": self.spec.rate.per_day,
            "max_recipients": self.spec.rate.max_recipients,
            "pool_size": self.spec.mail.pool_size,
        }


def _wall(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat(timespec="seconds")


class RelaySet:
    """Every relay of a relays file, by name, and the routes; shared by the workers of a group."""

    def __init__(self, config: RelaysConfig, policy: RetryPolicy, *, transport: TransportFactory | None = None) -> None:
        self.config = config
        self.relays = {name: Relay(spec, policy, transport=transport) for name, spec in config.relays.items()}

    def route(self, key: str | None) -> list[Relay]:
        return [self.relays[n] for n in self.config.route(key)]

    def remaining(self) -> float:
        """Seconds until some relay is up again (0: one is): claiming pauses only when all are down."""
        return min(r.backoff.remaining() for r in self.relays.values())

    @property
    def pool_size(self) -> int:
        return sum(r.spec.mail.pool_size for r in self.relays.values())

    def describe(self) -> dict[str, dict[str, Any]]:
        return {name: r.describe() for name, r in self.relays.items()}

    async def aclose(self) -> None:
        for r in self.relays.values():
            await r.mail.aclose()
