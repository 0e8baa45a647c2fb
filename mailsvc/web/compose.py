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
import time
from collections.abc import Awaitable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import jinja2

from ..config import WebConfig
from ..envelopes import build_envelope
from ..errors import (
    IdempotencyConflictError,
    MessageError,
    NotFoundError,
    OutboxError,
    OutboxFullError,
    TemplateError,
)
from ..extension import MailState
from ..message import Attachment, Envelope, Message, default_msgid_domain
from ..mimewriter import attachment_body
from ..outbox import EnqueueResult, Labels, Outbox
from ..outbox.base import NO_LABELS
from ..rendering import html_to_text
from ..services import services
from ..tracing import current_traceparent, tracer
from .auth import Principal
from .bulkstream import BulkRequest, chunk_size
from .inline_templates import InlineTemplate, InlineTemplateError, request_budget
from .problems import FieldError, ProblemException, retry_after
from .schemas import AttachmentIn, BulkHead, BulkRecipient, MessageIn, header_problem
from .unsublinks import UnsubscribeLinks, links_for

__all__ = [
    "BulkBuilder",
    "build_single",
    "enqueue",
    "enqueue_bulk",
    "fingerprint_of",
    "labels_of",
    "outbox_problem",
]

log = logging.getLogger("mailsvc.web")


def _attachments(items: Sequence[AttachmentIn]) -> list[Attachment]:
    """Files as attachments; one with a ``content_id`` is an inline part the HTML shows (multipart/related)."""
    return [
        Attachment(a.filename, a.content_type, a.data(), "inline", {"Content-ID": f"<{a.content_id}>"})
        if a.inline
        else Attachment(a.filename, a.content_type, a.data())
        for a in items
    ]


def _render_named(
    state: MailState, name: str, context: Mapping[str, Any], field: str
) -> tuple[str, str | None, str | None]:
    renderer = state.renderer
    if renderer is None:
        raise ProblemException(422, errors=[FieldError(field="template", reason="no email templates are configured")])
    try:
        return renderer.render_parts(name, context)
    except TemplateError as exc:
        raise ProblemException(
            422, "the template does not render with this context", errors=[FieldError(field=field, reason=exc.reason)]
        ) from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise ProblemException(
            422,
            "the template does not render with this context",
            errors=[FieldError(field=field, reason=f"{type(exc).__name__}: {exc}"[:300])],
        ) from None


def _build(state: MailState, msg: Message, prefix: str = "") -> Envelope:
    reason = header_problem(msg.subject)  # a rendered subject is user data too
    if reason:
        field = f"{prefix}.subject" if prefix else "subject"
        raise ProblemException(
            422, "the message cannot be built as given", errors=[FieldError(field=field, reason=reason)]
        )
    try:
        return build_envelope(msg, state.config)
    except MessageError as exc:
        raise ProblemException(
            422,
            "the message cannot be built as given",
            errors=[FieldError(field=_api_field(exc.field, prefix), reason=exc.reason)],
        ) from None
    except ValueError as exc:  # the email package's own header checks (e.g. a rendered subject)
        raise ProblemException(
            422,
            "the message cannot be built as given",
            errors=[FieldError(field=f"{prefix}.message" if prefix else "message", reason=str(exc))],
        ) from None


_FIELD_NAMES = {"recipients": "to", "extra_headers": "headers", "body": "text"}


def _api_field(field: str, prefix: str) -> str:
    head, sep, rest = field.partition("[") if "[" in field else field.partition(".")
    name = _FIELD_NAMES.get(head, head) + sep + rest
    return f"{prefix}{name}" if not prefix else f"{prefix}.{name}"


