"""The suppression list in the outbox contract (issue 15), on every implementation in ``tests/outbox_impls.py``.

What the one-click unsubscribe relies on: an address a tenant suppressed on a stream is stored
``suppressed`` by the next bulk enqueue on that stream and never claimed, on every node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from mailsvc import Message
from mailsvc.message import Envelope
from mailsvc.outbox import MessageState, Outbox, RecipientState
from tests.outbox_impls import IMPLEMENTATIONS


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await IMPLEMENTATIONS[request.param](tmp_path)
    yield box
    await box.close()


def envelope(*recipients: str) -> Envelope:
    return Message("News", recipients=list(recipients), body="hi", sender="shop@example.com").build()


async def _chunks(envelopes: Sequence[Envelope]) -> AsyncIterator[Sequence[Envelope]]:
    yield envelopes


async def enqueue(outbox: Outbox, envelopes: Sequence[Envelope], tenant: str | None, stream: str | None) -> list[str]:
    result = await outbox.enqueue_stream(
        len(envelopes), _chunks(envelopes), batch=True, tenant=tenant, suppress_stream=stream
    )
    return result.ids


async def test_a_suppressed_recipient_is_stored_final_and_never_claimed(outbox: Outbox) -> None:
    assert await outbox.suppress("t1", ["Ann@Example.com"], "news", reason="unsubscribe", source="test") == 1
    ids = await enqueue(outbox, [envelope("ann@example.com"), envelope("bob@example.com")], "t1", "news")
    status = await outbox.status(ids[0])
    assert status.state is MessageState.SUPPRESSED
    assert [(r.recipient, r.state) for r in status.recipients] == [("ann@example.com", RecipientState.SUPPRESSED)]
    assert status.recipients[0].last_reply == "suppressed: unsubscribe"
    assert await outbox.pending_count() == 1
    claimed = await outbox.claim("w", 10, 60)
    assert [(c.id, c.envelope.recipients) for c in claimed] == [(ids[1], ("bob@example.com",))]


async def test_only_the_suppressed_recipients_of_a_message_are_left_out(outbox: Outbox) -> None:
    await outbox.suppress("t1", ["ann@example.com"], "news", reason="unsubscribe", source="test")
    (id_,) = await enqueue(outbox, [envelope("ANN@example.com", "bob@example.com")], "t1", "news")
    claimed = await outbox.claim("w", 10, 60)
    assert [c.envelope.recipients for c in claimed] == [("bob@example.com",)]
    states = {r.recipient: r.state for r in (await outbox.status(id_)).recipients}
    assert states == {"ANN@example.com": RecipientState.SUPPRESSED, "bob@example.com": RecipientState.SENDING}


@pytest.mark.parametrize(("tenant", "stream"), [("t2", "news"), ("t1", "other"), ("t1", None), (None, "news")], ids=str)
async def test_a_suppression_holds_for_its_own_tenant_and_stream_only(
    outbox: Outbox, tenant: str | None, stream: str | None
) -> None:
    await outbox.suppress("t1", ["ann@example.com"], "news", reason="unsubscribe", source="test")
    await enqueue(outbox, [envelope("ann@example.com")], tenant, stream)
    assert [c.envelope.recipients for c in await outbox.claim("w", 10, 60)] == [("ann@example.com",)]


async def test_suppressing_twice_keeps_the_first_record(outbox: Outbox) -> None:
    assert await outbox.suppress(None, ["a@example.com", "b@example.com"], "s", reason="unsubscribe", source="x") == 2
    assert await outbox.suppress(None, ["A@example.com"], "s", reason="manual", source="y") == 0
    rows = await outbox.suppressions(None)
    assert [(r.tenant, r.address, r.stream, r.reason, r.source) for r in rows] == [
        ("", "a@example.com", "s", "unsubscribe", "x"),
        ("", "b@example.com", "s", "unsubscribe", "x"),
    ]
    assert await outbox.suppressions("t1") == []
