"""Bulk API: one message per recipient entry, all or none, request templates sandboxed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.servers import RecordingHandler
from tests.webkit import AUTH, running


async def test_bulk_personalised_private_and_delivered(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    people = [("Ann", "ann@example.com"), ("<b>Bob</b>", "bob@example.com"), ("Cy", "cy@example.com")]
    body = {
        "subject": "Hello {{ name }}",
        "text": "Dear {{ name }}, your code is {{ code }}.",
        "html": "<p>Dear {{ name }}</p>",
        "headers": {"List-Unsubscribe": "<mailto:unsub@example.com>"},
        "recipients": [{"to": addr, "context": {"name": n, "code": i}} for i, (n, addr) in enumerate(people)],
    }
    async with running(smtp_port, handler, tmp_path) as svc:
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
        assert r.status_code == 202, await r.get_data(as_text=True)
        data = await r.get_json()
        assert data["count"] == 3 and r.headers["Location"] == f"/api/batches/{data['batch_id']}"
        got = await svc.delivered(3)
        by_rcpt = {g.rcpt_tos[0]: g for g in got}
        assert sorted(by_rcpt) == sorted(a for _, a in people)
        for i, (name, addr) in enumerate(people):
            m = by_rcpt[addr].message
            assert by_rcpt[addr].rcpt_tos == [addr] and m["To"] == addr  # nobody sees another's address
            assert m["Subject"] == f"Hello {name}"
            assert m.get_body(("plain",)).get_content().strip() == f"Dear {name}, your code is {i}."
        bob_html = by_rcpt["bob@example.com"].message.get_body(("html",)).get_content()
        assert "&lt;b&gt;Bob&lt;/b&gt;" in bob_html  # autoescaped in HTML only
        await svc.settle()
        r = await svc.client.get(f"/api/batches/{data['batch_id']}", headers=AUTH)
        assert await r.get_json() == {"batch_id": data["batch_id"], "total": 3, "counts": {"delivered": 3}}


async def test_bulk_named_template(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path) as svc:
        r = await svc.client.post(
            "/api/messages/bulk",
            headers=AUTH,
            json={
                "template": "welcome",
                "recipients": [
                    {"to": f"u{i}@example.com", "context": {"name": f"U{i}", "url": "https://x.example"}}
                    for i in range(5)
                ],
            },
        )
        assert r.status_code == 202
        got = await svc.delivered(5)
        assert sorted(g.message["Subject"] for g in got) == [f"Welcome aboard, U{i}!" for i in range(5)]


def _recipients(n: int, bad: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"to": f"u{i}@example.com", "context": {"name": f"U{i}"}} for i in range(n)]
    for i, r in (bad or {}).items():
        out[i] = r
    return out


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "Hi {{ name }", "text": "x", "recipients": _recipients(3)}, "subject"),
        ({"subject": "Hi", "html": "{% for %}", "recipients": _recipients(3)}, "html"),
        (
            {
                "subject": "Hi {{ name }}",
                "text": "x",
                "recipients": _recipients(50, {37: {"to": "u@example.com", "context": {}}}),
            },
            "recipients[37].context",
        ),
        (
            {
                "subject": "Hi {{ name }}",
                "text": "x",
                "recipients": _recipients(20, {7: {"to": "nope", "context": {"name": "x"}}}),
            },
            "recipients[7].to[0]",
        ),
        (
            {
                "subject": "{{ name }}",
                "text": "x",
                "recipients": _recipients(
                    5, {2: {"to": "a@example.com", "context": {"name": "a\r\nBcc: e@evil.example"}}}
                ),
            },
            "recipients[2].subject",
        ),
        (
            {"subject": "s", "text": "{{ ''.__class__.__mro__[1].__subclasses__() }}", "recipients": _recipients(2)},
            "recipients[0].context",
        ),
        ({"subject": "s", "text": "{{ 'x' * 100000000 }}", "recipients": _recipients(2)}, "recipients[0].context"),
        (
            {"subject": "s", "text": "{% for i in range(100000000) %}x{% endfor %}", "recipients": _recipients(2)},
            "recipients[0].context",
        ),
        (
            {
                "subject": "s",
                "text": "{% for i in range(9000) %}{{ name }}xxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}",
                "recipients": _recipients(2),
            },
            "recipients[0].context",
        ),
        (
            {
                "subject": "s",
                "text": "{% for i in range(9999) %}{% for j in range(9999) %}{% endfor %}{% endfor %}",
                "recipients": _recipients(2),
            },
            "recipients[0].context",
        ),
        ({"template": "welcome", "recipients": _recipients(3)}, "recipients[0].context"),
        ({"template": "nope", "recipients": _recipients(3)}, "template"),
        ({"subject": "s", "text": "t", "recipients": []}, "recipients"),
        ({"subject": "s", "text": "t", "recipients": _recipients(11)}, "recipients"),
    ],
)
async def test_bulk_is_all_or_nothing(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    async with running(
        smtp_port,
        handler,
        tmp_path,
        workers=0,
        max_batch=10 if len(body["recipients"]) == 11 else 10_000,
        max_render_chars=100_000,
    ) as svc:
        r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
        assert r.status_code == 422, await r.get_data(as_text=True)
        problem = json.loads(await r.get_data(as_text=True))
        assert field in [e["field"] for e in problem["errors"]], problem
        assert await svc.pending() == 0
