"""Property: arbitrary strings in any JSON field never cause a 500, nor a header injected into delivered mail.

Hypothesis drives a real app (real outbox, in-process worker) on one event loop
owned by the test; at the end every accepted message is delivered to a real
aiosmtpd sink and each one is inspected.
"""

from __future__ import annotations

import asyncio
import base64
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import RecordingHandler, smtp_server
from tests.webkit import AUTH, Svc, running

EVIL = "evil@evil.example"
NASTY = [
    f"a@example.com\r\nBcc: {EVIL}",
    "x\nX-Injected: yes",
    "x\rX-Injected: yes",
    "subject\r\n\r\nbody",
    "nul\x00byte",
    f"{EVIL}>, <x@example.com",
    '"a\r\nX-Injected: 1" <a@example.com>',
    "=?utf-8?q?a=0D=0AX-Injected:_1?=",
    "a@example.com\u2028X-Injected: 1",
    "{{ 7 * 7 }}{% for %}",
    "ü@bücher.example",
    "Ann <ann@example.com>",
    "",
    " ",
    "a" * 1000,
]
text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(NASTY),
    st.builds(lambda a, b: a + b, st.text(max_size=10), st.sampled_from(NASTY)),
)
FIELDS = [
    "to",
    "cc",
    "bcc",
    "reply_to",
    "sender",
    "subject",
    "text",
    "html",
    "template",
    "context",
    "attachments.filename",
    "attachments.content_type",
    "attachments.content",
    "headers.key",
    "headers.value",
]


def _payload(changes: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "to": "ann@example.com",
        "subject": "s",
        "text": "t",
        "attachments": [
            {"filename": "a.txt", "content_type": "text/plain", "content": base64.b64encode(b"x").decode()}
        ],
        "headers": {"X-Fuzz": "1"},
    }
    for field, value in changes.items():
        if field == "template":
            body = {k: v for k, v in body.items() if k not in ("subject", "text")}
            body["template"] = value
            body["context"] = {"name": value, "url": value}
        elif field == "context":
            body["context"] = {"name": value}
        elif field.startswith("attachments."):
            body["attachments"][0][field.split(".")[1]] = value
        elif field == "headers.key":
            body["headers"] = {value: "v"}
        elif field == "headers.value":
            body["headers"] = {"X-Fuzz": value}
        elif field in ("to", "cc", "bcc", "reply_to"):
            body[field] = value if len(value) % 2 else [value, "ok@example.com"]
        else:
            body[field] = value
    return body


STANDARD = {
    "subject",
    "from",
    "to",
    "cc",
    "reply-to",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "x-fuzz",
}


def test_arbitrary_strings_never_500_never_inject(tmp_path: Path) -> None:
    handler = RecordingHandler()
    accepted_headers: set[str] = set()
    statuses: list[int] = []
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        port = runner.run(stack.enter_async_context(smtp_server(handler)))
        svc: Svc = runner.run(
            stack.enter_async_context(
                running(port, handler, tmp_path, rate_limit=0, allow_sender=True, max_attachment_bytes=1000)
            )
        )
        try:

            @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(st.dictionaries(st.sampled_from(FIELDS), text, min_size=1, max_size=3))
            def check(changes: dict[str, str]) -> None:
                body = _payload(changes)
                r = runner.run(svc.client.post("/api/messages", json=body, headers=AUTH))
                statuses.append(r.status_code)
                assert r.status_code in (202, 413, 422), (r.status_code, body, runner.run(r.get_data(as_text=True)))
                if r.status_code == 202:
                    accepted_headers.update(k.lower() for k in body.get("headers", {}))

            check()
            runner.run(svc.settle())
            delivered = list(handler.received)
        finally:
            runner.run(stack.aclose())
    assert 202 in statuses and 422 in statuses
    assert delivered, "nothing was delivered, so nothing was checked"
    for got in delivered:
        assert EVIL not in got.rcpt_tos
        msg = got.message
        names = {k.lower() for k in msg.keys()}
        assert names <= STANDARD | accepted_headers, got.data.decode(errors="replace")[:2000]
        assert "x-injected" not in names and "bcc" not in names
        for part in msg.walk():
            assert "x-injected" not in {k.lower() for k in part.keys()}
