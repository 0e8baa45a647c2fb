"""The one place that turns a :class:`Message` into an :class:`Envelope` for a :class:`MailConfig`.

Why one function: the extension, the web layer, ``mailsvc send``/``bulk`` and the
worker's state all build envelopes, and each used to pass the config's defaults
(sender, Message-ID domain, ASCII attachment names) on its own, and only some of
them took the fast path. Here they all take it when the message's shape allows
(``fastbuild``: same bytes, less CPU) and ``Message.build`` otherwise. Quart-free:
the CLI and the worker import it without any app.

DKIM signs here, once per message, after the bytes are written (``dkimsign``): the
outbox stores signed bytes and a retry resends exactly them; nothing later signs.
A From domain with no key (when keys are configured) is logged per message with
``dkim="unsigned"``, never skipped in silence.

    >>> from mailsvc.message import Message
    >>> config = MailConfig(default_sender="shop@example.com", message_id_domain="example.com")
    >>> env = build_envelope(Message("Hi", recipients=["ann@example.com"], body="Hello"), config)
    >>> env.sender, env.recipients, env.message_id.endswith("@example.com>")
    ('shop@example.com', ('ann@example.com',), True)
"""

from __future__ import annotations

import dataclasses
import logging

from . import fastbuild
from .addresses import parse_address
from .config import MailConfig
from .message import Envelope, Message

log = logging.getLogger("mailsvc.dkim")

__all__ = ["build_envelope"]


def build_envelope(msg: Message, config: MailConfig) -> Envelope:
    """Check ``msg`` (raising :class:`MessageError` naming the field) and write its wire form."""
    envelope = fastbuild.build(
        msg,
        default_sender=config.default_sender,
        msgid_domain=config.message_id_domain,
        ascii_attachments=config.ascii_attachments,
        address_rules=config.address_rules,
    )
    ring = config.dkim_keyring()
    if not ring:
        return envelope
    # The From header's domain (what DMARC aligns with); the build above already parsed it, so this cannot fail.
    from_domain = parse_address(msg.sender or config.default_sender or "", "sender").envelope.rpartition("@")[2]
    signed = ring.sign(envelope.data, from_domain)
    if signed is None:
        log.warning(
            "DKIM: no key for %s: %s goes out unsigned",
            from_domain,
            envelope.message_id,
            extra={"dkim": "unsigned", "from_domain": from_domain, "message_id": envelope.message_id},
        )
        return envelope
    return dataclasses.replace(envelope, data=signed)
