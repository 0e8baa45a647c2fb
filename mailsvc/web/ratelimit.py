"""Token buckets: ``rate`` requests per second with bursts up to ``burst``, per tenant or per address.

Why our own ~40 lines instead of quart-rate-limiter: we need the limit keyed by
the authenticated tenant (known only after auth), the answer as a problem+json
with ``Retry-After``, and limits from settings; a bucket per tenant does all three.
:class:`FailureLimiter` spends the same buckets on failed keys and sign-ins, per
client address, so guessing keys costs an attacker a minute per handful of tries.
State is per process (with several hypercorn workers each enforces its own share).

>>> rl = RateLimiter(rate=1.0, burst=2, now=lambda: 0.0)
>>> rl.take("k"), rl.take("k"), rl.take("k")
(None, None, 1.0)
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable

__all__ = ["FailureLimiter", "RateLimiter", "client_address"]

log = logging.getLogger("mailsvc.web")

_MAX_KEYS = 10_000


class RateLimiter:
    def __init__(self, rate: float, burst: int, now: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._now = now
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float | None:
        """Spend one token; None if allowed, else seconds until one is available."""
        if self.rate <= 0:
            return None
        now = self._now()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= _MAX_KEYS and key not in self._buckets:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return None

    def wait(self, key: str) -> float | None:
        """Like :meth:`take` without spending: None if a token is there, else seconds until one is."""
        if self.rate <= 0 or key not in self._buckets:
            return None
        tokens, at = self._buckets[key]
        tokens = min(self.burst, tokens + (self._now() - at) * self.rate)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled (they behave exactly like new ones)."""
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]


def client_address(remote_addr: str | None) -> str:
    """The bucket of a client address: the address, or its /64 for IPv6 (one host usually holds a whole /64).

    >>> client_address("2001:db8::1"), client_address("192.0.2.7"), client_address(None)
    ('2001:db8::/64', '192.0.2.7', '-')
    """
    if not remote_addr:
        return "-"
    return _bucket(remote_addr) if len(remote_addr) <= 64 else _bucket.__wrapped__(remote_addr)  # an address fits


@functools.lru_cache(maxsize=4096)
def _bucket(remote_addr: str) -> str:
    """Cached: parsing an address is the costliest step of authenticating a request (the same clients return)."""
    try:
        ip = ipaddress.ip_address(remote_addr)
    except ValueError:
        return remote_addr[:100]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailureLimiter:
    """Failed API keys and sign-ins per client address: ``per_minute`` at once, refilled over a minute.

    Once an address has spent them, every key and sign-in from it is refused (429) until
    one refills, even a valid one: otherwise a guesser would still learn which guess was right.

    >>> f = FailureLimiter(2, now=lambda: 0.0)
    >>> f.failed("192.0.2.7"), f.blocked("192.0.2.7"), f.failed("192.0.2.7"), f.blocked("192.0.2.7")
    (None, None, None, 30.0)
    """

    def __init__(self, per_minute: int, now: Callable[[], float] = time.monotonic) -> None:
        self._buckets = RateLimiter(per_minute / 60.0, per_minute, now)

    def blocked(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None."""
        return self._buckets.wait(address)

    def failed(self, address: str) -> None:
        """Count a failure; the one that spends the last try is logged (the address, never what was tried)."""
        self._buckets.take(address)
        wait = self._buckets.wait(address)
        if wait is not None:
            log.warning("too many failed API keys or sign-ins from %s: refusing it for %.0fs", address, wait)
