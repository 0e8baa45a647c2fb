"""Delivery workers: claim due messages from the outbox, send them, record each recipient.

Why this shape: a worker keeps up to ``concurrency`` messages in flight over the
core library's connection pool (bulk mail keeps ``send_many``'s concurrency), and
records outcomes in groups (one fsync for many messages). A message holds its
slot from the moment it may reach the wire until its outcome is committed, so a
crash re-sends at most ``concurrency`` messages; the worker claims up to half a
claim batch more ahead (leased, not sent), so that sending does not stop while
the next claim commits. It never trusts its own
memory for safety: every claimed message carries a lease, so a worker killed at
any instant leaves messages that come due again when the lease expires. While
it holds messages (queued for a connection, or on a slow wire) it renews their
leases every third of ``lease_seconds``, so a live worker's send is never taken
and repeated by another one.

Graceful stop (:meth:`Worker.stop`, SIGTERM/SIGINT in ``mailsvc worker``): stop
claiming, let messages already on the wire finish (each under ``MAIL_TIMEOUT``),
give the not-yet-started ones back with :meth:`Outbox.release`, flush the records.

    >>> group = WorkerGroup.from_service(outbox, mail_config, service)  # doctest: +SKIP
    >>> await group.start(); ...; await group.stop()                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .config import MailConfig, ServiceConfig
from .errors import DeliveryError, NotFoundError, OutboxError
from .mailstate import MailState
from .message import Envelope
from .metrics import Metrics
from .outbox.base import ClaimedMessage, Outbox, RecipientOutcome
from .outbox.states import RecipientState
from .relayconfig import load_relays
from .relays import Relay, RelaySet, is_throttle, next_utc_midnight
from .results import RecipientResult, SendResult
from .retry import RelayBackoff, RetryPolicy
from .tracing import link_to, tracer
from .transports.factory import TransportFactory
from .transports.feed import Gone, SendFeed
from .verp import ReturnPath

__all__ = ["Worker", "WorkerGroup", "WorkerStats", "default_owner"]

log = logging.getLogger("mailsvc.worker")
_SERVICE = ServiceConfig.model_fields  # the defaults, written once there

_LOG_GROUP = 50  # messages per delivery log line: short enough for any log shipper's line limit


def default_owner() -> str:
    """A lease owner unique to this worker: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class WorkerStats:
    claimed: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    expired: int = 0
    released: int = 0
    renewed: int = 0  # lease renewals of messages still in hand (slow sends, queues for a connection)


