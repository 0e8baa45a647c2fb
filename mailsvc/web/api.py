"""The JSON API: ``/api/messages``, ``/api/messages/bulk``, ``/api/messages/<id>``, ``/api/batches/<id>``,
``/api/batches/<id>/messages``.

Every route authenticates, checks the key's scope (``send`` to POST, ``read`` to GET; 403
otherwise), rate-limits per tenant, parses strictly (415 non-JSON, 400 bad
JSON, 413 too large, 422 invalid fields) and only then touches the outbox, so a
refused request has queued nothing. A status lookup sees only the caller's tenant's
mail (an ``admin`` key sees all): another tenant's id is a 404 like an unknown one.

``GET /api/messages`` lists (keyset pages, :mod:`mailsvc.outbox.listing`); ``DELETE`` on a
message or batch cancels what no relay has been handed yet, in one transaction, and answers
the state after it: 200 when nothing of it is being sent any more, 202 while a worker still
sends part of it (that part finishes). A second DELETE changes nothing and answers the same.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from quart import Blueprint, Response, request
from werkzeug.routing import BaseConverter

from ..errors import MessageError, OutboxError
from ..labels import TAG_PATTERN, parse_send_at
from ..outbox import Cursor, MessagePage, MessageQuery, MessageState, MessageStatus
from ..outbox.listing import DEFAULT_PAGE, MAX_PAGE, decode_cursor
from . import compose
from .bulkstream import BulkRequest
from .gilshare import sharing
from .json_limits import first_problem
from .jsonscan import BulkBody
from .problems import FieldError, ProblemException, not_an_object, not_json, validation_problem
from .schemas import (
    Accepted,
    BatchAccepted,
    BatchStatusOut,
    MessageIn,
    MessagePageOut,
    MessageStatusOut,
    MessageSummaryOut,
    RecipientStatusOut,
)
from .state import web_state
from .tenants import Scope
from .unsublinks import links_for

__all__ = [
    "ID_PATTERN",
    "IDEMPOTENCY_KEY_PATTERN",
    "LIST_PARAMS",
    "TO_PATTERN",
    "MessageIdConverter",
    "bp",
    "status_out",
]

bp = Blueprint("mailsvc_api", __name__)
M = TypeVar("M", bound=BaseModel)
# Checked here and stated as these patterns in /openapi.json.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_ID = re.compile(ID_PATTERN)
_TAG = re.compile(TAG_PATTERN)
# A recipient address as stored (exact match): one line of printable characters.
TO_PATTERN = r"^[^\x00-\x1f\x7f]{1,998}$"
_TO = re.compile(TO_PATTERN)
_LIMIT = re.compile(r"^[0-9]{1,3}$")
#: The query parameters each listing takes (anything else is a 422 naming it).
LIST_PARAMS = {
    "messages": ("status", "tag", "since", "until", "to", "limit", "cursor"),
    "batch": ("status", "limit", "cursor"),
}


class MessageIdConverter(BaseConverter):
    """``<message_id:id>``: any path segment but ``bulk``, the bulk route's own.

    Why: otherwise ``GET /api/messages/bulk`` reaches the status route (404, no
    such message) and ``OPTIONS`` advertises GET there; with it, ``bulk`` is one
    resource that answers POST, and 405 with ``Allow: POST`` to anything else.
    """

    regex = r"(?!bulk(?:/|$))[^/]+"


def _json_mimetype() -> None:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ProblemException(415, f"send the body as application/json (got {mimetype or 'no Content-Type'})")


async def read_json() -> Any:
    """The body as JSON: 415 unless declared JSON, 413 past the size cap (Quart), 400 if malformed."""
    _json_mimetype()
    raw = await request.get_data(as_text=False)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise not_json(exc) from None


async def read_text() -> str:
    """The body as text for :class:`BulkBody` (415/413 as :func:`read_json`); Quart keeps no copy of it."""
    _json_mimetype()
    raw = cast(bytes, await request.get_data(cache=False, as_text=False))  # as_text=False: always bytes
    try:
        return raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise not_json(exc) from None


def validate(model: type[M], data: Any) -> M:
    """Validate with this deployment's limits; 413 when what is wrong is a size, else 422."""
    if not isinstance(data, dict):
        raise not_an_object()
    unusable = first_problem(data)
    if unusable is not None:
        raise ProblemException(422, "some fields are invalid; nothing was queued", errors=[unusable])
    try:
        return model.model_validate(data, context=web_state().check_context())
    except ValidationError as exc:
        raise validation_problem(exc) from None


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ProblemException(
            422, errors=[FieldError(field="Idempotency-Key", reason="1 to 200 printable ASCII characters")]
        )
    return key


