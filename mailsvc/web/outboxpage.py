"""``/outbox``: the operator's page. The queue at a glance, deliveries per minute, a searchable list of
messages, one message's timeline, and buttons to retry now, cancel, and replay a failing webhook.

Why the form's sign-in and not a new one: the page acts as the key it signed in with, exactly as the
form does (:mod:`.sessions`), so a tenant sees only its own mail and an ``admin`` key sees all; every
button is a POST carrying the form's CSRF token. Another tenant's message id answers 404 as an unknown
one does. Query values are checked here and a bad one is shown on the page (422), never passed on.
The chart is an inline SVG drawn here (no script, no external asset: the page CSP allows neither).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from quart import Blueprint, Response, redirect, render_template, request, url_for
from werkzeug.exceptions import NotFound

from ..errors import MessageError, NotFoundError, OutboxError
from ..labels import TAG_PATTERN
from ..outbox import MessageQuery, MessageState, MessageStatus, Outbox
from ..outbox.events import Delivery, Event, EventLog, MinuteCounts
from ..outbox.listing import decode_cursor
from .auth import Principal, csrf_token, verify_csrf
from .problems import ProblemException
from .state import WebState, web_state
from .tenants import Scope

__all__ = ["CHART_MINUTES", "PAGE_SIZE", "bp", "chart"]

bp = Blueprint("mailsvc_outbox", __name__)
log = logging.getLogger("mailsvc.web")

PAGE_SIZE = 25
CHART_MINUTES = 60
TIMELINE_MAX = 500
DELIVERIES_SHOWN = 50
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TAG = re.compile(TAG_PATTERN)
_TO = re.compile(r"^[^\x00-\x1f\x7f]{1,998}$")
_HTML = "text/html; charset=utf-8"


class _BadQuery(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    height: float
    count: int
    label: str  # the minute, HH:MM UTC


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    peak: int
    total: int
    partial: bool
    width: int
    height: int


def chart(counts: MinuteCounts, width: int = 600, height: int = 120) -> Chart:
    """Bar geometry for the per-minute counts (the SVG is written by the template from this)."""
    n = max(len(counts.counts), 1)
    peak = max(counts.counts, default=0)
    step = width / n
    bars = []
    for i, c in enumerate(counts.counts):
        h = 0.0 if c == 0 else max(1.0, (height - 4) * c / peak)  # a minute with one delivery still shows
        at = counts.start + timedelta(minutes=i)
        bars.append(Bar(round(i * step + 1, 2), round(height - h, 2), round(h, 2), c, at.strftime("%H:%M")))
    return Chart(bars, peak, sum(counts.counts), counts.partial, width, height)


def _when(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


async def _principal(ws: WebState) -> Principal | None:
    """The form's rule: anyone on an open service (dev mode), else the signed-in key."""
    if ws.keys.open:
        return Principal.anonymous(request.remote_addr)
    return await ws.session_principal()


def _sign_in(path: str) -> Response:
    return redirect(url_for("mailsvc_form.signin", next=path))  # type: ignore[return-value]


async def _page(template: str, status: int = 200, **context: Any) -> Response:
    html = await render_template(template, csrf_token=csrf_token(), when=_when, age=_age, **context)
    return Response(html, status=status, content_type=_HTML)


async def _refused(status: int, reason: str, back: str) -> Response:
    return await _page("outbox_refused.html", status=status, reason=reason, back=back)


def _query() -> tuple[MessageQuery, str | None, dict[str, str]]:
    """The search form's values, checked; empty fields mean "any" (a GET form sends every field)."""
    args = request.args
    values = {k: args.get(k, "") for k in ("to", "tag", "status", "cursor")}
    to, tag, status, cursor = (values[k].strip(" ") or None for k in ("to", "tag", "status", "cursor"))
    if to is not None and not _TO.fullmatch(to):
        raise _BadQuery("to", "an address as it was sent to: one line, at most 998 characters")
    if tag is not None and not _TAG.fullmatch(tag):
        raise _BadQuery("tag", "1-64 letters, digits, '.', '_', ':' or '-'")
    if status is not None and status not in set(MessageState):
        raise _BadQuery("status", f"one of {', '.join(sorted(MessageState))}")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except MessageError as exc:
            raise _BadQuery("cursor", exc.reason) from None
    query = MessageQuery(state=MessageState(status) if status else None, tag=tag, to=to)
    return query, cursor, values


def _events(outbox: Outbox) -> EventLog | None:
    return outbox.events


