"""Per-key token buckets: ``rate`` requests per second with bursts up to ``burst``.

Why our own ~40 lines instead of quart-rate-limiter: we need the limit keyed by
the authenticated key id (known only after auth), the answer as a problem+json
with ``Retry-After``, and limits from settings; a bucket per key does all three.
State is per process (with several hypercorn workers each enforces its own share).

>>> rl = RateLimiter(rate=1.0, burst=2, now=lambda: 0.0)
>>> rl.take("k"), rl.take("k"), rl.take("k")
(None, None, 1.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateLimiter"]

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

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled (they behave exactly like new ones)."""
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
