"""Who may send: Bearer API keys and their tenants, the form's signed session, and the open-relay guard.

Why hashes compared in constant time: the raw keys never sit in request-time
data structures and the comparison leaks no timing about which prefix matched.
A key is known in logs only by ``key_id``, a short digest; what it may do and
whose mail it sees is its tenant's (:mod:`.tenants`). Failed keys are counted per
client address (:class:`~.ratelimit.FailureLimiter`): past the limit, 429.

>>> from pydantic import SecretStr
>>> ring = KeyRing([ApiKey(SecretStr("s3cret"), "shop")])
>>> ring.identify("s3cret").tenant, ring.identify("nope")
('shop', None)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from quart import Request, session

from ..config import ServiceConfig, WebConfig
from ..errors import ConfigError
from ..pagesafety import same_origin
from .problems import ProblemException, retry_after
from .ratelimit import FailureLimiter, client_address
from .tenants import ALL_SCOPES, ApiKey, Scope, key_id, key_table

__all__ = ["KeyRing", "Principal", "check_startup", "csrf_token", "key_id", "verify_csrf"]

log = logging.getLogger("mailsvc.web")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request.

    ``id`` names it in logs (a key id, or ``anon:<address>`` when the service is open);
    ``tenant`` owns what it queues (None only on an open service, where nobody is
    anyone and every caller may do everything, as before tenants).
    """

    id: str
    via: str  # "bearer" | "session" | "anonymous"
    tenant: str | None
    scopes: frozenset[Scope]

    @classmethod
    def of(cls, key: ApiKey, via: str) -> Principal:
        return cls(key.id, via, key.tenant, key.scopes)

    @classmethod
    def anonymous(cls, remote_addr: str | None) -> Principal:
        return cls(f"anon:{remote_addr or '-'}", "anonymous", None, ALL_SCOPES)

    def may(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def require(self, scope: Scope) -> None:
        """403 naming the scope this key lacks."""
        if not self.may(scope):
            raise ProblemException(
                403,
                f"this API key lacks the '{scope}' scope (its tenant's keys file lists what each key may do)",
                title="Forbidden",
            )

    @property
    def sees(self) -> str | None:
        """The tenant whose mail this caller may look up; None: every tenant's (admin, or an open service)."""
        return None if Scope.ADMIN in self.scopes else self.tenant

    @property
    def bucket(self) -> str:
        """Its rate-limit bucket: the tenant's, shared by all its keys (per address on an open service)."""
        return f"tenant:{self.tenant}" if self.tenant is not None else self.id

    @property
    def idempotency_scope(self) -> str:
        """What an Idempotency-Key is scoped to: the tenant (for a key of its own, that is its key id)."""
        return self.tenant if self.tenant is not None else self.id


class KeyRing:
    """The configured API keys, held as SHA-256 digests with their tenants and scopes."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = [
            (hashlib.sha256(k.secret.get_secret_value().encode("utf-8", "surrogatepass")).digest(), k) for k in keys
        ]
        self._by_id = {k.id: k for k in keys}
        # Each key's Bearer caller, made once: its id is a SHA-256 of the key, worth not redoing per request.
        self._bearers = {id(k): Principal.of(k, "bearer") for k in keys}

    @classmethod
    def from_config(cls, web: WebConfig) -> KeyRing:
        """``MAILSVC_API_KEYS`` and ``MAILSVC_API_KEYS_FILE``; :class:`ConfigError` if the file is unusable."""
        return cls(key_table(web))

    @property
    def open(self) -> bool:
        """No keys configured: anyone may send (dev mode, or MAILSVC_ALLOW_ANONYMOUS)."""
        return not self._keys

    def identify(self, presented: str) -> ApiKey | None:
        """The key presented, checking every key so timing says nothing."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: ApiKey | None = None
        for known, key in self._keys:
            if hmac.compare_digest(digest, known):
                found = key
        return found

    def by_id(self, kid: str) -> ApiKey | None:
        """The key a signed session names (its id was signed into the cookie at sign-in)."""
        return self._by_id.get(kid)

    def bearer(self, request: Request, failures: FailureLimiter) -> Principal:
        """Authenticate a JSON request; 401 problems (RFC 6750), 429 once its address failed too often."""
        if self.open:
            return Principal.anonymous(request.remote_addr)
        address = client_address(request.remote_addr)
        wait = failures.blocked(address)
        if wait is not None:
            raise ProblemException(
                429, "too many invalid API keys from this address; wait and try again", headers=retry_after(wait)
            )
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ProblemException(
                401,
                "send Authorization: Bearer <key> (keys are set in MAILSVC_API_KEYS)",
                headers={"WWW-Authenticate": 'Bearer realm="mailsvc"'},
            )
        key = self.identify(token.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            failures.failed(address)
            log.info("refused an invalid API key from %s", address)  # never the key
            raise ProblemException(
                401,
                "the API key is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="mailsvc", error="invalid_token"'},
            )
        return self._bearers[id(key)]


def check_startup(service: ServiceConfig) -> None:
    """Refuse to be an open relay: a real relay and no keys is an error unless allowed on purpose."""
    web = service.web
    if web.api_keys or web.api_keys_file is not None:
        return
    if not service.dev_mode and not web.allow_anonymous:
        raise ConfigError(
            "MAILSVC_API_KEYS",
            "a real SMTP relay is configured (MAIL_SERVER) but no API keys, which would make this an open "
            "relay: set MAILSVC_API_KEYS=<key>[,<key>...] (or MAILSVC_API_KEYS_FILE), or "
            "MAILSVC_ALLOW_ANONYMOUS=true if that is really what you want",
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
