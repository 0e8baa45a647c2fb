"""Who may send: Bearer API keys, the form's signed session, and the open-relay guard.

Why hashes compared in constant time: the raw keys never sit in request-time
data structures and the comparison leaks no timing about which prefix matched.
A key is known in logs and rate limits only by ``key_id``, a short digest.

>>> ring = KeyRing((SecretStr("s3cret"),))
>>> ring.identify("s3cret") == key_id("s3cret"), ring.identify("nope")
(True, None)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

from pydantic import SecretStr
from quart import Request, session

from ..config import ServiceConfig
from ..errors import ConfigError
from ..pagesafety import same_origin
from .problems import ProblemException

__all__ = ["KeyRing", "Principal", "check_startup", "csrf_token", "key_id", "verify_csrf"]

log = logging.getLogger("mailsvc.web")


def key_id(key: str) -> str:
    """A non-secret name for a key: 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: ``id`` is a key id, or ``anon:<address>`` when the service is open."""

    id: str
    via: str  # "bearer" | "session" | "anonymous"


class KeyRing:
    """The configured API keys, held as SHA-256 digests."""

    def __init__(self, keys: tuple[SecretStr, ...]) -> None:
        self._keys = [
            (
                hashlib.sha256(k.get_secret_value().encode("utf-8", "surrogatepass")).digest(),
                key_id(k.get_secret_value()),
            )
            for k in keys
        ]

    @property
    def open(self) -> bool:
        """No keys configured: anyone may send (dev mode, or MAILSVC_ALLOW_ANONYMOUS)."""
        return not self._keys

    def identify(self, presented: str) -> str | None:
        """The key id for a presented key, checking every key so timing says nothing."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for known, kid in self._keys:
            if hmac.compare_digest(digest, known):
                found = kid
        return found

    def bearer(self, request: Request) -> Principal:
        """Authenticate a JSON request; raise 401 problems (RFC 6750) otherwise."""
        if self.open:
            return Principal(f"anon:{request.remote_addr or '-'}", "anonymous")
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ProblemException(
                401,
                "send Authorization: Bearer <key> (keys are set in MAILSVC_API_KEYS)",
                headers={"WWW-Authenticate": 'Bearer realm="mailsvc"'},
            )
        kid = self.identify(token.strip()) if scheme.lower() == "bearer" else None
        if kid is None:
            raise ProblemException(
                401,
                "the API key is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="mailsvc", error="invalid_token"'},
            )
        return Principal(kid, "bearer")

    def from_session(self) -> Principal | None:
        """The signed-in form user, if any (also accepted on the status GET routes)."""
        if self.open:
            return None
        kid = session.get("key_id")
        if isinstance(kid, str) and any(hmac.compare_digest(kid, k) for _, k in self._keys):
            return Principal(kid, "session")
        return None


def check_startup(service: ServiceConfig) -> None:
    """Refuse to be an open relay: a real relay and no keys is an error unless allowed on purpose."""
    web = service.web
    if web.api_keys:
        return
    if not service.dev_mode and not web.allow_anonymous:
        raise ConfigError(
            "MAILSVC_API_KEYS",
            "a real SMTP relay is configured (MAIL_SERVER) but no API keys, which would make this an open "
            "relay: set MAILSVC_API_KEYS=<key>[,<key>...], or MAILSVC_ALLOW_ANONYMOUS=true if that is "
            "really what you want",
        )
    if service.dev_mode:
        log.warning("no MAILSVC_API_KEYS: the form and JSON API are open (dev mode, mail goes to the dev inbox)")
    else:
        log.warning("MAILSVC_ALLOW_ANONYMOUS=true: the form and JSON API accept mail from anyone")


def csrf_token() -> str:
    """The session's CSRF token (minted on first use); the form echoes it back in a hidden field."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def verify_csrf(submitted: str | None, request: Request) -> None:
    """403 unless the submitted token matches the session's and any Origin is our own."""
    if not same_origin(request):
        raise ProblemException(403, "cross-site form submission refused (Origin does not match)")
    expected = session.get("csrf")
    if (
        not isinstance(expected, str)
        or not submitted
        or not hmac.compare_digest(expected.encode(), submitted.encode("utf-8", "surrogatepass"))
    ):
        raise ProblemException(403, "the form's security token is missing or stale; reload the page and submit again")
