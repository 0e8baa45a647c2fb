"""Webhook delivery: the outbox's events POSTed to the operator's endpoints, signed per Standard Webhooks.

Why from the database and not from memory: an event is already durable (it commits with its state change),
so the dispatcher only moves each endpoint's cursor and works off delivery rows. A restart, a crash or a
second node loses nothing and sends nothing twice on purpose (at least once: a POST answered but not yet
recorded is sent again, with the same ``webhook-id``, which receivers use to drop duplicates).

Why it cannot slow mail down: it runs as its own task with its own short transactions, claims at most
``concurrency`` requests' worth of deliveries at a time (bounded memory whatever the backlog), never reads a
response body, and gives every POST ``webhook_timeout`` seconds. A dead endpoint only grows its own
backlog, each delivery retried with backoff (5 s doubling to an hour) until ``webhook_give_up``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.metrics_core import Metric

from .config import ServiceConfig
from .outbox import Outbox
from .outbox.events import DeliveryJob, DeliveryOutcome, EventLog
from .webhookconfig import WebhookEndpoint

__all__ = ["WebhookDispatcher", "backlog_source", "payload", "sign"]

log = logging.getLogger("mailsvc.webhooks")

_FANOUT = 500  # events passed per endpoint per round
_MAX_PAUSE = 60.0  # seconds between probes of an endpoint that keeps failing


def backoff(attempts: int, first: float = 5.0) -> float:
    """Seconds before the next try after ``attempts`` failed ones: ``first`` doubling to an hour, ±20 %."""
    return float(min(first * 2 ** max(attempts - 1, 0), 3600.0) * random.uniform(0.8, 1.2))


def payload(jobs: Sequence[DeliveryJob], batched: bool) -> tuple[str, str]:
    """``(webhook-id, body)``: one event as an object, or (``batch`` > 1) a batch as an array of them."""
    items = [
        {"type": f"message.{j.event.type}", "timestamp": j.event.at.isoformat(), "data": j.event.as_json()}
        for j in jobs
    ]
    if not batched:
        return f"evt_{jobs[0].endpoint}_{jobs[0].event.cursor}", json.dumps(items[0], separators=(",", ":"))
    first, last = jobs[0].event.cursor, jobs[-1].event.cursor
    ident = f"batch_{jobs[0].endpoint}_{first}_{last}_{len(jobs)}"
    body = {"type": "batch", "timestamp": datetime.now(UTC).isoformat(), "data": items}
    return ident, json.dumps(body, separators=(",", ":"))


def sign(endpoint: WebhookEndpoint, ident: str, body: str, when: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` (the ``standardwebhooks`` package signs)."""
    from standardwebhooks.webhooks import Webhook

    signature = Webhook(endpoint.secret.get_secret_value()).sign(ident, when, body)
    return {
        "webhook-id": ident,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "mailsvc-webhooks",
    }


def backlog_source(events: EventLog) -> Callable[[], Awaitable[list[Metric]]]:
    """A /metrics source: ``mailsvc_webhook_backlog``, deliveries not yet final, read from the outbox."""
    from prometheus_client.core import GaugeMetricFamily

    async def read() -> list[Metric]:
        backlog = await events.backlog()
        return [GaugeMetricFamily("mailsvc_webhook_backlog", "Webhook deliveries not yet final", value=backlog)]

    return read


