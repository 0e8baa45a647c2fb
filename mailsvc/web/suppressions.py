"""``/api/suppressions``: list, add to and remove from the caller's tenant's suppression list.

Every route acts on the tenant of the key (``''`` on an open service), an ``admin`` key's included:
a list is never read or changed across tenants, and another tenant's entry reads as absent.
``GET`` needs the ``read`` scope; ``POST`` and ``DELETE`` need ``send`` (a key that may mail may
say whom not to mail; a read-only dashboard key may not change it). The scope rule (which streams
an entry holds for) is :mod:`mailsvc.outbox.suppressions`'.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from ..errors import OutboxError
from ..outbox import Suppression
from ..outbox.suppressions import stream_for
from . import compose
from .api import read_json, validate
from .problems import FieldError, ProblemException
from .state import web_state
from .suppression_schemas import (
    SuppressionOut,
    SuppressionPage,
    SuppressionQuery,
    SuppressionsAdded,
    SuppressionsIn,
    UnsuppressQuery,
    cursor_after,
    cursor_of,
    key_of,
)
from .tenants import Scope

__all__ = ["bp"]

bp = Blueprint("mailsvc_suppressions", __name__)


def _json(model: SuppressionPage | SuppressionsAdded) -> Response:
    return Response(model.model_dump_json(), content_type="application/json")


def _out(s: Suppression) -> SuppressionOut:
    return SuppressionOut(
        address=s.address, stream=s.stream, reason=s.reason, source=s.source, created_at=s.created_at.isoformat()
    )


@bp.get("/api/suppressions")
async def list_suppressions() -> Response:
    """A page in (stream, address) order; ``next`` names where the following one starts."""
    ws = web_state()
    principal = await ws.api_principal(Scope.READ)
    q = validate(SuppressionQuery, request.args.to_dict(flat=True))
    try:
        rows = await ws.outbox().list_suppressions(
            principal.tenant,
            reason=q.reason,
            stream=q.stream,
            address=q.address,
            after=cursor_after(q.cursor),
            limit=q.limit + 1,  # one more tells whether there is a next page
        )
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    page, more = rows[: q.limit], len(rows) > q.limit
    nxt = cursor_of(page[-1].stream, page[-1].address) if more else None
    return _json(SuppressionPage(suppressions=[_out(s) for s in page], next=nxt))


@bp.post("/api/suppressions")
async def add_suppressions() -> Response:
    ws = web_state()
    principal = await ws.api_principal(Scope.SEND)
    m = validate(SuppressionsIn, await read_json())
    stream = stream_for(m.reason, m.stream)
    addresses = sorted(set(m.addresses))
    try:
        added = await ws.outbox().suppress(
            principal.tenant, addresses, stream, reason=m.reason, source=f"api:{principal.id}"
        )
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    return _json(SuppressionsAdded(added=added, addresses=addresses, stream=stream, reason=m.reason))


@bp.delete("/api/suppressions/<path:address>")
async def remove_suppression(address: str) -> Response:
    """204 when something was removed, 404 when nothing was there (a retry after a lost 204 gets 404: done)."""
    ws = web_state()
    principal = await ws.api_principal(Scope.SEND)
    q = validate(UnsuppressQuery, request.args.to_dict(flat=True))
    try:
        key = key_of(address)
    except ValueError as exc:
        raise ProblemException(422, errors=[FieldError(field="address", reason=str(exc))]) from None
    try:
        removed = await ws.outbox().unsuppress(principal.tenant, key, q.stream)
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    if not removed:
        where = f" on stream {q.stream!r}" if q.stream else ""
        raise ProblemException(404, f"{key} is not on this tenant's suppression list{where}")
    return Response(status=204)