def build_single(state: MailState, m: MessageIn, links: UnsubscribeLinks | None = None) -> Envelope:
    """One request, one envelope; raises :class:`ProblemException` (422) naming the field.

    ``links``: the message carries a one-click unsubscribe link for its ``to`` addresses.
    """
    headers = dict(m.headers)
    context = m.context
    if links is not None:
        url = links.url(m.to)
        headers.update(links.headers(url))
        context = {**m.context, "unsubscribe_url": url}
    if m.template is not None:
        subject, text, html = _render_named(state, m.template, context, "context")
    else:
        subject, text, html = m.subject or "", m.text, m.html
        if text is None and html is not None:  # as a template with only an .html part gets one
            text = html_to_text(html)
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
        extra_headers=headers,
    )
    return _build(state, msg)


class BulkBuilder:
    """Renders and builds a bulk request's messages one at a time (the head's templates compiled once).

    Raises :class:`ProblemException` (422) at construction when an inline template
    does not compile, and from :meth:`build_one` naming ``recipients[i]``'s field.
    With ``links``, every message carries its own one-click unsubscribe link (RFC 8058
    headers, and ``unsubscribe_url`` in its template context).
    """

    def __init__(
        self, state: MailState, head: BulkHead, count: int, web: WebConfig, links: UnsubscribeLinks | None = None
    ) -> None:
        """Compiles the request's templates: CPU work, so construct it off the event loop (:meth:`create`)."""
        self.state = state
        self.head = head
        self.links = links
        self.inline: dict[str, InlineTemplate] = {}
        if head.template is None:
            errors: list[FieldError] = []
            for field, source, is_html in (
                ("subject", head.subject, False),
                ("text", head.text, False),
                ("html", head.html, True),
            ):
                if source is None:
                    continue
                try:
                    self.inline[field] = InlineTemplate.compile(
                        field, source, html=is_html, max_chars=web.max_render_chars, max_source=web.max_template_chars
                    )
                except InlineTemplateError as exc:
                    errors.append(FieldError(field=exc.field, reason=exc.reason))
            if errors:
                raise ProblemException(422, "a template string does not compile", errors=errors)
        # Header values are templates too (a per-recipient List-Unsubscribe URL), in the same sandbox.
        self.header_templates: dict[str, InlineTemplate] = {}
        header_errors: list[FieldError] = []
        for name, value in head.headers.items():
            if "{{" not in value and "{%" not in value:
                continue
            try:
                self.header_templates[name] = InlineTemplate.compile(
                    f"headers.{name}", value, html=False, max_chars=998, max_source=web.max_template_chars
                )
            except InlineTemplateError as exc:
                header_errors.append(FieldError(field=exc.field, reason=exc.reason))
        if header_errors:
            raise ProblemException(422, "a header template does not compile", errors=header_errors)
        self.attachments = _attachments(head.attachments)
        # Every message carries these bytes verbatim: the outbox stores them once per batch (issue 13).
        self.shared = tuple(attachment_body(a.data) for a in self.attachments)
        self.budget = request_budget(count * max(1, len(self.inline) + len(self.header_templates)), web.render_seconds)
        self.reply_to = list(head.reply_to) or None
        self.headers = dict(head.headers)
        # The Message-ID domain once per request: without MAIL_MESSAGE_ID_DOMAIN each build asks the
        # OS for the hostname, a syscall that, in a build thread, also gives up the GIL (~5% of a batch).
        self.msgid_domain = state.config.message_id_domain or default_msgid_domain()

    @classmethod
    async def create(
        cls, state: MailState, head: BulkHead, count: int, web: WebConfig, links: UnsubscribeLinks | None = None
    ) -> BulkBuilder:
        """Built in a thread: a large template compiles for seconds, and the loop serves others meanwhile."""
        return await asyncio.to_thread(cls, state, head, count, web, links)

    def build_one(self, i: int, r: BulkRecipient) -> Envelope:
        where = f"recipients[{i}]"
        head = self.head
        subject: str
        text: str | None
        html: str | None
        context = r.context
        url = None
        if self.links is not None:
            url = self.links.url(r.to)
            context = {**r.context, "unsubscribe_url": url}
        try:
            if head.template is not None:
                subject, text, html = _render_named(self.state, head.template, context, f"{where}.context")
            else:
                parts = {f: t.render(context, f"{where}.context", self.budget) for f, t in self.inline.items()}
                subject, text, html = parts.get("subject", ""), parts.get("text"), parts.get("html")
                if text is None and html is not None:
                    text = html_to_text(html)
            headers = dict(self.headers)
            for name, t in self.header_templates.items():
                headers[name] = t.render(context, f"{where}.context", self.budget)
            if url is not None:
                headers.update(UnsubscribeLinks.headers(url))
        except InlineTemplateError as exc:
            raise ProblemException(422, errors=[FieldError(field=exc.field, reason=exc.reason)]) from None
        msg = Message(
            subject=subject.strip(),
            recipients=list(r.to),
            body=text,
            html=html,
            sender=head.sender,
            reply_to=self.reply_to,  # type: ignore[arg-type]
            attachments=list(self.attachments),
            extra_headers=headers,
        )
        msg.mint_message_id(self.msgid_domain)  # what the build would mint, with the domain looked up once
        return _build(self.state, msg, where)


