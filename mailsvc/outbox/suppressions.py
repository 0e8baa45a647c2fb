"""The suppression list's rules, written once: reasons, which stream a suppression covers, address keys.

The scope rule: an ``unsubscribe`` holds for its own stream only (the list the reader left); a
``hard_bounce``, a ``complaint``, and a ``manual`` entry given no stream hold for every stream of
the tenant, stored under :data:`ALL_STREAMS` (``'*'``, which no stream name can be). A message is
checked with its stream (``"default"`` unless its request named one); a message without a stream
(written before the stream was recorded, or queued by a library caller that named none) is checked
against the every-stream entries only.

Why addresses are lower-cased here, in Python, and never with SQL's ``lower()``: SQLite's is
ASCII-only (``Ä`` stays ``Ä``) while PostgreSQL's is not, so the same list would match differently
on the two backends. Every key is made by :func:`address_key` before it reaches a query.
"""

from __future__ import annotations

import re
from enum import StrEnum

import idna

from ..addresses import header_problem, parse_address
from ..errors import MessageError

__all__ = ["ALL_STREAMS", "Reason", "address_key", "covers", "hard_bounce", "parse_key", "stream_for"]

#: The stream of an entry that holds for every stream of its tenant.
ALL_STREAMS = "*"


class Reason(StrEnum):
    HARD_BOUNCE = "hard_bounce"
    UNSUBSCRIBE = "unsubscribe"
    COMPLAINT = "complaint"
    MANUAL = "manual"


def address_key(address: str) -> str:
    """The form an address is stored and looked up in: lower-cased (mailbox providers ignore case in
    practice), an internationalised domain in its IDNA form, as envelopes carry it.

    >>> address_key("Änne@BÜCHER.example"), address_key("Ann@Example.COM")
    ('änne@xn--bcher-kva.example', 'ann@example.com')
    """
    local, at, domain = address.rpartition("@")
    if at and not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError:
            pass  # not a domain a message could be sent to: keyed as given
    return f"{local}{at}{domain}".lower()


def parse_key(value: str) -> str:
    """A user's address (``'Ann <ann@example.com>'`` too) as the list keys it; ValueError saying why not.

    For what people type (the API, the CLI): checked as a message's recipient is, so what is
    listed is what a message would be matched by.
    """
    if len(value) > 998:
        raise ValueError("at most 998 characters")
    reason = header_problem(value)
    if reason:
        raise ValueError(reason)
    try:
        return address_key(parse_address(value, "address").envelope)
    except MessageError as exc:
        raise ValueError(exc.reason) from None


def stream_for(reason: str, stream: str | None) -> str:
    """Where an entry is stored: ``unsubscribe`` on its stream (``"default"`` if none), the others
    on ``stream`` when given, else on every stream.

    >>> stream_for("unsubscribe", None), stream_for("hard_bounce", None), stream_for("manual", "news")
    ('default', '*', 'news')
    """
    if reason == Reason.UNSUBSCRIBE:
        return stream or "default"
    return stream or ALL_STREAMS


def covers(entry_stream: str, message_stream: str | None) -> bool:
    """Whether an entry stored on ``entry_stream`` stops a message on ``message_stream``."""
    return entry_stream == ALL_STREAMS or (message_stream is not None and entry_stream == message_stream)


# RFC 3463 address statuses that mean the mailbox or domain does not exist: 5.1.0 (other address
# status), 5.1.1 (bad destination mailbox), 5.1.10 (RFC 7505: the domain accepts no mail).
_NO_SUCH_ADDRESS = re.compile(r"^\s*5\.1\.(?:0|1|10)(?![0-9.])")


def hard_bounce(code: int | None, reply: str) -> bool:
    """Whether a permanent refusal says the address does not exist (and so is never worth retrying).

    A policy refusal (``550 5.7.1``, spam, relaying denied) is not: the address exists and another
    message may be accepted, so it must not silence every later mail to it.

    >>> hard_bounce(550, "5.1.1 <x@example.com>: user unknown"), hard_bounce(550, "5.7.1 rejected")
    (True, False)
    >>> hard_bounce(450, "4.1.1 try later"), hard_bounce(550, "5.1.10 null MX"), hard_bounce(550, "5.1.11")
    (False, True, False)
    """
    if code is None or not 500 <= code <= 599:
        return False
    return _NO_SUCH_ADDRESS.match(reply) is not None
