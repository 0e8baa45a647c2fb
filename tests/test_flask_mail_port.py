"""Issue 14: Flask-Mail's tutorial contact app, ported exactly as README's "Coming from Flask-Mail" says.

The app is the README's block itself, saved as ``contact.py`` beside its templates and PDF
and imported, so the README and this test cannot drift apart. Only the relay changes, as
it would between a laptop and production: the tutorial's Gmail settings are replaced by a
local aiosmtpd with a trustme certificate, over implicit TLS (``MAIL_USE_SSL``) or STARTTLS
(``MAIL_USE_TLS``), both requiring AUTH with the README's credentials. Every delivered
message is read back: envelope, headers, body and attachment bytes, and whether it came
over TLS after AUTH.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope, Session
from werkzeug.datastructures import FileStorage

from mailsvc import Message
from tests.readme import PDF, import_module, write_contact_app
from tests.servers import Authenticator, RecordingHandler, smtp_server

USER, PASSWORD = "sender_id@gmail.com", "app-password"  # the README's settings; the test relay checks them
NOTES = "Order 42: deux bougies, une théière.\n".encode()


@dataclass
class SessionRecordingHandler(RecordingHandler):
    """Also records, for each message taken, whether its session was TLS and authenticated."""

    sessions: list[tuple[bool, bool]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        tls = server.transport is not None and server.transport.get_extra_info("ssl_object") is not None
        self.sessions.append((tls, bool(session.authenticated)))
        return await super().handle_DATA(server, session, envelope)


@dataclass
class Relay:
    mode: str
    port: int
    handler: SessionRecordingHandler
    auth: Authenticator

    def settings(self, ca_file: str) -> dict[str, Any]:
        """What a deployment sets instead of the tutorial's Gmail values."""
        ssl = self.mode == "ssl"  # the README's comment: STARTTLS *instead of* MAIL_USE_SSL
        tls = {"MAIL_USE_SSL": ssl, "MAIL_USE_TLS": not ssl}
        return {"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": self.port, "MAIL_CA_FILE": ca_file, "MAIL_TIMEOUT": 10, **tls}


@pytest.fixture(params=["ssl", "starttls"])
async def relay(request: pytest.FixtureRequest, server_ssl_context: Any) -> AsyncIterator[Relay]:
    handler, auth = SessionRecordingHandler(), Authenticator(USER, PASSWORD)
    if request.param == "ssl":  # aiosmtpd does not count implicit TLS as TLS for its AUTH rule
        options: dict[str, Any] = {"ssl_context": server_ssl_context, "auth_require_tls": False}
    else:
        options = {"tls_context": server_ssl_context, "require_starttls": True}
    async with smtp_server(handler, authenticator=auth, **options) as port:
        yield Relay(request.param, port, handler, auth)


