"""Workers and the suppression list, over real SMTP (aiosmtpd) and both outbox backends.

A relay's ``550 5.1.1`` at RCPT puts the address on the tenant's list for every stream; a policy
refusal (``550 5.7.1``) does not. An address suppressed while its batch waits in the queue is
never sent to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailsvc.outbox import Outbox
from mailsvc.outbox.states import FINAL_MESSAGE
from tests.outbox_impls import IMPLEMENTATIONS
from tests.servers import RecordingHandler, smtp_server
from tests.test_worker import envelope, until, workers


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await IMPLEMENTATIONS[request.param](tmp_path)
    yield box
    await box.close()


async def test_user_unknown_at_rcpt_suppresses_the_address_and_a_policy_refusal_does_not(outbox: Outbox) -> None:
    handler = RecordingHandler()
    handler.refuse["gone@example.com"] = "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
    handler.refuse["policy@example.com"] = "550 5.7.1 <policy@example.com>: Relay access denied"
    async with smtp_server(handler) as port:
        first = await outbox.enqueue(
            [envelope("gone@example.com", "policy@example.com", "ok@example.com")], tenant="t1", stream="news"
        )
        async with workers(outbox, port):
            done = await until(outbox, first.ids[0], lambda s: s.state in FINAL_MESSAGE)
        assert {r.recipient: r.state for r in done.recipients} == {
            "gone@example.com": "failed",
            "policy@example.com": "failed",
            "ok@example.com": "delivered",
        }
        (entry,) = await outbox.suppressions("t1")
        assert (entry.address, entry.stream, entry.reason) == ("gone@example.com", "*", "hard_bounce")
        assert entry.source.startswith("smtp:550 5.1.1 <gone@example.com>")
        assert await outbox.suppressions("t2") == []

        # The next message, on another stream: 'gone' is not tried again, 'policy' is.
        second = await outbox.enqueue([envelope("gone@example.com", "policy@example.com")], tenant="t1", stream="x")
        async with workers(outbox, port):
            done = await until(outbox, second.ids[0], lambda s: s.state in FINAL_MESSAGE)
    states = {r.recipient: (r.state, r.last_reply) for r in done.recipients}
    assert states["gone@example.com"] == ("suppressed", "suppressed: hard_bounce")
    assert states["policy@example.com"][0] == "failed"
    assert [r.rcpt_tos for r in handler.received] == [["ok@example.com"]]


async def test_an_address_suppressed_while_its_batch_is_queued_is_not_sent_to(outbox: Outbox) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        batch = await outbox.enqueue(
            [envelope("ann@example.com"), envelope("bob@example.com"), envelope("ann@example.com", "cy@example.com")],
            batch=True,
            tenant="t1",
            stream="news",
        )
        await outbox.suppress("t1", ["Ann@Example.com"], "news", reason="unsubscribe", source="one-click")
        async with workers(outbox, port):
            for id_ in batch.ids:
                await until(outbox, id_, lambda s: s.state in FINAL_MESSAGE)
    assert batch.batch_id is not None
    assert await outbox.batch_status(batch.batch_id) == {"suppressed": 1, "delivered": 2}
    assert sorted(a for r in handler.received for a in r.rcpt_tos) == ["bob@example.com", "cy@example.com"]
    third = await outbox.status(batch.ids[2])
    assert {r.recipient: r.state for r in third.recipients} == {
        "ann@example.com": "suppressed",
        "cy@example.com": "delivered",
    }
