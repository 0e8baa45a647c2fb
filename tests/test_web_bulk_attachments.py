"""A bulk attachment is stored once per batch (issue 13, finding 7), through the real app, on both outboxes.

Before: every message of a batch stored its full MIME, so a 9 MB file to 50 recipients
grew the outbox by 1.2 GB. Now the file's encoded body is stored once and each
message records where it goes back. A request with a 1 MB file to 200 recipients must grow
the outbox by about one copy; a batch must survive a restart before delivery, arrive at
a real aiosmtpd exactly as a build without deduplication would send it, and leave no
blob behind once every message is final.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailsvc import MailConfig, Message
from mailsvc.config import ServiceConfig
from mailsvc.mimewriter import attachment_body
from mailsvc.outbox import Outbox, open_outbox
from mailsvc.worker import WorkerGroup
from tests.blobtools import blob_rows, stored_bytes
from tests.pgtools import fresh_schema
from tests.servers import RecordingHandler
from tests.webkit import AUTH, SENDER, running

FAST: dict[str, Any] = dict(
    retry_first=0.05, retry_max=0.2, poll_interval=0.02, lease_seconds=60.0, workers=1, dev_mode=False
)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("att") as url:
            yield url


def bulk_body(raw: bytes, count: int) -> dict[str, Any]:
    return {
        "subject": "Report for {{ name }}",
        "text": "Dear {{ name }}, the report is attached.",
        "attachments": [
            {"filename": "report.pdf", "content_type": "application/pdf", "content": base64.b64encode(raw).decode()}
        ],
        "recipients": [{"to": f"u{i}@example.com", "context": {"name": f"U{i}"}} for i in range(count)],
    }


def mask(data: bytes) -> bytes:
    """A message's bytes without what every build mints anew: the Date and Message-ID lines, the boundaries."""
    data = re.sub(rb"(?im)^(date|message-id): [^\r\n]*\r\n", b"", data)
    for n, boundary in enumerate(dict.fromkeys(re.findall(rb'boundary="([^"]+)"', data))):
        data = data.replace(boundary, b"=boundary%d=" % n)
    return data


def reference(i: int, raw: bytes) -> bytes:
    """The bytes recipient ``i`` gets from a build without any outbox or deduplication."""
    msg = Message(
        f"Report for U{i}",
        recipients=[f"u{i}@example.com"],
        body=f"Dear U{i}, the report is attached.",
        sender=SENDER,
    )
    msg.attach("report.pdf", "application/pdf", raw)
    return msg.build().data


async def drained(outbox: Outbox, within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await outbox.pending_count():
        assert loop.time() < deadline, "the batch was not delivered"
        await asyncio.sleep(0.05)


async def test_a_bulk_attachment_to_200_recipients_grows_the_outbox_by_one_copy(
    database_url: str, tmp_path: Path, smtp_port: int, handler: RecordingHandler
) -> None:
    raw = os.urandom(1 << 20)  # random: nothing compresses it, so sizes count copies
    one_copy = len(attachment_body(raw))
    async with running(smtp_port, handler, tmp_path, workers=0, service={"database_url": database_url}) as svc:
        before = await stored_bytes(svc.outbox)
        r = await svc.client.post("/api/messages/bulk", json=bulk_body(raw, 200), headers=AUTH)
        assert r.status_code == 202, await r.get_data(as_text=True)
        grown = await stored_bytes(svc.outbox) - before
        assert await blob_rows(svc.outbox) == (1, 200)
    # 200 inline copies were 200 * one_copy; the messages' own rows, indexes and pages are the rest.
    assert grown < 3 * one_copy, f"the outbox grew by {grown} bytes for one {one_copy}-byte attachment"


async def test_a_bulk_attachment_survives_a_restart_and_arrives_as_built(
    database_url: str, tmp_path: Path, smtp_port: int, handler: RecordingHandler
) -> None:
    raw = os.urandom(1 << 20)
    blob = attachment_body(raw)
    count = 30
    # The service accepts the batch and stops before any delivery (no workers), as a crash would.
    async with running(smtp_port, handler, tmp_path, workers=0, service={"database_url": database_url}) as svc:
        r = await svc.client.post("/api/messages/bulk", json=bulk_body(raw, count), headers=AUTH)
        assert r.status_code == 202, await r.get_data(as_text=True)
    # Restarted: a new outbox on the same database, and a worker, deliver every message.
    async with open_outbox(database_url) as outbox:
        group = WorkerGroup.from_service(
            outbox, MailConfig(server="127.0.0.1", port=smtp_port, timeout=30), ServiceConfig(**FAST)
        )
        await group.start()
        try:
            await drained(outbox)
        finally:
            await group.stop()
        assert await blob_rows(outbox) == (0, 0)  # every message final: the blob is gone

    got = sorted(handler.received, key=lambda g: int(g.rcpt_tos[0][1:].split("@")[0]))
    assert [g.rcpt_tos for g in got] == [[f"u{i}@example.com"] for i in range(count)]  # once each
    for i, g in enumerate(got):
        built = reference(i, raw)
        assert g.data.count(blob) == built.count(blob) == 1, f"recipient {i}: the attachment's bytes differ"
        assert mask(g.data) == mask(built), f"recipient {i}: not the message a whole build gives"
        [attachment] = list(g.message.iter_attachments())
        assert (attachment.get_filename(), attachment.get_content()) == ("report.pdf", raw)
