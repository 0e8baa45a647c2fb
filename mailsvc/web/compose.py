"""Validated requests -> envelopes -> the outbox, shared by the form and the JSON API.

Why everything is built before ``enqueue``: every message of a request (a whole
bulk batch) is rendered and MIME-built first, so a bad recipient, a context
that does not render or an injected header fails the request with 422 while
nothing is queued; then one ``enqueue`` call commits all of it or none.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from ..errors import (
    IdempotencyConflictError,
    MessageError,
    NotFoundError,
    OutboxError,
    OutboxFullError,
    TemplateError,
)
from ..extension import MailState
from ..message import Attachment, Envelope, Message
from ..outbox import EnqueueResult, Outbox
from .problems import FieldError, ProblemException, retry_after
from .sandbox import InlineTemplate, InlineTemplateError, request_budget
from .schemas import AttachmentIn, BulkIn, MessageIn, header_problem

__all__ = ["build_bulk", "build_single", "enqueue", "fingerprint_of", "outbox_problem"]

log = logging.getLogger("mailsvc.web")
_MAX_REPORTED = 20  # field errors listed for one bulk request


def _attachments(items: Sequence[AttachmentIn]) -> list[Attachment]:
    return [Attachment(a.filename, a.content_type, a.data()) for a in items]


def _render_named(state: MailState, name: str, context: Mapping[str, Any], field: str) -> tuple[str, str | None, str | None]:
    renderer = state.renderer
    if renderer is None:
        raise ProblemException(422, errors=[FieldError(field="template", reason="no email templates are configured")])
    try:
        return renderer.render_parts(name, context)
    except TemplateError as exc:
        raise ProblemException(422, "the template does not render with this context",
                               errors=[FieldError(field=field, reason=exc.reason)]) from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise ProblemException(422, "the template does not render with this context",
                               errors=[FieldError(field=field, reason=f"{type(exc).__name__}: {exc}"[:300])]) from None


def _build(state: MailState, msg: Message, prefix: str = "") -> Envelope:
    reason = header_problem(msg.subject)  # a rendered subject is user data too
    if reason:
        field = f"{prefix}.subject" if prefix else "subject"
        raise ProblemException(422, "the message cannot be built as given", errors=[FieldError(field=field, reason=reason)])
    try:
        return state.build(msg)
    except MessageError as exc:
        raise ProblemException(422, "the message cannot be built as given",
                               errors=[FieldError(field=_api_field(exc.field, prefix), reason=exc.reason)]) from None
    except ValueError as exc:  # the email package's own header checks (e.g. a rendered subject)
        raise ProblemException(422, "the message cannot be built as given",
                               errors=[FieldError(field=f"{prefix}.message" if prefix else "message", reason=str(exc))]) from None


_FIELD_NAMES = {"recipients": "to", "extra_headers": "headers", "body": "text"}


def _api_field(field: str, prefix: str) -> str:
    head, sep, rest = field.partition("[") if "[" in field else field.partition(".")
    name = _FIELD_NAMES.get(head, head) + sep + rest
    return f"{prefix}{name}" if not prefix else f"{prefix}.{name}"


def build_single(state: MailState, m: MessageIn) -> Envelope:
    """One request, one envelope; raises :class:`ProblemException` (422) naming the field."""
    if m.template is not None:
        subject, text, html = _render_named(state, m.template, m.context, "context")
    else:
        subject, text, html = m.subject or "", m.text, m.html
    msg = Message(
        subject=subject,
        recipients=list(m.to),
        body=text,
        html=html,
        sender=m.sender,
        cc=list(m.cc),
        bcc=list(m.bcc),
        reply_to=list(m.reply_to) or None,  # type: ignore[arg-type]  # parse_address_list takes lists
        attachments=_attachments(m.attachments),
        extra_headers=dict(m.headers),
    )
    return _build(state, msg)


def build_bulk(state: MailState, b: BulkIn, max_chars: int) -> list[Envelope]:
    """One envelope per recipient entry; all errors collected (up to 20) before refusing."""
    inline: dict[str, InlineTemplate] = {}
    if b.template is None:
        errors: list[FieldError] = []
        for field, source, is_html in (("subject", b.subject, False), ("text", b.text, False), ("html", b.html, True)):
            if source is None:
                continue
            try:
                inline[field] = InlineTemplate.compile(field, source, html=is_html, max_chars=max_chars)
            except InlineTemplateError as exc:
                errors.append(FieldError(field=exc.field, reason=exc.reason))
        if errors:
            raise ProblemException(422, "a template string does not compile", errors=errors)
    attachments = _attachments(b.attachments)
    budget = request_budget(len(b.recipients) * max(1, len(inline)))
    envelopes: list[Envelope] = []
    errors = []
    subject: str
    text: str | None
    html: str | None
    for i, r in enumerate(b.recipients):
        where = f"recipients[{i}]"
        try:
            if b.template is not None:
                subject, text, html = _render_named(state, b.template, r.context, f"{where}.context")
            else:
                parts = {f: t.render(r.context, f"{where}.context", budget) for f, t in inline.items()}
                subject, text, html = parts.get("subject", ""), parts.get("text"), parts.get("html")
            msg = Message(
                subject=subject.strip(),
                recipients=list(r.to),
                body=text,
                html=html,
                sender=b.sender,
                reply_to=list(b.reply_to) or None,  # type: ignore[arg-type]
                attachments=list(attachments),
                extra_headers=dict(b.headers),
            )
            envelopes.append(_build(state, msg, where))
        except InlineTemplateError as exc:
            errors.append(FieldError(field=exc.field, reason=exc.reason))
        except ProblemException as exc:
            errors.extend(exc.errors)
        if len(errors) >= _MAX_REPORTED:
            break
    if errors:
        raise ProblemException(422, "some messages of the batch cannot be built; nothing was queued", errors=errors)
    return envelopes


def fingerprint_of(route: str, body: str) -> str:
    """What "the same request" means for idempotency: the route and the validated body."""
    return hashlib.sha256(f"{route}\x00{body}".encode("utf-8", "surrogatepass")).hexdigest()


def outbox_problem(exc: OutboxError) -> ProblemException:
    """Map outbox errors to HTTP: full -> 503 + Retry-After, reused key -> 422, unknown -> 404."""
    if isinstance(exc, OutboxFullError):
        return ProblemException(503, "too much undelivered mail is queued; retry later",
                                headers=retry_after(exc.retry_after))
    if isinstance(exc, IdempotencyConflictError):
        return ProblemException(422, str(exc), errors=[FieldError(field="Idempotency-Key", reason="already used for a different message")])
    if isinstance(exc, NotFoundError):
        return ProblemException(404, str(exc))
    log.error("outbox error: %s", exc)
    return ProblemException(503, "the outbox is unavailable; retry later", headers=retry_after(5))


async def enqueue(
    outbox: Outbox,
    envelopes: list[Envelope],
    *,
    principal: str,
    idempotency_key: str | None,
    fingerprint: str,
    batch: bool,
) -> EnqueueResult:
    """Commit the envelopes (all or none) and log one line per accepted message, never a body."""
    scoped = f"{principal}:{idempotency_key}" if idempotency_key is not None else None
    try:
        result = await outbox.enqueue(envelopes, idempotency_key=scoped, batch=batch, fingerprint=fingerprint)
    except OutboxError as exc:
        raise outbox_problem(exc) from None
    if not result.duplicate:
        for id_, env in zip(result.ids, envelopes, strict=False):
            log.info(
                "accepted id=%s message_id=%s recipients=%d bytes=%d key=%s%s",
                id_, env.message_id, len(env.recipients), len(env.data), principal,
                f" batch={result.batch_id}" if result.batch_id else "",
            )
    else:
        log.info("idempotent replay ids=%s key=%s", ",".join(result.ids[:3]), principal)
    return result


async def build_bulk_async(state: MailState, b: BulkIn, max_chars: int) -> list[Envelope]:
    """Big batches are built off the event loop so other requests keep being answered."""
    if len(b.recipients) <= 50:
        return build_bulk(state, b, max_chars)
    return await asyncio.to_thread(build_bulk, state, b, max_chars)
