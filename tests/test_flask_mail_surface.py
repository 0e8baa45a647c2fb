"""Issue 14, friction 8: the rest of Flask-Mail's surface that ported code calls."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from quart import Quart

from mailsvc import Mail, Message
from mailsvc.signals import email_dispatched
from tests.servers import RecordingHandler, smtp_server, threaded_smtp_server


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


def test_bytes_of_a_message_as_flask_mail() -> None:
    msg = Message("Hi", recipients=["ann@example.com"], body="x", sender="shop@example.com", date=1_700_000_000)
    assert bytes(msg) == msg.as_bytes() and bytes(msg).startswith(b"Subject: Hi")


async def test_connection_send_with_envelope_from_sets_mail_from_only() -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        app = make_app(port)
        mail = Mail(app)
        async with app.app_context(), mail.connect() as conn:
            await conn.send(Message("bounce", recipients=["a@example.com"], body="x"), "bounces@example.com")
            await conn.send(Message("plain", recipients=["b@example.com"], body="x"))
    assert [r.mail_from for r in handler.received] == ["bounces@example.com", "shop@example.com"]
    assert [str(r.message["From"]) for r in handler.received] == ["Shop <shop@example.com>"] * 2


def test_send_sync_with_an_app_factory_takes_the_app() -> None:
    """``Mail()`` + ``init_app``: a thread has no app context and Quart has no ``with app.app_context()``."""
    handler = RecordingHandler()
    mail = Mail()
    with threaded_smtp_server(handler) as port:
        app = make_app(port)
        mail.init_app(app)
        with pytest.raises(RuntimeError, match=r"mail.send_sync\(msg, app=app\)"):
            mail.send_sync(Message("lost", recipients=["a@example.com"], body="x"))
        errors: list[BaseException] = []

        def task() -> None:  # a Celery task or a thread, as Flask-Mail code wraps in `with app.app_context():`
            try:
                mail.send_sync(Message("task", recipients=["a@example.com"], body="x"), app=app)
                mail.send_many_sync([Message("batch", recipients=["b@example.com"], body="x")], app=app)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=task)
        thread.start()
        thread.join(30)
    assert not errors
    assert [(str(r.message["Subject"]), str(r.message["From"])) for r in handler.received] == [
        ("task", "Shop <shop@example.com>"),
        ("batch", "Shop <shop@example.com>"),
    ]