def _accepted(body: BaseModel, location: str, duplicate: bool) -> Response:
    resp = Response(body.model_dump_json(), status=202, content_type="application/json", headers={"Location": location})
    if duplicate:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


@bp.post("/api/messages")
async def send_message() -> Response:
    ws = web_state()
    principal = await ws.api_principal(Scope.SEND)
    m = validate(MessageIn, await read_json())
    key = idempotency_key()
    links = links_for(ws.config, m.unsubscribe, m.headers, principal.tenant, m.stream) if m.unsubscribe else None
    envelope = compose.build_single(ws.mail, m, links)
    result = await compose.enqueue(
        ws.outbox(),
        [envelope],
        principal=principal,
        idempotency_key=key,
        # Only a key's replay is compared with what it first answered; without a key nothing is.
        fingerprint=compose.fingerprint_of("message", m.model_dump_json()) if key is not None else None,
        batch=False,
        labels=compose.labels_of(m, ws.config.schedule_horizon),
        stream=m.stream,
    )
    id_ = result.ids[0]
    return _accepted(Accepted(id=id_), f"/api/messages/{id_}", result.duplicate)


def _bad(param: str, reason: str) -> ProblemException:
    return ProblemException(422, "bad query parameters", errors=[FieldError(field=param, reason=reason)])


def _listing(which: str, batch_id: str | None = None) -> tuple[MessageQuery, Cursor | None, int]:
    """The query string of a listing, checked: each parameter once, each well-formed, no others."""
    args = request.args
    for name in args:
        if name not in LIST_PARAMS[which]:
            raise _bad(name[:60], f"not a parameter of this listing (it takes {', '.join(LIST_PARAMS[which])})")
        if len(args.getlist(name)) > 1:
            raise _bad(name, "give it once")
    state = args.get("status")
    if state is not None and state not in set(MessageState):
        raise _bad("status", f"one of {', '.join(sorted(MessageState))}")
    tag = args.get("tag")
    if tag is not None and not _TAG.fullmatch(tag):
        raise _bad("tag", "1-64 letters, digits, '.', '_', ':' or '-'")
    to = args.get("to")
    if to is not None and not _TO.fullmatch(to):
        raise _bad("to", "an address as it was sent to, one line, at most 998 characters")
    bounds = {}
    for name in ("since", "until"):
        raw = args.get(name)
        if raw is not None:
            try:
                bounds[name] = parse_send_at(raw, name)
            except MessageError as exc:
                raise _bad(name, exc.reason) from None
    limit = DEFAULT_PAGE
    raw_limit = args.get("limit")
    if raw_limit is not None:
        if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise _bad("limit", f"a whole number from 1 to {MAX_PAGE}")
        limit = int(raw_limit)
    after = None
    raw_cursor = args.get("cursor")
    if raw_cursor is not None:
        try:
            after = decode_cursor(raw_cursor)
        except MessageError as exc:
            raise _bad("cursor", exc.reason) from None
    query = MessageQuery(
        state=MessageState(state) if state is not None else None,
        tag=tag,
        since=bounds.get("since"),
        until=bounds.get("until"),
        to=to,
        batch_id=batch_id,
    )
    return query, after, limit


def _page_out(page: MessagePage) -> Response:
    body = MessagePageOut(
        items=[
            MessageSummaryOut(
                id=m.id,
                message_id=m.message_id,
                batch_id=m.batch_id,
                state=m.state,
                created_at=m.created_at.isoformat(),
                send_at=m.send_at.isoformat() if m.send_at else None,
                tags=list(m.tags),
                metadata=m.metadata,
            )
            for m in page.items
        ],
        next=page.next,
    )
    return Response(body.model_dump_json(), content_type="application/json")


async def _page(query: MessageQuery, after: Cursor | None, limit: int, tenant: str | None) -> MessagePage:
    try:
        return await web_state().outbox().list_messages(query, tenant=tenant, after=after, limit=limit)
    except MessageError as exc:  # a cursor whose key this backend cannot read
        raise _bad(exc.field, exc.reason) from None
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None


@bp.get("/api/messages")
async def list_messages() -> Response:
    """The caller tenant's messages, newest first, filtered; ``next`` pages on."""
    ws = web_state()
    principal = await ws.api_principal(Scope.READ, allow_session=True)
    query, after, limit = _listing("messages")
    return _page_out(await _page(query, after, limit, principal.sees))