class Worker:
    """One claim loop. Several may share a :class:`MailState` (pool) and a :class:`RelayBackoff`."""

    def __init__(
        self,
        outbox: Outbox,
        mail: MailState,
        policy: RetryPolicy | None = None,
        *,
        backoff: RelayBackoff | None = None,
        gate: asyncio.Semaphore | None = None,
        owner: str | None = None,
        claim_batch: int = _SERVICE["claim_batch"].default,
        concurrency: int = _SERVICE["worker_concurrency"].default,
        lease_seconds: float = _SERVICE["lease_seconds"].default,
        poll_interval: float = _SERVICE["poll_interval"].default,
        return_path: ReturnPath | None = None,
        metrics: Metrics | None = None,
        relays: RelaySet | None = None,
    ) -> None:
        self.outbox = outbox
        # Several relays (MAILSVC_RELAYS_FILE): each message walks its route (:meth:`_send_routed`);
        # None: the one relay of ``mail`` and ``backoff``, today's path unchanged.
        self.relays = relays
        # PostgreSQL counts relays' windows in the database for every machine (Outbox.take_relay_quota).
        self._shared_quota = relays is not None and type(outbox).take_relay_quota is not Outbox.take_relay_quota
        self.return_path = return_path  # VERP (MAILSVC_BOUNCE_DOMAIN): one transaction per recipient
        self.metrics = metrics  # None: nothing counted (a None check per message is all it costs)
        self.mail = mail
        self.policy = policy or RetryPolicy()
        self.backoff = backoff or RelayBackoff(self.policy)
        # Claiming pauses while this is > 0: the one relay's backoff, or every relay of the set down.
        self._paused = self.backoff.remaining if relays is None else relays.remaining
        # Slots for sends, as many as the pool has connections: a message takes one, then checks the
        # relay is not paused, and only then may open a connection (so a pause stops the queue behind).
        self._gate = gate
        self.owner = owner or default_owner()
        self.claim_batch = claim_batch
        self.concurrency = concurrency
        self._ahead = min(claim_batch, concurrency) // 2  # claimed ahead of a free slot (see run)
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.stats = WorkerStats()
        self._stopping: asyncio.Event | None = None
        self._records: list[tuple[str, list[RecipientOutcome]]] = []
        self._to_log: list[tuple[str, list[RecipientOutcome]]] = []  # outcomes not yet in the log
        self._records_ready: asyncio.Event | None = None
        self._inflight: dict[asyncio.Task[None], str] = {}
        # Slots for messages that may be on the wire or are sent and not yet recorded: what a crash re-sends.
        self._slots: asyncio.Semaphore | None = None
        self._on_wire: set[str] = set()
        self._to_release: list[str] = []
        # Outcomes appended to _records, by message id: resolved once committed (or dropped), see _deliver.
        self._recorded: dict[str, asyncio.Future[None]] = {}
        # Messages this worker holds a lease on (claimed, not yet recorded or released) -> loop time
        # the lease was last granted; renewed every lease_seconds / 3 while they are in hand.
        self._leased: dict[str, float] = {}
        # One relay, no VERP, no tracing: messages go through a feed, back to back on the pool's connections
        # (made in run(), in its loop). Otherwise each is sent on its own (_send, _send_routed).
        self._feed: SendFeed[ClaimedMessage] | None = None
        self._taken_at: dict[str, float] = {}  # when a connection took it: the SMTP send timing starts there

    def stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler); :meth:`run` then winds down."""
        if self._stopping is not None:
            self._stopping.set()

    @property
    def busy(self) -> bool:
        """Messages claimed and not yet recorded or given back."""
        return bool(self._inflight or self._records or self._to_release)

    @property
    def in_flight(self) -> int:
        """Messages this worker holds a lease on: claimed, not yet recorded or given back (a metrics gauge)."""
        return len(self._leased)

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    # -- the loop --------------------------------------------------------------
    async def run(self) -> None:
        """Claim, send and record until :meth:`stop`; returns after a graceful wind-down."""
        if self._stopping is None:
            self._stopping = asyncio.Event()
        self._records_ready = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.mail.config.pool_size if self.relays is None else self.relays.pool_size)
        if self.relays is None and self.return_path is None and not self.mail.config.suppress_send:
            self._feed = SendFeed(lambda: self.mail.pool, self.mail.config.pool_size, self._admit, self._trouble)
        flusher = asyncio.create_task(self._flush_loop())
        renewer = asyncio.create_task(self._renew_loop())
        try:
            while not self.stopping:
                pause = self._paused()
                if pause > 0:
                    await self._sleep_until_stop(asyncio.sleep(pause))
                    continue
                # Claim in batches (each claim is a commit); wait while only a few slots are free.
                want = self._claim_room()
                if want == 0:
                    if self._inflight:
                        await self._sleep_until_stop(
                            asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                        )
                    continue
                try:
                    if tracer() is None:
                        claimed = await self.outbox.claim(self.owner, want, self.lease_seconds)
                    else:
                        claimed = await self._traced_claim(want)
                except OutboxError as exc:
                    log.error("claim failed, retrying in %ss: %s", self.poll_interval, exc)
                    await self._sleep_until_stop(asyncio.sleep(self.poll_interval))
                    continue
                self._start(claimed)
                if len(claimed) < want:
                    await self._sleep_until_stop(self.outbox.wait_for_work(self.poll_interval))
        finally:
            await self._wind_down()
            if self._feed is not None:
                await self._feed.close()
            self._records_ready.set()
            try:
                await flusher
            finally:
                self._log_outcomes()  # what a flusher that died (a bug) left unlogged
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    def _claim_room(self) -> int:
        """How many to claim now (0: not worth a commit yet, or paused, or stopping).

        In hand: ``concurrency`` slots plus half a claim ahead, waiting for a slot (leased, never
        sent). Not more: a message in hand is leased, and a cancel no longer stops it.
        """
        if self.stopping or self._paused() > 0:
            return 0
        free = self.concurrency + self._ahead - len(self._inflight)
        return min(free, self.claim_batch) if free >= max(1, self._ahead) else 0

    def _start(self, claimed: list[ClaimedMessage]) -> None:
        self.stats.claimed += len(claimed)
        claimed_at = asyncio.get_running_loop().time()
        for msg in claimed:
            self._leased[msg.id] = claimed_at
            task = asyncio.create_task(self._deliver(msg))
            self._inflight[task] = msg.id
            task.add_done_callback(self._inflight.pop)

    async def _sleep_until_stop(self, aw: Coroutine[Any, Any, Any]) -> None:
        assert self._stopping is not None
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (waiter, stopper):
                if not t.done():
                    t.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)

    async def _wind_down(self) -> None:
        """Cancel what has not reached the wire and wait for what has; the flusher releases the rest."""
        for task, id_ in list(self._inflight.items()):
            if id_ not in self._on_wire:
                task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    # -- one message -------------------------------------------------------------
    def _give_back(self, id_: str) -> None:
        self._to_release.append(id_)
        assert self._records_ready is not None
        self._records_ready.set()

    async def _deliver(self, msg: ClaimedMessage) -> None:
        assert self._slots is not None
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:  # stopping while it waited for a slot: never sent, give it back
            self._give_back(msg.id)
            raise
        try:
            await self._deliver_in_slot(msg)
        finally:
            self._slots.release()

    async def _deliver_in_slot(self, msg: ClaimedMessage) -> None:
        assert self._gate is not None
        relay: str | None = None
        defer_to: datetime | None = None
        try:
            if self._feed is not None and tracer() is None:
                fed = await self._send_fed(msg, self._feed)
                if fed is None:
                    return
                result = fed
            else:
                async with self._gate:
                    if not self._may_send(msg):
                        self._give_back(msg.id)
                        return
                    if self.relays is None:
                        result = await self._send(msg)
                    else:
                        result, relay, defer_to = await self._send_routed(msg, self.relays)
        except asyncio.CancelledError:
            self._give_back(msg.id)
            raise
        except Exception as exc:  # a bug, not a reply: defer rather than lose or spin
            log.exception("unexpected error delivering %s", msg.id)
            result = SendResult.all_failed(msg.envelope.message_id, msg.envelope.recipients, f"internal error: {exc}")
        finally:
            self._on_wire.discard(msg.id)
            self._taken_at.pop(msg.id, None)
        now = datetime.now(UTC)
        outcomes = [self.policy.outcome(r, msg.attempts + 1, msg.first_queued_at, now) for r in result.recipients]
        if self.relays is not None:
            outcomes = _routed(outcomes, relay, defer_to)
        for o in outcomes:
            setattr(self.stats, o.state, getattr(self.stats, o.state) + 1)
        self._records.append((msg.id, outcomes))
        self._to_log.append((msg.id, outcomes))
        if len(self._to_log) >= _LOG_GROUP:  # a full line: log it now, whatever the flusher is doing
            self._log_outcomes()
        assert self._records_ready is not None
        recorded = asyncio.get_running_loop().create_future()
        self._recorded[msg.id] = recorded
        self._records_ready.set()
        # The slot is held until the outcome is committed: sent-but-unrecorded mail (what a crash would
        # send again) is never more than `concurrency` messages, however slow a commit is.
        await recorded

    def _may_send(self, msg: ClaimedMessage) -> bool:
        """Not if the relay is paused, the worker stopping, or the lease not renewed for so long that it may
        lapse mid-send (another worker would then send it too): the caller gives it back unsent."""
        loop_now = asyncio.get_running_loop().time()
        waited = loop_now - self._leased.get(msg.id, loop_now - self.lease_seconds)
        return not (self.stopping or self._paused() > 0 or waited > self.lease_seconds / 2)

    def _admit(self, msg: ClaimedMessage) -> bool:
        """The feed's question when a connection takes ``msg``: from here it may be on the wire."""
        if not self._may_send(msg):
            return False
        self._on_wire.add(msg.id)
        if self.metrics is not None:
            self._taken_at[msg.id] = time.perf_counter()
        return True

    def _trouble(self, exc: DeliveryError) -> None:
        """A feed connection failed or could not be opened: the relay pauses (its message has a failed result)."""
        pause = self.backoff.trouble()
        log.warning("relay trouble (%s); pausing %.3gs", exc, pause)

    async def _send_fed(self, msg: ClaimedMessage, feed: SendFeed[ClaimedMessage]) -> SendResult | None:
        """Through the feed (pipelined after the previous message on a pooled connection); None: given back."""
        try:
            result, broken = await feed.submit(msg.envelope, msg)
        except Gone:
            self._give_back(msg.id)
            return None
        if self.metrics is not None and (taken := self._taken_at.pop(msg.id, None)) is not None:
            self.metrics.smtp_send_seconds.observe(time.perf_counter() - taken)
        if not broken:  # a connection's failure was _trouble's: it paused the relay
            self._heard(result)
        return result

    def _heard(self, result: SendResult) -> None:
        """The relay answered: a 421 (it is closing) pauses it like a lost connection; anything else clears that."""
        if any(r.code == 421 for r in result.recipients):
            self.backoff.trouble()
        else:
            self.backoff.ok()

    async def _send(self, msg: ClaimedMessage) -> SendResult:
        """Send over the pool; a failure before the connection was up is the relay's, never a 5xx verdict."""
        env = msg.envelope
        if self.mail.config.suppress_send:
            return self.mail.suppressed(env)
        connected = False
        done: list[RecipientResult] = []  # VERP: the recipients whose own transaction has ended
        try:
            async with self.mail.pool.connection() as conn:
                connected = True
                self._on_wire.add(msg.id)
                started = time.perf_counter() if self.metrics is not None else 0.0
                if self.return_path is not None:
                    result = await self._send_verp(msg.id, env, conn.send, done)
                elif tracer() is None:
                    result = await conn.send(env)
                else:
                    result = await self._traced_send(msg, conn.send(env))
                if self.metrics is not None:
                    self.metrics.smtp_send_seconds.observe(time.perf_counter() - started)
        except DeliveryError as exc:
            pause = self.backoff.trouble()
            stage = "sending" if connected else "connecting"
            log.warning("relay trouble while %s (%s); pausing %.3gs", stage, exc, pause)
            # No reply to the message itself: transient whatever the code (an auth 535 or a
            # 554 greeting is about the relay, not about this recipient).
            answered = {r.recipient for r in done}
            return SendResult(
                env.message_id,
                (
                    *done,
                    *(RecipientResult(r, "failed", exc.code, str(exc)) for r in env.recipients if r not in answered),
                ),
            )
        self._heard(result)
        return result

    async def _send_routed(
        self, msg: ClaimedMessage, relays: RelaySet
    ) -> tuple[SendResult, str | None, datetime | None]:
        """Through the first relay of the message's route that is up and has room today.

        Returns the result, the relay that answered (None: none did) and, when every relay of the
        route had used its day, the next UTC midnight to defer to. A relay that fails before anything
        was sent (connecting, or a 421 to every recipient that is not a throttle) is marked down and
        the next one takes the message at once; an error once data may have been sent never moves on.
        """
        env = msg.envelope
        route = relays.route(msg.route)
        full: list[Relay] = []
        down = 0
        for relay in route:
            if relay.backoff.remaining() > 0:
                down += 1
                continue
            if not await self._room_today(relay):
                full.append(relay)
                continue
            await self._pace(relay)
            if relay.mail.config.suppress_send:
                return relay.mail.suppressed(env), relay.name, None
            async with relay.gate:
                result = await self._try_relay(msg, relay)
            if result is not None:
                return result, relay.name, None
            relay.pacer.give_back_day()
            if self._shared_quota and relay.spec.rate.per_day is not None:
                await self.outbox.give_back_relay_quota(relay.name, "d")
            down += 1
        names = ", ".join(r.name for r in route)
        if full and not down:
            until = next_utc_midnight()
            limits = ", ".join(f"{r.name} {r.spec.rate.per_day}/day" for r in full)
            reply = f"daily limit reached ({limits}); deferred to {until.isoformat()}"
            return SendResult.all_failed(env.message_id, env.recipients, reply), None, until
        reply = f"no relay of route {msg.route or 'default'} ({names}) is up; will retry"
        return SendResult.all_failed(env.message_id, env.recipients, reply), None, None

    async def _room_today(self, relay: Relay) -> bool:
        """Whether the relay may take one more message today (counted if so): shared on PostgreSQL."""
        per_day = relay.spec.rate.per_day
        if not self._shared_quota or per_day is None:
            return relay.pacer.take_day()
        ok = await self.outbox.take_relay_quota(relay.name, "d", per_day)
        if ok:
            relay.pacer.count_day()
        return bool(ok)

    async def _pace(self, relay: Relay) -> None:
        """Wait for the relay's per-second window: a token bucket here, or the shared second on PostgreSQL."""
        if not self._shared_quota or relay.spec.rate.per_second is None:
            wait = relay.pacer.delay()
            if wait > 0:
                await asyncio.sleep(wait)
            return
        while True:
            rate = relay.pacer.current_rate() or relay.spec.rate.per_second
            if await self.outbox.take_relay_quota(relay.name, "s", max(int(rate), 1)):
                return
            await asyncio.sleep(1.0 - time.time() % 1.0 + 0.001)  # the next second's window

    async def _try_relay(self, msg: ClaimedMessage, relay: Relay) -> SendResult | None:
        """One relay's attempt; None when it failed before anything was sent (the caller tries the next)."""
        env = msg.envelope
        connected = False
        done: list[RecipientResult] = []
        try:
            async with relay.mail.pool.connection() as conn:
                connected = True
                self._on_wire.add(msg.id)
                started = time.perf_counter() if self.metrics is not None else 0.0
                if self.return_path is not None:
                    result = await self._send_verp(msg.id, env, conn.send, done)
                else:
                    step = relay.spec.rate.max_recipients or len(env.recipients)
                    for i in range(0, len(env.recipients), step):
                        part = (
                            env
                            if step >= len(env.recipients)
                            else dataclasses.replace(env, recipients=env.recipients[i : i + step])
                        )
                        done.extend((await conn.send(part)).recipients)
                    result = SendResult(env.message_id, tuple(done))
                if self.metrics is not None:
                    self.metrics.smtp_send_seconds.observe(time.perf_counter() - started)
        except DeliveryError as exc:
            pause = relay.backoff.trouble()
            if not connected:
                self._on_wire.discard(msg.id)
                log.warning("relay %s down while connecting (%s); pausing it %.3gs", relay.name, exc, pause)
                return None
            log.warning("relay %s trouble while sending (%s); pausing it %.3gs", relay.name, exc, pause)
            answered = {r.recipient for r in done}
            return SendResult(
                env.message_id,
                (
                    *done,
                    *(RecipientResult(r, "failed", exc.code, str(exc)) for r in env.recipients if r not in answered),
                ),
            )
        if any(is_throttle(r) for r in result.recipients):
            relay.pacer.throttled()
            log.warning("relay %s asks to slow down; pacing it at %.3g/s", relay.name, relay.pacer.current_rate())
        elif any(r.code == 421 for r in result.recipients):
            pause = relay.backoff.trouble()
            if all(r.code == 421 for r in result.recipients):  # the relay closing, not a verdict: nothing sent
                self._on_wire.discard(msg.id)
                log.warning("relay %s answered 421 to the transaction; pausing it %.3gs", relay.name, pause)
                return None
        else:
            relay.backoff.ok()
        return result

    async def _send_verp(
        self,
        id_: str,
        env: Envelope,
        send: Callable[[Envelope], Awaitable[SendResult]],
        done: list[RecipientResult],
    ) -> SendResult:
        """The same bytes to each recipient in a transaction of its own, from its own return path.

        Why one transaction per recipient: the envelope sender is per transaction, and a bounce must
        name its recipient. Each ended transaction's results go into ``done`` as they come, so a
        connection lost halfway retries only the recipients not yet answered (no duplicates).
        """
        assert self.return_path is not None
        for rcpt in env.recipients:
            one = dataclasses.replace(env, sender=self.return_path.address(id_, rcpt), recipients=(rcpt,))
            done.extend((await send(one)).recipients)
        return SendResult(env.message_id, tuple(done))

    async def _traced_claim(self, want: int) -> list[ClaimedMessage]:
        active = tracer()
        assert active is not None
        with active.start_as_current_span("mailsvc.claim", attributes={"mailsvc.claim.limit": want}) as span:
            claimed = await self.outbox.claim(self.owner, want, self.lease_seconds)
            span.set_attribute("mailsvc.claim.count", len(claimed))
            return claimed

    async def _traced_send(self, msg: ClaimedMessage, send: Coroutine[Any, Any, SendResult]) -> SendResult:
        """One SMTP transaction in a ``mailsvc.smtp_send`` span: the message id, the attempt, each reply code."""
        active = tracer()
        assert active is not None
        attributes: dict[str, str | int] = {"mailsvc.message.id": msg.id, "mailsvc.attempt": msg.attempts + 1}
        links = link_to(msg.traceparent)  # the request that queued it, even in another process
        with active.start_as_current_span("mailsvc.smtp_send", attributes=attributes, links=links) as span:
            result = await send
            span.set_attribute("smtp.reply_codes", [r.code or 0 for r in result.recipients])
            return result

    # -- recording ---------------------------------------------------------------
    async def _flush_loop(self) -> None:
        assert self._records_ready is not None
        final_tries = 3
        while True:
            await self._records_ready.wait()
            self._records_ready.clear()
            done = self.stopping and not self._inflight
            failed = not await self._flush()
            if done and (not self._records or final_tries <= 0):
                if self._records:
                    log.error(
                        "gave up recording %d outcomes; their leases will expire and they will be retried",
                        len(self._records),
                    )
                    self._forget([id_ for id_, _ in self._records])
                return
            if failed:  # try again shortly (records that came in meanwhile are flushed at once, not after a pause)
                final_tries -= done
                await asyncio.sleep(self.poll_interval)
                self._records_ready.set()
            elif self._records:
                self._records_ready.set()

    def _log_outcomes(self) -> None:
        """One log line per group of outcomes (as recorded), not per message.

        Why grouped: at thousands of messages a second a record per message cost
        about 5% of the service's CPU. Every message id and recipient is still in
        the log, so a grep for either finds its line.
        """
        items, self._to_log = self._to_log, []
        if not items or not log.isEnabledFor(logging.INFO):
            return
        for start in range(0, len(items), _LOG_GROUP):
            group = items[start : start + _LOG_GROUP]
            log.info(
                "delivery %s",
                "; ".join(
                    f"{id_} "
                    + " ".join(f"{o.recipient}={o.state}{'' if o.code is None else f'/{o.code}'}" for o in outcomes)
                    for id_, outcomes in group
                ),
                extra={
                    "fields": {
                        "event": "delivery",
                        "deliveries": [
                            {"id": id_, "recipient": o.recipient, "outcome": str(o.state), "code": o.code}
                            for id_, outcomes in group
                            for o in outcomes
                        ],
                    }
                },
            )

    async def _flush(self) -> bool:
        """Record what is waiting and release what was given back; False when some outcome is kept for a retry."""
        self._log_outcomes()
        ok = True
        items, self._records = self._records, []
        if items:
            try:
                await self.outbox.record_many(self.owner, items)
                self._forget(id_ for id_, _ in items)
                self._count(items)
            except NotFoundError:
                # A message vanished (purged by retention): record the others one by one, drop it.
                for item in items:
                    try:
                        await self.outbox.record(item[0], self.owner, item[1])
                        self._forget([item[0]])
                        self._count([item])
                    except NotFoundError:
                        self._forget([item[0]])
                        log.warning("message %s is no longer in the outbox; outcome dropped", item[0])
                    except OutboxError:
                        self._records.append(item)
                        ok = False
            except Exception as exc:  # OutboxError, or a bug: keep them and retry rather than drop them
                if isinstance(exc, OutboxError):
                    log.error("could not record %d outcomes, will retry: %s", len(items), exc)
                else:
                    log.exception("unexpected error recording %d outcomes, will retry", len(items))
                self._records = items + self._records
                ok = False
        ids, self._to_release = self._to_release, []
        if ids:
            try:
                await self.outbox.release(ids, self.owner)
                self._forget(ids)
                self.stats.released += len(ids)
            except OutboxError as exc:
                self._forget(ids)  # stop renewing them, so that their leases do expire
                log.error("could not release %d messages (their leases will expire): %s", len(ids), exc)
        return ok

    def _count(self, items: Iterable[tuple[str, list[RecipientOutcome]]]) -> None:
        """Outcomes into the metrics once committed (a failed record is retried, and must not count twice)."""
        if self.metrics is not None:
            for _, outcomes in items:
                self.metrics.count_outcomes(outcomes)

    def _forget(self, ids: Iterable[str]) -> None:
        for id_ in ids:
            self._leased.pop(id_, None)
            recorded = self._recorded.pop(id_, None)
            if recorded is not None and not recorded.done():
                recorded.set_result(None)

    async def _renew_loop(self) -> None:
        """Every third of a lease, renew the leases of everything still in hand (until cancelled).

        A message whose lease another worker took meanwhile is not renewed; its
        time is not refreshed, so if it has not reached the wire it is given
        back unsent (:meth:`_deliver`), and its outcome, if it was sent, is
        recorded without touching the other worker's lease (``Outbox.record``).
        """
        interval = max(self.lease_seconds / 3, 0.01)
        while True:
            await asyncio.sleep(interval)
            ids = list(self._leased)
            if not ids:
                continue
            granted_at = asyncio.get_running_loop().time()
            try:
                kept = await self.outbox.extend(ids, self.owner, self.lease_seconds)
            except OutboxError as exc:
                log.warning("could not renew %d leases (they may lapse): %s", len(ids), exc)
                continue
            for id_ in kept:
                if id_ in self._leased:
                    self._leased[id_] = granted_at
            self.stats.renewed += len(kept)


