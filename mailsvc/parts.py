"""The data a message is made of and becomes: :class:`Attachment`, :class:`BuildPlan`, :class:`Envelope`.

Why a module below ``message``: the plan is what both writers (the stdlib's MIME
tree in ``mimewriter``, the direct bytes in ``fastbuild``) read, and neither
writer needs the :class:`~mailsvc.message.Message` model that makes it.
``mailsvc.message`` re-exports all three.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass, replace

from .addresses import check_header
from .errors import BadHeaderError, MessageError

__all__ = ["HEADER_NAME", "Attachment", "BuildPlan", "Envelope"]

HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'


@dataclass(slots=True)
class Attachment:
    """A file carried by a message; ``data`` is always in memory, never a path to open.

    An inline image: ``Attachment("logo.png", "image/png", png, "inline", {"Content-ID": "<logo>"})``
    and ``<img src="cid:logo">`` in the HTML.
    """

    filename: str | None = None
    content_type: str | None = None
    data: bytes | str = b""
    disposition: str | None = None
    headers: dict[str, str] | None = None

    @property
    def content_id(self) -> str | None:
        for k, v in (self.headers or {}).items():
            if k.lower() == "content-id":
                return v.strip()
        return None

    @property
    def is_inline(self) -> bool:
        return (self.disposition or "attachment").lower() == "inline" and self.content_id is not None

    def resolved_content_type(self) -> tuple[str, str]:
        ctype = self.content_type or (mimetypes.guess_type(self.filename or "")[0]) or "application/octet-stream"
        maintype, _, subtype = ctype.partition("/")
        if (
            not maintype
            or not subtype
            or not HEADER_NAME.fullmatch(maintype)
            or not HEADER_NAME.fullmatch(subtype.split(";")[0].strip())
        ):
            raise MessageError("attachments.content_type", f"{ctype!r} is not a MIME type like 'image/png'")
        return maintype.lower(), subtype.split(";")[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Envelope:
    """What goes on the wire: envelope sender, envelope recipients and the message bytes."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """A checked message laid out for writing: every top-level header in order, every body part, the envelope.

    Why: ``Message.build`` (the stdlib's MIME tree) and ``fastbuild`` (bytes written
    directly) must produce the same message. Which headers, in which order, what an
    extra header may replace, which parts and alternatives, when SMTPUTF8 is needed:
    all of it is decided once, by :meth:`Message.plan`, and each writer only encodes
    what the plan says. A header added to a plan (a signature, an unsubscribe link)
    goes through :meth:`with_header`, which checks it, and is then written alike by both.

    >>> from mailsvc.message import Message
    >>> plan = Message("Hi", recipients=["ann@example.com"], body="x", sender="me@example.com").plan()
    >>> [name for name, _ in plan.headers]
    ['Subject', 'From', 'To', 'Date', 'Message-ID']
    """

    headers: tuple[tuple[str, str], ...]
    parts: tuple[tuple[str, str], ...]  # (subtype, text): the body first, then its alternatives
    charset: str
    attachments: tuple[Attachment, ...]
    ascii_attachments: bool
    smtputf8: bool
    sender: str
    recipients: tuple[str, ...]
    message_id: str
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]

    def with_header(self, name: str, value: str) -> BuildPlan:
        """This plan with one more header, checked like the message's own (for a signer, an unsubscribe rule).

        Why the only door: headers enter a plan from :meth:`Message.plan`, after
        :meth:`Message.check`, or here; either way nothing that could inject reaches a writer.
        """
        if not HEADER_NAME.fullmatch(name):
            raise BadHeaderError("headers", f"{name!r} is not a valid header name")
        check_header(f"headers.{name}", value)
        return replace(self, headers=(*self.headers, (name, value)))

    def envelope(self, data: bytes) -> Envelope:
        """The written bytes with this plan's envelope."""
        return Envelope(self.sender, self.recipients, data, self.message_id, self.mail_options, self.rcpt_options)