@pytest.fixture
def contact(tmp_path: Path, relay: Relay, ca_file: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The README's contact.py, imported; its tutorial settings load as they are, then point at the relay."""
    module = import_module(write_contact_app(tmp_path), monkeypatch)
    tutorial = module.mail.state.config
    assert (tutorial.server, tutorial.port, tutorial.use_ssl, tutorial.username) == ("smtp.gmail.com", 465, True, USER)
    module.app.config.update(relay.settings(ca_file))
    module.mail.init_app(module.app)
    return module


def attachments(message: EmailMessage) -> dict[str | None, tuple[str, bytes]]:
    found = {}
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found[part.get_filename()] = (part.get_content_type(), payload)
    return found


def text_body(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content()).replace("\r\n", "\n")  # the wire's CRLF, as Python text


async def test_contact_form_sends_the_rendered_body_and_both_attachments(contact: ModuleType, relay: Relay) -> None:
    async with contact.app.test_app():
        client = contact.app.test_client()
        page = await client.get("/contact")
        assert page.status_code == 200 and await page.get_data(as_text=True) == '<form method="post"></form>'
        upload = FileStorage(io.BytesIO(NOTES), filename="notes.txt", content_type="text/plain")
        form = {"email": "Ann <ann@example.com>", "subject": "Où est ma commande ?", "message": "Hello <b>there</b>"}
        answer = await client.post("/contact", form=form, files={"file": upload})
        assert answer.status_code == 200, await answer.get_data(as_text=True)
    [received] = relay.handler.received
    assert relay.handler.sessions == [(True, True)]  # over TLS, after AUTH
    assert relay.auth.attempts == 1
    assert (received.mail_from, received.rcpt_tos) == (USER, ["ann@example.com"])
    msg = received.message
    assert (msg["From"], msg["To"], msg["Subject"]) == (USER, "Ann <ann@example.com>", "Où est ma commande ?")
    assert msg["Message-ID"] and msg["Date"]
    assert text_body(msg) == "Thanks! You wrote: Hello <b>there</b>\n"  # a .txt template is not autoescaped
    assert attachments(msg) == {"Thank you.pdf": ("application/pdf", PDF), "notes.txt": ("text/plain", NOTES)}


async def test_contact_form_failures_are_smtplib_exceptions(contact: ModuleType, relay: Relay) -> None:
    """The view's ``except smtplib.SMTPException`` catches a refused login and a refused recipient."""
    form = {"email": "nobody@example.com", "subject": "Hi", "message": "x"}
    async with contact.app.test_app():
        client = contact.app.test_client()
        relay.auth.password = b"rotated"  # the relay's password changed; the app's did not
        answer = await client.post("/contact", form=form)
        assert answer.status_code == 502
        assert "rejected MAIL_USERNAME/MAIL_PASSWORD" in await answer.get_data(as_text=True)
        relay.auth.password = PASSWORD.encode()
        relay.handler.refuse["nobody@example.com"] = "550 5.1.1 no such user"
        answer = await client.post("/contact", form=form)
        assert answer.status_code == 502
        assert "550" in await answer.get_data(as_text=True)
    assert relay.handler.received == []


async def test_newsletter_to_a_list_reports_the_refused_and_delivers_the_rest(
    contact: ModuleType, relay: Relay
) -> None:
    emails = [f"user{n}@example.com" for n in range(1, 8)]
    relay.handler.refuse["user3@example.com"] = "550 5.1.1 mailbox unavailable"
    async with contact.app.test_app():
        client = contact.app.test_client()
        fields = [("subject", "Spring news"), ("message", "Dear reader,\nnew teas are in.")]
        answer = await client.post("/newsletter", form=[*fields, *(("email", e) for e in emails)])
        assert answer.status_code == 200
        assert await answer.get_json() == {"refused": ["user3@example.com"]}
    delivered = sorted(relay.handler.received, key=lambda r: r.rcpt_tos)
    assert [r.rcpt_tos for r in delivered] == [[e] for e in emails if e != "user3@example.com"]
    for r in delivered:
        assert (r.message["To"], r.message["Subject"], r.message["From"]) == (r.rcpt_tos[0], "Spring news", USER)
        assert text_body(r.message) == "Dear reader,\nnew teas are in.\n"
    assert all(s == (True, True) for s in relay.handler.sessions)
    assert relay.auth.attempts <= 4  # MAIL_POOL_SIZE connections, each authenticated once, reused


async def test_background_send_from_threads_with_send_sync(contact: ModuleType, relay: Relay) -> None:
    """The tutorial's thread per message: ``notify`` starts them and returns; each sends on a loop of its own."""
    emails = ["user1@gmail.com", "user2@gmail.com", "user3@gmail.com"]
    await asyncio.to_thread(contact.notify, emails)  # from synchronous code, as the tutorial calls it
    senders = [t for t in threading.enumerate() if t.name.endswith("(send_async_email)")]  # Thread-N (target)
    assert len(senders) <= len(emails)
    await asyncio.to_thread(lambda: [t.join(15) for t in senders])
    assert not any(t.is_alive() for t in senders)
    assert sorted(r.rcpt_tos[0] for r in relay.handler.received) == emails
    for r in relay.handler.received:
        assert (r.mail_from, r.message["From"], r.message["Subject"]) == (USER, USER, "xyz")
        assert text_body(r.message) == "abcd\n"
    assert relay.handler.sessions == [(True, True)] * 3


async def test_add_background_task_sends_in_the_apps_loop(contact: ModuleType, relay: Relay) -> None:
    """The idioms table's alternative to a thread: the task runs after the response and is awaited at shutdown."""
    async with contact.app.test_app():
        async with contact.app.app_context():
            msg = Message("later", recipients=["ann@example.com"], body="sent after the response")
            assert msg.sender == USER  # taken at construction inside an app context, as Flask-Mail does
            contact.app.add_background_task(contact.mail.send, msg)
    [received] = relay.handler.received
    assert (received.message["Subject"], text_body(received.message)) == ("later", "sent after the response\n")
