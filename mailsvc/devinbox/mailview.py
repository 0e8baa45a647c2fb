"""Read a captured message back for display: headers, text and HTML parts, attachments.

Why tolerant: the dev inbox shows whatever any local app sent it, including
malformed mail, so every step falls back (undecodable charset -> replacement
characters, broken header -> its raw text) instead of failing the page.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from urllib.parse import unquote

__all__ = ["MessageView", "Part", "Snapshot", "parse", "part_data", "rewrite_cids", "summarize"]


@dataclass(frozen=True, slots=True)
class Part:
    """A leaf MIME part that is not the displayed text or HTML body (attachment or inline image)."""

    index: int
    filename: str
    content_type: str
    size: int
    content_id: str | None
    inline: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the store indexes at receive time."""

    subject: str
    message_id: str
    addresses: list[str]
    attachments: int


@dataclass(slots=True)
class MessageView:
    subject: str
    from_: str
    to: str
    cc: str
    date: str
    message_id: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    parts: list[Part] = field(default_factory=list)

    @property
    def attachments(self) -> list[Part]:
        """Parts a person would call attachments (inline images referenced by the HTML excluded)."""
        return [p for p in self.parts if not p.inline]


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except (ValueError, IndexError, TypeError):  # the stdlib's header parser on malformed input
        return ""
    return "" if value is None else str(value)


def _leaves(msg: Message) -> list[Message]:
    return [p for p in msg.walk() if not p.is_multipart()]


def _decode(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, ValueError, UnicodeError, AttributeError):
        pass
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    try:
        return data.decode(part.get_content_charset() or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("utf-8", errors="replace")


def _body(msg: EmailMessage, kind: str) -> Message | None:
    try:
        return msg.get_body(preferencelist=(kind,))
    except (KeyError, ValueError):
        return None


def _parts(msg: EmailMessage, bodies: set[int]) -> list[Part]:
    out = []
    for index, leaf in enumerate(_leaves(msg)):
        if id(leaf) in bodies:
            continue
        payload = leaf.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        cid = _header(leaf, "Content-ID").strip().strip("<>") or None
        disposition = (leaf.get_content_disposition() or "").lower()
        try:
            filename = leaf.get_filename() or ""
        except (ValueError, LookupError):
            filename = ""
        out.append(
            Part(
                index=index,
                filename=filename or f"part-{index}",
                content_type=leaf.get_content_type(),
                size=size,
                content_id=cid,
                inline=cid is not None and disposition != "attachment",
            )
        )
    return out


def _parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)


def parse(raw: bytes) -> MessageView:
    """Everything the message page shows."""
    msg = _parse(raw)
    html_part, text_part = _body(msg, "html"), _body(msg, "plain")
    headers = []
    for name in msg.keys():
        headers.append((name, _header(msg, name)))
    bodies = {id(p) for p in (html_part, text_part) if p is not None}
    return MessageView(
        subject=_header(msg, "Subject"),
        from_=_header(msg, "From"),
        to=_header(msg, "To"),
        cc=_header(msg, "Cc"),
        date=_header(msg, "Date"),
        message_id=_header(msg, "Message-ID"),
        headers=headers,
        text=_decode(text_part) if text_part is not None else None,
        html=_decode(html_part) if html_part is not None else None,
        parts=_parts(msg, bodies),
    )


def summarize(raw: bytes) -> Snapshot:
    """Subject, Message-ID, header addresses and attachment count, computed once at receive time."""
    head = BytesHeaderParser(policy=policy.default).parsebytes(raw)
    try:
        addresses = [addr for _, addr in getaddresses([_header(head, "To"), _header(head, "Cc")]) if addr]
    except (ValueError, IndexError):
        addresses = []
    view = parse(raw)
    return Snapshot(
        subject=_header(head, "Subject"),
        message_id=_header(head, "Message-ID").strip(),
        addresses=addresses,
        attachments=len(view.attachments),
    )


def part_data(raw: bytes, index: int) -> tuple[Part, bytes] | None:
    """The decoded bytes of leaf part ``index`` (as numbered by :func:`parse`), or None."""
    msg = _parse(raw)
    leaves = _leaves(msg)
    if not 0 <= index < len(leaves):
        return None
    view = parse(raw)
    part = next((p for p in view.parts if p.index == index), None)
    if part is None:  # the text or HTML body itself: downloadable too
        leaf = leaves[index]
        ext = "html" if leaf.get_content_type() == "text/html" else "txt"
        part = Part(index, f"body.{ext}", leaf.get_content_type(), 0, None, False)
    payload = leaves[index].get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    return part, data


_CID = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)


def rewrite_cids(html: str, parts: list[Part], url_for_index: dict[int, str]) -> str:
    """Point ``cid:`` references at the routes serving those parts, so inline images show."""
    by_cid = {p.content_id: url_for_index[p.index] for p in parts if p.content_id and p.index in url_for_index}

    def sub(m: re.Match[str]) -> str:
        return by_cid.get(unquote(m.group(1)), m.group(0))

    return _CID.sub(sub, html)
