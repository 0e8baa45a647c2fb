"""The message model: :class:`Message`, :class:`Attachment`, and the :class:`Envelope` it builds.

Why this shape: a Flask-Mail user's ``Message(...)`` keeps its familiar mutable
attributes, but nothing here reads an app or opens a connection. Everything the
wire needs is produced by one call, :meth:`Message.build`, which validates every
header first (so :class:`BadHeaderError` comes before any connection) and returns
an immutable :class:`Envelope` of sender, recipients and bytes.
"""

from __future__ import annotations

import functools
import mimetypes
import re
import socket
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy as _policy
from email.message import EmailMessage
from email.utils import format_datetime, formatdate, make_msgid
from typing import Any, cast

from .addresses import AddressLike, ParsedAddress, check_header, parse_address, parse_address_list
from .errors import BadHeaderError, MessageError

__all__ = ["Attachment", "Envelope", "Message", "default_msgid_domain", "normalize_newlines"]

# Built once: 7bit transfer encodings so no server needs 8BITMIME, CRLF on the wire.
_POLICY_7BIT = _policy.SMTP.clone(cte_type="7bit")
_POLICY_UTF8 = _policy.SMTPUTF8
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'
# Headers whose value the MIME structure owns; letting callers set them would break it.
_STRUCTURAL = {"content-type", "content-transfer-encoding", "mime-version", "bcc", "content-disposition"}
_MANAGED = {"from", "to", "cc", "subject", "date", "message-id", "reply-to"}


