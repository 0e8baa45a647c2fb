"""JSON API through Quart's test client, on a real SQLite outbox and a real aiosmtpd sink."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.servers import RecordingHandler
from tests.webkit import AUTH, running

MSG = {"to": "Ann <ann@example.com>", "subject": "Hello", "text": "Hi Ann"}


async def test_message_is_queued_then_delivered(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path) as svc:
        body = {
            **MSG,
            "cc": ["cc@example.com"],
            "bcc": "hidden@example.com",
            "html": "<p>Hi</p>",
            "reply_to": "reply@example.com",
            "headers": {"X-Campaign": "spring"},
            "attachments": [
                {"filename": "a.txt", "content_type": "text/plain", "content": base64.b64encode(b"attached!").decode()}
            ],
        }
        r = await svc.client.post("/api/messages", json=body, headers=AUTH)
        assert r.status_code == 202
        data = await r.get_json()
        assert data["status"] == "queued" and r.headers["Location"] == f"/api/messages/{data['id']}"
        [got] = await svc.delivered(1)
        msg = got.message
        assert msg["Subject"] == "Hello" and msg["To"] == "Ann <ann@example.com>" and msg["X-Campaign"] == "spring"
        assert msg["Bcc"] is None and sorted(got.rcpt_tos) == [
            "ann@example.com",
            "cc@example.com",
            "hidden@example.com",
        ]
        [att] = list(msg.iter_attachments())
        assert att.get_filename() == "a.txt" and att.get_content() == "attached!"
        await svc.settle()
        r = await svc.client.get(f"/api/messages/{data['id']}", headers=AUTH)
        status = await r.get_json()
        assert status["state"] == "delivered" and msg["Message-ID"] == status["message_id"]
        assert {x["recipient"]: (x["state"], x["attempts"], x["last_code"]) for x in status["recipients"]} == {
            a: ("delivered", 1, 250) for a in ("ann@example.com", "cc@example.com", "hidden@example.com")
        }


async def test_named_template_with_context(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path) as svc:
        r = await svc.client.post(
            "/api/messages",
            headers=AUTH,
            json={
                "to": "zoe@bücher.example",
                "template": "welcome",
                "context": {"name": "<Zoë>", "url": "https://x.example/"},
            },
        )
        assert r.status_code == 202, await r.get_data(as_text=True)
        [got] = await svc.delivered(1)
        assert got.rcpt_tos == ["zoe@xn--bcher-kva.example"]
        assert got.message["Subject"] == "Welcome aboard, <Zoë>!"
        html = got.message.get_body(("html",)).get_content()
        assert "&lt;Zoë&gt;" in html and "<Zoë>" not in html


async def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, await r.get_data(as_text=True)
    assert r.content_type == "application/problem+json"
    body: dict[str, Any] = json.loads(await r.get_data(as_text=True))
    assert body["status"] == status and body["title"]
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**MSG, "to": "not-an-address"}, "to[0]"),
        ({**MSG, "to": []}, "to"),
        ({**MSG, "to": ["ok@example.com", "Eve <eve@exa mple.com>"]}, "to[1]"),
        ({**MSG, "cc": ["a@example.com\r\nBcc: x@evil.example"]}, "cc[0]"),
        ({**MSG, "subject": "Hi\r\nBcc: x@evil.example"}, "subject"),
        ({**MSG, "subject": "Hi\x00"}, "subject"),
        ({**MSG, "subject": "Hi\u2028Bcc: x@evil.example"}, "subject"),
        ({**MSG, "subject": "=?utf-8?q?a=0D=0ABcc:_x@evil.example?="}, "subject"),
        ({**MSG, "headers": {"X-A": "=?utf-8?b?YQ0KWC1JbmplY3RlZDogMQ==?="}}, "headers.X-A"),
        ({**MSG, "headers": {"X-A": "\x0c0"}}, "headers.X-A"),
        ({**MSG, "to": '"=?utf-8?q?a=0D=0AX-Injected:_1?=" <a@example.com>'}, "to[0]"),
        (
            {"to": "a@example.com", "template": "welcome", "context": {"name": "=?utf-8?q?=0D=0AX-I:_1?=", "url": "u"}},
            "subject",
        ),
        ({**MSG, "headers": {"X-A": "v\nX-Injected: 1"}}, "headers.X-A"),
        ({**MSG, "headers": {"Bad Name": "v"}}, "headers.Bad Name"),
        ({**MSG, "headers": {"X-Trailing\n": "v"}}, "headers.X-Trailing\n"),
        ({**MSG, "headers": {"From": "boss@example.com"}}, "headers.From"),
        ({**MSG, "headers": {"Bcc": "x@example.com"}}, "headers.Bcc"),
        ({**MSG, "attachments": [{"filename": "a\r\nb.txt", "content": ""}]}, "attachments[0].filename"),
        ({**MSG, "attachments": [{"filename": "a.txt", "content": "%%%"}]}, "attachments[0]"),
        (
            {**MSG, "attachments": [{"filename": "a.txt", "content_type": "text/plain\r\nX: y", "content": ""}]},
            "attachments[0]",
        ),
        ({**MSG, "attachments": [{"filename": "a.txt", "content": "", "path": "/etc/passwd"}]}, "attachments[0].path"),
        ({**MSG, "sender": "me@example.com"}, "sender"),
        ({"to": "a@example.com", "text": "no subject"}, "subject"),
        ({"to": "a@example.com", "subject": "no body"}, "text"),
        ({"to": "a@example.com", "template": "welcome", "subject": "both"}, "template"),
        ({"to": "a@example.com", "template": "nope"}, "template"),
        ({"to": "a@example.com", "template": "../etc/passwd"}, "template"),
        ({"to": "a@example.com", "template": "welcome", "context": {"name": "A"}}, "context"),
        ({**MSG, "unknown": 1}, "unknown"),
        ({**MSG, "to": 5}, "to"),
        ({**MSG, "to": [f"u{i}@example.com" for i in range(51)]}, "to"),
    ],
)
async def test_invalid_fields_are_422_and_queue_nothing(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.post("/api/messages", json=body, headers=AUTH)
        problem = await _problem(r, 422)
        assert field in [e["field"] for e in problem["errors"]], problem
        assert await svc.pending() == 0


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({**MSG, "to": []}, "to", "must have at least one entry"),
        ({"to": "a@example.com", "subject": "s"}, "text", None),
        ({**MSG, "unknown": 1}, "unknown", "is not a field this API knows; remove it"),
        ({**MSG, "subject": 5}, "subject", "must be a string"),
    ],
)
async def test_errors_are_worded_for_people(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, body: dict[str, Any], field: str, reason: str | None
) -> None:
    """Problem details say why in plain words, not pydantic's internals ("List should have at least 1 item ...")."""
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        problem = await _problem(await svc.client.post("/api/messages", json=body, headers=AUTH), 422)
        reasons = {e["field"]: e["reason"] for e in problem["errors"]}
        assert field in reasons, problem
        if reason is not None:
            assert reasons[field] == reason
        assert not any("should" in r or "after validation" in r for r in reasons.values()), reasons


