"""Pydantic models shared by the browser form, the JSON API and the OpenAPI document.

Why one set of models: the form, the API and ``/openapi.json`` cannot drift apart
when all three come from these classes. Checks that depend on settings (limits,
the domain allow-list, which templates exist) read a :class:`CheckContext`
passed as pydantic's validation ``context``; without one (schema generation,
unit use) only the context-free checks run.

>>> MessageIn.model_validate({"to": "ann@example.com", "subject": "Hi", "text": "Hello"}).to
['ann@example.com']
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..addresses import HEADER_LINE_PATTERN, header_problem, parse_address
from ..config import WebConfig
from ..errors import MessageError
from ..labels import (
    MAX_META_KEYS,
    MAX_META_VALUE,
    MAX_TAGS,
    META_KEY_PATTERN,
    META_VALUE_PATTERN,
    SEND_AT_PATTERN,
    TAG_PATTERN,
    check_send_at,
    parse_send_at,
)
from ..outbox.base import Labels
from ..outbox.states import MessageState, RecipientState
from ..rendering import TEMPLATE_NAME_PATTERN, TemplateRenderer, template_name_ok

__all__ = [
    "Accepted",
    "AttachmentIn",
    "BatchAccepted",
    "BatchStatusOut",
    "BulkHead",
    "BulkIn",
    "BulkRecipient",
    "CONTENT_RULE",
    "CheckContext",
    "DeliveryOut",
    "DeliveryPageOut",
    "EventOut",
    "EventPageOut",
    "JINJA_FORMAT",
    "MAILBOX_FORMAT",
    "MessageIn",
    "MessagePageOut",
    "MessageStatusOut",
    "MessageSummaryOut",
    "RecipientStatusOut",
    "ReplayOut",
    "header_problem",
    "split_addresses",
]

# Each rule below is one regex, checked by a validator (with a message a user can act on) and stated as the
# same ``pattern`` in the OpenAPI document, so the two cannot disagree.
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_MIME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
# Canonical padded base64: what ``binascii.a2b_base64(strict_mode=True)`` accepts.
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
# JSON Schema has no format for "Name <a@b.example>": the document names this one and says what it means.
MAILBOX_FORMAT = "mailbox"
JINJA_FORMAT = "jinja"
_MAILBOX_DOC = (
    "'a@b.example' or 'Name <a@b.example>' (RFC 5322, internationalised too); the domain has a dot"
    " and is not special-use (.test, .local, .invalid, .arpa, .onion)"
)
# Headers the service sets itself; letting a request set them would allow spoofing or break MIME.
FORBIDDEN_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "return-path",
        "received",
        "content-type",
        "content-transfer-encoding",
        "mime-version",
        "content-disposition",
    }
)


def _any_case(word: str) -> str:
    """``from`` as ``[Ff][Rr][Oo][Mm]``: ECMA-262 patterns in JSON Schema have no case-insensitive flag."""
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else re.escape(c) for c in word)


_FORBIDDEN_HEADER_PATTERN = "^(?:" + "|".join(_any_case(h) for h in sorted(FORBIDDEN_HEADERS)) + ")$"


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What validation needs to know about this deployment."""

    web: WebConfig
    renderer: TemplateRenderer | None = None


def _ctx(info: ValidationInfo) -> CheckContext | None:
    c = info.context
    return c if isinstance(c, CheckContext) else None


def _no_ctl(v: str) -> str:
    reason = header_problem(v)
    if reason:
        raise ValueError(reason)
    return v


def domain_allowed(domain: str, allowed: tuple[str, ...]) -> bool:
    """Exact match or a subdomain of an allowed entry; entries may be Unicode or IDNA."""
    if not allowed:
        return True
    domain = domain.lower().rstrip(".")
    for entry in allowed:
        e = entry.strip().lower().rstrip(".")
        try:
            e = e.encode("idna").decode("ascii")
        except UnicodeError:
            pass
        if domain == e or domain.endswith("." + e):
            return True
    return False


