"""Prometheus metrics for one app or one ``mailsvc worker`` process, on a registry of its own.

Why a registry per :class:`Metrics` (not prometheus_client's global one): two apps in one
process (tests, an embedding app) would otherwise count into each other, and a second
registration of a name raises.

Two kinds of numbers, and why:

* **Counters and histograms** count what *this process* did (messages it accepted, the
  outcomes it recorded, how long its enqueues and SMTP sends took). Prometheus sums them
  over the processes it scrapes (the app and every ``mailsvc worker``).
* **Queue gauges** (messages per state, the wait of the longest-due message) are read from
  the outbox at scrape time, so every node reports the same, correct figure however many
  workers share the database. The read is bounded: only messages not yet final are counted
  (at most ``MAILSVC_MAX_PENDING``), and the oldest due time is one probe of the due index.

Outcomes are labelled by the state string the worker recorded, never by a fixed list: a new
final state (``bounced``, ``complained``) is counted as ``mailsvc_recipients_total{outcome="bounced"}``
without a change here. Later gauges read at scrape time (the webhook backlog) register an async
source with :meth:`Metrics.add_source`.

    >>> m = Metrics()
    >>> m.accepted.inc(3)
    >>> b"mailsvc_messages_accepted_total 3.0" in m.render_cached()
    True
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import OutboxError
from .outbox.base import QueueStats, RecipientOutcome
from .outbox.states import PENDING

if TYPE_CHECKING:
    from .outbox import Outbox
    from .retry import RelayBackoff

__all__ = ["CONTENT_TYPE", "Metrics", "Source", "reply_class"]

log = logging.getLogger("mailsvc.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: An async callable run at each scrape, returning metric families (e.g. the webhook backlog, read from the outbox).
Source = Callable[[], Awaitable[Iterable[Metric]]]

# Enqueue: a commit (fsync) to a bulk batch of thousands. SMTP send: a loopback relay to a slow remote.
_ENQUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def reply_class(code: int | None) -> str:
    """``2xx``/``4xx``/``5xx`` for an SMTP reply code; ``none`` when there was no reply (a dropped connection).

    >>> reply_class(250), reply_class(550), reply_class(None), reply_class(999)
    ('2xx', '5xx', 'none', 'other')
    """
    if code is None:
        return "none"
    return f"{code // 100}xx" if 200 <= code < 600 else "other"


class Metrics:
    """The metrics of one app or worker process; :meth:`render` is what ``GET /metrics`` answers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.accepted = Counter(
            "mailsvc_messages_accepted", "Messages committed to the outbox by this process", registry=r
        )
        self.recipients = Counter(
            "mailsvc_recipients",
            "Recipient outcomes recorded by this process: outcome is the recorded state, reply_class the SMTP reply's",
            ["outcome", "reply_class"],
            registry=r,
        )
        self.enqueue_seconds = Histogram(
            "mailsvc_enqueue_seconds",
            "Time to commit one request's messages to the outbox",
            buckets=_ENQUEUE_BUCKETS,
            registry=r,
        )
        self.smtp_send_seconds = Histogram(
            "mailsvc_smtp_send_seconds",
            "Time of one SMTP transaction (one message, all its recipients)",
            buckets=_SEND_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, int | None], Counter] = {}  # (state, code) -> its labelled counter
        self._live = _Live()
        r.register(self._live)
        self._sources: list[Source] = []

    # -- what the app and the workers count ---------------------------------------------------
    def count_outcomes(self, outcomes: Iterable[RecipientOutcome]) -> None:
        """Recorded outcomes (after their commit), each by its state string and reply class."""
        children = self._children
        for o in outcomes:
            key = (o.state, o.code)
            child = children.get(key)
            if child is None:  # labels() costs a few microseconds; a recipient should not pay it each time
                child = children[key] = self.recipients.labels(str(o.state), reply_class(o.code))
            child.inc()

    def count_suppressed(self, n: int) -> None:
        """Recipients an enqueue stored ``suppressed`` (they are never sent, so no worker records them)."""
        if n:
            self.recipients.labels("suppressed", "none").inc(n)

    def watch(
        self, outbox: Outbox | None = None, workers: Sequence[_Busy] = (), backoff: RelayBackoff | None = None
    ) -> None:
        """What the scrape reads live: the outbox's queue, the workers' messages in hand, the relay's pause."""
        if outbox is not None:
            self._live.outbox = outbox
        if workers:
            self._live.workers = workers
        if backoff is not None:
            self._live.backoff = backoff

    def unwatch(self) -> None:
        self._live.outbox, self._live.workers, self._live.backoff = None, (), None

    def add_source(self, source: Source) -> None:
        """Hook: gauges read at scrape time by a later part (the webhook backlog: ``mailsvc_webhook_backlog``)."""
        self._sources.append(source)

    # -- the scrape ------------------------------------------------------------------------------
    async def render(self) -> bytes:
        """Read the queue (and every source) from the outbox now, then the text exposition format."""
        self._live.queue, self._live.queue_ok = None, True
        if self._live.outbox is not None:
            try:
                self._live.queue = await self._live.outbox.queue_stats()
            except OutboxError as exc:
                log.warning("metrics: cannot read the queue: %s", exc)
                self._live.queue_ok = False
        extra: list[Metric] = []
        for source in self._sources:
            extra.extend(await source())
        self._live.extra = extra
        return self.render_cached()

    def render_cached(self) -> bytes:
        """The exposition of what was last read (no outbox read): the doctest's and a sync caller's."""
        return generate_latest(self.registry)


