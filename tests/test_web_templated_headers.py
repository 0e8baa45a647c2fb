"""Issue 14, friction 7 and part of 8: bulk headers rendered per recipient; HTML-only messages get a text part."""

from __future__ import annotations

from pathlib import Path

from tests.servers import RecordingHandler
from tests.webkit import AUTH, running


async def test_bulk_headers_are_rendered_per_recipient(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    body = {
        "subject": "News for {{ name }}",
        "text": "Hi {{ name }}",
        "headers": {"List-Unsubscribe": "<https://shop.example/u/{{ n }}>", "X-Campaign": "spring"},
        "recipients": [{"to": f"u{n}@example.com", "context": {"name": f"U{n}", "n": n}} for n in range(3)],
    }
    async with running(smtp_port, handler, tmp_path) as svc:
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
        assert r.status_code == 202, await r.get_data(as_text=True)
        got = {g.rcpt_tos[0]: g.message for g in await svc.delivered(3)}
    for n in range(3):
        m = got[f"u{n}@example.com"]
        assert m["List-Unsubscribe"] == f"<https://shop.example/u/{n}>"
        assert m["X-Campaign"] == "spring"


async def test_a_rendered_header_cannot_inject_and_nothing_is_queued(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    body = {
        "subject": "s",
        "text": "x",
        "headers": {"List-Unsubscribe": "<https://shop.example/u/{{ n }}>"},
        "recipients": [
            {"to": "a@example.com", "context": {"n": "1"}},
            {"to": "b@example.com", "context": {"n": "2>\r\nBcc: evil@attacker.example"}},
        ],
    }
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
        problem = await r.get_json()
        assert r.status_code == 422, problem
        assert any(e["field"].startswith("recipients[1].headers") for e in problem["errors"]), problem
        assert await svc.pending() == 0


async def test_a_header_template_that_does_not_compile_is_named(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    body = {"subject": "s", "text": "x", "headers": {"X-Ref": "{{ n "}, "recipients": [{"to": "a@example.com"}]}
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
        problem = await r.get_json()
        assert r.status_code == 422 and problem["errors"][0]["field"] == "headers.X-Ref", problem


async def test_html_only_messages_get_a_text_part(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    html = '<p>Hello <b>Ann</b></p><p><a href="https://shop.example/o/1">Your order</a></p>'
    async with running(smtp_port, handler, tmp_path) as svc:
        r = await svc.client.post(
            "/api/messages", json={"to": "ann@example.com", "subject": "s", "html": html}, headers=AUTH
        )
        assert r.status_code == 202, await r.get_data(as_text=True)
        r = await svc.client.post(
            "/api/messages/bulk",
            json={"subject": "s", "html": html, "recipients": [{"to": "bob@example.com"}]},
            headers=AUTH,
        )
        assert r.status_code == 202, await r.get_data(as_text=True)
        got = await svc.delivered(2)
    for g in got:
        text = g.message.get_body(("plain",)).get_content()
        assert "Hello Ann" in text and "Your order (https://shop.example/o/1)" in text
        assert g.message.get_body(("html",)) is not None