def _address(v: str, info: ValidationInfo) -> str:
    _no_ctl(v)
    try:
        parsed = parse_address(v, "address")
    except MessageError as exc:
        raise ValueError(exc.reason) from None
    ctx = _ctx(info)
    if ctx is not None and info.field_name != "sender" and info.field_name != "reply_to":
        domain = parsed.envelope.rpartition("@")[2]
        if not domain_allowed(domain, ctx.web.allowed_domains):
            raise PydanticCustomError(
                "domain_not_allowed", "recipient domain {domain} is not on the allow-list", {"domain": domain}
            )
    return v


def _one_or_list(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


Address = Annotated[
    str,
    Field(min_length=1, max_length=998, json_schema_extra={"format": MAILBOX_FORMAT, "description": _MAILBOX_DOC}),
    AfterValidator(_address),
]
AddressList = Annotated[
    list[Address],
    BeforeValidator(_one_or_list, json_schema_input_type=Address | list[Address]),
]
HeaderText = Annotated[
    str,
    Field(
        max_length=998,
        json_schema_extra={
            "pattern": HEADER_LINE_PATTERN,
            "description": "one line; an RFC 2047 encoded-word must decode and hide no line break either",
        },
    ),
    AfterValidator(_no_ctl),
]


def _template_name(v: str, info: ValidationInfo) -> str:
    if not template_name_ok(v):
        raise ValueError("template names are letters, digits, '_', '-' and '/' (no dots)")
    ctx = _ctx(info)
    if ctx is not None:
        if ctx.renderer is None or not ctx.renderer.exists(v):
            raise PydanticCustomError("unknown_template", "no template named {name}", {"name": v})
    return v


TemplateName = Annotated[
    str,
    Field(max_length=200, json_schema_extra={"pattern": TEMPLATE_NAME_PATTERN}),
    AfterValidator(_template_name),
]


STREAM_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
#: The list a bulk request mails on: an unsubscribe from it suppresses the address on it only.
Stream = Annotated[
    str,
    Field(
        pattern=STREAM_PATTERN,
        description="the list this mail belongs to; a one-click unsubscribe stops this stream only",
    ),
]


def _header_name(v: str) -> str:
    if not _HEADER_NAME.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid header name")
    if v.lower() in FORBIDDEN_HEADERS:
        raise ValueError(f"{v} is set by the service and cannot be given")
    return v


HeaderName = Annotated[str, AfterValidator(_header_name)]
# The names a request may set, as ``propertyNames`` of ``headers`` (``_header_name`` is the check).
_HEADER_NAMES_SCHEMA: dict[str, JsonValue] = {
    "pattern": _HEADER_NAME.pattern,
    "not": {"pattern": _FORBIDDEN_HEADER_PATTERN},
}


# An inline part's name in cid: URLs: a dot-atom, optionally @domain (RFC 2392), without the angle brackets.
_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,100}(?:@[A-Za-z0-9.-]{1,98})?$")


class AttachmentIn(BaseModel):
    """A file, base64-encoded in ``content`` (never a path: nothing on the server is read)."""

    model_config = ConfigDict(extra="forbid")

    filename: Annotated[HeaderText, Field(min_length=1, max_length=255)]
    content_type: str = Field(default="application/octet-stream", json_schema_extra={"pattern": _MIME.pattern})
    content: str = Field(
        description="base64 (standard alphabet, padded)",
        json_schema_extra={"contentEncoding": "base64", "pattern": _BASE64.pattern},
    )
    content_id: str | None = Field(
        default=None,
        description='makes it an inline part (multipart/related) that the HTML shows as <img src="cid:...">',
        json_schema_extra={"pattern": _CONTENT_ID.pattern},
        max_length=200,
    )
    disposition: Literal["attachment", "inline"] | None = Field(
        default=None,
        description="inline (the default with a content_id) or attachment; without a content_id it is an attachment",
    )

    def data(self) -> bytes:
        return binascii.a2b_base64(self.content, strict_mode=True)

    @property
    def inline(self) -> bool:
        return self.content_id is not None and self.disposition != "attachment"

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> AttachmentIn:
        if not _MIME.fullmatch(self.content_type):
            raise PydanticCustomError(
                "mime_type", "content_type {ct!r} is not a MIME type like 'image/png'", {"ct": self.content_type[:80]}
            )
        if not _BASE64.fullmatch(self.content):
            raise PydanticCustomError("base64", "content is not valid base64 (standard alphabet, padded)")
        if self.content_id is not None and not _CONTENT_ID.fullmatch(self.content_id):
            raise PydanticCustomError(
                "content_id", "content_id must look like 'logo' or 'logo@example.com' (letters, digits, . _ - @)"
            )

        raw = self.data()
        ctx = _ctx(info)
        if ctx is not None and len(raw) > ctx.web.max_attachment_bytes:
            raise PydanticCustomError(
                "too_large",
                "attachment is {size} bytes; the limit is {limit}",
                {"size": len(raw), "limit": ctx.web.max_attachment_bytes},
            )
        return self


