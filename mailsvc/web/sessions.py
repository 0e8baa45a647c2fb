"""The form's sign-in: a signed cookie naming the key and a random session id; sign-out revokes the id.

Why a revocation record in the outbox's database: the session is a signed cookie,
so clearing it in the browser leaves any copy saved before sign-out as valid as
it was. Sign-out therefore records the session's id (``sid``, random, minted at
sign-in) as revoked, in the database every node of the service shares, so a
replayed copy is refused by any node, after any restart. The record is kept
until the cookie would have expired anyway (Quart refuses cookies signed longer
than ``PERMANENT_SESSION_LIFETIME`` ago), then deleted. Why a deny-list and not a
table of live sessions: signing in writes nothing, and only sessions that signed
out (and are not yet expired) cost a row. The check is one indexed read per
signed-in request, answered once per request (kept on ``g``).
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta

from quart import Quart, Response, current_app, g, session
from quart.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from quart.wrappers import BaseRequestWebsocket
from werkzeug.wrappers import Response as WerkzeugResponse

from ..errors import OutboxError
from ..outbox import Outbox
from .auth import KeyRing, Principal
from .problems import ProblemException, retry_after
from .tenants import ApiKey

__all__ = ["CookieSessions", "sign_in", "sign_out", "signed_in"]

log = logging.getLogger("mailsvc.web")

_KEY_ID = "key_id"
_SID = "sid"
# Nodes' clocks differ a little; the record outlives the cookie's lifetime by this much.
_CLOCK_SKEW = timedelta(minutes=5)


class CookieSessions(SecureCookieSessionInterface):
    """Quart's signed-cookie sessions, with nothing built for a request that sends no session cookie.

    Why: Quart builds the itsdangerous signer on every request before it looks for
    the cookie, and reads five cookie settings after every response; for API calls
    (which never carry the form's cookie) that was about 2 % of a single POST's CPU.
    A request with a cookie, and any session that was written to, take Quart's own path.
    """

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> SecureCookieSession | None:
        if self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return await super().open_session(app, request)

    async def save_session(
        self, app: Quart, session: SessionMixin, response: Response | WerkzeugResponse | None
    ) -> None:
        if not session and not session.modified:  # nothing to set and nothing to delete
            if session.accessed and response is not None:
                response.vary.add("Cookie")
            return
        await super().save_session(app, session, response)


def sign_in(key: ApiKey) -> None:
    """A fresh session (nothing kept from before sign-in) for ``key``, with a new session id."""
    session.clear()
    session[_KEY_ID] = key.id
    session[_SID] = secrets.token_urlsafe(18)


async def signed_in(keys: KeyRing, outbox: Outbox) -> Principal | None:
    """The signed-in user, unless the session lacks an id, names a key no longer configured, or signed out."""
    if "mailsvc_session_principal" in g:
        cached: Principal | None = g.mailsvc_session_principal
        return cached
    principal = await _principal(keys, outbox)
    g.mailsvc_session_principal = principal
    return principal


async def _principal(keys: KeyRing, outbox: Outbox) -> Principal | None:
    kid, sid = session.get(_KEY_ID), session.get(_SID)
    if keys.open or not isinstance(kid, str) or not isinstance(sid, str):
        return None
    key = keys.by_id(kid)
    if key is None:
        return None
    try:
        revoked = await outbox.session_revoked(sid)
    except OutboxError as exc:
        log.error("session check: %s", exc)
        raise _unavailable("check the session") from exc
    if revoked:
        session.clear()
        return None
    return Principal.of(key, "session")


async def sign_out(outbox: Outbox) -> None:
    """Revoke the session id on every node, then clear the cookie; 503 (the session kept) if it cannot be recorded."""
    sid = session.get(_SID)
    if isinstance(sid, str):
        lifetime: timedelta = current_app.permanent_session_lifetime
        try:
            await outbox.revoke_session(sid, datetime.now(UTC) + lifetime + _CLOCK_SKEW)
        except OutboxError as exc:
            log.error("sign-out: %s", exc)
            raise _unavailable("record the sign-out") from exc
    session.clear()
    g.mailsvc_session_principal = None


def _unavailable(what: str) -> ProblemException:
    return ProblemException(
        503, f"cannot {what} now (the outbox database is unavailable); retry later", headers=retry_after(5)
    )
