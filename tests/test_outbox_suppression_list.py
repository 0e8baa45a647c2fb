"""The suppression list's rules in the outbox contract, on SQLite and PostgreSQL (``tests/outbox_impls.py``).

The scope rule (every-stream entries for bounces, complaints and manual ones; an unsubscribe on its
stream), single messages checked like bulk ones, the claim's re-check of mail queued before an
entry was added, hard bounces recorded from a worker's outcome, pages and removal per tenant, and
addresses keyed in Python (SQLite's ``lower()`` leaves non-ASCII letters alone).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailsvc import Message
from mailsvc.message import Envelope
from mailsvc.outbox import MessageState, Outbox, RecipientOutcome, RecipientState
from tests.outbox_impls import IMPLEMENTATIONS


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await IMPLEMENTATIONS[request.param](tmp_path)
    yield box
    await box.close()


def envelope(*recipients: str) -> Envelope:
    return Message("Hi", recipients=list(recipients), body="hi", sender="shop@example.com").build()


async def states(outbox: Outbox, id_: str) -> dict[str, str]:
    return {r.recipient: r.state for r in (await outbox.status(id_)).recipients}


@pytest.mark.parametrize("stream", ["news", "default", None])
async def test_an_every_stream_entry_stops_every_stream(outbox: Outbox, stream: str | None) -> None:
    await outbox.suppress("t1", ["ann@example.com"], None, reason="manual", source="test")
    result = await outbox.enqueue([envelope("ann@example.com", "bob@example.com")], tenant="t1", stream=stream)
    assert await states(outbox, result.ids[0]) == {"ann@example.com": "suppressed", "bob@example.com": "queued"}
    assert (await outbox.status(result.ids[0])).recipients[0].last_reply == "suppressed: manual"


async def test_an_unsubscribe_stops_its_stream_only_for_single_messages_too(outbox: Outbox) -> None:
    await outbox.suppress("t1", ["ann@example.com"], "news", reason="unsubscribe", source="test")
    on_news = await outbox.enqueue([envelope("ann@example.com")], tenant="t1", stream="news")
    elsewhere = await outbox.enqueue([envelope("ann@example.com")], tenant="t1", stream="receipts")
    other_tenant = await outbox.enqueue([envelope("ann@example.com")], tenant="t2", stream="news")
    assert (await outbox.status(on_news.ids[0])).state is MessageState.SUPPRESSED
    claimed = await outbox.claim("w", 10, 60)
    assert sorted(c.id for c in claimed) == sorted([elsewhere.ids[0], other_tenant.ids[0]])


async def test_a_message_whose_every_recipient_is_suppressed_is_final_and_counted(outbox: Outbox) -> None:
    await outbox.suppress(None, ["ann@example.com", "bob@example.com"], None, reason="complaint", source="test")
    result = await outbox.enqueue([envelope("ann@example.com", "Bob@Example.com")], batch=True, stream="default")
    assert (await outbox.status(result.ids[0])).state is MessageState.SUPPRESSED
    assert result.batch_id is not None
    assert await outbox.batch_status(result.batch_id) == {"suppressed": 1}
    assert await outbox.pending_count() == 0
    assert await outbox.claim("w", 10, 60) == []


async def test_non_ascii_addresses_match_in_any_case_on_every_backend(outbox: Outbox) -> None:
    await outbox.suppress("t1", ["ÄNNE@bücher.example"], None, reason="manual", source="test")
    assert [r.address for r in await outbox.suppressions("t1")] == ["änne@xn--bcher-kva.example"]
    result = await outbox.enqueue([envelope("änne@bücher.example", "Änne@BÜCHER.example")], tenant="t1")
    assert set((await states(outbox, result.ids[0])).values()) == {"suppressed"}


async def test_a_claim_leaves_out_an_address_suppressed_after_its_message_was_queued(outbox: Outbox) -> None:
    gone = await outbox.enqueue([envelope("ann@example.com")], tenant="t1", stream="news")
    partly = await outbox.enqueue([envelope("ann@example.com", "bob@example.com")], tenant="t1", stream="news")
    other_stream = await outbox.enqueue([envelope("ann@example.com")], tenant="t1", stream="receipts")
    other_tenant = await outbox.enqueue([envelope("ann@example.com")], tenant="t2", stream="news")
    await outbox.suppress("t1", ["ANN@example.com"], "news", reason="unsubscribe", source="one-click")
    claimed = {c.id: c.envelope.recipients for c in await outbox.claim("w", 10, 60)}
    assert claimed == {
        partly.ids[0]: ("bob@example.com",),
        other_stream.ids[0]: ("ann@example.com",),
        other_tenant.ids[0]: ("ann@example.com",),
    }
    status = await outbox.status(gone.ids[0])
    assert status.state is MessageState.SUPPRESSED
    assert status.recipients[0].last_reply == "suppressed: unsubscribe"
    assert await states(outbox, partly.ids[0]) == {"ann@example.com": "suppressed", "bob@example.com": "sending"}
    await outbox.record(partly.ids[0], "w", [RecipientOutcome("bob@example.com", RecipientState.DELIVERED)])
    assert (await outbox.status(partly.ids[0])).state is MessageState.DELIVERED


async def test_a_deferred_recipient_is_checked_again_at_its_retry(outbox: Outbox) -> None:
    result = await outbox.enqueue([envelope("ann@example.com")], tenant="t1", stream="news")
    (msg,) = await outbox.claim("w", 10, 60)
    await outbox.record(msg.id, "w", [RecipientOutcome("ann@example.com", RecipientState.DEFERRED, 451, "later")])
    await outbox.suppress("t1", ["ann@example.com"], None, reason="hard_bounce", source="bounce")
    assert await outbox.claim("w", 10, 60) == []
    assert (await outbox.status(result.ids[0])).state is MessageState.SUPPRESSED


async def test_a_nonexistent_address_refused_by_the_relay_is_suppressed_everywhere(outbox: Outbox) -> None:
    result = await outbox.enqueue([envelope("gone@example.com", "policy@example.com")], tenant="t1", stream="news")
    (msg,) = await outbox.claim("w", 10, 60)
    await outbox.record(
        msg.id,
        "w",
        [
            RecipientOutcome("gone@example.com", RecipientState.FAILED, 550, "5.1.1 <gone@example.com>: user unknown"),
            RecipientOutcome("policy@example.com", RecipientState.FAILED, 550, "5.7.1 rejected by policy"),
        ],
    )
    (entry,) = await outbox.suppressions("t1")
    assert (entry.address, entry.stream, entry.reason) == ("gone@example.com", "*", "hard_bounce")
    assert entry.source == "smtp:550 5.1.1 <gone@example.com>: user unknown"
    assert (await outbox.status(result.ids[0])).state is MessageState.FAILED
    later = await outbox.enqueue([envelope("gone@example.com")], tenant="t1", stream="receipts")
    assert (await outbox.status(later.ids[0])).state is MessageState.SUPPRESSED


async def test_pages_filters_and_removal_stay_within_the_tenant(outbox: Outbox) -> None:
    await outbox.suppress("t1", [f"u{i}@example.com" for i in range(5)], None, reason="manual", source="s")
    await outbox.suppress("t1", ["u0@example.com", "x@example.com"], "news", reason="unsubscribe", source="s")
    await outbox.suppress("t2", ["u0@example.com"], None, reason="manual", source="s")
    seen: list[tuple[str, str]] = []
    after = None
    while True:
        page = await outbox.list_suppressions("t1", limit=3, after=after)
        seen.extend((r.stream, r.address) for r in page)
        if len(page) < 3:
            break
        after = (page[-1].stream, page[-1].address)
    assert seen == sorted(seen) and len(seen) == 7 and len(set(seen)) == 7
    assert [r.address for r in await outbox.list_suppressions("t1", reason="unsubscribe")] == [
        "u0@example.com",
        "x@example.com",
    ]
    assert [r.stream for r in await outbox.list_suppressions("t1", address="U0@example.com")] == ["*", "news"]
    assert [r.address for r in await outbox.list_suppressions("t1", stream="news")] == [
        "u0@example.com",
        "x@example.com",
    ]
    assert await outbox.unsuppress("t1", "U0@example.com", "news") == 1
    assert await outbox.unsuppress("t1", "u0@example.com", "news") == 0
    assert await outbox.unsuppress("t1", "u0@example.com") == 1
    assert await outbox.list_suppressions("t1", address="u0@example.com") == []
    assert len(await outbox.list_suppressions("t2")) == 1  # t1's removals left t2's entry alone
    assert await outbox.unsuppress("t3", "u1@example.com") == 0
