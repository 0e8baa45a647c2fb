"""The one place that turns a :class:`Message` into an :class:`Envelope` for a :class:`MailConfig`.

Why one function: the extension, the web layer, ``mailsvc send``/``bulk`` and the
worker's state all build envelopes, and each used to pass the config's defaults
(sender, Message-ID domain, ASCII attachment names) on its own, and only some of
them took the fast path. Here they all take it when the message's shape allows
(``fastbuild``: same bytes, less CPU) and ``Message.build`` otherwise. Quart-free:
the CLI and the worker import it without any app.

    >>> from mailsvc.message import Message
    >>> config = MailConfig(default_sender="shop@example.com", message_id_domain="example.com")
    >>> env = build_envelope(Message("Hi", recipients=["ann@example.com"], body="Hello"), config)
    >>> env.sender, env.recipients, env.message_id.endswith("@example.com>")
    ('shop@example.com', ('ann@example.com',), True)
"""

from __future__ import annotations

from . import fastbuild
from .config import MailConfig
from .message import Envelope, Message

__all__ = ["build_envelope"]


def build_envelope(msg: Message, config: MailConfig) -> Envelope:
    """Check ``msg`` (raising :class:`MessageError` naming the field) and write its wire form."""
    return fastbuild.build(
        msg,
        default_sender=config.default_sender,
        msgid_domain=config.message_id_domain,
        ascii_attachments=config.ascii_attachments,
        address_rules=config.address_rules,
    )
