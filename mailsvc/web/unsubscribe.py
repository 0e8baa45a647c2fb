"""``/unsubscribe/<token>``: RFC 8058 one-click unsubscribe, and the page a person sees.

``POST`` with the body ``List-Unsubscribe=One-Click`` (what Gmail, Yahoo and others send, with no
cookies, so no CSRF token is possible and none is needed: the signed token *is* the authority,
and it can only suppress the addresses it names) records the unsubscribe and answers 200.
``GET`` only shows a page whose button sends that same POST: link scanners and prefetchers
follow GETs, so a GET must never unsubscribe. Neither needs a sign-in, and neither says whom
the token names or anything about other recipients. A token this service did not sign
(forged, altered, truncated) is a 404 that changes nothing.
"""

from __future__ import annotations

import logging

from quart import Blueprint, Response, render_template, request

from ..errors import OutboxError
from . import compose
from .problems import ProblemException
from .state import web_state
from .unsublinks import ONE_CLICK, Claim, UnsubscribeSigner

__all__ = ["bp"]

bp = Blueprint("mailsvc_unsubscribe", __name__)
log = logging.getLogger("mailsvc.web")

# The page stands alone (no scripts, no other origin); the token in its URL must not leak as a Referer.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}


def _claim(token: str) -> Claim:
    """The token's claim; 404 (the same answer as an unknown path) when this service did not sign it."""
    secret = web_state().config.secret_key
    claim = UnsubscribeSigner(secret.get_secret_value()).verify(token) if secret is not None else None
    if claim is None:
        raise ProblemException(404, "no such unsubscribe link")
    return claim


async def _page(done: bool) -> Response:
    return Response(await render_template("unsubscribe.html", done=done), headers=_PAGE_HEADERS)


@bp.get("/unsubscribe/<token>")
async def confirm(token: str) -> Response:
    _claim(token)
    return await _page(done=False)


@bp.post("/unsubscribe/<token>")
async def unsubscribe(token: str) -> Response:
    claim = _claim(token)
    form = await request.form
    if form.get("List-Unsubscribe") != ONE_CLICK.partition("=")[2]:
        raise ProblemException(400, f"send the body {ONE_CLICK} (RFC 8058)")
    ws = web_state()
    try:
        added = await ws.outbox().suppress(
            claim.tenant, claim.addresses, claim.stream, reason="unsubscribe", source="one-click"
        )
    except OutboxError as exc:
        raise compose.outbox_problem(exc) from None
    n = len(claim.addresses)
    log.info("unsubscribe stream=%s tenant=%s addresses=%d new=%d", claim.stream, claim.tenant, n, added)
    return await _page(done=True)
