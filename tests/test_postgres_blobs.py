"""Shared blobs on PostgreSQL with several nodes: what only concurrent transactions can show.

A blob is deleted by whichever worker finishes the last message that needs it, while
another node may be enqueueing a batch that uses the same blob. These tests hold one
transaction open at a chosen point (a chunk generator that waits) and check that a
worker neither waits for it nor deletes a blob it is about to reference, that two
workers finishing the last two messages at once still delete it, and that the
retention purge takes any blob nothing names.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence

import pytest

from mailsvc.message import Envelope
from mailsvc.mimewriter import attachment_body
from mailsvc.outbox import RecipientOutcome, RecipientState
from mailsvc.outbox.postgres import PostgresOutbox
from tests.blobtools import blob_rows
from tests.pgtools import fresh_schema
from tests.test_outbox_blobs import FILE, stream, with_file

BLOB = attachment_body(FILE)


@pytest.fixture
async def nodes() -> AsyncIterator[list[PostgresOutbox]]:
    """Two outboxes (separate pools, as two nodes) on one fresh schema."""
    async with fresh_schema("blob") as url:
        boxes = [PostgresOutbox(url, pool_size=4) for _ in range(2)]
        await asyncio.gather(*(b.open() for b in boxes))
        try:
            yield boxes
        finally:
            await asyncio.gather(*(b.close() for b in boxes))


async def finish(box: PostgresOutbox, owner: str, claimed: dict[str, Envelope], ids: Sequence[str]) -> None:
    await box.record_many(
        owner, [(i, [RecipientOutcome(claimed[i].recipients[0], RecipientState.DELIVERED, 250)]) for i in ids]
    )


async def test_a_worker_neither_waits_for_nor_breaks_an_enqueue_holding_the_blob(nodes: list[PostgresOutbox]) -> None:
    web, worker = nodes
    [old] = await stream(web, with_file(1), BLOB)
    claimed = {c.id: c.envelope for c in await worker.claim("w", 10, 60)}
    first_chunk_stored, go_on = asyncio.Event(), asyncio.Event()
    new = with_file(4, start=10)

    async def slow_chunks() -> AsyncIterator[list[Envelope]]:
        yield new[:2]
        first_chunk_stored.set()
        await go_on.wait()
        yield new[2:]

    enqueue = asyncio.create_task(web.enqueue_stream(4, slow_chunks(), batch=True, shared=[BLOB]))
    await asyncio.wait_for(first_chunk_stored.wait(), 10)
    await asyncio.sleep(0.1)  # the first chunk's rows are written inside the open transaction
    # The last message that needs the blob so far is delivered while the batch is still being stored.
    await asyncio.wait_for(finish(worker, "w", claimed, [old]), 5)
    assert await blob_rows(worker) == (1, 0)  # kept: the open enqueue holds it
    go_on.set()
    result = await enqueue
    got = {c.id: c.envelope for c in await worker.claim("w", 10, 60)}
    assert [got[i] for i in result.ids] == new  # whole, byte for byte
    await finish(worker, "w", got, result.ids)
    assert await blob_rows(worker) == (0, 0)


async def test_two_workers_finishing_the_last_two_messages_at_once_delete_the_blob(
    nodes: list[PostgresOutbox],
) -> None:
    for round_ in range(5):
        ids = await stream(nodes[0], with_file(2, start=round_ * 2), BLOB)
        a = {c.id: c.envelope for c in await nodes[0].claim("a", 1, 60)}
        b = {c.id: c.envelope for c in await nodes[1].claim("b", 1, 60)}
        assert sorted([*a, *b]) == sorted(ids)
        await asyncio.gather(finish(nodes[0], "a", a, list(a)), finish(nodes[1], "b", b, list(b)))
        assert await blob_rows(nodes[0]) == (0, 0), f"round {round_}"


async def test_the_purge_deletes_blobs_nothing_names(nodes: list[PostgresOutbox]) -> None:
    box = nodes[0]
    orphan = os.urandom(5000)
    async with box.pool.acquire() as conn:  # as an enqueue that held the blob and then rolled back leaves it
        await conn.execute("INSERT INTO mailsvc_blob (digest, data) VALUES ($1, $2)", "0" * 64, attachment_body(orphan))
    await stream(box, with_file(1), BLOB)
    assert await blob_rows(box) == (2, 1)
    assert await box.purge(older_than_days=1) == 0
    assert await blob_rows(box) == (1, 1)  # the orphan went; the queued message's blob stays
