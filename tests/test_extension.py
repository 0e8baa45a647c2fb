"""``Mail(app)`` as a Quart extension: Gmail-style config end to end, header injection refused before
any connection, connection reuse, recording scoped per app, and suppressed sending."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
from quart import Quart

from mailsvc import Attachment, BadHeaderError, DeliveryError, Mail, Message
from tests.helpers import PASSWORD, USER, config, standalone
from tests.servers import Authenticator, ConnectionCounter, RecordingHandler, smtp_server

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def make_app(**cfg: object) -> Quart:
    app = Quart(__name__)
    app.config.update(cfg)
    return app


async def test_gmail_style_ssl_with_login_end_to_end(server_ssl_context: ssl.SSLContext, ca_file: str) -> None:
    handler, authenticator = RecordingHandler(), Authenticator(USER, PASSWORD)
    async with smtp_server(
        handler, ssl_context=server_ssl_context, authenticator=authenticator, auth_require_tls=False
    ) as port:
        app = make_app(
            MAIL_SERVER="127.0.0.1",
            MAIL_PORT=port,
            MAIL_USE_SSL=True,
            MAIL_USERNAME=USER,
            MAIL_PASSWORD=PASSWORD,
            MAIL_DEFAULT_SENDER=("Shop", USER),
            MAIL_CA_FILE=ca_file,
        )
        mail = Mail(app)
        async with app.test_app():
            msg = Message(
                "Welcome",
                recipients=["ann@example.com"],
                bcc=["audit@example.com"],
                body="Hi Ann",
                html="<p>Hi Ann</p>",
            )
            msg.attach("terms.pdf", "application/pdf", b"%PDF-1.4 binary \x00\xff")
            result = await mail.send(msg)
    assert result.ok and sorted(result.delivered) == ["ann@example.com", "audit@example.com"]
    assert authenticator.attempts == 1
    [got] = handler.received
    assert got.mail_from == USER
    assert sorted(got.rcpt_tos) == ["ann@example.com", "audit@example.com"]
    m = got.message
    assert m["From"].addresses[0].display_name == "Shop"
    assert "Bcc" not in m and b"audit@example.com" not in got.data
    assert m["Message-ID"] == msg.msgId
    assert m.get_content_type() == "multipart/mixed"
    alt, pdf = list(m.iter_parts())
    assert [p.get_content_type() for p in alt.iter_parts()] == ["text/plain", "text/html"]
    assert pdf.get_content() == b"%PDF-1.4 binary \x00\xff"


# -- header injection: every field, CR / LF / NUL, refused before any connection ----------------------

INJECTIONS: dict[str, Callable[[Message, str], None]] = {
    "subject": lambda m, b: setattr(m, "subject", f"Hi{b}Bcc: victim@evil.example"),
    "sender": lambda m, b: setattr(m, "sender", f"shop@example.com{b}Bcc: victim@evil.example"),
    "sender_name": lambda m, b: setattr(m, "sender", (f"Shop{b}Bcc: x", "shop@example.com")),
    "recipients": lambda m, b: m.recipients.append(f"bob@example.com{b}Bcc: victim@evil.example"),
    "recipient_name": lambda m, b: m.recipients.append((f"Bob{b}X: y", "bob@example.com")),
    "cc": lambda m, b: m.cc.append(f"cc@example.com{b}Bcc: victim@evil.example"),
    "bcc": lambda m, b: m.bcc.append(f"bcc@example.com{b}RCPT TO:<victim@evil.example>"),
    "reply_to": lambda m, b: setattr(m, "reply_to", f"help@example.com{b}Bcc: victim@evil.example"),
    "extra_header_value": lambda m, b: m.extra_headers.update({"X-Campaign": f"spring{b}Bcc: victim@evil.example"}),
    "extra_header_name": lambda m, b: m.extra_headers.update({f"X-Campaign{b}Bcc": "spring"}),
    "attachment_filename": lambda m, b: m.attach(f"a{b}.txt", "text/plain", b"x"),
    "attachment_content_type": lambda m, b: m.attach("a.txt", f"text/plain{b}X-Evil: 1", b"x"),
    "attachment_disposition": lambda m, b: m.attach("a.txt", "text/plain", b"x", f"attachment{b}X-Evil: 1"),
    "attachment_header_value": lambda m, b: m.attach(
        "a.png", "image/png", PNG, "inline", {"Content-ID": f"<logo>{b}X: y"}
    ),
    "attachment_header_name": lambda m, b: m.attach("a.png", "image/png", PNG, "inline", {f"X-Note{b}": "v"}),
    "attachments_list": lambda m, b: m.attachments.append(Attachment(f"b{b}.bin", "application/octet-stream", b"x")),
    "mail_options": lambda m, b: m.mail_options.append(f"BODY=8BITMIME{b}RCPT TO:<victim@evil.example>"),
}


EXPECTED_FIELD = {
    "subject": "subject",
    "sender": "sender",
    "sender_name": "sender",
    "recipients": "recipients[1]",
    "recipient_name": "recipients[1]",
    "cc": "cc[0]",
    "bcc": "bcc[0]",
    "reply_to": "reply_to[0]",
    "extra_header_value": "extra_headers.X-Campaign",
    "extra_header_name": "extra_headers",
    "attachment_filename": "attachments[0].filename",
    "attachment_content_type": "attachments[0].content_type",
    "attachment_disposition": "attachments[0].disposition",
    "attachment_header_value": "attachments[0].headers.Content-ID",
    "attachment_header_name": "attachments[0].headers",
    "attachments_list": "attachments[0].filename",
    "mail_options": "mail_options",
}


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00"], ids=["CR", "LF", "NUL"])
@pytest.mark.parametrize("field", sorted(INJECTIONS))
async def test_header_injection_refused_before_any_connection(field: str, bad: str) -> None:
    handler, counter = RecordingHandler(), ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port)) as mail:
            msg = Message("Hi", recipients=["ann@example.com"], body="x", html="<p>x</p>")
            INJECTIONS[field](msg, bad)
            assert msg.has_bad_headers()
            with pytest.raises(BadHeaderError) as err:
                await mail.send(msg)
            with pytest.raises(BadHeaderError):
                await mail.send_message(
                    msg.subject,
                    recipients=msg.recipients,
                    cc=msg.cc,
                    bcc=msg.bcc,
                    body="x",
                    sender=msg.sender,
                    reply_to=msg.reply_to,
                    extra_headers=msg.extra_headers,
                    attachments=msg.attachments,
                    mail_options=msg.mail_options,
                )
            [result] = await mail.send_many([msg])
    assert err.value.field == EXPECTED_FIELD[field]
    assert not result.ok and all(r.status == "failed" for r in result.recipients)
    assert "CR, LF, NUL" in result.recipients[0].reply or "header name" in result.recipients[0].reply
    assert counter.count == 0
    assert handler.received == []


# -- connection reuse ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_emails, connections", [(None, 1), (2, 3)])
async def test_connect_reuses_one_connection_and_reconnects_after_max(max_emails: int | None, connections: int) -> None:
    handler, counter = RecordingHandler(), ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        app = make_app(
            MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_DEFAULT_SENDER="shop@example.com", MAIL_MAX_EMAILS=max_emails
        )
        mail = Mail(app)
        async with app.test_app():
            async with mail.connect() as conn:
                for i in range(5):
                    assert (await conn.send(Message(f"n{i}", recipients=[f"u{i}@example.com"], body="x"))).ok
    assert counter.count == connections
    assert sorted(r.message["Subject"] for r in handler.received) == [f"n{i}" for i in range(5)]


@pytest.mark.parametrize("max_emails, connections", [(None, 1), (2, 3)])
async def test_pooled_send_reuses_connection_until_max(max_emails: int | None, connections: int) -> None:
    handler, counter = RecordingHandler(), ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        async with standalone(config(port, max_emails=max_emails, pool_size=1)) as mail:
            for i in range(5):
                await mail.send_message(f"n{i}", recipients=[f"u{i}@example.com"], body="x")
    assert counter.count == connections
    assert len(handler.received) == 5


async def test_connection_send_raises_when_nobody_accepted() -> None:
    handler = RecordingHandler(refuse={"gone@example.com": "550 5.1.1 gone"})
    async with smtp_server(handler) as port:
        async with standalone(config(port)) as mail:
            async with mail.connect() as conn:
                with pytest.raises(DeliveryError) as err:
                    await conn.send(Message("Hi", recipients=["gone@example.com"], body="x"))
                partial = await conn.send(Message("Hi", recipients=["gone@example.com", "ok@example.com"], body="x"))
    assert (err.value.code, err.value.reply) == (550, "5.1.1 gone")
    assert err.value.result is not None
    assert partial.delivered == ["ok@example.com"] and partial.refused["gone@example.com"].code == 550


# -- recording and suppression -------------------------------------------------------------------------


async def test_record_messages_is_scoped_per_app_and_suppress_sends_nothing() -> None:
    handler, counter = RecordingHandler(), ConnectionCounter()
    async with smtp_server(handler, connections=counter) as port:
        common = {
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": port,
            "MAIL_DEFAULT_SENDER": "shop@example.com",
            "MAIL_SUPPRESS_SEND": True,
        }
        app1, app2 = make_app(**common), make_app(**common)
        mail1, mail2 = Mail(app1), Mail(app2)
        with mail1.record_messages() as out1, mail2.record_messages() as out2:
            r1 = await mail1.send(Message("one", recipients=["a@example.com"], body="x"))
            await mail2.send(Message("two", recipients=["b@example.com"], body="x"))
            many = await mail2.send_many([Message("three", recipients=["c@example.com"], body="x")])
            async with mail1.connect() as conn:
                await conn.send(Message("four", recipients=["d@example.com"], body="x"))
        with mail1.record_messages() as later:
            pass
    assert [m.subject for m in out1] == ["one", "four"]
    assert [m.subject for m in out2] == ["two", "three"]
    assert later == []
    assert r1.recipients[0].status == "suppressed" and r1.ok
    assert many[0].recipients[0].status == "suppressed"
    assert counter.count == 0 and handler.received == []


async def test_one_mail_object_many_apps_uses_current_app() -> None:
    mail = Mail()
    apps = [make_app(MAIL_SUPPRESS_SEND=True, MAIL_DEFAULT_SENDER=f"app{i}@example.com") for i in range(2)]
    for app in apps:
        mail.init_app(app)
    async with apps[0].app_context():
        with mail.record_messages() as out0:
            async with apps[1].app_context():
                with mail.record_messages() as out1:
                    await mail.send(Message("to app1", recipients=["a@example.com"], body="x"))
            await mail.send(Message("to app0", recipients=["a@example.com"], body="x"))
    assert [m.subject for m in out0] == ["to app0"]
    assert [m.subject for m in out1] == ["to app1"]


async def test_record_messages_without_suppress_still_sends(smtp_port: int, handler: RecordingHandler) -> None:
    app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_port, MAIL_DEFAULT_SENDER="shop@example.com")
    mail = Mail(app)
    async with app.test_app():
        with mail.record_messages() as outbox:
            await mail.send(Message("Hi", recipients=["a@example.com"], body="x"))
    assert [m.subject for m in outbox] == ["Hi"]
    assert len(handler.received) == 1


def test_uninitialised_app_is_a_clear_error() -> None:
    mail = Mail()
    app = make_app()
    with pytest.raises(RuntimeError, match="init_app"):
        mail.app = app
        _ = mail.state


@pytest.mark.parametrize(
    "testing, suppress, sent", [(True, None, 0), (True, False, 1), (False, None, 1), (False, True, 0)]
)
async def test_suppress_send_defaults_to_app_testing_like_flask_mail(
    testing: bool, suppress: bool | None, sent: int, smtp_port: int, handler: RecordingHandler
) -> None:
    app = make_app(TESTING=testing, MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_port, MAIL_DEFAULT_SENDER="s@example.com")
    if suppress is not None:
        app.config["MAIL_SUPPRESS_SEND"] = suppress
    mail = Mail(app)
    async with app.test_app():
        with mail.record_messages() as outbox:
            await mail.send(Message("Hi", recipients=["a@example.com"], body="x"))
    assert len(outbox) == 1
    assert len(handler.received) == sent
