"""What only the PostgreSQL outbox has to prove: many nodes on one database.

The shared semantics (states, idempotency, batches, leases, backpressure) are in
``tests/test_outbox_contract.py``, run against every implementation; these tests
use several independent outboxes (separate pools, as separate nodes would have)
on one real PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from mailsvc.errors import IdempotencyConflictError, MessageError, NotFoundError, OutboxError
from mailsvc.message import Envelope, Message
from mailsvc.outbox import migrations
from mailsvc.outbox.base import RecipientOutcome
from mailsvc.outbox.postgres import PostgresOutbox, Schema
from tests.pgtools import fresh_schema


def envelope(n: int, *, sender: str = "shop@example.com", to: tuple[str, ...] = ("ann@example.com",)) -> Envelope:
    return Message(f"Hello {n}", recipients=list(to), body=f"body {n}", sender=sender).build(msgid_domain="test")


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_schema() as u:
        yield u


@pytest.fixture
async def nodes(url: str) -> AsyncIterator[list[PostgresOutbox]]:
    """Three outboxes on one schema, each with its own pool, opened concurrently like booting nodes."""
    boxes = [PostgresOutbox(url, pool_size=4) for _ in range(3)]
    await asyncio.gather(*(b.open() for b in boxes))
    try:
        yield boxes
    finally:
        await asyncio.gather(*(b.close() for b in boxes))


async def test_concurrent_upgrades_apply_each_migration_once(url: str) -> None:
    conns = [await asyncpg.connect(url) for _ in range(6)]
    try:
        applied = await asyncio.gather(*(migrations.upgrade(Schema(c)) for c in conns))
        versions = await conns[0].fetch("SELECT version FROM mailsvc_schema_version ORDER BY version")
    finally:
        for c in conns:
            await c.close()
    shipped = [m.version for m in migrations.available("postgres")]
    assert [r["version"] for r in versions] == shipped
    assert sorted(m.version for run in applied for m in run) == shipped  # exactly one runner applied each


async def test_refuses_to_start_without_schema_when_migrations_are_off(url: str) -> None:
    box = PostgresOutbox(url, migrate=False)
    with pytest.raises(OutboxError, match="mailsvc db upgrade"):
        await box.open()
    await box.close()


async def test_unreachable_server_is_a_clear_outbox_error() -> None:
    box = PostgresOutbox("postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(OutboxError, match="cannot reach PostgreSQL"):
        await box.open()


def test_url_must_be_postgresql() -> None:
    with pytest.raises(OutboxError, match="MAILSVC_DATABASE_URL"):
        PostgresOutbox("mysql://root@127.0.0.1/x")


async def test_concurrent_claims_from_many_nodes_never_share_a_message(nodes: list[PostgresOutbox]) -> None:
    ids = (await nodes[0].enqueue([envelope(i) for i in range(300)], batch=True)).ids
    claimed: dict[str, list[str]] = {}

    async def drain(box: PostgresOutbox, owner: str) -> None:
        while batch := await box.claim(owner, 7, lease_seconds=600):
            claimed.setdefault(owner, []).extend(c.id for c in batch)

    await asyncio.gather(*(drain(nodes[i % 3], f"w{i}") for i in range(9)))
    every = [i for got in claimed.values() for i in got]
    assert len(every) == len(set(every)) == 300
    assert set(every) == set(ids)
    assert len(claimed) > 1  # the work really was shared


async def test_same_idempotency_key_on_all_nodes_at_once_gives_one_message(
    nodes: list[PostgresOutbox], url: str
) -> None:
    env = envelope(1)
    results = await asyncio.gather(*(nodes[i % 3].enqueue([env], idempotency_key="order-42") for i in range(12)))
    assert len({tuple(r.ids) for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await nodes[0].pending_count() == 1
    with pytest.raises(IdempotencyConflictError):
        await nodes[1].enqueue([envelope(2)], idempotency_key="order-42")


async def test_a_failing_row_rolls_back_the_whole_batch(nodes: list[PostgresOutbox], url: str) -> None:
    good = [envelope(i) for i in range(5)]
    bad = Envelope(
        sender="x\x00@example.com", recipients=("a@example.com",), data=good[0].data, message_id="<bad@test>"
    )
    with pytest.raises(OutboxError, match="could not enqueue"):
        await nodes[0].enqueue([*good[:3], bad, *good[3:]], batch=True)
    conn = await asyncpg.connect(url)
    try:
        counts = [
            await conn.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("mailsvc_message", "mailsvc_body", "mailsvc_recipient")
        ]
    finally:
        await conn.close()
    assert counts == [0, 0, 0]


async def test_empty_enqueue_names_the_field(nodes: list[PostgresOutbox]) -> None:
    with pytest.raises(MessageError, match="messages"):
        await nodes[0].enqueue([])


async def test_lease_taken_over_by_another_node_keeps_delivered_state(nodes: list[PostgresOutbox]) -> None:
    a, b = nodes[0], nodes[1]
    [mid] = (await a.enqueue([envelope(1, to=("ann@example.com", "bob@example.com"))])).ids
    [first] = await a.claim("dead-worker", 10, lease_seconds=0)  # expires at once: "the worker died"
    [second] = await b.claim("live-worker", 10, lease_seconds=600)
    assert first.id == second.id == mid
    assert second.attempts == 0
    await b.record(
        mid,
        "live-worker",
        [
            RecipientOutcome("ann@example.com", "delivered", 250, "ok"),
            RecipientOutcome("bob@example.com", "failed", 550, "no such user"),
        ],
    )
    # The dead worker's late report must not turn a delivered recipient back into something else.
    await a.record(mid, "dead-worker", [RecipientOutcome("ann@example.com", "failed", 554, "late")])
    status = await a.status(mid)
    assert status.state == "partial"
    assert [(r.recipient, r.state, r.last_code) for r in status.recipients] == [
        ("ann@example.com", "delivered", 250),
        ("bob@example.com", "failed", 550),
    ]
    assert await a.claim("anyone", 10, lease_seconds=600) == []


async def test_idle_worker_wakes_on_enqueue_from_another_node(nodes: list[PostgresOutbox]) -> None:
    worker, web = nodes[0], nodes[1]
    await worker.wait_for_work(0)  # LISTEN is set up; nothing pending
    waiter = asyncio.create_task(worker.wait_for_work(3600))
    await asyncio.sleep(0)
    assert not waiter.done()
    await web.enqueue([envelope(1)])
    # Without NOTIFY this would wait the full hour; the outer bound only keeps a failure from hanging.
    await asyncio.wait_for(waiter, 60)
    assert len(await worker.claim("w", 10, 60)) == 1


async def test_released_messages_are_claimable_again_and_untouched(nodes: list[PostgresOutbox]) -> None:
    ids = (await nodes[0].enqueue([envelope(i) for i in range(3)])).ids
    got = await nodes[0].claim("w1", 10, 600)
    assert await nodes[1].claim("w2", 10, 600) == []
    await nodes[0].release([c.id for c in got], "w1")
    again = await nodes[1].claim("w2", 10, 600)
    assert sorted(c.id for c in again) == sorted(ids)
    assert all(c.attempts == 0 for c in again)
    assert {(await nodes[2].status(i)).recipients[0].state for i in ids} == {"sending"}


async def test_retention_deletes_old_final_messages_in_small_batches(nodes: list[PostgresOutbox], url: str) -> None:
    box = nodes[0]
    ids = (await box.enqueue([envelope(i) for i in range(8)])).ids
    claimed = {c.id: c for c in await box.claim("w", 10, 600)}
    for i in ids[:5]:
        await box.record(i, "w", [RecipientOutcome("ann@example.com", "delivered", 250, "ok")])
    await box.record(ids[5], "w", [RecipientOutcome("ann@example.com", "failed", 550, "no")])
    await box.release([i for i in claimed if i in ids[6:]], "w")
    assert await box.purge(older_than_days=1) == 0  # everything is younger than a day
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE mailsvc_message SET updated_at = now() - interval '3 days'")
        assert await box.purge(older_than_days=2, batch_size=2) == 6
        left = await conn.fetchval("SELECT count(*) FROM mailsvc_message")
        bodies = await conn.fetchval("SELECT count(*) FROM mailsvc_body")
        rcpts = await conn.fetchval("SELECT count(*) FROM mailsvc_recipient")
    finally:
        await conn.close()
    assert (left, bodies, rcpts) == (2, 2, 2)  # the two still queued stay, whatever their age
    with pytest.raises(NotFoundError):
        await box.status(ids[0])
    assert (await box.status(ids[7])).state == "queued"


async def test_ping_fails_on_a_read_only_database(url: str) -> None:
    box = PostgresOutbox(url)
    await box.open()
    await box.close()
    ro = PostgresOutbox(url + "&default_transaction_read_only=on", migrate=False)
    await ro.open()
    try:
        with pytest.raises(OutboxError, match="read-only"):
            await ro.ping()
        with pytest.raises(OutboxError, match="could not enqueue"):
            await ro.enqueue([envelope(1)])
    finally:
        await ro.close()


async def test_retention_setting_purges_while_the_outbox_is_open(nodes: list[PostgresOutbox], url: str) -> None:
    box = nodes[0]
    ids = (await box.enqueue([envelope(i) for i in range(3)])).ids
    await box.claim("w", 10, 600)
    await box.record_many("w", [(i, [RecipientOutcome("ann@example.com", "delivered", 250, "ok")]) for i in ids[:2]])
    await box.release([ids[2]], "w")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE mailsvc_message SET updated_at = now() - interval '8 days' WHERE id = $1", ids[0])
        kept = PostgresOutbox(url, retention_days=7, retention_interval=3600)
        await kept.open()
        try:
            for _ in range(600):  # the first purge runs as the outbox opens, in the background
                if await conn.fetchval("SELECT count(*) FROM mailsvc_message") < 3:
                    break
                await asyncio.sleep(0.05)
        finally:
            await kept.close()
        left = sorted(r["id"] for r in await conn.fetch("SELECT id FROM mailsvc_message"))
    finally:
        await conn.close()
    assert left == sorted(ids[1:])  # delivered but recent, and still queued, are kept


async def test_a_schema_newer_than_the_code_is_refused(url: str) -> None:
    box = PostgresOutbox(url)
    await box.open()
    await box.pool.execute("INSERT INTO mailsvc_schema_version (version, name) VALUES (99, 'from_the_future')")
    await box.close()
    old_node = PostgresOutbox(url)
    with pytest.raises(OutboxError, match="version 99.*upgrade mailsvc on this node"):
        await old_node.open()
    with pytest.raises(OutboxError, match="not open"):
        await old_node.pending_count()