class WebhookDispatcher:
    """Fans events out to deliveries and POSTs them; one per process that serves or works (any number)."""

    def __init__(self, outbox: Outbox, service: ServiceConfig, *, poll_interval: float | None = None) -> None:
        if outbox.events is None:
            raise ValueError("this outbox keeps no events")
        self.log: EventLog = outbox.events
        self.endpoints = {e.name: e for e in service.webhooks}
        self.give_up = service.webhook_give_up
        self.timeout = service.webhook_timeout
        # How long a claimed delivery is held before another node (or this one, restarted) may take it:
        # a few POSTs' worth. Longer only delays what a killed process had in hand (it was 120 s).
        self.lease = 3 * self.timeout + 5.0
        self.concurrency = service.webhook_concurrency
        self.retry_first = service.webhook_retry_first
        self.poll_interval = poll_interval if poll_interval is not None else max(service.poll_interval, 0.05)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.posts = 0  # requests sent (for tests and metrics)
        self._paused: dict[str, tuple[float, int]] = {}  # endpoint -> (paused until, loop time; failures in a row)

    async def start(self) -> None:
        """Start the loop once every endpoint has a cursor: an endpoint hears everything from this start on."""
        for endpoint in self.endpoints.values():
            await self.log.fanout(endpoint.name, endpoint.events, 0)
        self._task = asyncio.create_task(self.run(), name="mailsvc-webhooks")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def run(self) -> None:
        import httpx2

        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx2.AsyncClient(timeout=self.timeout, limits=limits, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    busy = await self.round(client)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the database away for a moment: try again, never die
                    log.exception("webhook round failed; retrying")
                    busy = False
                if not busy:
                    try:
                        await asyncio.wait_for(self._stop.wait(), self.poll_interval)
                    except TimeoutError:
                        pass

    def _active(self) -> list[WebhookEndpoint]:
        """Endpoints not paused: one that just failed is left alone (no fan-out, no POST) until its pause ends.

        Why: a dead endpoint would otherwise cost a claim, a refused POST and a record for every new event,
        write transactions that compete with mail delivery for the outbox. Paused, it costs one probe per
        pause (doubling from ``webhook_retry_first`` to a minute); its events wait, durable, in the log.
        """
        now = asyncio.get_running_loop().time()
        return [e for e in self.endpoints.values() if self._paused.get(e.name, (0.0, 0))[0] <= now]

    def _failed(self, name: str) -> None:
        _, failures = self._paused.get(name, (0.0, 0))
        pause = min(self.retry_first * 2**failures, _MAX_PAUSE) * random.uniform(0.8, 1.2)
        self._paused[name] = (asyncio.get_running_loop().time() + pause, failures + 1)

    async def round(self, client: Any) -> bool:
        """One pass: fan out new events, send what is due; True when there may be more to do at once."""
        active = self._active()
        if not active:
            return False
        passed = 0
        for endpoint in active:
            passed += await self.log.fanout(endpoint.name, endpoint.events, _FANOUT)
        healthy = [e for e in active if e.name not in self._paused]
        jobs: list[DeliveryJob] = []
        if healthy:
            per_request = max(e.batch for e in healthy)
            jobs += await self.log.claim([e.name for e in healthy], self.concurrency * per_request, self.lease)
        for probing in (e for e in active if e.name in self._paused):  # failed before: one request to see
            jobs += await self.log.claim([probing.name], probing.batch, self.lease)
        if jobs:
            await self._send_all(client, jobs)
        return passed >= _FANOUT or bool(jobs)

    async def _send_all(self, client: Any, jobs: list[DeliveryJob]) -> None:
        by_endpoint: dict[str, list[DeliveryJob]] = defaultdict(list)
        for job in jobs:
            by_endpoint[job.endpoint].append(job)
        requests: list[tuple[WebhookEndpoint, list[DeliveryJob]]] = []
        for name, group in by_endpoint.items():
            endpoint = self.endpoints[name]
            for i in range(0, len(group), endpoint.batch):
                requests.append((endpoint, group[i : i + endpoint.batch]))
        results = await asyncio.gather(*(self._post(client, ep, chunk) for ep, chunk in requests))
        await self.log.record([o for outcomes in results for o in outcomes])

    async def _post(self, client: Any, endpoint: WebhookEndpoint, jobs: list[DeliveryJob]) -> list[DeliveryOutcome]:
        now = datetime.now(UTC)
        ident, body = payload(jobs, endpoint.batch > 1)
        headers = sign(endpoint, ident, body, now)
        error = ""
        try:
            async with client.stream("POST", endpoint.url, content=body.encode(), headers=headers) as response:
                status = response.status_code  # the body is never read: a hostile endpoint cannot fill memory
            self.posts += 1
            if 200 <= status < 300:
                self._paused.pop(endpoint.name, None)
                return [DeliveryOutcome(j.id, "delivered", "", None) for j in jobs]
            error = f"HTTP {status}"
        except Exception as exc:  # timeouts, refused connections, TLS errors: all a reason to retry
            error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
        self._failed(endpoint.name)
        log.warning("webhook %s: %s (%d event(s)); will retry", endpoint.name, error, len(jobs))
        outcomes = []
        for j in jobs:
            if (now - j.created_at).total_seconds() >= self.give_up:
                outcomes.append(DeliveryOutcome(j.id, "failed", error, None))
            else:
                outcomes.append(
                    DeliveryOutcome(
                        j.id, "failing", error, now + timedelta(seconds=backoff(j.attempts + 1, self.retry_first))
                    )
                )
        return outcomes