def _routed(outcomes: list[RecipientOutcome], relay: str | None, defer_to: datetime | None) -> list[RecipientOutcome]:
    """Outcomes with the relay that answered, and a daily limit's deferral to the next window."""
    if defer_to is not None:
        outcomes = [
            dataclasses.replace(o, next_attempt_at=defer_to) if o.state is RecipientState.DEFERRED else o
            for o in outcomes
        ]
    if relay is not None:
        outcomes = [dataclasses.replace(o, relay=relay) for o in outcomes]
    return outcomes


class WorkerGroup:
    """``n`` workers sharing one pool and one relay backoff; what the app and ``mailsvc worker`` run.

    With ``MAILSVC_RELAYS_FILE``, they share a :class:`RelaySet` instead (a pool, backoff and pacer per relay).
    """

    def __init__(self, workers: list[Worker], mail: MailState, relays: RelaySet | None = None) -> None:
        self.workers = workers
        self.mail = mail
        self.relays = relays
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_service(
        cls,
        outbox: Outbox,
        mail_config: MailConfig,
        service: ServiceConfig,
        count: int | None = None,
        *,
        transport: TransportFactory | None = None,
        metrics: Metrics | None = None,
    ) -> WorkerGroup:
        """``transport`` overrides ``MAIL_TRANSPORT`` (which overrides SMTP), as for ``Mail(app, transport=...)``.

        ``metrics``: where the workers count outcomes and send times, and whose scrape reads their
        messages in hand and the relay's backoff.
        """
        mail = MailState(mail_config, transport=transport)
        policy = RetryPolicy.from_service(service)
        backoff = RelayBackoff(policy)
        relays = None
        if service.relays_file is not None:
            relays = RelaySet(load_relays(service.relays_file, mail_config), policy, transport=transport)
        gate = asyncio.Semaphore(mail_config.pool_size if relays is None else relays.pool_size)
        n = count if count is not None else max(service.workers, 1)
        return_path = None
        if service.bounce_domain is not None and service.web.secret_key is not None:
            return_path = ReturnPath(service.web.secret_key.get_secret_value(), service.bounce_domain)
        workers = [
            Worker(
                outbox,
                mail,
                policy,
                backoff=backoff,
                gate=gate,
                claim_batch=service.claim_batch,
                concurrency=service.worker_concurrency,
                lease_seconds=service.lease_seconds,
                poll_interval=service.poll_interval,
                return_path=return_path,
                metrics=metrics,
                relays=relays,
            )
            for _ in range(n)
        ]
        if metrics is not None:
            metrics.watch(workers=workers, backoff=backoff)
        return cls(workers, mail, relays)

    async def start(self) -> None:
        for w in self.workers:
            w._stopping = asyncio.Event()
            self._tasks.append(asyncio.create_task(w.run(), name=f"mailsvc-worker-{w.owner}"))

    def request_stop(self) -> None:
        for w in self.workers:
            w.stop()

    async def wait(self) -> None:
        """Until every worker has stopped (after :meth:`request_stop`)."""
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("worker ended with an error: %r", r)

    async def stop(self) -> None:
        self.request_stop()
        try:
            await self.wait()
        finally:
            await self.mail.aclose()
            if self.relays is not None:
                await self.relays.aclose()

    @property
    def stats(self) -> WorkerStats:
        total = WorkerStats()
        for w in self.workers:
            for name in WorkerStats.__slots__:
                setattr(total, name, getattr(total, name) + getattr(w.stats, name))
        return total
