"""``GET /api/events`` (a tenant's delivery events, by cursor) and the webhook deliveries operators watch.

Why a cursor: a client that was down asks with the ``next`` it last saw and gets exactly what happened since,
in order, nothing twice (see :mod:`mailsvc.outbox.events`). Events are the caller's tenant's (an ``admin``
key sees all). Webhook deliveries are the operator's business (the endpoints are in settings, not chosen
by callers), so listing and replaying them needs ``admin``.
"""

from __future__ import annotations

import json
import re

from quart import Blueprint, Response, request

from ..errors import OutboxError
from ..labels import TAG_PATTERN
from ..outbox.events import CURSOR_PATTERN, EVENT_TYPES, CursorError, EventLog
from . import compose
from .problems import FieldError, ProblemException
from .state import web_state
from .tenants import Scope

__all__ = ["AFTER_MAX", "DELIVERY_STATES", "MAX_PAGE", "SINCE_PATTERN", "TYPE_PATTERN", "bp"]

bp = Blueprint("mailsvc_events", __name__)

MAX_PAGE = 500
DEFAULT_PAGE = 100
DELIVERY_STATES = ("pending", "failing", "delivered", "failed")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TAG = re.compile(TAG_PATTERN)
_ANY_TYPE = "(?:" + "|".join(sorted(EVENT_TYPES)) + ")"
#: ``type``: one or more event types, comma-separated (the parameter may also be repeated). Stated in /openapi.json.
TYPE_PATTERN = f"^{_ANY_TYPE}(?:,{_ANY_TYPE})*$"
#: ``since``: a page's ``next``, as either backend writes it (this backend refuses the other's with a 422), or
#: empty (from the first event, as when it is left out).
SINCE_PATTERN = "^(?:" + CURSOR_PATTERN[1:-1] + ")?$"
#: ``after`` (deliveries): a whole number of at most 18 digits.
AFTER_MAX = 10**18 - 1


def _bad(field: str, reason: str) -> ProblemException:
    return ProblemException(422, f"{field}: {reason}", errors=[FieldError(field=field, reason=reason)])


def _whole(raw: str) -> int | None:
    """A whole number as the document's ``integer`` reads it (leading zeros allowed), else None.

    Checked on the text first, so a 5,000-digit value is refused without being parsed.
    """
    digits = raw.lstrip("0") or "0"
    if not raw.isascii() or not raw.isdigit() or len(digits) > 18:
        return None
    return int(digits)


def _limit() -> int:
    n = _whole(request.args.get("limit", str(DEFAULT_PAGE)))
    if n is None or not 1 <= n <= MAX_PAGE:
        raise _bad("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    return n


def _event_log() -> EventLog:
    log = web_state().outbox().events
    if log is None:
        raise ProblemException(404, "this outbox keeps no events")
    return log


def _json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


@bp.get("/api/events")
async def events() -> Response:
    principal = await web_state().api_principal(Scope.READ, allow_session=True)
    types: list[str] = []
    for raw in request.args.getlist("type"):
        for t in raw.split(","):
            if t not in EVENT_TYPES:
                raise _bad("type", f"{t[:40]!r} is not an event type; one of {', '.join(sorted(EVENT_TYPES))}")
            types.append(t)
    message = request.args.get("message")
    if message is not None and not _ID.fullmatch(message):
        raise _bad("message", "must be a message id as POST /api/messages returned it")
    tag = request.args.get("tag")
    if tag is not None and not _TAG.fullmatch(tag):
        raise _bad("tag", "must be a tag as messages carry them (1-64 letters, digits, '.', '_', ':' or '-')")
    since = request.args.get("since") or None  # empty: from the first event (clients start with since=)
    limit = _limit()
    try:
        page = await _event_log().read(principal.sees, since, types, message, limit, tag)
    except CursorError as exc:
        raise _bad("since", str(exc)) from None
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    return _json({"events": [e.as_json() for e in page.events], "next": page.next})


@bp.get("/api/webhooks/deliveries")
async def deliveries() -> Response:
    await web_state().api_principal(Scope.ADMIN)
    status = request.args.get("status")
    if status is not None and status not in DELIVERY_STATES:
        raise _bad("status", f"must be one of {', '.join(DELIVERY_STATES)}")
    after = _whole(request.args.get("after", "0"))
    if after is None:
        raise _bad("after", "must be the 'next' of a previous page (a whole number)")
    limit = _limit()
    try:
        rows = await _event_log().deliveries(status, after, limit)
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    return _json({"deliveries": [d.as_json() for d in rows], "next": rows[-1].id if rows else after})


@bp.post("/api/webhooks/deliveries/<int:id>/replay")
async def replay(id: int) -> Response:
    await web_state().api_principal(Scope.ADMIN)
    try:
        found = await _event_log().replay(id) if id < 2**62 else False
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    if not found:
        raise ProblemException(404, f"no webhook delivery {id}")
    return _json({"id": id, "status": "pending"}, status=202)
