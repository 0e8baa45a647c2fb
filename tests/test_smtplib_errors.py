"""Issue 14, friction 1: code that catches smtplib's exceptions (as Flask-Mail users' code does) still catches."""

from __future__ import annotations

import smtplib
import socket

import pytest

from mailsvc import Mail, Message
from mailsvc.config import MailConfig
from mailsvc.errors import AuthenticationError, ConnectionFailedError, DeliveryError, RecipientsRefusedError
from tests.servers import Authenticator, RecordingHandler, smtp_server


def msg(*to: str) -> Message:
    return Message("Hi", recipients=list(to), body="x", sender="shop@example.com")


async def test_every_recipient_refused_is_smtp_recipients_refused() -> None:
    handler = RecordingHandler(refuse={"a@example.com": "550 5.1.1 no such user", "b@example.com": "551 moved"})
    async with smtp_server(handler) as port:
        mail = Mail(config=MailConfig(server="127.0.0.1", port=port))
        with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
            await mail.send(msg("a@example.com", "b@example.com"))
        await mail.state.aclose()
    exc = caught.value
    assert isinstance(exc, RecipientsRefusedError) and isinstance(exc, DeliveryError)
    assert exc.recipients == {"a@example.com": (550, b"5.1.1 no such user"), "b@example.com": (551, b"moved")}


async def test_a_partial_refusal_is_still_a_result_not_an_exception() -> None:
    handler = RecordingHandler(refuse={"a@example.com": "550 no"})
    async with smtp_server(handler) as port:
        mail = Mail(config=MailConfig(server="127.0.0.1", port=port))
        result = await mail.send(msg("a@example.com", "ok@example.com"))
        await mail.state.aclose()
    assert [r.status for r in result.recipients] == ["refused", "delivered"]


async def test_wrong_password_is_smtp_authentication_error() -> None:
    async with smtp_server(
        RecordingHandler(), authenticator=Authenticator("me", "right"), auth_require_tls=False
    ) as port:
        mail = Mail(config=MailConfig(server="127.0.0.1", port=port, username="me", password="wrong"))
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            await mail.send(msg("a@example.com"))
        await mail.state.aclose()
    assert isinstance(caught.value, AuthenticationError)
    assert caught.value.smtp_code == 535 and "MAIL_USERNAME" in str(caught.value)


async def test_an_unreachable_relay_is_smtp_server_disconnected_and_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        mail = Mail(config=MailConfig(server="127.0.0.1", port=port, timeout=5))
        for catch in (smtplib.SMTPServerDisconnected, smtplib.SMTPException, ConnectionError, OSError):
            with pytest.raises(catch) as caught:
                await mail.send(msg("a@example.com"))
            assert isinstance(caught.value, ConnectionFailedError)
            assert f"127.0.0.1:{port}" in str(caught.value)
        await mail.state.aclose()
