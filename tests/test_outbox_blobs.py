"""Shared blobs (issue 13, finding 7): a bulk attachment stored once per batch, on every outbox.

The contract: ``enqueue_stream(shared=...)`` stores each shared blob once, a claim gives
back exactly the bytes that were enqueued, and a blob is gone once no message that
needs it is still owed an attempt. Run against every implementation in
``tests/outbox_impls.py``, with the database read directly (``tests/blobtools.py``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsvc import Message
from mailsvc.errors import OutboxError
from mailsvc.message import Attachment, Envelope
from mailsvc.mimewriter import attachment_body
from mailsvc.outbox import Outbox, RecipientOutcome, RecipientState
from mailsvc.outbox.blobs import SHARED_MIN, SharedBlobs, Splice, reassemble
from tests.blobtools import blob_rows, stored_bytes
from tests.outbox_impls import IMPLEMENTATIONS

MakeOutbox = Callable[..., Awaitable[Outbox]]
FILE = os.urandom(30_000)  # random: nothing compresses it away, so sizes measure copies


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def make_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeOutbox]:
    """Outboxes of one implementation on one database (a second call is a restart or a second node)."""
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


def with_file(n: int, data: bytes = FILE, start: int = 0, **extra: Any) -> list[Envelope]:
    """``n`` messages (different text each) carrying ``data`` as an attachment, built as the API builds them."""
    envs = []
    for i in range(start, start + n):
        msg = Message(f"Report {i}", recipients=[f"u{i}@example.com"], body=f"Hello {i}", sender="shop@example.com")
        msg.attach("report.bin", "application/octet-stream", data)
        for name, value in extra.items():
            msg.attach(name, "application/octet-stream", value)
        envs.append(msg.build())
    return envs


async def chunks(envs: Sequence[Envelope], size: int) -> AsyncIterator[list[Envelope]]:
    for i in range(0, len(envs), size):
        yield list(envs[i : i + size])


async def stream(outbox: Outbox, envs: Sequence[Envelope], *blobs: bytes, tenant: str | None = None) -> list[str]:
    result = await outbox.enqueue_stream(len(envs), chunks(envs, 7), batch=True, tenant=tenant, shared=blobs)
    return result.ids


async def deliver(outbox: Outbox, ids: Sequence[str], state: RecipientState = RecipientState.DELIVERED) -> None:
    claimed = {c.id: c for c in await outbox.claim("w", 1000, 60)}
    for id_ in ids:
        env = claimed[id_].envelope
        await outbox.record(
            id_, "w", [RecipientOutcome(r, state, 250 if state == "delivered" else 550) for r in env.recipients]
        )
    await outbox.release([i for i in claimed if i not in ids], "w")


# -- the writer's bytes, and the cut ------------------------------------------------------------


@pytest.mark.parametrize("size", [SHARED_MIN, 57 * 80, 57 * 80 + 1, 100_003])
@pytest.mark.parametrize("shape", ["attachment", "inline", "utf8", "text-data"])
def test_attachment_body_is_exactly_what_the_writer_writes(size: int, shape: str) -> None:
    data: bytes | str = os.urandom(size) if shape != "text-data" else "é" * (size // 2)
    subject = "Grüße" if shape == "utf8" else "Hi"
    msg = Message(subject, recipients=["ann@example.com"], body="x", html="<p>x</p>", sender="shop@example.com")
    if shape == "inline":
        msg.attachments.append(Attachment("logo.png", "image/png", data, "inline", {"Content-ID": "<logo>"}))
    else:
        msg.attach("f.bin", "application/octet-stream", data)
    built = msg.build().data
    assert built.count(attachment_body(data)) == 1


@given(
    head=st.binary(max_size=300),
    tail=st.binary(max_size=300),
    between=st.binary(max_size=50),
    repeat=st.integers(min_value=1, max_value=3),
    overlap=st.booleans(),
)
def test_cut_then_reassemble_gives_back_every_byte(
    head: bytes, tail: bytes, between: bytes, repeat: int, overlap: bool
) -> None:
    blob = bytes(range(256)) * 20  # 5,120 bytes
    other = blob[100:4300] if overlap else b"Z" * 4200  # inside the first one, or its own
    data = head + (blob + between) * repeat + other + tail
    shared = SharedBlobs([blob, other, b"tiny"])
    rest, splices = shared.cut(data)
    assert reassemble(rest, splices, shared.by_digest) == data
    assert len(rest) <= len(data) - repeat * len(blob)
    assert b"tiny" not in shared.by_digest.values()  # under SHARED_MIN: never a blob


def test_bytes_without_the_blob_are_kept_whole() -> None:
    shared = SharedBlobs([FILE])
    data = b"Subject: looks like a marker\r\n\r\n" + FILE[:-1]  # all but the last byte: not the blob
    assert shared.cut(data) == (data, ())


def test_a_splice_that_does_not_fit_is_refused_not_sent() -> None:
    shared = SharedBlobs([FILE])
    rest, splices = shared.cut(b"x" + FILE)
    with pytest.raises(OutboxError):
        reassemble(rest, [Splice(len(rest) + 1, splices[0].digest)], shared.by_digest)
    with pytest.raises(OutboxError):
        reassemble(rest, splices, {})


# -- the outbox: stored once, claimed whole, removed when the last message is final -------------


async def test_a_batch_stores_its_attachment_once_and_claims_every_byte(outbox: Outbox) -> None:
    big = os.urandom(300_000)  # large enough that one copy outweighs the rows' and pages' own overhead
    envs = with_file(40, big)
    empty = await stored_bytes(outbox)
    ids = await stream(outbox, envs, attachment_body(big))
    assert await blob_rows(outbox) == (1, 40)
    one_copy = len(attachment_body(big))
    assert await stored_bytes(outbox) - empty < 3 * one_copy  # 40 inline copies would be 40 of them
    claimed = {c.id: c.envelope for c in await outbox.claim("w", 100, 60)}
    assert [claimed[i] for i in ids] == envs  # every field, and data byte for byte


async def test_the_blob_goes_when_the_last_message_needing_it_is_final(outbox: Outbox) -> None:
    envs = with_file(3)
    ids = await stream(outbox, envs, attachment_body(FILE))
    claimed = {c.id: c.envelope.recipients[0] for c in await outbox.claim("w", 10, 60)}
    now = datetime.now(UTC)
    await outbox.record(ids[0], "w", [RecipientOutcome(claimed[ids[0]], RecipientState.DELIVERED, 250)])
    await outbox.record(ids[1], "w", [RecipientOutcome(claimed[ids[1]], RecipientState.DEFERRED, 451, "", now)])
    assert await blob_rows(outbox) == (1, 2)  # a deferred message still needs it
    await outbox.record(ids[2], "w", [RecipientOutcome(claimed[ids[2]], RecipientState.FAILED, 550)])
    assert await blob_rows(outbox) == (1, 1)  # failed is final too
    [retry] = await outbox.claim("w", 10, 60)
    assert (retry.id, retry.envelope.data) == (ids[1], envs[1].data)
    await outbox.record(retry.id, "w", [RecipientOutcome(claimed[ids[1]], RecipientState.DELIVERED, 250)])
    assert await blob_rows(outbox) == (0, 0)
    assert await outbox.pending_count() == 0


async def test_two_batches_share_one_blob_until_both_are_done(outbox: Outbox) -> None:
    first = await stream(outbox, with_file(2), attachment_body(FILE), tenant="acme")
    second = await stream(outbox, with_file(2, start=2), attachment_body(FILE), tenant="globex")
    assert await blob_rows(outbox) == (1, 4)
    await deliver(outbox, first)
    assert await blob_rows(outbox) == (1, 2)
    await deliver(outbox, second)
    assert await blob_rows(outbox) == (0, 0)


async def test_only_messages_holding_the_exact_bytes_are_cut(outbox: Outbox) -> None:
    """Another file, and text that mentions the blob's first line, stay whole; several blobs per message work."""
    logo = os.urandom(8_000)
    cut = with_file(2, logo=logo)
    near = Message("Near", recipients=["n@example.com"], body=attachment_body(FILE)[:76].decode(), sender="s@x.com")
    near.attach("other.bin", "application/octet-stream", os.urandom(30_000))
    envs = [*cut, near.build()]
    ids = await stream(outbox, envs, attachment_body(FILE), attachment_body(logo), attachment_body(b"never used" * 999))
    assert await blob_rows(outbox) == (2, 4)  # two blobs in two messages; the unused one is not stored
    claimed = {c.id: c.envelope for c in await outbox.claim("w", 10, 60)}
    assert [claimed[i].data for i in ids] == [e.data for e in envs]


async def test_queued_mail_is_whole_after_a_restart(make_outbox: MakeOutbox) -> None:
    first = await make_outbox()
    envs = with_file(5)
    ids = await stream(first, envs, attachment_body(FILE))
    await first.close()  # as a crash between the 202 and the first delivery leaves it
    again = await make_outbox()
    claimed = {c.id: c.envelope for c in await again.claim("w", 10, 60)}
    assert [claimed[i] for i in ids] == envs
    for id_, env in claimed.items():
        await again.record(id_, "w", [RecipientOutcome(env.recipients[0], RecipientState.DELIVERED, 250)])
    assert await blob_rows(again) == (0, 0)


async def test_a_rolled_back_enqueue_leaves_no_blob(outbox: Outbox) -> None:
    async def failing() -> AsyncIterator[list[Envelope]]:
        yield with_file(2)
        raise ValueError("the caller's build failed")

    with pytest.raises(ValueError, match="build failed"):
        await outbox.enqueue_stream(4, failing(), batch=True, shared=[attachment_body(FILE)])
    assert await blob_rows(outbox) == (0, 0) and await outbox.pending_count() == 0