class _Busy(Protocol):
    """What :meth:`Metrics.watch` needs of a worker (``mailsvc.worker.Worker`` has it)."""

    @property
    def in_flight(self) -> int: ...


class _Live(Collector):
    """Gauges computed at collect time from what the last :meth:`Metrics.render` read."""

    def __init__(self) -> None:
        self.outbox: Outbox | None = None
        self.workers: Sequence[_Busy] = ()
        self.backoff: RelayBackoff | None = None
        self.queue: QueueStats | None = None
        self.queue_ok = True
        self.extra: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        if self.outbox is not None:
            up = GaugeMetricFamily("mailsvc_outbox_up", "1 when the last scrape could read the outbox's queue")
            up.add_metric([], 1.0 if self.queue_ok else 0.0)
            yield up
        if self.queue is not None:
            depth = GaugeMetricFamily(
                "mailsvc_outbox_messages", "Messages not yet final, per state (read from the outbox)", labels=["state"]
            )
            states = sorted({str(s) for s in PENDING} | set(self.queue.by_state))
            for state in states:
                depth.add_metric([state], float(self.queue.by_state.get(state, 0)))
            yield depth
            wait = GaugeMetricFamily(
                "mailsvc_outbox_oldest_due_seconds",
                "How long the message due longest has waited for a worker (0: none overdue)",
            )
            wait.add_metric([], self.queue.oldest_due_seconds)
            yield wait
        if self.workers:
            inflight = GaugeMetricFamily(
                "mailsvc_worker_inflight", "Messages this process's workers hold (claimed, not recorded)"
            )
            inflight.add_metric([], float(sum(w.in_flight for w in self.workers)))
            yield inflight
        if self.backoff is not None:
            pause = self.backoff.remaining()
            relay = GaugeMetricFamily(
                "mailsvc_relay_up", "0 while sending pauses after relay trouble (backoff), else 1"
            )
            relay.add_metric([], 0.0 if pause > 0 else 1.0)
            yield relay
            left = GaugeMetricFamily("mailsvc_relay_backoff_seconds", "Seconds left of the relay backoff (0: sending)")
            left.add_metric([], pause)
            yield left
        yield from self.extra