@bp.get("/outbox")
async def overview() -> Response:
    ws = web_state()
    principal = await _principal(ws)
    if principal is None:
        return _sign_in("/outbox")
    if not principal.may(Scope.READ):
        return await _refused(403, f"this key lacks the '{Scope.READ}' scope", "/")
    outbox = ws.outbox()
    tenant = principal.sees
    error: _BadQuery | None = None
    try:
        query, cursor, values = _query()
    except _BadQuery as exc:
        error, query, cursor = exc, MessageQuery(), None
        values = {k: request.args.get(k, "")[:200] for k in ("to", "tag", "status")}
    try:
        stats = await outbox.queue_stats(tenant=tenant)
        events = _events(outbox)
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        start = now - timedelta(minutes=CHART_MINUTES - 1)
        counts = (
            await events.per_minute(tenant, "delivered", start, CHART_MINUTES)
            if events is not None
            else MinuteCounts(start, [0] * CHART_MINUTES, False)
        )
        page = await outbox.list_messages(
            query, tenant=tenant, after=decode_cursor(cursor) if cursor else None, limit=PAGE_SIZE
        )
        statuses: list[MessageStatus] = []
        for item in page.items:
            try:
                statuses.append(await outbox.status(item.id, tenant=tenant))
            except NotFoundError:
                continue  # deleted by retention between the two reads
        failing: list[Delivery] = []
        if events is not None and principal.may(Scope.ADMIN) and not ws.keys.open:
            for state in ("failing", "failed"):
                failing += await events.deliveries(state, 0, DELIVERIES_SHOWN)
    except MessageError as exc:  # a cursor whose key this backend cannot read
        return await _refused(422, f"{exc.field}: {exc.reason}", "/outbox")
    except OutboxError as exc:
        log.error("outbox page: %s", exc)
        return await _refused(503, "the outbox database is unavailable; reload in a moment", "/outbox")
    nxt = None
    if page.next:
        nxt = {k: v for k, v in values.items() if k != "cursor" and v} | {"cursor": page.next}
    return await _page(
        "outbox.html",
        status=422 if error is not None else 200,
        error=error,
        values=values,
        states=sorted(MessageState),
        stats=stats,
        pending=sum(stats.by_state.values()),
        chart=chart(counts),
        messages=statuses,
        next_args=nxt,
        failing=failing,
        admin=principal.may(Scope.ADMIN) and not ws.keys.open,
        tenant=tenant,
    )


async def _visible(ws: WebState, principal: Principal, id: str) -> MessageStatus:
    if not _ID.fullmatch(id):
        raise NotFound()
    try:
        return await ws.outbox().status(id, tenant=principal.sees)
    except NotFoundError:
        raise NotFound() from None  # another tenant's id reads exactly as an unknown one


@bp.get("/outbox/<id>")
async def message(id: str) -> Response:
    ws = web_state()
    principal = await _principal(ws)
    if principal is None:
        return _sign_in("/outbox")
    if not principal.may(Scope.READ):
        return await _refused(403, f"this key lacks the '{Scope.READ}' scope", "/")
    try:
        status = await _visible(ws, principal, id)
        events = _events(ws.outbox())
        timeline: list[Event] = (
            (await events.read(principal.sees, None, [], id, TIMELINE_MAX)).events if events is not None else []
        )
    except OutboxError as exc:
        log.error("outbox page: %s", exc)
        return await _refused(503, "the outbox database is unavailable; reload in a moment", f"/outbox/{id}")
    deferred = any(r.state == "deferred" for r in status.recipients)
    cancellable = any(r.state in ("queued", "scheduled", "deferred") for r in status.recipients)
    return await _page(
        "outbox_message.html",
        m=status,
        timeline=timeline,
        truncated=len(timeline) >= TIMELINE_MAX,
        can_retry=deferred and principal.may(Scope.SEND),
        can_cancel=cancellable and principal.may(Scope.SEND),
        done=request.args.get("done", "") if request.args.get("done") in ("retried", "cancelled") else "",
    )


async def _button(ws: WebState, back: str) -> Principal | Response:
    """A button's POST: signed in, the CSRF token, and the ``send`` scope; else the page saying why."""
    principal = await _principal(ws)
    if principal is None:
        return _sign_in("/outbox")
    form = await request.form
    try:
        verify_csrf(form.get("csrf_token"), request)
        principal.require(Scope.SEND)
    except ProblemException as exc:
        return await _refused(exc.status, exc.detail or exc.title, back)
    return principal


async def _message_button(
    id: str, action: Callable[[Outbox, str, str | None], Awaitable[object]], what: str, done: str
) -> Response:
    """A message page's POST button: sign-in, CSRF and scope (:func:`_button`), visibility, one outbox call."""
    ws = web_state()
    got = await _button(ws, f"/outbox/{id}")
    if isinstance(got, Response):
        return got
    await _visible(ws, got, id)
    try:
        await action(ws.outbox(), id, got.sees)
    except NotFoundError:
        raise NotFound() from None
    except OutboxError as exc:
        log.error("%s: %s", what, exc)
        return await _refused(503, "the outbox database is unavailable; try again in a moment", f"/outbox/{id}")
    log.info("%s: %s message %s", got.id, what, id)
    return redirect(f"/outbox/{id}?done={done}", 303)  # type: ignore[return-value]


@bp.post("/outbox/<id>/retry")
async def retry(id: str) -> Response:
    return await _message_button(id, lambda ob, i, t: ob.retry_now(i, tenant=t), "retry now", "retried")


@bp.post("/outbox/<id>/cancel")
async def cancel(id: str) -> Response:
    return await _message_button(id, lambda ob, i, t: ob.cancel(i, tenant=t), "cancel", "cancelled")


@bp.post("/outbox/webhooks/<int:id>/replay")
async def replay(id: int) -> Response:
    ws = web_state()
    got = await _button(ws, "/outbox")
    if isinstance(got, Response):
        return got
    if ws.keys.open or not got.may(Scope.ADMIN):
        return await _refused(403, f"replaying a webhook needs a key with the '{Scope.ADMIN}' scope", "/outbox")
    events = _events(ws.outbox())
    try:
        found = events is not None and id < 2**62 and await events.replay(id)
    except OutboxError as exc:
        log.error("webhook replay: %s", exc)
        return await _refused(503, "the outbox database is unavailable; try again in a moment", "/outbox")
    if not found:
        raise NotFound()
    log.info("%s replayed webhook delivery %s", got.id, id)
    return redirect("/outbox#webhooks", 303)  # type: ignore[return-value]