def labels_of(model: MessageIn | BulkHead, horizon: float) -> Labels:
    """The request's tags, metadata, send_at and relay route for the outbox (send_at checked once more),
    and, when tracing is on, the request's trace context (the delivery span links to it).

    The route is the request's ``stream`` when it names one, else ``bulk`` for a batch and
    ``transactional`` for a single message; a name the relays file has no route for takes its
    ``default`` route (the worker decides, so a route added later applies to mail already queued).
    """
    if "stream" in model.model_fields_set:
        route = model.stream
    else:
        route = "bulk" if isinstance(model, BulkHead) else "transactional"
    try:
        return model.labels(horizon, route=route, traceparent=current_traceparent())
    except MessageError as exc:  # the horizon passed between validation and now
        raise ProblemException(422, errors=[FieldError(field=exc.field, reason=exc.reason)]) from None


def fingerprint_of(route: str, body: str) -> str:
    """What "the same request" means for idempotency: the route and the validated body."""
    return hashlib.sha256(f"{route}\x00{body}".encode("utf-8", "surrogatepass")).hexdigest()


def outbox_problem(exc: OutboxError) -> ProblemException:
    """Map outbox errors to HTTP: full -> 503 + Retry-After, reused key -> 422, unknown -> 404."""
    if isinstance(exc, OutboxFullError):
        return ProblemException(
            503, "too much undelivered mail is queued; retry later", headers=retry_after(exc.retry_after)
        )
    if isinstance(exc, IdempotencyConflictError):
        return ProblemException(
            422, str(exc), errors=[FieldError(field="Idempotency-Key", reason="already used for a different message")]
        )
    if isinstance(exc, NotFoundError):
        return ProblemException(404, str(exc))
    log.error("outbox error: %s", exc)
    return ProblemException(503, "the outbox is unavailable; retry later", headers=retry_after(5))


async def _traced(commit: Awaitable[EnqueueResult], count: int) -> EnqueueResult:
    """The enqueue in a ``mailsvc.enqueue`` span (a child of the request's), naming what it stored."""
    active = tracer()
    assert active is not None
    with active.start_as_current_span("mailsvc.enqueue", attributes={"mailsvc.messages": count}) as span:
        result = await commit
        span.set_attribute("mailsvc.message.id" if len(result.ids) == 1 else "mailsvc.message.ids", result.ids[:100])
        if result.batch_id is not None:
            span.set_attribute("mailsvc.batch.id", result.batch_id)
        span.set_attribute("mailsvc.duplicate", result.duplicate)
        return result


def _count(result: EnqueueResult, started: float) -> None:
    """Into the app's metrics: the enqueue's time, and what it committed (a replay commits nothing)."""
    metrics = services().metrics
    if metrics is None:
        return
    metrics.enqueue_seconds.observe(time.perf_counter() - started)
    if not result.duplicate:
        metrics.accepted.inc(len(result.ids))
        metrics.count_suppressed(result.suppressed)