@bp.post("/api/messages/bulk")
async def send_bulk() -> Response:
    """Walked a recipient at a time (``bulkstream``): the body is never all parsed or all rendered at once.

    The whole-body walks (well-formedness, then every entry validated) run in a thread, as the rendering
    does (:meth:`BulkRequest.chunks`): for 100,000 recipients they take seconds, and on the loop every
    other request (and any SQLite transaction another task had open, so the file's write lock) waited
    that long. Meanwhile the GIL changes hands every 0.5 ms (:mod:`.gilshare`).
    """
    ws = web_state()
    principal = await ws.api_principal(Scope.SEND)
    text = await read_text()
    with sharing():  # those threads and the loop take turns every 0.5 ms, not 5
        try:
            body = await asyncio.to_thread(BulkBody.parse, text)
        except (ValueError, RecursionError) as exc:
            raise not_json(exc) from None
        key = idempotency_key()
        req = await asyncio.to_thread(BulkRequest.check, body, ws.check_context(), keyed=key is not None)
        result = await compose.enqueue_bulk(
            ws.outbox(), req, ws.mail, ws.config, principal=principal, idempotency_key=key
        )
    assert result.batch_id is not None
    out = BatchAccepted(batch_id=result.batch_id, count=len(result.ids))
    return _accepted(out, f"/api/batches/{result.batch_id}", result.duplicate)


def status_out(s: MessageStatus) -> MessageStatusOut:
    return MessageStatusOut(
        id=s.id,
        message_id=s.message_id,
        batch_id=s.batch_id,
        state=s.state,
        created_at=s.created_at.isoformat(),
        tags=list(s.tags),
        metadata=s.metadata,
        send_at=s.send_at.isoformat() if s.send_at else None,
        recipients=[
            RecipientStatusOut(
                recipient=r.recipient,
                state=r.state,
                attempts=r.attempts,
                last_code=r.last_code,
                last_reply=r.last_reply,
                updated_at=r.updated_at.isoformat(),
                next_attempt_at=r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                relay=r.relay,
            )
            for r in s.recipients
        ],
    )


def _check_id(kind: str, ident: str) -> None:
    if not _ID.fullmatch(ident):
        raise ProblemException(404, f"no {kind} with id {ident[:80]!r}")


@bp.get("/api/messages/<message_id:id>")
async def message_status(id: str) -> Response:
    ws = web_state()
    principal = await ws.api_principal(Scope.READ, allow_session=True)
    _check_id("message", id)
    try:
        s = await ws.outbox().status(id, tenant=principal.sees)
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    return Response(status_out(s).model_dump_json(), content_type="application/json")


@bp.get("/api/batches/<id>")
async def batch_status(id: str) -> Response:
    ws = web_state()
    principal = await ws.api_principal(Scope.READ, allow_session=True)
    _check_id("batch", id)
    try:
        counts = await ws.outbox().batch_status(id, tenant=principal.sees)
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    body = BatchStatusOut(batch_id=id, total=sum(counts.values()), counts=counts)
    return Response(body.model_dump_json(), content_type="application/json")


@bp.get("/api/batches/<id>/messages")
async def batch_messages(id: str) -> Response:
    """A batch's messages (``status=failed`` for the failures), newest first; 404 as ``GET /api/batches/<id>``."""
    ws = web_state()
    principal = await ws.api_principal(Scope.READ, allow_session=True)
    _check_id("batch", id)
    query, after, limit = _listing("batch", batch_id=id)
    try:
        await ws.outbox().batch_status(id, tenant=principal.sees)
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    return _page_out(await _page(query, after, limit, principal.sees))


@bp.delete("/api/messages/<message_id:id>")
async def cancel_message(id: str) -> Response:
    """Cancel what no relay has been handed; 200 with the status after, 202 while part of it is still being sent."""
    ws = web_state()
    principal = await ws.api_principal(Scope.SEND)
    _check_id("message", id)
    try:
        s = await ws.outbox().cancel(id, tenant=principal.sees)
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    code = 202 if s.state == MessageState.SENDING else 200
    return Response(status_out(s).model_dump_json(), status=code, content_type="application/json")


@bp.delete("/api/batches/<id>")
async def cancel_batch(id: str) -> Response:
    """Cancel every message of the batch as ``DELETE /api/messages/<id>`` does, in one transaction."""
    ws = web_state()
    principal = await ws.api_principal(Scope.SEND)
    _check_id("batch", id)
    try:
        counts = await ws.outbox().cancel_batch(id, tenant=principal.sees)
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    body = BatchStatusOut(batch_id=id, total=sum(counts.values()), counts=counts)
    code = 202 if counts.get(MessageState.SENDING, 0) else 200
    return Response(body.model_dump_json(), status=code, content_type="application/json")