async def test_request_errors(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0, max_request_bytes=4096, max_attachment_bytes=10) as svc:
        c = svc.client
        await _problem(await c.post("/api/messages", json=MSG), 401)
        r = await c.post("/api/messages", json=MSG, headers={"Authorization": "Bearer wrong"})
        await _problem(r, 401)
        assert "invalid_token" in r.headers["WWW-Authenticate"]
        await _problem(await c.post("/api/messages", json=MSG, headers={"Authorization": "Basic dGVzdA=="}), 401)
        await _problem(await c.post("/api/messages", data="to=a", headers={**AUTH, "Content-Type": "text/plain"}), 415)
        await _problem(
            await c.post("/api/messages", data="{not json", headers={**AUTH, "Content-Type": "application/json"}), 400
        )
        await _problem(
            await c.post("/api/messages", data=b"\xff\xfe", headers={**AUTH, "Content-Type": "application/json"}), 400
        )
        p = await _problem(await c.post("/api/messages", json=[MSG], headers=AUTH), 422)
        assert p["errors"][0]["field"] == "body"
        await _problem(await c.post("/api/messages", json={**MSG, "text": "x" * 5000}, headers=AUTH), 413)
        p = await _problem(
            await c.post(
                "/api/messages",
                headers=AUTH,
                json={**MSG, "attachments": [{"filename": "big.bin", "content": base64.b64encode(b"x" * 11).decode()}]},
            ),
            413,
        )
        assert p["errors"][0]["field"] == "attachments[0]"
        await _problem(await c.get("/api/messages/0123abcd", headers=AUTH), 404)
        await _problem(await c.get("/api/messages/bad%20id", headers=AUTH), 404)
        await _problem(await c.get("/api/batches/0123abcd", headers=AUTH), 404)
        await _problem(await c.get("/api/messages/0123abcd"), 401)
        await _problem(await c.get("/api/no-such-route", headers=AUTH), 404)
        await _problem(await c.delete("/api/messages", headers=AUTH), 405)
        assert await svc.pending() == 0


