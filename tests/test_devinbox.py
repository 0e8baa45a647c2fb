"""The dev inbox on real parts: mail goes over real SMTP (aiosmtplib -> our aiosmtpd) into a real SQLite file."""

from __future__ import annotations

import email
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from email import policy
from pathlib import Path

import aiosmtplib
import pytest
from quart import Quart
from quart.testing.app import LifespanError
from quart.typing import TestAppProtocol as Served

from mailsvc import Mail, MailConfig, Message
from mailsvc.app import create_app
from mailsvc.config import ServiceConfig, WebConfig
from mailsvc.devinbox.store import inbox_path_for
from mailsvc.services import services
from tests.servers import RecordingHandler, smtp_server

Send = Callable[[Message], Awaitable[None]]


def make_app(tmp_path: Path, **service: object) -> Quart:
    fields: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path}/o.sqlite3",
        "dev_smtp_port": 0,
        "workers": 0,
    } | service
    return create_app(
        MailConfig(server="127.0.0.1", port=8025, default_sender="app@example.com"),
        ServiceConfig(**fields),  # type: ignore[arg-type]
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        yield test_app


@pytest.fixture
async def send(served: Served) -> AsyncIterator[Send]:
    """Send through the core library to whatever the app's delivery config points at."""
    mail = Mail(config=served.app.extensions["mailsvc"].config)  # type: ignore[attr-defined]

    async def _send(msg: Message) -> None:
        await mail.send(msg)

    yield _send
    await mail.state.aclose()


def html_message(subject: str = "Welcome <Ann>", to: str = "Ann <ann@example.com>") -> Message:
    msg = Message(
        subject,
        recipients=[to],
        body="Hi Ann, plain.",
        html='<p>Hi <b>Ann</b> <img alt="logo" src="cid:logo@x"></p><script>document.title="pwned"</script>',
    )
    msg.attach("logo.png", "image/png", b"\x89PNG\r\n\x1a\nfake", "inline", {"Content-ID": "<logo@x>"})
    msg.attach("report é.pdf", "application/pdf", b"%PDF-1.4 fake report\x00\xff")
    return msg


async def test_dev_mode_points_delivery_at_the_embedded_server(served: Served) -> None:
    app = served.app  # type: ignore[attr-defined]
    inbox = services(app).dev_inbox
    assert inbox is not None
    port = inbox.address[1]
    assert port and port != 8025
    assert app.extensions["mailsvc"].config.server == "127.0.0.1"
    assert app.extensions["mailsvc"].config.port == port
    html = await (await served.test_client().get("/")).get_data(as_text=True)
    assert 'href="/inbox"' in html  # the nav leads to it in dev mode


async def test_captured_message_is_listed_and_shown(served: Served, send: Send) -> None:
    await send(html_message())
    client = served.test_client()
    page = await (await client.get("/inbox")).get_data(as_text=True)
    assert "Welcome &lt;Ann&gt;" in page and "ann@example.com" in page and "app@example.com" in page

    listing = await (await client.get("/api/inbox")).get_json()
    assert listing["total"] == 1
    item = listing["messages"][0]
    assert item["subject"] == "Welcome <Ann>" and item["to"] == ["ann@example.com"]
    assert item["from"] == "app@example.com" and item["attachment_count"] == 1 and item["size"] > 0

    response = await client.get(f"/inbox/{item['id']}")
    assert response.status_code == 200
    assert "script-src 'none'" in response.headers["Content-Security-Policy"]
    body = await response.get_data(as_text=True)
    for section in ('id="html"', 'id="text"', 'id="attachments"', 'id="headers"', 'id="raw"'):
        assert section in body
    assert "Hi Ann, plain." in body and "report é.pdf" in body
    # The message's script appears only escaped (raw source), never as markup of our page.
    assert "<script>" not in body


async def test_html_frame_runs_no_script(served: Served, send: Send) -> None:
    await send(html_message())
    client = served.test_client()
    page = await (await client.get("/inbox/1")).get_data(as_text=True)
    assert 'src="/inbox/1/html"' in page
    iframe = page[page.index("<iframe") : page.index("</iframe>")]
    assert "sandbox=" in iframe and "allow-scripts" not in iframe and "allow-same-origin" not in iframe

    frame = await client.get("/inbox/1/html")
    csp = frame.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "sandbox" in csp
    html = await frame.get_data(as_text=True)
    assert '<img alt="logo" src="/inbox/1/parts/' in html  # cid: rewritten to our route


async def test_attachment_and_eml_download(served: Served, send: Send) -> None:
    msg = html_message()
    await send(msg)
    client = served.test_client()
    detail = await (await client.get("/api/inbox/1")).get_json()
    report = next(a for a in detail["attachments"] if a["filename"] == "report é.pdf")
    assert report["inline"] is False and report["content_type"] == "application/pdf"
    response = await client.get(report["url"])
    assert await response.get_data() == b"%PDF-1.4 fake report\x00\xff"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert "report%20%C3%A9.pdf" in response.headers["Content-Disposition"]

    eml = await client.get("/inbox/1.eml")
    assert eml.headers["Content-Type"].startswith("message/rfc822")
    parsed = email.message_from_bytes(await eml.get_data(as_text=False), policy=policy.default)
    assert parsed["Message-ID"] == msg.msgId and parsed["Subject"] == "Welcome <Ann>"
    assert detail["text"].strip() == "Hi Ann, plain." and "<b>Ann</b>" in detail["html"]
    assert detail["headers"]["To"] == ["Ann <ann@example.com>"]


async def test_search_newest_first_and_paging(served: Served, send: Send) -> None:
    for i in range(55):
        await send(Message(f"Order {i}", recipients=[f"user{i % 5}@example.com"], body="x"))
    client = served.test_client()
    first = await (await client.get("/api/inbox?limit=10")).get_json()
    assert first["total"] == 55 and [m["subject"] for m in first["messages"][:2]] == ["Order 54", "Order 53"]
    page2 = await (await client.get("/api/inbox?start=50&limit=10")).get_json()
    assert [m["subject"] for m in page2["messages"]] == [f"Order {i}" for i in range(4, -1, -1)]

    by_rcpt = await (await client.get("/api/inbox?q=USER3@example")).get_json()
    assert by_rcpt["total"] == 11 and all(m["to"] == ["user3@example.com"] for m in by_rcpt["messages"])
    by_subject = await (await client.get("/api/inbox?q=order 1")).get_json()
    assert {m["subject"] for m in by_subject["messages"]} == {"Order 1"} | {f"Order {i}" for i in range(10, 20)}
    assert (await (await client.get("/api/inbox?q=50%25")).get_json())["total"] == 0  # % is literal

    html_page2 = await (await client.get("/inbox?page=2")).get_data(as_text=True)
    assert "Order 4<" in html_page2 and "Order 54<" not in html_page2 and "Page 2 of 2" in html_page2
    searched = await (await client.get("/inbox?q=user3")).get_data(as_text=True)
    assert "11 messages" in searched and "user4@example.com" not in searched


@pytest.mark.parametrize("query, field", [("limit=0", "limit"), ("limit=abc", "limit"), ("start=-1", "start")])
async def test_api_rejects_bad_paging(served: Served, query: str, field: str) -> None:
    response = await served.test_client().get(f"/api/inbox?{query}")
    assert response.status_code == 400 and response.content_type == "application/problem+json"
    assert [e["field"] for e in (await response.get_json())["errors"]] == [field]


async def test_unknown_ids_answer_404(served: Served) -> None:
    client = served.test_client()
    for path in ("/inbox/99", "/inbox/99.eml", "/inbox/99/html", "/inbox/99/parts/0", "/api/inbox/99"):
        assert (await client.get(path)).status_code == 404, path


async def test_delete_one_and_all(served: Served, send: Send) -> None:
    for i in range(3):
        await send(Message(f"m{i}", recipients=["a@example.com"], body="x"))
    client = served.test_client()
    refused = await client.post("/inbox/1/delete", headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    response = await client.post("/inbox/1/delete", headers={"Origin": "http://localhost"})
    assert response.status_code == 303 and response.headers["Location"].startswith("/inbox")
    assert [m["id"] for m in (await (await client.get("/api/inbox")).get_json())["messages"]] == [3, 2]
    assert (await client.delete("/api/inbox/2")).status_code == 204
    assert (await client.delete("/api/inbox/2")).status_code == 404
    await client.post("/inbox/delete")
    assert (await (await client.get("/api/inbox")).get_json())["total"] == 0


async def test_cap_keeps_the_newest_and_mail_survives_restart(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev_inbox_max=3)
    async with app.test_app() as served:
        mail = Mail(config=app.extensions["mailsvc"].config)
        for i in range(5):
            await mail.send(Message(f"m{i}", recipients=["a@example.com"], body="x"))
        await mail.state.aclose()
    assert inbox_path_for(f"sqlite:///{tmp_path}/o.sqlite3") == tmp_path / "devinbox.sqlite3"
    assert (tmp_path / "devinbox.sqlite3").is_file()

    again = make_app(tmp_path, dev_inbox_max=3)
    async with again.test_app() as served:
        listing = await (await served.test_client().get("/api/inbox")).get_json()
    assert [m["subject"] for m in listing["messages"]] == ["m4", "m3", "m2"]


async def test_other_apps_can_send_raw_and_malformed_mail(served: Served) -> None:
    inbox = services(served.app).dev_inbox  # type: ignore[attr-defined]
    assert inbox is not None
    port = inbox.address[1]
    raw = (
        b"From: legacy@example.com\r\nTo: bob@example.com\r\nSubject: =?x-unknown?q?broken?=\r\n"
        b"Content-Type: text/plain; charset=x-unknown\r\n\r\nbody \xff\xfe bytes\r\n"
    )
    await aiosmtplib.send(
        raw,
        sender="legacy@example.com",
        recipients=["bob@example.com", "eve@example.com"],
        hostname="127.0.0.1",
        port=port,
    )
    client = served.test_client()
    detail = await (await client.get("/api/inbox/1")).get_json()
    assert detail["to"] == ["bob@example.com", "eve@example.com"] and "body" in detail["text"]
    assert (await client.get("/inbox/1")).status_code == 200
    assert (await client.get("/inbox/1/html")).status_code == 404  # no HTML part
    assert await (await client.get("/inbox/1.eml")).get_data() == raw


async def test_startup_says_it_runs_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailsvc.devinbox")
    async with make_app(tmp_path).test_app():
        pass
    text = caplog.text
    assert "dev mode" in text and "runs open" in text and "/inbox" in text


async def test_busy_port_is_a_config_error(tmp_path: Path) -> None:
    async with smtp_server(RecordingHandler()) as busy:
        app = make_app(tmp_path, dev_smtp_port=busy)
        # Quart's test lifespan wraps the ConfigError; hypercorn prints it and exits.
        with pytest.raises(LifespanError, match="MAILSVC_DEV_SMTP_PORT: cannot listen"):
            async with app.test_app():
                pass


async def test_routes_are_404_with_a_real_relay(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev_mode=False, web=WebConfig(allow_anonymous=True))
    async with app.test_app() as served:
        client = served.test_client()
        for path in ("/inbox", "/inbox/1", "/api/inbox", "/api/inbox/1"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.post("/inbox/delete")).status_code in (404, 405)
        for page in ("/", "/previews"):  # no link to a page that answers 404
            html = await (await client.get(page)).get_data(as_text=True)
            assert 'href="/inbox"' not in html, page
    assert "mailsvc.devinbox" not in app.extensions
    assert not (tmp_path / "devinbox.sqlite3").exists()
