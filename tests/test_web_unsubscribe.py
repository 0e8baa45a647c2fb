"""One-click unsubscribe (issue 15, RFC 8058) through the real app, on both outboxes.

Bulk mail carries a per-message ``List-Unsubscribe`` HTTPS link and ``List-Unsubscribe-Post``;
the POST a mailbox provider sends unsubscribes, a GET never does, a token we did not sign is a
404 that changes nothing, and the next bulk to that address reaches no SMTP server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from email.message import Message as EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite
import pytest
from pydantic import SecretStr

from mailsvc.config import WebConfig
from mailsvc.outbox import MessageState, RecipientState
from mailsvc.web.tenants import key_id
from mailsvc.web.unsublinks import Claim, UnsubscribeSigner
from tests.pgtools import fresh_schema
from tests.servers import RecordingHandler
from tests.webkit import AUTH, KEY, Svc, running

PUBLIC = "https://mail.example.com"
SECRET = "unsubscribe-test-secret"
# Exactly what Gmail POSTs for one-click (RFC 8058 section 3.2): a form body, no cookies.
GMAIL = {"data": b"List-Unsubscribe=One-Click", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("unsub") as url:
            yield url


def unsubscribable(database_url: str, **web: Any) -> dict[str, Any]:
    """``running(...)`` arguments for a service that makes unsubscribe links."""
    return {
        "public_url": PUBLIC,
        "secret_key": SecretStr(SECRET),
        "service": {"database_url": database_url},
        **web,
    }


def bulk(*addresses: str, **extra: Any) -> dict[str, Any]:
    return {
        "subject": "News for {{ name }}",
        "text": "Hi {{ name }}. Unsubscribe: {{ unsubscribe_url }}",
        "stream": "news",
        "recipients": [{"to": a, "context": {"name": a.split("@")[0]}} for a in addresses],
        **extra,
    }


async def send_bulk(svc: Svc, body: dict[str, Any], key: str = KEY) -> dict[str, Any]:
    r = await svc.client.post("/api/messages/bulk", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, await r.get_data(as_text=True)
    result: dict[str, Any] = await r.get_json()
    return result


def link(message: EmailMessage) -> str:
    """The path of the message's one-click link, checked to be RFC 8058-shaped."""
    value = str(message["List-Unsubscribe"])
    assert value.startswith(f"<{PUBLIC}/unsubscribe/") and value.endswith(">"), value
    assert "," not in value  # one HTTPS link; no mailto (this service has no mailbox to receive it)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    return urlsplit(value[1:-1]).path


async def delivered_to(svc: Svc, n: int) -> dict[str, EmailMessage]:
    await svc.settle()
    return {g.rcpt_tos[0]: g.message for g in await svc.delivered(n)}


