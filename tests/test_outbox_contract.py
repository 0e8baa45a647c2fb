"""The outbox contract, run against every implementation in ``tests/outbox_impls.py``.

One suite, many backends (Django's backend tests, httpx's transports): the web
layer and the workers rely on exactly these behaviours, whatever stores the mail.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mailsvc import Message
from mailsvc.errors import IdempotencyConflictError, MessageError, NotFoundError, OutboxFullError
from mailsvc.message import Envelope
from mailsvc.outbox import Outbox, RecipientOutcome
from tests.outbox_impls import IMPLEMENTATIONS

MakeOutbox = Callable[..., Awaitable[Outbox]]


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def make_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeOutbox]:
    """Build outboxes of one implementation with chosen options; all are closed afterwards."""
    factory = IMPLEMENTATIONS[request.param]
    opened: list[Outbox] = []

    async def make(**options: Any) -> Outbox:
        outbox = await factory(tmp_path, **options)
        opened.append(outbox)
        return outbox

    yield make
    for outbox in opened:
        await outbox.close()


@pytest.fixture
async def outbox(make_outbox: MakeOutbox) -> Outbox:
    return await make_outbox()


def envelope(
    subject: str = "Hello",
    recipients: tuple[str, ...] = ("ann@example.com",),
    body: str = "hi",
    attachment: bytes | None = None,
) -> Envelope:
    msg = Message(subject, recipients=list(recipients), body=body, html=f"<p>{body}</p>", sender="shop@example.com")
    if attachment is not None:
        msg.attach("a.bin", "application/octet-stream", attachment)
    return msg.build()


def bulk(n: int) -> list[Envelope]:
    """``n`` distinct messages, fast: one MIME build, then a Message-ID and recipient each."""
    base = envelope("Bulk")
    return [
        dataclasses.replace(
            base,
            recipients=(f"u{i}@example.com",),
            message_id=f"<bulk{i}@test>",
            data=base.data.replace(base.message_id.encode(), f"<bulk{i}@test>".encode()),
        )
        for i in range(n)
    ]


def outcome(rcpt: str, state: str, code: int | None = None, at: float | None = None) -> RecipientOutcome:
    when = datetime.now(UTC) + timedelta(seconds=at) if at is not None else None
    return RecipientOutcome(rcpt, state, code, f"{code} reply" if code else "", when)  # type: ignore[arg-type]


async def test_enqueue_stores_every_recipient_queued(outbox: Outbox) -> None:
    env = envelope(recipients=("ann@example.com", "bob@example.com"))
    result = await outbox.enqueue([env])
    assert len(result.ids) == 1 and result.batch_id is None and not result.duplicate
    status = await outbox.status(result.ids[0])
    assert status.state == "queued"
    assert status.message_id == env.message_id
    assert [(r.recipient, r.state, r.attempts) for r in status.recipients] == [
        ("ann@example.com", "queued", 0),
        ("bob@example.com", "queued", 0),
    ]
    assert await outbox.pending_count() == 1


async def test_claim_returns_exactly_what_was_accepted(outbox: Outbox) -> None:
    msg = Message(
        "Hi",
        recipients=["ann@example.com"],
        body="x",
        sender="shop@example.com",
        mail_options=["BODY=8BITMIME"],
        rcpt_options=["NOTIFY=NEVER"],
    )
    msg.attach("data.bin", "application/octet-stream", bytes(range(256)) * 100)
    env = msg.build()
    await outbox.enqueue([env])
    [claimed] = await outbox.claim("w1", 10, 60)
    assert claimed.envelope == env
    assert claimed.attempts == 0


async def test_bulk_batch_is_one_unit_with_counts(outbox: Outbox) -> None:
    envs = bulk(3000)
    result = await outbox.enqueue(envs, batch=True)
    assert len(set(result.ids)) == 3000 and result.batch_id is not None
    assert await outbox.batch_status(result.batch_id) == {"queued": 3000}
    assert await outbox.pending_count() == 3000


async def test_empty_enqueue_is_refused(outbox: Outbox) -> None:
    with pytest.raises(MessageError):
        await outbox.enqueue([])


async def test_unknown_ids_are_not_found(outbox: Outbox) -> None:
    with pytest.raises(NotFoundError):
        await outbox.status("nope")
    with pytest.raises(NotFoundError):
        await outbox.batch_status("nope")


async def test_idempotency_key_replays_first_result(outbox: Outbox) -> None:
    first = await outbox.enqueue([envelope()], idempotency_key="k1")
    # A retry of the same request builds the message again: new Message-ID, Date and boundaries.
    again = await outbox.enqueue([envelope()], idempotency_key="k1")
    assert again.ids == first.ids and again.duplicate
    assert await outbox.pending_count() == 1


async def test_idempotency_key_with_other_content_is_an_error(outbox: Outbox) -> None:
    await outbox.enqueue([envelope(body="one")], idempotency_key="k1")
    with pytest.raises(IdempotencyConflictError, match="k1"):
        await outbox.enqueue([envelope(body="two")], idempotency_key="k1")
    assert await outbox.pending_count() == 1


async def test_idempotency_key_concurrent_gives_one_message(make_outbox: MakeOutbox) -> None:
    a = await make_outbox()
    b = await make_outbox()  # a second connection, as a second node or process would have
    results = await asyncio.gather(
        *((a if i % 2 else b).enqueue([envelope()], idempotency_key="same") for i in range(10))
    )
    assert len({tuple(r.ids) for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await a.pending_count() == 1


async def test_idempotency_window_expires(make_outbox: MakeOutbox) -> None:
    outbox = await make_outbox(idempotency_ttl=0.2)
    first = await outbox.enqueue([envelope()], idempotency_key="k")
    await asyncio.sleep(0.3)
    later = await outbox.enqueue([envelope()], idempotency_key="k")
    assert later.ids != first.ids and not later.duplicate


async def test_backpressure_refuses_whole_request(make_outbox: MakeOutbox) -> None:
    outbox = await make_outbox(max_pending=5)
    with pytest.raises(OutboxFullError) as info:
        await outbox.enqueue([envelope(f"n{i}") for i in range(6)], batch=True)
    assert info.value.limit == 5
    assert await outbox.pending_count() == 0
    await outbox.enqueue([envelope(f"n{i}") for i in range(5)])
    with pytest.raises(OutboxFullError):
        await outbox.enqueue([envelope()])
    assert await outbox.pending_count() == 5


async def test_claim_leases_and_expired_lease_is_reclaimed(outbox: Outbox) -> None:
    ids = (await outbox.enqueue([envelope(f"n{i}") for i in range(3)])).ids
    first = await outbox.claim("w1", 2, 0.3)
    assert len(first) == 2
    rest = await outbox.claim("w2", 10, 60)
    assert [m.id for m in rest] == [i for i in ids if i not in {m.id for m in first}]
    assert await outbox.claim("w2", 10, 60) == []
    assert (await outbox.status(first[0].id)).state == "sending"
    await asyncio.sleep(0.4)  # w1 "died": its lease runs out
    again = await outbox.claim("w3", 10, 60)
    assert {m.id for m in again} == {m.id for m in first}


async def test_reopening_does_not_reset_live_leases(make_outbox: MakeOutbox, tmp_path: Path) -> None:
    outbox = await make_outbox()
    await outbox.enqueue([envelope()])
    assert len(await outbox.claim("w1", 10, 60)) == 1
    await outbox.close()
    reopened = await make_outbox()
    assert await reopened.claim("w2", 10, 60) == []


async def test_record_per_recipient_and_retry_only_the_deferred(outbox: Outbox) -> None:
    rcpts = ("ok@example.com", "bad@example.com", "later@example.com")
    [id_] = (await outbox.enqueue([envelope(recipients=rcpts)])).ids
    [msg] = await outbox.claim("w1", 10, 60)
    await outbox.record(
        id_,
        "w1",
        [
            outcome("ok@example.com", "delivered", 250),
            outcome("bad@example.com", "failed", 550),
            outcome("later@example.com", "deferred", 451, at=0.2),
        ],
    )
    status = await outbox.status(id_)
    assert status.state == "deferred"
    by = {r.recipient: r for r in status.recipients}
    assert (by["ok@example.com"].state, by["ok@example.com"].last_code) == ("delivered", 250)
    assert (by["bad@example.com"].state, by["bad@example.com"].last_reply) == ("failed", "550 reply")
    assert by["later@example.com"].state == "deferred" and by["later@example.com"].next_attempt_at is not None
    assert all(r.attempts == 1 for r in status.recipients)
    assert await outbox.claim("w1", 10, 60) == []  # not due yet
    await asyncio.sleep(0.3)
    [retry] = await outbox.claim("w2", 10, 60)
    assert retry.envelope.recipients == ("later@example.com",) and retry.attempts == 1
    await outbox.record(id_, "w2", [outcome("later@example.com", "delivered", 250)])
    status = await outbox.status(id_)
    assert status.state == "partial"
    assert [r.attempts for r in status.recipients] == [1, 1, 2]
    assert await outbox.pending_count() == 0


async def test_final_states_are_never_overwritten(outbox: Outbox) -> None:
    [id_] = (await outbox.enqueue([envelope()])).ids
    await outbox.claim("w1", 10, 0.1)
    await asyncio.sleep(0.2)
    await outbox.claim("w2", 10, 60)  # w1's lease expired and w2 took over
    await outbox.record(id_, "w2", [outcome("ann@example.com", "delivered", 250)])
    await outbox.record(id_, "w1", [outcome("ann@example.com", "deferred", 451, at=0)])  # late, stale
    status = await outbox.status(id_)
    assert status.state == "delivered" and status.recipients[0].last_code == 250
    assert await outbox.claim("w3", 10, 60) == []


async def test_all_recipients_final_without_delivery_is_failed(outbox: Outbox) -> None:
    result = await outbox.enqueue([envelope(recipients=("a@example.com", "b@example.com"))], batch=True)
    await outbox.claim("w1", 10, 60)
    await outbox.record(
        result.ids[0], "w1", [outcome("a@example.com", "failed", 550), outcome("b@example.com", "expired", 451)]
    )
    assert (await outbox.status(result.ids[0])).state == "failed"
    assert result.batch_id is not None
    assert await outbox.batch_status(result.batch_id) == {"failed": 1}


async def test_release_gives_messages_back_untouched(outbox: Outbox) -> None:
    [id_] = (await outbox.enqueue([envelope()])).ids
    await outbox.claim("w1", 10, 60)
    await outbox.release([id_], "w2")  # not the owner: no effect
    assert await outbox.claim("w2", 10, 60) == []
    await outbox.release([id_], "w1")
    status = await outbox.status(id_)
    assert status.state == "queued" and status.recipients[0].attempts == 0
    assert [m.id for m in await outbox.claim("w2", 10, 60)] == [id_]


async def test_ping_succeeds_on_a_writable_store(outbox: Outbox) -> None:
    await outbox.ping()


# -- enqueue_stream: a batch stored a chunk at a time, still one transaction -------------------------
async def _chunks(
    envs: list[Envelope], size: int, fail_after: int | None = None, started: list[int] | None = None
) -> AsyncIterator[list[Envelope]]:
    for n, i in enumerate(range(0, len(envs), size)):
        if started is not None:
            started.append(n)
        if fail_after is not None and n == fail_after:
            raise ValueError("the caller's build failed")
        yield envs[i : i + size]


async def test_stream_stores_every_chunk_as_one_batch(outbox: Outbox) -> None:
    envs = bulk(1200)
    result = await outbox.enqueue_stream(1200, _chunks(envs, 250), batch=True)
    assert len(set(result.ids)) == 1200 and result.batch_id is not None and not result.duplicate
    assert await outbox.batch_status(result.batch_id) == {"queued": 1200}
    # In order: the n-th id is the n-th envelope, exactly as accepted.
    status = await outbox.status(result.ids[1100])
    assert status.message_id == envs[1100].message_id and [r.recipient for r in status.recipients] == [
        "u1100@example.com"
    ]
    claimed = await outbox.claim("w", 2000, 60)
    assert sorted(c.envelope.message_id for c in claimed) == sorted(e.message_id for e in envs)


async def test_stream_failing_midway_stores_nothing(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="build failed"):
        await outbox.enqueue_stream(
            1000, _chunks(bulk(1000), 100, fail_after=5), batch=True, idempotency_key="k", fingerprint="f1"
        )
    assert await outbox.pending_count() == 0
    # The key was not taken by the failed request.
    again = await outbox.enqueue_stream(3, _chunks(bulk(3), 2), idempotency_key="k", fingerprint="f1")
    assert not again.duplicate and len(again.ids) == 3


async def test_stream_count_must_match(outbox: Outbox) -> None:
    with pytest.raises(MessageError, match="told 10"):
        await outbox.enqueue_stream(10, _chunks(bulk(9), 4))
    with pytest.raises(MessageError):
        await outbox.enqueue_stream(0, _chunks([], 4))
    assert await outbox.pending_count() == 0


async def test_stream_checks_pending_limit_before_building(make_outbox: MakeOutbox) -> None:
    outbox = await make_outbox(max_pending=5)
    started: list[int] = []
    with pytest.raises(OutboxFullError):
        await outbox.enqueue_stream(6, _chunks(bulk(6), 2, started=started), batch=True)
    assert started == [] and await outbox.pending_count() == 0


async def test_stream_idempotent_replay_builds_nothing(outbox: Outbox) -> None:
    first = await outbox.enqueue_stream(5, _chunks(bulk(5), 2), batch=True, idempotency_key="k", fingerprint="f")
    started: list[int] = []
    again = await outbox.enqueue_stream(
        5, _chunks(bulk(5), 2, started=started), batch=True, idempotency_key="k", fingerprint="f"
    )
    assert again.duplicate and again.ids == first.ids and again.batch_id == first.batch_id and started == []
    with pytest.raises(IdempotencyConflictError):
        await outbox.enqueue_stream(5, _chunks(bulk(5), 2), batch=True, idempotency_key="k", fingerprint="other")
    with pytest.raises(MessageError, match="fingerprint"):
        await outbox.enqueue_stream(5, _chunks(bulk(5), 2), idempotency_key="k2")
    assert await outbox.pending_count() == 5


async def test_extend_renews_only_the_owner_s_live_leases(outbox: Outbox) -> None:
    ids = (await outbox.enqueue(bulk(3))).ids
    mine = await outbox.claim("w1", 2, 0.3)  # two leased briefly by w1
    assert sorted(await outbox.extend([c.id for c in mine] + [ids[2]], "w1", 60)) == sorted(c.id for c in mine)
    assert await outbox.extend([c.id for c in mine], "w2", 60) == []  # not w2's
    await asyncio.sleep(0.5)  # past the first lease: renewed, so nobody else may take them
    assert [c.id for c in await outbox.claim("w2", 10, 60)] == [ids[2]]
    # Recorded: no lease left to renew.
    await outbox.record(mine[0].id, "w1", [outcome(mine[0].envelope.recipients[0], "delivered", 250)])
    assert await outbox.extend([mine[0].id], "w1", 60) == []
    assert await outbox.extend([], "w1", 60) == []


async def test_extend_does_not_take_back_a_lease_another_worker_holds(outbox: Outbox) -> None:
    [first] = (await outbox.enqueue([envelope()])).ids
    await outbox.claim("w1", 1, 0.1)
    await asyncio.sleep(0.3)  # w1's lease lapses
    [again] = await outbox.claim("w2", 1, 60)
    assert again.id == first
    assert await outbox.extend([first], "w1", 60) == []
    await outbox.record(first, "w2", [outcome("ann@example.com", "delivered", 250)])
    assert (await outbox.status(first)).state == "delivered"


async def test_concurrent_enqueues_each_get_their_own_answer(make_outbox: MakeOutbox) -> None:
    """Many enqueues at once (SQLite commits them together): each is stored or refused on its own."""
    outbox = await make_outbox(max_pending=6)
    calls = [outbox.enqueue([envelope(f"n{i}")]) for i in range(8)]
    calls += [
        outbox.enqueue([envelope(body="one")], idempotency_key="k"),
        outbox.enqueue([envelope(body="two")], idempotency_key="k"),
        outbox.enqueue([envelope(body="one")], idempotency_key="k"),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    stored = [r for r in results if not isinstance(r, BaseException) and not r.duplicate]
    # Exactly 6 where enqueues are serialised (SQLite); PostgreSQL's limit is approximate under concurrency.
    assert len(stored) >= 6 and await outbox.pending_count() == len(stored)
    assert all(
        isinstance(r, (OutboxFullError, IdempotencyConflictError)) for r in results if isinstance(r, BaseException)
    )
    keyed = [r for r in results[8:] if not isinstance(r, BaseException)]
    assert len({tuple(r.ids) for r in keyed}) <= 1  # one message for the key, whoever got it
    for r in stored:
        assert (await outbox.status(r.ids[0])).state == "queued"


# -- tenants: a message and a batch belong to whoever created them -------------------------------


async def test_another_tenant_s_ids_read_as_unknown(outbox: Outbox) -> None:
    """Grouped (single messages) and streamed (a batch) enqueues alike record the tenant."""
    mine = await outbox.enqueue([envelope()], tenant="acme")
    theirs, batch = await asyncio.gather(
        outbox.enqueue([envelope("Other")], tenant="globex"),
        outbox.enqueue(bulk(3), batch=True, tenant="globex"),
    )
    assert batch.batch_id is not None
    assert (await outbox.status(mine.ids[0], tenant="acme")).state == "queued"
    assert await outbox.batch_status(batch.batch_id, tenant="globex") == {"queued": 3}
    for id_ in (theirs.ids[0], batch.ids[0]):
        with pytest.raises(NotFoundError) as other:
            await outbox.status(id_, tenant="acme")
        with pytest.raises(NotFoundError) as unknown:
            await outbox.status("f" * 32, tenant="acme")
        assert str(other.value) == str(unknown.value).replace("f" * 32, id_)
    with pytest.raises(NotFoundError):
        await outbox.batch_status(batch.batch_id, tenant="acme")
    # Unrestricted (an admin key, the CLI): every tenant's.
    assert (await outbox.status(theirs.ids[0])).state == "queued"
    assert await outbox.batch_status(batch.batch_id) == {"queued": 3}


async def test_mail_without_a_tenant_is_seen_only_unrestricted(outbox: Outbox) -> None:
    """What was queued before tenants (or by a caller that names none) belongs to no tenant."""
    result = await outbox.enqueue(bulk(2), batch=True)
    assert result.batch_id is not None
    with pytest.raises(NotFoundError):
        await outbox.status(result.ids[0], tenant="acme")
    with pytest.raises(NotFoundError):
        await outbox.batch_status(result.batch_id, tenant="acme")
    assert await outbox.batch_status(result.batch_id) == {"queued": 2}


# -- signed-out sessions -------------------------------------------------------------------------


async def test_a_revoked_session_is_refused_until_its_record_expires(make_outbox: MakeOutbox) -> None:
    first = await make_outbox()
    second = await make_outbox()  # another node on the same database
    soon = datetime.now(UTC) + timedelta(seconds=0.5)
    assert not await first.session_revoked("s1")
    await first.revoke_session("s1", datetime.now(UTC) + timedelta(hours=1))
    await first.revoke_session("s1", soon)  # a second sign-out never shortens the first
    await first.revoke_session("s2", soon)
    assert await second.session_revoked("s1") and await second.session_revoked("s2")
    assert not await second.session_revoked("s3")
    await asyncio.sleep(0.6)
    assert await second.session_revoked("s1") and not await second.session_revoked("s2")