# How a body is given (null counts as absent): a named ``template``, or a ``subject`` with ``text``, ``html``
# or both. ``_check_content`` enforces it and this fragment states it in the document; a test checks they agree.
CONTENT_RULE: dict[str, Any] = {
    "oneOf": [
        {
            "required": ["template"],
            "properties": {
                "template": {"type": "string"},
                "subject": {"type": "null"},
                "text": {"type": "null"},
                "html": {"type": "null"},
            },
        },
        {
            "required": ["subject"],
            "properties": {"template": {"type": "null"}, "subject": {"type": "string"}},
            "anyOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["html"], "properties": {"html": {"type": "string"}}},
            ],
        },
    ]
}


def _check_content(template: str | None, subject: str | None, text: str | None, html: str | None) -> None:
    if template is not None and (subject is not None or text is not None or html is not None):
        raise PydanticCustomError("either_or", "template: give either template or subject/text/html, not both")
    if template is None:
        if subject is None:
            raise PydanticCustomError("missing_subject", "subject: required unless a template is given")
        if text is None and html is None:
            raise PydanticCustomError("missing_body", "text: give text, html or both (or a template)")


def _tags(v: list[str]) -> list[str]:
    return list(dict.fromkeys(v))  # repeats dropped, order kept


Tag = Annotated[str, Field(pattern=TAG_PATTERN)]
MetaKey = Annotated[str, Field(pattern=META_KEY_PATTERN)]
MetaValue = Annotated[str, Field(max_length=MAX_META_VALUE, pattern=META_VALUE_PATTERN)]
SEND_AT_DOC = (
    "when to send: RFC 3339 with an offset (2026-05-01T09:30:00Z, 2026-05-01T11:30:00+02:00); a time already past "
    "means now; at most MAILSVC_SCHEDULE_HORIZON ahead (30 days unless set). Until then the message is 'scheduled'"
)


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=CONTENT_RULE)

    sender: Address | None = Field(default=None, description="From; only when the service allows it")
    reply_to: AddressList = Field(default_factory=list, description="one address or a list")
    attachments: list[AttachmentIn] = Field(
        default_factory=list, max_length=100, description="files, base64-encoded; size capped per attachment"
    )
    headers: dict[HeaderName, HeaderText] = Field(
        default_factory=dict,
        max_length=50,
        description="extra headers such as List-Unsubscribe; From, To, Subject, Date and MIME headers are refused",
        json_schema_extra={"propertyNames": _HEADER_NAMES_SCHEMA},
    )
    tags: Annotated[list[Tag], AfterValidator(_tags)] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="labels to find the message by (GET /api/messages?tag=); repeats are dropped",
    )
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict,
        max_length=MAX_META_KEYS,
        description="your own flat string values, stored and returned with the message (never sent)",
        json_schema_extra={"propertyNames": {"pattern": META_KEY_PATTERN}},
    )
    send_at: str | None = Field(
        default=None, description=SEND_AT_DOC, json_schema_extra={"format": "date-time", "pattern": SEND_AT_PATTERN}
    )

    def labels(self, horizon: float, *, route: str | None = None, traceparent: str | None = None) -> Labels:
        """What the outbox stores with each message (send_at checked again at this moment)."""
        at = check_send_at(self.send_at, horizon) if self.send_at is not None else None
        return Labels(tuple(self.tags), dict(self.metadata), at, traceparent, route)

    def _check_labels(self, info: ValidationInfo) -> None:
        ctx = _ctx(info)
        if self.send_at is not None:
            try:  # without a context (schema generation, unit use) only the format is checked
                if ctx is None:
                    parse_send_at(self.send_at)
                else:
                    check_send_at(self.send_at, ctx.web.schedule_horizon)
            except MessageError as exc:
                raise PydanticCustomError("send_at", "send_at: {reason}", {"reason": exc.reason}) from None

    def _check_sender(self, info: ValidationInfo) -> None:
        ctx = _ctx(info)
        if ctx is not None and self.sender is not None and not ctx.web.allow_sender:
            raise PydanticCustomError("sender_not_allowed", "sender: this service does not let requests set From")