def _scoped(principal: Principal, key: str | None) -> str | None:
    """An Idempotency-Key means "this request" within a tenant: another tenant's same key is another request.

    For a key of its own (``MAILSVC_API_KEYS``) the tenant is its key id, the scope keys had before tenants.
    """
    return f"{principal.idempotency_scope}:{key}" if key is not None else None


async def enqueue(
    outbox: Outbox,
    envelopes: list[Envelope],
    *,
    principal: Principal,
    idempotency_key: str | None,
    fingerprint: str | None,
    batch: bool,
    labels: Labels = NO_LABELS,
    stream: str | None = None,
) -> EnqueueResult:
    """Commit the envelopes (all or none), owned by the caller's tenant; one log line per message, never a body.

    ``stream``: what the tenant's suppression list is checked against (suppressed recipients are stored final).
    """
    scoped = _scoped(principal, idempotency_key)
    started = time.perf_counter()
    try:
        commit = outbox.enqueue(
            envelopes,
            idempotency_key=scoped,
            batch=batch,
            fingerprint=fingerprint,
            tenant=principal.tenant,
            labels=labels,
            stream=stream,
        )
        result = await (commit if tracer() is None else _traced(commit, len(envelopes)))
    except OutboxError as exc:
        raise outbox_problem(exc) from None
    _count(result, started)
    if not result.duplicate:
        for id_, env in zip(result.ids, envelopes, strict=False):
            log.info(
                "accepted id=%s message_id=%s recipients=%d bytes=%d key=%s%s",
                id_,
                env.message_id,
                len(env.recipients),
                len(env.data),
                principal.id,
                f" batch={result.batch_id}" if result.batch_id else "",
                extra={
                    "fields": {
                        "event": "accepted",
                        "id": id_,
                        "message_id": env.message_id,
                        "recipients": len(env.recipients),
                        "bytes": len(env.data),
                        "key": principal.id,
                        "batch": result.batch_id,
                    }
                },
            )
    else:
        log.info("idempotent replay ids=%s key=%s", ",".join(result.ids[:3]), principal.id)
    return result


async def enqueue_bulk(
    outbox: Outbox,
    request: BulkRequest,
    state: MailState,
    web: WebConfig,
    *,
    principal: Principal,
    idempotency_key: str | None,
) -> EnqueueResult:
    """Render, build and commit a bulk request a chunk at a time, all or none (one transaction, or a sealed stage)."""
    scoped = _scoped(principal, idempotency_key)
    head = request.head
    labels = labels_of(head, web.schedule_horizon)
    links = links_for(web, head.unsubscribe, head.headers, principal.tenant, head.stream)  # 422 if it cannot
    builder = await BulkBuilder.create(state, head, request.count, web, links)  # 422 if a template does not compile
    chunks = request.chunks(builder.build_one, chunk_size(sum(map(len, builder.shared))))
    started = time.perf_counter()  # a bulk enqueue renders and builds as it stores: all of it is its latency
    try:
        async with aclosing(chunks):
            commit = outbox.enqueue_stream(
                request.count,
                chunks,
                fingerprint=request.fingerprint,
                idempotency_key=scoped,
                batch=True,
                tenant=principal.tenant,
                shared=builder.shared,
                suppress_stream=head.stream,
                labels=labels,
            )
            result = await (commit if tracer() is None else _traced(commit, request.count))
    except OutboxError as exc:
        raise outbox_problem(exc) from None
    _count(result, started)
    if result.duplicate:
        log.info("idempotent replay batch=%s key=%s", result.batch_id, principal.id)
    else:
        # One line per batch (a line per message cost more than storing it); ids are in the outbox.
        log.info(
            "accepted batch=%s messages=%d key=%s",
            result.batch_id,
            len(result.ids),
            principal.id,
            extra={
                "fields": {
                    "event": "accepted",
                    "batch": result.batch_id,
                    "messages": len(result.ids),
                    "suppressed": result.suppressed,
                    "key": principal.id,
                }
            },
        )
    return result
