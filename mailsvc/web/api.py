"""The JSON API: ``/api/messages``, ``/api/messages/bulk``, ``/api/messages/<id>``, ``/api/batches/<id>``.

Every route authenticates, checks the key's scope (``send`` to POST, ``read`` to GET; 403
otherwise), rate-limits per tenant, parses strictly (415 non-JSON, 400 bad
JSON, 413 too large, 422 invalid fields) and only then touches the outbox, so a
refused request has queued nothing. A status lookup sees only the caller's tenant's
mail (an ``admin`` key sees all): another tenant's id is a 404 like an unknown one.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from quart import Blueprint, Response, request
from werkzeug.routing import BaseConverter

from ..errors import OutboxError
from ..outbox import MessageStatus
from . import compose
from .bulkstream import BulkRequest
from .json_limits import first_problem
from .jsonscan import BulkBody
from .problems import FieldError, ProblemException, not_an_object, not_json, validation_problem
from .schemas import Accepted, BatchAccepted, BatchStatusOut, MessageIn, MessageStatusOut, RecipientStatusOut
from .state import web_state
from .tenants import Scope
from .unsublinks import links_for

__all__ = ["ID_PATTERN", "IDEMPOTENCY_KEY_PATTERN", "MessageIdConverter", "bp", "status_out"]

bp = Blueprint("mailsvc_api", __name__)
M = TypeVar("M", bound=BaseModel)
# Checked here and stated as these patterns in /openapi.json.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_ID = re.compile(ID_PATTERN)


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
        fingerprint=compose.fingerprint_of("message", m.model_dump_json()),
        batch=False,
        stream=m.stream,
    )
    id_ = result.ids[0]
    return _accepted(Accepted(id=id_), f"/api/messages/{id_}", result.duplicate)


@bp.post("/api/messages/bulk")
async def send_bulk() -> Response:
    """Walked a recipient at a time (``bulkstream``): the body is never all parsed or all rendered at once."""
    ws = web_state()
    principal = await ws.api_principal(Scope.SEND)
    try:
        body = BulkBody.parse(await read_text())
    except (ValueError, RecursionError) as exc:
        raise not_json(exc) from None
    req = BulkRequest.check(body, ws.check_context())
    key = idempotency_key()
    result = await compose.enqueue_bulk(ws.outbox(), req, ws.mail, ws.config, principal=principal, idempotency_key=key)
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
        recipients=[
            RecipientStatusOut(
                recipient=r.recipient,
                state=r.state,
                attempts=r.attempts,
                last_code=r.last_code,
                last_reply=r.last_reply,
                updated_at=r.updated_at.isoformat(),
                next_attempt_at=r.next_attempt_at.isoformat() if r.next_attempt_at else None,
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
