"""Transports deliver an :class:`~mailsvc.message.Envelope`; one contract, several implementations."""

from .base import Transport
from .memory import MemoryTransport
from .pool import ConnectionPool
from .smtp import SMTPTransport

__all__ = ["ConnectionPool", "MemoryTransport", "SMTPTransport", "Transport"]
