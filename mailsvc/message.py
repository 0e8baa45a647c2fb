"""The message model: :class:`Message`, :class:`Attachment`, and the :class:`Envelope` it builds.

Why this shape: a Flask-Mail user's ``Message(...)`` keeps its familiar mutable
attributes, but nothing here reads an app or opens a connection. Everything the
wire needs is produced by one call, :meth:`Message.build`, which validates every
header first (so :class:`BadHeaderError` comes before any connection) and returns
an immutable :class:`Envelope` of sender, recipients and bytes.

Building is two steps: :meth:`Message.plan` checks the message and decides every
header and part (the one place a header rule is written), then a writer encodes
the plan: ``mimewriter`` (the stdlib, any shape) or ``fastbuild`` (common shapes).
"""

from __future__ import annotations

import functools
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime, formatdate, make_msgid
from typing import Protocol

from .addresses import AddressLike, AddressRules, ParsedAddress, check_header, parse_address, parse_address_list
from .errors import BadHeaderError, MessageError
from .mimewriter import mime_bytes
from .parts import HEADER_NAME, Attachment, BuildPlan, Envelope

__all__ = ["Attachment", "BuildPlan", "Envelope", "Message", "default_msgid_domain", "normalize_newlines"]

# Headers whose value the MIME structure owns; letting callers set them would break it.
_STRUCTURAL = {"content-type", "content-transfer-encoding", "mime-version", "bcc", "content-disposition"}
_MANAGED = {"from", "to", "cc", "subject", "date", "message-id", "reply-to"}


