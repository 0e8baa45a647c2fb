"""One error root for everything mailsvc raises.

Callers catch :class:`MailError` for "anything from us", or a subclass that also
inherits the builtin they would naturally catch (``ValueError`` for bad input,
``ConnectionError`` for an unreachable server), as aiosmtplib does. Delivery
errors also inherit the :mod:`smtplib` exception a Flask-Mail user already catches
(``except smtplib.SMTPException``, ``SMTPAuthenticationError``,
``SMTPRecipientsRefused``, ``SMTPServerDisconnected`` keep working)::

    MailError
    ├── ConfigError (ValueError)            a setting is wrong; message names it and the fix
    ├── MessageError (ValueError)           a Message cannot be built as given
    │   ├── BadHeaderError                  CR, LF or NUL in a header value
    │   └── AddressError                    an address that does not parse
    ├── TemplateError (LookupError)         unknown template, missing variable, syntax error
    ├── DeliveryError (smtplib.SMTPException)   nothing was delivered; carries the server's reply
    │   ├── TransportSecurityError          TLS missing/invalid; nothing was sent in clear
    │   ├── AuthenticationError (smtplib.SMTPAuthenticationError)
    │   ├── RecipientsRefusedError (smtplib.SMTPRecipientsRefused)   every recipient refused
    │   └── ConnectionFailedError (smtplib.SMTPServerDisconnected, ConnectionError)
    └── OutboxError                         the durable outbox could not do what was asked
        ├── OutboxFullError                 backpressure: too much undelivered mail
        ├── IdempotencyConflictError        same key, different message
        └── NotFoundError (LookupError)     unknown message or batch id

Lower-level errors (aiosmtplib, sqlite3) are translated at the boundary that
knows them and chained with ``raise ... from exc``.
"""

from __future__ import annotations

import smtplib

__all__ = [
    "AddressError",
    "AuthenticationError",
    "BadHeaderError",
    "ConfigError",
    "ConnectionFailedError",
    "DeliveryError",
    "IdempotencyConflictError",
    "MailError",
    "MessageError",
    "NotFoundError",
    "OutboxError",
    "OutboxFullError",
    "RecipientsRefusedError",
    "TemplateError",
    "TransportSecurityError",
]


class MailError(Exception):
    """Root of every error mailsvc raises on purpose."""


class ConfigError(MailError, ValueError):
    """A setting is missing, malformed or contradicts another one."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"{setting}: {reason}")


class MessageError(MailError, ValueError):
    """A message cannot be built as given; ``field`` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class BadHeaderError(MessageError):
    """A header value holds CR, LF or NUL, which would let it inject headers."""

    def __init__(self, field: str, reason: str = "must not contain CR, LF or NUL characters") -> None:
        super().__init__(field, reason)


class AddressError(MessageError):
    """An email address that does not parse or has an invalid domain."""


class TemplateError(MailError, LookupError):
    """A template is unknown, fails to parse, or uses a variable nobody passed."""

    def __init__(self, template: str, reason: str, *, line: int | None = None) -> None:
        self.template = template
        self.reason = reason
        self.line = line
        where = f" (line {line})" if line else ""
        super().__init__(f"template {template!r}{where}: {reason}")


class DeliveryError(MailError, smtplib.SMTPException):
    """No recipient accepted the message.

    ``code`` and ``reply`` hold the server's last answer when there was one, and
    ``result`` the per-recipient :class:`~mailsvc.results.SendResult`; ``smtp_code``
    and ``smtp_error`` hold the same answer under smtplib's names.
    """

    smtp_code: int
    smtp_error: bytes | str

    def __init__(
        self,
        reason: str,
        *,
        code: int | None = None,
        reply: str | None = None,
        result: object | None = None,
    ) -> None:
        self.reason = reason
        self.code = code
        self.reply = reply
        self.result = result
        self.smtp_code = code if code is not None else -1
        self.smtp_error = (reply or reason).encode("utf-8", "replace")
        detail = f" (server said {code} {reply})" if code is not None else ""
        Exception.__init__(self, f"{reason}{detail}")

    def __str__(self) -> str:  # OSError's own __str__ would show errno/strerror, which are never set here
        return str(self.args[0])


class TransportSecurityError(DeliveryError):
    """TLS could not be established as configured; nothing was sent in clear."""


class AuthenticationError(DeliveryError, smtplib.SMTPAuthenticationError):
    """The relay refused ``MAIL_USERNAME``/``MAIL_PASSWORD``."""


class RecipientsRefusedError(DeliveryError, smtplib.SMTPRecipientsRefused):
    """Every recipient was refused; ``recipients`` maps each to ``(code, reply)`` as smtplib's does."""

    def __init__(self, reason: str, *, recipients: dict[str, tuple[int, bytes]], result: object | None = None) -> None:
        self.recipients = recipients
        code, reply = next(iter(recipients.values()), (None, b""))
        super().__init__(reason, code=code, reply=reply.decode("utf-8", "replace") if code else None, result=result)


class ConnectionFailedError(DeliveryError, smtplib.SMTPServerDisconnected, ConnectionError):
    """The SMTP server could not be reached, or dropped the connection."""


class OutboxError(MailError):
    """The durable outbox could not complete an operation."""


class OutboxFullError(OutboxError):
    """Backpressure: too much undelivered mail is queued; retry after ``retry_after`` s."""

    def __init__(self, pending: int, limit: int, retry_after: int = 30) -> None:
        self.pending = pending
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"outbox holds {pending} undelivered messages (limit {limit}); "
            f"retry in {retry_after}s or raise MAILSVC_MAX_PENDING"
        )


class IdempotencyConflictError(OutboxError):
    """An idempotency key was reused for a different message."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} was already used for a different message; use a new key for a new message"
        )


class NotFoundError(OutboxError, LookupError):
    """No message or batch has this id."""

    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"no {kind} with id {ident!r}")