def normalize_newlines(text: str) -> str:
    """Turn CRLF and bare CR into LF; the MIME layer then emits CRLF only (no SMTP smuggling)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


@functools.cache
def default_msgid_domain() -> str:
    """Hostname without a DNS lookup (``make_msgid``'s default calls ``getfqdn``, which can block).

    Cached for the process, as Django caches its DNS_NAME: bulk sends paid a system call per message.
    """
    host = socket.gethostname()
    return host if host and re.fullmatch(r"[A-Za-z0-9.-]+", host) else "mailsvc.localdomain"


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
            or not _HEADER_NAME.fullmatch(maintype)
            or not _HEADER_NAME.fullmatch(subtype.split(";")[0].strip())
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


@dataclass
class _Checked:
    sender: ParsedAddress
    to: list[ParsedAddress]
    cc: list[ParsedAddress]
    bcc: list[ParsedAddress]
    reply_to: list[ParsedAddress]
    envelope_to: list[str] = field(default_factory=list)


class Message:
    """An email, with Flask-Mail's constructor and attributes.

    >>> msg = Message("Hello", recipients=["ann@example.com"], body="Hi Ann",
    ...               sender=("Shop", "shop@example.com"))
    >>> msg.attach("a.txt", "text/plain", b"hello")
    >>> b"Subject: Hello" in msg.as_bytes()
    True
    """

    def __init__(
        self,
        subject: str = "",
        recipients: Sequence[AddressLike] | None = None,
        body: str | None = None,
        html: str | None = None,
        alts: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        sender: AddressLike | None = None,
        cc: Sequence[AddressLike] | None = None,
        bcc: Sequence[AddressLike] | None = None,
        attachments: Sequence[Attachment] | None = None,
        reply_to: AddressLike | None = None,
        date: float | datetime | None = None,
        charset: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        mail_options: Sequence[str] | None = None,
        rcpt_options: Sequence[str] | None = None,
    ) -> None:
        self.subject = subject
        self.recipients: list[AddressLike] = _as_list(recipients)
        self.body = body
        self.html = html
        self.alts: dict[str, str] = dict(alts or {})
        self.sender = sender
        self.cc: list[AddressLike] = _as_list(cc)
        self.bcc: list[AddressLike] = _as_list(bcc)
        self.attachments: list[Attachment] = list(attachments or [])
        self.reply_to = reply_to
        self.date = date
        self.charset = charset
        self.extra_headers: dict[str, str] = dict(extra_headers or {})
        self.mail_options: list[str] = list(mail_options or [])
        self.rcpt_options: list[str] = list(rcpt_options or [])
        self._msg_id: str | None = None

    # -- Flask-Mail surface -------------------------------------------------
    @property
    def msgId(self) -> str:
        """The Message-ID, minted on first use and then stable for every send attempt."""
        if self._msg_id is None:
            self._msg_id = make_msgid(domain=default_msgid_domain())
        return self._msgid_checked()

    @msgId.setter
    def msgId(self, value: str) -> None:
        self._msg_id = value

    def _msgid_checked(self) -> str:
        assert self._msg_id is not None
        return check_header("message_id", self._msg_id)

    def mint_message_id(self, domain: str | None) -> str:
        """Mint the Message-ID under ``domain`` unless one already exists."""
        if self._msg_id is None:
            self._msg_id = make_msgid(domain=domain or default_msgid_domain())
        return self._msgid_checked()

    @property
    def send_to(self) -> set[str]:
        """Every envelope recipient (to, cc and bcc), normalised, without duplicates."""
        return {a.envelope for a in self._all_recipients()}

    def add_recipient(self, recipient: AddressLike) -> None:
        self.recipients.append(recipient)

    def attach(
        self,
        filename: str | None = None,
        content_type: str | None = None,
        data: bytes | str | None = None,
        disposition: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.attachments.append(
            Attachment(filename, content_type, data if data is not None else b"", disposition, headers)
        )

    def has_bad_headers(self) -> bool:
        """Flask-Mail's check: does any header-bound value hold CR, LF or NUL? (No sender needed.)"""
        for value in self._header_values():
            try:
                check_header("header", value)
            except BadHeaderError:
                return True
        return False

    def _header_values(self) -> Iterator[str]:
        def addresses(v: object) -> Iterator[str]:
            if isinstance(v, str):
                yield v
            elif isinstance(v, (list, tuple)):
                for item in v:
                    yield from addresses(item)

        yield self.subject
        for v in (self.sender, self.recipients, self.cc, self.bcc, self.reply_to):
            yield from addresses(v)
        for name, value in self.extra_headers.items():
            yield from (str(name), str(value))
        for att in self.attachments:
            yield from (att.filename or "", att.content_type or "", att.disposition or "")
            for k, v in (att.headers or {}).items():
                yield from (k, v)
        yield from self.mail_options
        yield from self.rcpt_options

    def as_bytes(self, default_sender: AddressLike | None = None) -> bytes:
        return self.build(default_sender=default_sender).data

    def as_string(self, default_sender: AddressLike | None = None) -> str:
        return self.as_bytes(default_sender).decode("utf-8")

    def __str__(self) -> str:
        return self.as_string()

    # -- building -----------------------------------------------------------
    def _all_recipients(self) -> list[ParsedAddress]:
        return (
            parse_address_list(self.recipients, "recipients")
            + parse_address_list(self.cc, "cc")
            + parse_address_list(self.bcc, "bcc")
        )

    def check(self, default_sender: AddressLike | None = None) -> _Checked:
        """Validate every header-bound value; raise before anything touches the network."""
        check_header("subject", self.subject)
        sender_value = self.sender if self.sender else default_sender
        if not sender_value:
            raise MessageError("sender", "no sender: pass sender= or set MAIL_DEFAULT_SENDER")
        sender = parse_address(sender_value, "sender")
        to = parse_address_list(self.recipients, "recipients")
        cc = parse_address_list(self.cc, "cc")
        bcc = parse_address_list(self.bcc, "bcc")
        reply_to = parse_address_list(self.reply_to, "reply_to")
        for name, value in self.extra_headers.items():
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise BadHeaderError("extra_headers", f"{name!r} is not a valid header name")
            if name.lower() in _STRUCTURAL:
                raise MessageError("extra_headers", f"{name} is set by the MIME structure and cannot be overridden")
            check_header(f"extra_headers.{name}", str(value))
        for i, att in enumerate(self.attachments):
            check_header(f"attachments[{i}].filename", att.filename or "")
            check_header(f"attachments[{i}].content_type", att.content_type or "")
            check_header(f"attachments[{i}].disposition", att.disposition or "")
            for k, v in (att.headers or {}).items():
                if not _HEADER_NAME.fullmatch(k):
                    raise BadHeaderError(f"attachments[{i}].headers", f"{k!r} is not a valid header name")
                check_header(f"attachments[{i}].headers.{k}", v)
            att.resolved_content_type()
        for opt in (*self.mail_options, *self.rcpt_options):
            check_header("mail_options", opt)
            if " " in opt:
                raise BadHeaderError("mail_options", f"{opt!r} must be a single ESMTP parameter")
        seen: set[str] = set()
        envelope_to = []
        for a in (*to, *cc, *bcc):
            if a.envelope.lower() not in seen:
                seen.add(a.envelope.lower())
                envelope_to.append(a.envelope)
        if not envelope_to:
            raise MessageError("recipients", "no recipients: pass recipients, cc or bcc")
        return _Checked(sender, to, cc, bcc, reply_to, envelope_to)

    def build(
        self,
        *,
        default_sender: AddressLike | None = None,
        msgid_domain: str | None = None,
        ascii_attachments: bool = False,
    ) -> Envelope:
        """Check everything, then produce the wire form. Bcc is in the envelope, never in a header."""
        c = self.check(default_sender)
        smtputf8 = any(a.smtputf8 for a in (c.sender, *c.to, *c.cc, *c.bcc, *c.reply_to))
        pol = _POLICY_UTF8 if smtputf8 else _POLICY_7BIT
        msg_id = self.mint_message_id(msgid_domain)
        m = EmailMessage(policy=pol)
        m["Subject"] = self.subject
        m["From"] = c.sender.header
        if c.to:
            m["To"] = ", ".join(a.header for a in c.to)
        if c.cc:
            m["Cc"] = ", ".join(a.header for a in c.cc)
        if c.reply_to:
            m["Reply-To"] = ", ".join(a.header for a in c.reply_to)
        m["Date"] = _format_date(self.date)
        m["Message-ID"] = msg_id
        for name, value in self.extra_headers.items():
            if name.lower() in _MANAGED:
                del m[name]
            m[name] = str(value)
        try:
            self._set_body(m)
        except (LookupError, UnicodeError) as exc:
            raise MessageError("charset", f"cannot encode the body as {self.charset!r}: {exc}") from exc
        self._add_attachments(m, ascii_attachments)
        mail_options = list(self.mail_options)
        if smtputf8 and not any(o.upper() == "SMTPUTF8" for o in mail_options):
            mail_options.append("SMTPUTF8")
        data = m.as_bytes(policy=pol)
        return Envelope(
            sender=c.sender.envelope,
            recipients=tuple(c.envelope_to),
            data=data,
            message_id=msg_id,
            mail_options=tuple(mail_options),
            rcpt_options=tuple(self.rcpt_options),
        )

    def _set_body(self, m: EmailMessage) -> None:
        charset = self.charset or "utf-8"
        alts = dict(self.alts)
        html = self.html if self.html is not None else alts.pop("html", None)
        alts.pop("html", None) if self.html is not None else None
        text = self.body if self.body is not None else alts.pop("plain", None)
        if text is None and html is None:
            text = ""
        if text is not None:
            m.set_content(normalize_newlines(text), subtype="plain", charset=charset)
            if html is not None:
                m.add_alternative(normalize_newlines(html), subtype="html", charset=charset)
        else:
            assert html is not None
            m.set_content(normalize_newlines(html), subtype="html", charset=charset)
        for subtype, content in alts.items():
            check_header("alts", subtype)
            m.add_alternative(normalize_newlines(content), subtype=subtype, charset=charset)

    def _add_attachments(self, m: EmailMessage, ascii_names: bool) -> None:
        html_part = _find_html(m)
        # Inline parts first: once the root turns multipart/mixed, an html-only root can
        # no longer become multipart/related, so the order of attach() calls must not matter.
        ordered = sorted(self.attachments, key=lambda a: not (a.is_inline and html_part is not None))
        for att in ordered:
            maintype, subtype = att.resolved_content_type()
            data = att.data.encode("utf-8") if isinstance(att.data, str) else bytes(att.data)
            filename = _ascii_filename(att.filename) if (ascii_names and att.filename) else att.filename
            extra = {k: v for k, v in (att.headers or {}).items() if k.lower() != "content-id"}
            if att.is_inline and html_part is not None:
                html_part.add_related(
                    data, maintype, subtype, cid=att.content_id, filename=filename, disposition="inline"
                )
                part = cast(EmailMessage, html_part.get_payload()[-1])  # type: ignore[index]
            else:
                kwargs: dict[str, Any] = {
                    "filename": filename,
                    "disposition": (att.disposition or "attachment").lower(),
                }
                if att.content_id:
                    kwargs["cid"] = att.content_id
                m.add_attachment(data, maintype, subtype, **kwargs)
                part = cast(EmailMessage, m.get_payload()[-1])  # type: ignore[index]
            for k, v in extra.items():
                part[k] = v


def _as_list(values: Sequence[AddressLike] | AddressLike | None) -> list[AddressLike]:
    """``"a@x"`` or ``("Ann", "a@x")`` alone means one recipient, not a list of characters or parts."""
    if not values:
        return []
    if isinstance(values, str):
        return [values]
    if (
        isinstance(values, tuple)
        and len(values) == 2
        and all(isinstance(v, str) for v in values)
        and "@" not in values[0]
    ):
        return [values]  # type: ignore[list-item]
    return list(values)


def _find_html(m: EmailMessage) -> EmailMessage | None:
    if m.get_content_type() == "text/html":
        return m
    if m.get_content_type() == "multipart/alternative":
        for part in m.iter_parts():
            if part.get_content_type() == "text/html":
                return part  # type: ignore[return-value]
    return None


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    """A Date header depends only on the whole second: a batch built in one second formats it once.

    ``formatdate(localtime=True)`` looks up the local zone on every call (~7% of building a bulk message).
    A zone change (``time.tzset``) shows from the next second on.
    """
    return formatdate(second, localtime=True)


def _ascii_filename(name: str) -> str:
    """Flask-Mail's MAIL_ASCII_ATTACHMENTS: transliterate for mail clients that mangle RFC 2231."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii") or "attachment"


def _format_date(date: float | datetime | None) -> str:
    if date is None:
        # +0.5 µs: formatdate's datetime.fromtimestamp rounds to the microsecond, so .9999995 is the next second.
        return _date_of_second(int(time.time() + 5e-7))
    if isinstance(date, datetime):
        return format_datetime(date if date.tzinfo else date.astimezone())
    return formatdate(date, localtime=True)