def normalize_newlines(text: str) -> str:
    """Turn CRLF and bare CR into LF; the MIME layer then emits CRLF only (no SMTP smuggling)."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


@functools.cache
def default_msgid_domain() -> str:
    """Hostname without a DNS lookup (``make_msgid``'s default calls ``getfqdn``, which can block).

    Cached for the process, as Django caches its DNS_NAME: bulk sends paid a system call per message.
    """
    host = socket.gethostname()
    return host if host and re.fullmatch(r"[A-Za-z0-9.-]+", host) else "mailsvc.localdomain"


@dataclass
class _Checked:
    sender: ParsedAddress
    to: list[ParsedAddress]
    cc: list[ParsedAddress]
    bcc: list[ParsedAddress]
    reply_to: list[ParsedAddress]
    envelope_to: list[str] = field(default_factory=list)


class SupportsSend(Protocol):
    """What :meth:`Message.send` needs: ``mail.connect()``'s connection (or the ``Mail`` itself)."""

    async def send(self, message: Message, /) -> object: ...


def _no_ambient_sender() -> AddressLike | None:
    return None


# Where a Message built without ``sender`` looks for a default at construction, as Flask-Mail's does
# inside an app context. The Quart extension installs its lookup (this module knows nothing of apps);
# outside an app context it answers None and the default is applied when the message is built.
ambient_default_sender: Callable[[], AddressLike | None] = _no_ambient_sender


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
        self.sender = sender if sender is not None else ambient_default_sender()
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

    async def send(self, connection: SupportsSend) -> object:
        """Flask-Mail's ``msg.send(conn)``: ``await msg.send(conn)`` inside ``async with mail.connect() as conn``."""
        return await connection.send(self)

    def as_bytes(self, default_sender: AddressLike | None = None) -> bytes:
        return self.build(default_sender=default_sender).data

    def as_string(self, default_sender: AddressLike | None = None) -> str:
        return self.as_bytes(default_sender).decode("utf-8")

    def __str__(self) -> str:
        return self.as_string()

    def __bytes__(self) -> bytes:
        return self.as_bytes()

    # -- building -----------------------------------------------------------
    def _all_recipients(self) -> list[ParsedAddress]:
        return (
            parse_address_list(self.recipients, "recipients")
            + parse_address_list(self.cc, "cc")
            + parse_address_list(self.bcc, "bcc")
        )

    def check(self, default_sender: AddressLike | None = None, address_rules: AddressRules = "permissive") -> _Checked:
        """Validate every header-bound value; raise before anything touches the network."""
        check_header("subject", self.subject)
        sender_value = self.sender if self.sender else default_sender
        if not sender_value:
            raise MessageError("sender", "no sender: pass sender= or set MAIL_DEFAULT_SENDER")
        rules = address_rules
        sender = parse_address(sender_value, "sender", rules)
        to = parse_address_list(self.recipients, "recipients", rules)
        cc = parse_address_list(self.cc, "cc", rules)
        bcc = parse_address_list(self.bcc, "bcc", rules)
        reply_to = parse_address_list(self.reply_to, "reply_to", rules)
        _check_extra_headers(self.extra_headers)
        _check_attachments(self.attachments)
        _check_options((*self.mail_options, *self.rcpt_options))
        envelope_to = _unique_envelope((*to, *cc, *bcc))
        if not envelope_to:
            raise MessageError("recipients", "no recipients: pass recipients, cc or bcc")
        return _Checked(sender, to, cc, bcc, reply_to, envelope_to)

    def plan(
        self,
        *,
        default_sender: AddressLike | None = None,
        msgid_domain: str | None = None,
        ascii_attachments: bool = False,
        address_rules: AddressRules = "permissive",
    ) -> BuildPlan:
        """Check everything and lay the message out: the one plan both writers follow.

        Bcc is in the envelope, never in a header. An extra header naming a managed
        one (``To``, ``Date``, ...) replaces it and moves to the end, as ``del m[name]``
        then ``m[name] = value`` leaves an ``EmailMessage``.
        """
        c = self.check(default_sender, address_rules)
        smtputf8 = any(a.smtputf8 for a in (c.sender, *c.to, *c.cc, *c.bcc, *c.reply_to))
        msg_id = self.mint_message_id(msgid_domain)
        mail_options = list(self.mail_options)
        if smtputf8 and not any(o.upper() == "SMTPUTF8" for o in mail_options):
            mail_options.append("SMTPUTF8")
        return BuildPlan(
            headers=self._plan_headers(c, msg_id),
            parts=self._plan_parts(),
            charset=self.charset or "utf-8",
            attachments=tuple(self.attachments),
            ascii_attachments=ascii_attachments,
            smtputf8=smtputf8,
            sender=c.sender.envelope,
            recipients=tuple(c.envelope_to),
            message_id=msg_id,
            mail_options=tuple(mail_options),
            rcpt_options=tuple(self.rcpt_options),
        )

    def _plan_headers(self, c: _Checked, msg_id: str) -> tuple[tuple[str, str], ...]:
        """The top-level headers in the order they are written; extra headers last."""
        headers = [("Subject", self.subject), ("From", c.sender.header)]
        for name, addresses in (("To", c.to), ("Cc", c.cc), ("Reply-To", c.reply_to)):
            if addresses:
                headers.append((name, ", ".join(a.header for a in addresses)))
        headers += [("Date", _format_date(self.date)), ("Message-ID", msg_id)]
        for name, value in self.extra_headers.items():
            if name.lower() in _MANAGED:
                headers = [h for h in headers if h[0].lower() != name.lower()]
            headers.append((name, str(value)))
        return tuple(headers)

    def _plan_parts(self) -> tuple[tuple[str, str], ...]:
        """(subtype, text) of the body and its alternatives; ``html``/``plain`` in ``alts`` fill a missing one."""
        alts = dict(self.alts) if self.alts else {}
        html_alt = alts.pop("html", None)
        html = self.html if self.html is not None else html_alt
        text = self.body if self.body is not None else alts.pop("plain", None)
        if text is None and html is None:
            text = ""
        parts = [(subtype, content) for subtype, content in (("plain", text), ("html", html)) if content is not None]
        for subtype, content in alts.items():
            check_header("alts", subtype)
            parts.append((subtype, content))
        return tuple([(subtype, normalize_newlines(content)) for subtype, content in parts])

    def build(
        self,
        *,
        default_sender: AddressLike | None = None,
        msgid_domain: str | None = None,
        ascii_attachments: bool = False,
        address_rules: AddressRules = "permissive",
    ) -> Envelope:
        """Check everything, then produce the wire form with the stdlib's MIME writer."""
        plan = self.plan(
            default_sender=default_sender,
            msgid_domain=msgid_domain,
            ascii_attachments=ascii_attachments,
            address_rules=address_rules,
        )
        return plan.envelope(mime_bytes(plan))


def _check_extra_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise BadHeaderError("extra_headers", f"{name!r} is not a valid header name")
        if name.lower() in _STRUCTURAL:
            raise MessageError("extra_headers", f"{name} is set by the MIME structure and cannot be overridden")
        check_header(f"extra_headers.{name}", str(value))


def _check_attachments(attachments: Sequence[Attachment]) -> None:
    for i, att in enumerate(attachments):
        check_header(f"attachments[{i}].filename", att.filename or "")
        check_header(f"attachments[{i}].content_type", att.content_type or "")
        check_header(f"attachments[{i}].disposition", att.disposition or "")
        for k, v in (att.headers or {}).items():
            if not HEADER_NAME.fullmatch(k):
                raise BadHeaderError(f"attachments[{i}].headers", f"{k!r} is not a valid header name")
            check_header(f"attachments[{i}].headers.{k}", v)
        att.resolved_content_type()


def _check_options(options: Iterable[str]) -> None:
    for opt in options:
        check_header("mail_options", opt)
        if " " in opt:
            raise BadHeaderError("mail_options", f"{opt!r} must be a single ESMTP parameter")


def _unique_envelope(addresses: Iterable[ParsedAddress]) -> list[str]:
    """Envelope recipients in order, each once (compared case-insensitively)."""
    seen: set[str] = set()
    envelope_to = []
    for a in addresses:
        if a.envelope.lower() not in seen:
            seen.add(a.envelope.lower())
            envelope_to.append(a.envelope)
    return envelope_to


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


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    """A Date header depends only on the whole second: a batch built in one second formats it once.

    ``formatdate(localtime=True)`` looks up the local zone on every call (~7% of building a bulk message).
    A zone change (``time.tzset``) shows from the next second on.
    """
    return formatdate(second, localtime=True)


def _format_date(date: float | datetime | None) -> str:
    if date is None:
        # +0.5 µs: formatdate's datetime.fromtimestamp rounds to the microsecond, so .9999995 is the next second.
        return _date_of_second(int(time.time() + 5e-7))
    if isinstance(date, datetime):
        return format_datetime(date if date.tzinfo else date.astimezone())
    return formatdate(date, localtime=True)