async def test_every_bulk_message_carries_its_own_one_click_link(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    addresses = [f"u{n}@example.com" for n in range(5)]
    async with running(smtp_port, handler, tmp_path, **unsubscribable(database_url)) as svc:
        await send_bulk(svc, bulk(*addresses))
        got = await delivered_to(svc, 5)
    paths = {a: link(m) for a, m in got.items()}
    assert sorted(paths) == addresses and len(set(paths.values())) == 5  # one link per recipient
    for a, m in got.items():
        assert f"{PUBLIC}{paths[a]}" in m.get_payload(decode=True).decode()  # {{ unsubscribe_url }}
        claim = UnsubscribeSigner(SECRET).verify(paths[a].rsplit("/", 1)[1])
        assert claim == Claim(key_tenant(), (a,), "news")


def key_tenant() -> str:
    """The tenant of ``MAILSVC_API_KEYS``'s key: its key id."""
    return key_id(KEY)


async def test_gmail_s_one_click_post_unsubscribes_and_the_next_bulk_skips_the_address(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **unsubscribable(database_url)) as svc:
        await send_bulk(svc, bulk("ann@example.com", "bob@example.com"))
        path = link((await delivered_to(svc, 2))["ann@example.com"])
        r = await svc.client.post(path, **GMAIL)  # no Authorization, no cookie, no CSRF token
        assert r.status_code == 200, await r.get_data(as_text=True)
        assert "ann@example.com" not in await r.get_data(as_text=True)  # the page names nobody
        again = await svc.client.post(path, **GMAIL)  # a provider may retry: still 200
        assert again.status_code == 200
        handler.received.clear()
        batch = await send_bulk(svc, bulk("Ann@Example.com", "bob@example.com"))
        got = await delivered_to(svc, 1)
        assert [g.rcpt_tos for g in handler.received] == [["bob@example.com"]]  # ann reached no server
        assert list(got) == ["bob@example.com"]
        r = await svc.client.get(f"/api/batches/{batch['batch_id']}", headers=AUTH)
        assert (await r.get_json())["counts"] == {"delivered": 1, "suppressed": 1}
        rows = await svc.outbox.suppressions(key_tenant())
    assert [(s.address, s.stream, s.reason, s.source) for s in rows] == [
        ("ann@example.com", "news", "unsubscribe", "one-click")
    ]


async def test_the_suppressed_message_reads_suppressed_in_its_status(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.sqlite3"
    async with running(smtp_port, handler, tmp_path, workers=0, **unsubscribable(f"sqlite:///{db}")) as svc:
        await svc.outbox.suppress(key_tenant(), ["ann@example.com"], "news", reason="unsubscribe", source="test")
        await send_bulk(svc, bulk("ann@example.com"))
        assert await svc.pending() == 0  # final at enqueue: no worker will ever claim it
        async with aiosqlite.connect(db) as conn, conn.execute("SELECT id FROM messages") as cur:
            ((id_,),) = list(await cur.fetchall())
        r = await svc.client.get(f"/api/messages/{id_}", headers=AUTH)
        status = await r.get_json()
    assert status["state"] == MessageState.SUPPRESSED
    assert [(x["state"], x["last_reply"]) for x in status["recipients"]] == [
        (RecipientState.SUPPRESSED, "suppressed: unsubscribe")
    ]


async def test_a_get_never_unsubscribes(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **unsubscribable(database_url)) as svc:
        await send_bulk(svc, bulk("ann@example.com"))
        path = link((await delivered_to(svc, 1))["ann@example.com"])
        for _ in range(3):  # a link scanner, a prefetch, a person who looks and leaves
            r = await svc.client.get(path)
            page = await r.get_data(as_text=True)
            assert r.status_code == 200 and '<form method="post">' in page and "One-Click" in page
            assert r.headers["Referrer-Policy"] == "no-referrer" and r.headers["Cache-Control"] == "no-store"
            assert "ann@example.com" not in page
        assert await svc.outbox.suppressions(key_tenant()) == []
        handler.received.clear()
        await send_bulk(svc, bulk("ann@example.com"))
        assert [g.rcpt_tos for g in (await svc.delivered(1))] == [["ann@example.com"]]


def _forgeries(token: str) -> list[str]:
    payload, _, sig = token.rpartition(".")
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    bob = base64.urlsafe_b64encode(json.dumps([key_tenant(), ["bob@example.com"], "news"]).encode()).rstrip(b"=")
    other_secret = UnsubscribeSigner("another-secret").sign(Claim(key_tenant(), ("ann@example.com",), "news"))
    return [
        f"{payload}.{flipped}",  # signature altered
        f"{bob.decode()}.{sig}",  # ann's signature on a claim naming bob: no replay for another address
        payload,  # signature cut off
        other_secret,  # signed, but not with this service's secret
        "x" * 5000,
        "not-a-token",
    ]


async def test_a_forged_or_altered_token_is_404_and_unsubscribes_nobody(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path, database_url: str
) -> None:
    async with running(smtp_port, handler, tmp_path, **unsubscribable(database_url)) as svc:
        await send_bulk(svc, bulk("ann@example.com", "bob@example.com"))
        token = link((await delivered_to(svc, 2))["ann@example.com"]).rsplit("/", 1)[1]
        for forged in _forgeries(token):
            for method in ("GET", "POST"):
                kwargs = GMAIL if method == "POST" else {}
                r = await svc.client.open(f"/unsubscribe/{forged}", method=method, **kwargs)
                assert r.status_code == 404, (forged, method)
        assert await svc.outbox.suppressions(key_tenant()) == []
        # The genuine token unsubscribes ann only: never bob, whose address it does not name.
        assert (await svc.client.post(f"/unsubscribe/{token}", **GMAIL)).status_code == 200
        assert [s.address for s in await svc.outbox.suppressions(key_tenant())] == ["ann@example.com"]


async def test_a_post_without_the_one_click_body_is_refused(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    async with running(smtp_port, handler, tmp_path, **unsubscribable(url)) as svc:
        await send_bulk(svc, bulk("ann@example.com"))
        path = link((await delivered_to(svc, 1))["ann@example.com"])
        r = await svc.client.post(path, data=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400
        assert await svc.outbox.suppressions(key_tenant()) == []


async def test_without_a_public_url_a_request_for_links_is_422_naming_the_setting(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    async with running(smtp_port, handler, tmp_path, workers=0) as svc:
        for route, body in (
            ("/api/messages/bulk", bulk("ann@example.com", unsubscribe=True)),
            ("/api/messages", {"to": "ann@example.com", "subject": "s", "text": "t", "unsubscribe": True}),
        ):
            r = await svc.client.post(route, json=body, headers=AUTH)
            problem = await r.get_json()
            assert r.status_code == 422, problem
            assert problem["errors"][0]["field"] == "unsubscribe"
            assert "MAILSVC_PUBLIC_URL" in problem["errors"][0]["reason"]
        assert await svc.pending() == 0
        # Not asked for: sent without a link of ours (no broken one), as before this setting existed.
        await send_bulk(svc, {"subject": "s", "text": "t", "recipients": [{"to": "ann@example.com"}]})
        assert await svc.pending() == 1


async def test_opting_out_and_bringing_one_s_own_header(
    smtp_port: int, handler: RecordingHandler, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    own = {"List-Unsubscribe": "<https://shop.example/u>"}
    async with running(smtp_port, handler, tmp_path, **unsubscribable(url)) as svc:
        await send_bulk(
            svc, {"subject": "receipt", "text": "t", "unsubscribe": False, "recipients": [{"to": "a@x.example"}]}
        )
        await send_bulk(svc, {"subject": "own", "text": "t", "headers": own, "recipients": [{"to": "b@x.example"}]})
        r = await svc.client.post(
            "/api/messages/bulk",
            json={
                "subject": "s",
                "text": "t",
                "headers": own,
                "unsubscribe": True,
                "recipients": [{"to": "c@x.example"}],
            },
            headers=AUTH,
        )
        assert r.status_code == 422 and (await r.get_json())["errors"][0]["field"] == "headers.List-Unsubscribe"
        r = await svc.client.post(
            "/api/messages",
            json={"to": "d@x.example", "subject": "s", "text": "{{ x }}", "unsubscribe": True, "stream": "alerts"},
            headers=AUTH,
        )
        assert r.status_code == 202
        got = await delivered_to(svc, 3)
    assert "List-Unsubscribe" not in got["a@x.example"]
    assert got["b@x.example"]["List-Unsubscribe"] == "<https://shop.example/u>"
    assert "List-Unsubscribe-Post" not in got["b@x.example"]
    claim = UnsubscribeSigner(SECRET).verify(link(got["d@x.example"]).rsplit("/", 1)[1])
    assert claim == Claim(key_tenant(), ("d@x.example",), "alerts")


def test_a_public_url_needs_a_secret_key_and_https() -> None:
    with pytest.raises(ValueError, match="MAILSVC_SECRET_KEY"):
        WebConfig(public_url=PUBLIC)
    with pytest.raises(ValueError, match="must be https"):
        WebConfig(public_url="http://mail.example.com", secret_key=SecretStr("s"))
    assert (
        WebConfig(public_url="http://127.0.0.1:8000/", secret_key=SecretStr("s")).public_url == "http://127.0.0.1:8000"
    )