class MessageIn(_Common):
    """``POST /api/messages``: literal subject/text/html, or a named ``template`` with ``context``."""

    to: Annotated[
        AddressList,
        Field(min_length=1, description="'Name <a@b.example>' or 'a@b.example' (IDN domains too), or a list"),
    ]
    cc: AddressList = Field(default_factory=list, description="one address or a list")
    bcc: AddressList = Field(default_factory=list, description="envelope only: never shown in a header")
    subject: HeaderText | None = Field(default=None, description="required unless template is given")
    text: str | None = Field(default=None, description="plain-text body")
    html: str | None = Field(default=None, description="HTML body")
    template: TemplateName | None = Field(default=None, description="a template under templates/email/")
    context: dict[str, Any] = Field(default_factory=dict, description="variables for the template")
    unsubscribe: bool = Field(
        default=False,
        description="carry a one-click List-Unsubscribe link for the 'to' addresses (needs MAILSVC_PUBLIC_URL)",
    )
    stream: Stream = "default"

    @model_validator(mode="after")
    def _shape(self, info: ValidationInfo) -> MessageIn:
        self._check_sender(info)
        self._check_labels(info)
        _check_content(self.template, self.subject, self.text, self.html)
        ctx = _ctx(info)
        n = len(self.to) + len(self.cc) + len(self.bcc)
        if ctx is not None and n > ctx.web.max_recipients:
            raise PydanticCustomError(
                "too_many",
                "to: {n} recipients; the limit per message is {limit}",
                {"n": n, "limit": ctx.web.max_recipients},
            )
        return self


class BulkRecipient(BaseModel):
    """One personalised message of a batch: its own recipients and template variables."""

    model_config = ConfigDict(extra="forbid")

    to: Annotated[AddressList, Field(min_length=1, max_length=100)]
    context: dict[str, Any] = Field(default_factory=dict)


# A template string of a bulk request: its own format in the document, since its grammar is Jinja's.
_Jinja = Field(
    json_schema_extra={
        "format": JINJA_FORMAT,
        "description": "rendered in Jinja's sandbox with each recipient's context, which must hold every name it reads",
    }
)


class BulkHead(_Common):
    """Everything of a bulk request but its recipients (validated before they are walked one by one)."""

    template: TemplateName | None = None
    subject: Annotated[HeaderText, _Jinja] | None = Field(
        default=None, description="Jinja template string of one line; what it prints must be one line too"
    )
    text: Annotated[str, _Jinja] | None = Field(default=None, description="Jinja template string")
    html: Annotated[str, _Jinja] | None = Field(default=None, description="Jinja template string (autoescaped)")
    unsubscribe: bool | None = Field(
        default=None,
        description=(
            "one-click List-Unsubscribe links, one per message (templates may print {{ unsubscribe_url }}): "
            "true needs MAILSVC_PUBLIC_URL; false for transactional batches; unset: on when the service has "
            "MAILSVC_PUBLIC_URL and the request sets no List-Unsubscribe header of its own"
        ),
    )
    stream: Stream = "default"

    @model_validator(mode="after")
    def _shape(self, info: ValidationInfo) -> BulkHead:
        self._check_sender(info)
        self._check_labels(info)
        _check_content(self.template, self.subject, self.text, self.html)
        return self


