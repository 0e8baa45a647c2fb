"""Issue 14, friction 8: the rest of Flask-Mail's surface that ported code calls."""

from __future__ import annotations

from typing import Any

from quart import Quart

from mailsvc import Mail, Message
from mailsvc.signals import email_dispatched
from tests.servers import RecordingHandler, smtp_server


def make_app(port: int, **config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_DEFAULT_SENDER="Shop <shop@example.com>", **config)
    return app


async def test_default_sender_is_taken_at_construction_inside_an_app_context() -> None:
    app = make_app(25)
    Mail(app)
    async with app.app_context():
        msg = Message("Hi", recipients=["ann@example.com"], body="x")
        assert msg.sender == "Shop <shop@example.com>"
        assert "From: Shop <shop@example.com>" in msg.as_string()  # Flask-Mail's as_string works here too
    outside = Message("Hi", recipients=["ann@example.com"], body="x")
    assert outside.sender is None  # lazily, at send time, outside an app context


async def test_email_dispatched_and_message_send_on_a_connection() -> None:
    handler = RecordingHandler()
    seen: list[tuple[str, object]] = []

    def listener(message: Message, app: object) -> None:
        seen.append((message.subject, app))

    email_dispatched.connect(listener)
    try:
        async with smtp_server(handler) as port:
            app = make_app(port)
            mail = Mail(app)
            async with app.app_context():
                async with mail.connect() as conn:
                    await Message("one", recipients=["a@example.com"], body="x").send(conn)
                    await conn.send_message("two", recipients=["b@example.com"], body="x")
                await mail.send(Message("three", recipients=["c@example.com"], body="x"))
                await mail.send_many([Message("four", recipients=["d@example.com"], body="x")])
                await mail.state.aclose()
    finally:
        email_dispatched.disconnect(listener)
    assert [s for s, _ in seen] == ["one", "two", "three", "four"]
    assert all(a is app for _, a in seen)
    assert [str(r.message["Subject"]) for r in handler.received] == ["one", "two", "three", "four"]


async def test_email_dispatched_also_when_suppressed_as_in_flask_mail() -> None:
    app = make_app(1, MAIL_SUPPRESS_SEND=True)
    mail = Mail(app)
    seen: list[str] = []

    def listener(message: Message, app: object) -> None:
        seen.append(message.subject)

    with email_dispatched.connected_to(listener):
        async with app.app_context():
            with mail.record_messages() as outbox:
                await mail.send(Message("quiet", recipients=["a@example.com"], body="x"))
    assert seen == ["quiet"] and [m.subject for m in outbox] == ["quiet"]


async def test_mail_debug_logs_the_conversation_without_secrets(caplog: Any) -> None:
    from tests.servers import Authenticator

    async with smtp_server(
        RecordingHandler(), authenticator=Authenticator("me", "s3cret"), auth_require_tls=False
    ) as port:
        app = make_app(port, MAIL_DEBUG=True, MAIL_USERNAME="me", MAIL_PASSWORD="s3cret")
        mail = Mail(app)
        async with app.app_context():
            with caplog.at_level("INFO", logger="mailsvc.smtp"):
                await mail.send(Message("dbg", recipients=["a@example.com"], body="the body"))
            await mail.state.aclose()
    text = caplog.text
    assert f"connected to 127.0.0.1:{port}" in text and "auth" in text
    assert "a@example.com: delivered 250" in text
    assert "s3cret" not in text and "the body" not in text
