"""mailsvc: asyncio-first email for Quart apps, with a durable outbox service.

The public surface is pinned by ``tests/test_public_api.py``.

Why lazy: ``from mailsvc import Mail`` pulls in Quart, pydantic and aiosmtplib,
which the ``mailsvc`` command line does not need just to parse its arguments or
print ``--help``. The error tree (stdlib only) is imported at once; every other
public name is imported on first access (PEP 562), so ``import mailsvc`` stays
cheap and ``from mailsvc import Mail, Message`` works exactly as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AddressError,
    AuthenticationError,
    BadHeaderError,
    ConfigError,
    ConnectionFailedError,
    DeliveryError,
    IdempotencyConflictError,
    MailError,
    MessageError,
    NotFoundError,
    OutboxError,
    OutboxFullError,
    RecipientsRefusedError,
    TemplateError,
    TransportSecurityError,
)

if TYPE_CHECKING:
    from .addresses import parse_address
    from .config import MailConfig
    from .extension import Connection, Mail
    from .message import Attachment, Envelope, Message
    from .rendering import TemplateRenderer
    from .results import RecipientResult, SendResult

__all__ = [
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

__version__ = "0.1.0"

# Public name -> submodule that defines it, imported on first access.
_LAZY = {
    "parse_address": "addresses",
    "MailConfig": "config",
    "Connection": "extension",
    "Mail": "extension",
    "Attachment": "message",
    "Envelope": "message",
    "Message": "message",
    "TemplateRenderer": "rendering",
    "RecipientResult": "results",
    "SendResult": "results",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