class BulkIn(BulkHead):
    """``POST /api/messages/bulk``: one template (named, or subject/text/html as Jinja strings) for many.

    Inline strings are rendered in Jinja's sandbox with each recipient's ``context``.
    The route walks the recipients one at a time (``web/bulkstream.py``) with
    :class:`BulkHead` and :class:`BulkRecipient`; this model is the document of the whole body.
    """

    recipients: Annotated[list[BulkRecipient], Field(min_length=1)]

    @model_validator(mode="after")
    def _count(self, info: ValidationInfo) -> BulkIn:
        ctx = _ctx(info)
        if ctx is not None and len(self.recipients) > ctx.web.max_batch:
            raise PydanticCustomError(
                "too_many",
                "recipients: {n} messages; the limit per batch is {limit}",
                {"n": len(self.recipients), "limit": ctx.web.max_batch},
            )
        return self


class Accepted(BaseModel):
    id: str
    status: Literal["queued"] = "queued"


class BatchAccepted(BaseModel):
    batch_id: str
    count: int
    status: Literal["queued"] = "queued"


class RecipientStatusOut(BaseModel):
    recipient: str
    state: RecipientState
    attempts: int
    last_code: int | None
    last_reply: str
    updated_at: str
    next_attempt_at: str | None = None
    relay: str | None = Field(default=None, description="the relay that gave the last reply (MAILSVC_RELAYS_FILE)")


class MessageStatusOut(BaseModel):
    id: str
    message_id: str
    batch_id: str | None
    state: MessageState
    created_at: str
    recipients: list[RecipientStatusOut]
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    send_at: str | None = Field(default=None, description="when it was asked to be sent (UTC); null: at once")


class MessageSummaryOut(BaseModel):
    """One message of a listing (its recipients: ``GET /api/messages/<id>``)."""

    id: str
    message_id: str
    batch_id: str | None
    state: MessageState
    created_at: str
    send_at: str | None
    tags: list[str]
    metadata: dict[str, str]


class MessagePageOut(BaseModel):
    """A page of messages, newest first; ``next`` (opaque) is the ``cursor`` of the following page, null at the end.

    A page may hold fewer than ``limit`` items (even none) and still have a ``next``: each page reads a
    bounded stretch of history, so follow ``next`` until it is null.
    """

    items: list[MessageSummaryOut]
    next: str | None


class EventOut(BaseModel):
    """One state change of one recipient (or an address's unsubscribe: ``message`` null)."""

    cursor: str = Field(description="this event's place in the log (opaque)")
    type: str = Field(description="the recipient's new state, or 'unsubscribed'")
    message: str | None
    recipient: str
    code: int | None = Field(description="the relay's reply code, when there was one")
    reply: str
    attempt: int
    at: str = Field(description="when (RFC 3339)")
    tags: list[str] = Field(description="its message's tags (none for an address's unsubscribe)")
    metadata: dict[str, str] = Field(description="its message's metadata")


class EventPageOut(BaseModel):
    """Events after ``since``, oldest first; ``next`` is the ``since`` to ask with next time (null: nothing yet)."""

    events: list[EventOut]
    next: str | None


class DeliveryOut(BaseModel):
    """A webhook delivery: one event POSTed to one endpoint, with its retries."""

    id: int
    endpoint: str
    event: str = Field(description="the event's cursor")
    message: str
    status: Literal["pending", "failing", "delivered", "failed"]
    attempts: int
    last_error: str
    created_at: str
    updated_at: str
    next_attempt_at: str | None


class DeliveryPageOut(BaseModel):
    """Deliveries after ``after`` by id; ``next`` is the ``after`` of the following page."""

    deliveries: list[DeliveryOut]
    next: int


class ReplayOut(BaseModel):
    id: int
    status: Literal["pending"]


class BatchStatusOut(BaseModel):
    batch_id: str
    total: int
    counts: dict[str, int]


def split_addresses(value: str) -> list[str]:
    """Split the form's comma-separated field, keeping commas inside quotes or <...> intact."""
    out: list[str] = []
    buf: list[str] = []
    quoted = angle = False
    for ch in value:
        if ch == '"' and not angle:
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle = True
        elif ch == ">" and not quoted:
            angle = False
        if ch in ",;" and not quoted and not angle:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return [a.strip() for a in out if a.strip()]
