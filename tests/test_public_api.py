"""The public surface is pinned: adding or removing a name is a deliberate change to this list."""

from __future__ import annotations

import mailsvc
import mailsvc.transports


def test_public_api_is_pinned() -> None:
    assert mailsvc.__all__ == sorted(
        [
            "AddressError",
            "Attachment",
            "AuthenticationError",
            "BadHeaderError",
            "ConfigError",
            "Connection",
            "ConnectionFailedError",
            "DeliveryError",
            "Envelope",
            "IdempotencyConflictError",
            "Mail",
            "MailConfig",
            "MailError",
            "Message",
            "MessageError",
            "NotFoundError",
            "OutboxError",
            "OutboxFullError",
            "RecipientResult",
            "RecipientsRefusedError",
            "SendResult",
            "TemplateError",
            "TemplateRenderer",
            "TransportSecurityError",
            "parse_address",
        ]
    )
    for name in mailsvc.__all__:
        assert getattr(mailsvc, name) is not None


def test_transports_surface_is_pinned() -> None:
    assert mailsvc.transports.__all__ == sorted(["ConnectionPool", "MemoryTransport", "SMTPTransport", "Transport"])


def test_flask_mail_names_and_error_tree() -> None:
    from mailsvc import Attachment, BadHeaderError, Mail, Message  # noqa: F401 - the Flask-Mail import line

    assert issubclass(BadHeaderError, mailsvc.MessageError) and issubclass(BadHeaderError, ValueError)
    assert issubclass(mailsvc.ConfigError, ValueError) and issubclass(mailsvc.TemplateError, LookupError)
    assert issubclass(mailsvc.ConnectionFailedError, ConnectionError)
    assert issubclass(mailsvc.TransportSecurityError, mailsvc.DeliveryError)
    for name in mailsvc.__all__:
        obj = getattr(mailsvc, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, mailsvc.MailError)