async def test_domain_allow_list(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(
        smtp_port, handler, tmp_path, workers=0, allowed_domains=("example.com", "bücher.example")
    ) as svc:
        for to in ("a@example.com", "b@mail.example.com", "c@BÜCHER.example"):
            r = await svc.client.post("/api/messages", json={**MSG, "to": to}, headers=AUTH)
            assert r.status_code == 202, to
        for key, to in (("to", "x@evil.example"), ("cc", "x@notexample.com"), ("bcc", "x@example.com.evil")):
            p = await _problem(await svc.client.post("/api/messages", json={**MSG, key: to}, headers=AUTH), 422)
            assert p["errors"][0]["field"] == f"{key}[0]" and "allow-list" in p["errors"][0]["reason"]
        assert await svc.pending() == 3


async def test_sender_when_allowed(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, allow_sender=True) as svc:
        r = await svc.client.post("/api/messages", json={**MSG, "sender": "Shop <shop@example.com>"}, headers=AUTH)
        assert r.status_code == 202
        [got] = await svc.delivered(1)
        assert got.mail_from == "shop@example.com" and got.message["From"] == "Shop <shop@example.com>"


async def test_idempotency_key(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path) as svc:
        h = {**AUTH, "Idempotency-Key": "order-42"}
        r1 = await svc.client.post("/api/messages", json=MSG, headers=h)
        r2 = await svc.client.post("/api/messages", json=MSG, headers=h)
        assert r1.status_code == r2.status_code == 202
        assert (await r1.get_json())["id"] == (await r2.get_json())["id"]
        assert r2.headers["Idempotent-Replayed"] == "true"
        p = await _problem(await svc.client.post("/api/messages", json={**MSG, "text": "other"}, headers=h), 422)
        assert p["errors"][0]["field"] == "Idempotency-Key"
        # Concurrent retries with a fresh key: one message.
        h2 = {**AUTH, "Idempotency-Key": "order-43"}
        rs = await asyncio.gather(*(svc.client.post("/api/messages", json=MSG, headers=h2) for _ in range(5)))
        assert {r.status_code for r in rs} == {202}
        assert len({(await r.get_json())["id"] for r in rs}) == 1
        await _problem(await svc.client.post("/api/messages", json=MSG, headers={**AUTH, "Idempotency-Key": "ü"}), 422)
        await svc.settle()
        assert len(handler.received) == 2


async def test_rate_limit_per_key(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    from pydantic import SecretStr

    async with running(
        smtp_port,
        handler,
        tmp_path,
        workers=0,
        rate_limit=0.01,
        rate_burst=2,
        api_keys=(SecretStr("test-key-1"), SecretStr("other")),
    ) as svc:
        codes = [(await svc.client.post("/api/messages", json=MSG, headers=AUTH)).status_code for _ in range(2)]
        assert codes == [202, 202]
        r = await svc.client.post("/api/messages", json=MSG, headers=AUTH)
        await _problem(r, 429)
        assert int(r.headers["Retry-After"]) >= 1
        other = await svc.client.post("/api/messages", json=MSG, headers={"Authorization": "Bearer other"})
        assert other.status_code == 202
        assert await svc.pending() == 3


async def test_outbox_full_is_503_with_retry_after(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0, service={"max_pending": 2}) as svc:
        assert (await svc.client.post("/api/messages", json=MSG, headers=AUTH)).status_code == 202
        bulk = {"subject": "s", "text": "t", "recipients": [{"to": "a@example.com"}, {"to": "b@example.com"}]}
        r = await svc.client.post("/api/messages/bulk", json=bulk, headers=AUTH)
        await _problem(r, 503)
        assert int(r.headers["Retry-After"]) >= 1
        assert await svc.pending() == 1


async def test_readyz_healthz_openapi_docs(smtp_port: int, handler: RecordingHandler, tmp_path: Path) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        r = await svc.client.get("/readyz", headers=AUTH)
        body = await r.get_json()
        assert r.status_code == 200 and body["outbox"] == "ok" and body["relay"]["reachable"] is True
        for anonymous in ({}, {"Authorization": "Bearer wrong-key"}):
            r = await svc.client.get("/readyz", headers=anonymous)
            assert await r.get_json() == {"status": "ready"}
        assert (await svc.client.get("/healthz")).status_code == 200
        doc = await (await svc.client.get("/openapi.json")).get_json()
        assert set(doc["paths"]) == {
            "/api/messages",
            "/api/messages/bulk",
            "/api/messages/{id}",
            "/api/batches/{id}",
            "/api/batches/{id}/messages",
            "/api/suppressions",
            "/api/suppressions/{address}",
            "/api/events",
            "/api/webhooks/deliveries",
            "/api/webhooks/deliveries/{id}/replay",
        }
        props = doc["components"]["schemas"]["MessageIn"]["properties"]
        assert {
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
            "attachments",
            "headers",
        } <= set(props)
        assert "recipients" in doc["components"]["schemas"]["BulkIn"]["properties"]
        docs = await (await svc.client.get("/docs")).get_data(as_text=True)
        assert "POST /api/messages/bulk" in docs and "MessageIn" in docs
        assert "<script" not in docs and 'src="http' not in docs and 'href="http' not in docs
        assert "``" not in docs  # reST literals in docstrings are shown as code, not as backticks
        assert "Every request needs" in docs and "-H 'Authorization: Bearer KEY'" in docs


async def test_docs_of_a_service_without_keys_say_no_key_is_needed(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    """A newcomer in dev mode (no keys) must not be told to send a Bearer key the service does not ask for."""
    async with running(smtp_port, handler, tmp_path, workers=0, api_keys=(), allow_anonymous=True) as svc:
        docs = await (await svc.client.get("/docs")).get_data(as_text=True)
        assert "need no <code>Authorization</code> header" in docs
        assert "Every request needs" not in docs and "Bearer KEY" not in docs
        assert (await svc.client.post("/api/messages", json=MSG)).status_code == 202  # as the page says
