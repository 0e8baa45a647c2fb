"""mailsvc: asyncio-first email for Quart apps, with a durable outbox service.

The public surface is pinned by ``tests/test_public_api.py``.
"""

from .addresses import parse_address
from .config import MailConfig
from .errors import (
    AddressError,
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
    TemplateError,
    TransportSecurityError,
)
from .extension import Connection, Mail
from .message import Attachment, Envelope, Message
from .rendering import TemplateRenderer
from .results import RecipientResult, SendResult

__all__ = [
    "AddressError",
    "Attachment",
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
    "SendResult",
    "TemplateError",
    "TemplateRenderer",
    "TransportSecurityError",
    "parse_address",
]

__version__ = "0.1.0"
