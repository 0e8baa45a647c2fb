"""OAuth2 access tokens for SMTP AUTH (XOAUTH2, OAUTHBEARER), from a refresh token the operator configured.

Why one :class:`TokenSource` per set of credentials in the process, not one per connection:
the pool opens up to ``MAIL_POOL_SIZE`` connections, often at once, and each must log in;
they share one access token, and when it is due only one of them asks the token endpoint
(the others wait for that answer). The token requests go through authlib's httpx
integration (``AsyncOAuth2Client``), the client secret in the form body
(``client_secret_post``, which Google and Microsoft both document).

Nothing secret is ever logged or put in an exception message or a ``repr``: the client
secret, the refresh token and the access tokens are held in objects whose ``repr`` hides
them, errors from the token endpoint are reduced to its status and error code, and the
HTTP library's own exceptions (whose request holds the form body) are not chained.

    >>> creds = OAuth2Credentials("https://oauth2.googleapis.com/token", "id", "s3cret", "1//rt")
    >>> "s3cret" in repr(creds) or "1//rt" in repr(creds)
    False
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import AuthenticationError, ConnectionFailedError, DeliveryError

__all__ = [
    "AccessToken",
    "Mechanism",
    "OAuth2Credentials",
    "TokenSource",
    "oauthbearer_response",
    "token_source",
    "xoauth2_response",
]

log = logging.getLogger("mailsvc.oauth2")

Mechanism = Literal["XOAUTH2", "OAUTHBEARER"]
# A token is renewed this long before it expires (or at half its life if that is shorter), so a
# login never presents one that runs out on the way.
EARLY_SECONDS = 60.0


@dataclass(frozen=True)
class OAuth2Credentials:
    """What the operator configured (``MAIL_OAUTH2_*``); hashable, so equal settings share one source."""

    token_url: str
    client_id: str
    client_secret: str | None = field(repr=False)
    refresh_token: str = field(repr=False)
    scope: str | None = None


@dataclass(frozen=True)
class AccessToken:
    """One access token and when it stops being offered (``clock`` seconds; None: until the relay refuses it)."""

    value: str = field(repr=False)
    renew_at: float | None = None


class TokenSource:
    """The current access token for one set of credentials, refreshed one request at a time.

    ``clock`` is ``time.monotonic``; tests set their own to make a token come due without waiting.
    ``refreshes`` counts the token requests that succeeded.
    """

    def __init__(self, credentials: OAuth2Credentials, *, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.timeout = timeout
        self.clock: Callable[[], float] = time.monotonic
        self.refreshes = 0
        self._refresh_token = credentials.refresh_token  # replaced when the endpoint rotates it
        self._current: AccessToken | None = None
        # asyncio locks belong to one event loop; mail.send_sync runs a loop per call (and per thread).
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._locks_guard = threading.Lock()

    def __repr__(self) -> str:
        return f"<TokenSource {self.credentials.token_url} client_id={self.credentials.client_id!r}>"

    def _fresh(self, token: AccessToken | None) -> bool:
        return token is not None and (token.renew_at is None or self.clock() < token.renew_at)

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._locks_guard:
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
            return lock

    async def token(self) -> AccessToken:
        """An access token that is not due for renewal; at most one refresh runs at a time per event loop."""
        current = self._current
        if self._fresh(current):
            assert current is not None
            return current
        async with self._lock():
            current = self._current  # another connection may have refreshed while this one waited
            if self._fresh(current):
                assert current is not None
                return current
            self._current = await self._refresh()
            return self._current

    def invalidate(self, token: AccessToken) -> None:
        """The relay refused ``token``: the next :meth:`token` refreshes, unless another login already did."""
        if self._current is token:
            self._current = None

    async def _refresh(self) -> AccessToken:
        creds = self.credentials
        log.info("oauth2: requesting an access token from %s", creds.token_url)
        started = self.clock()
        payload = await _request_token(creds, self._refresh_token, self.timeout)
        value = payload.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"the token endpoint {creds.token_url} answered without an access_token")
        rotated = payload.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            self._refresh_token = rotated  # Microsoft rotates refresh tokens; the configured one stays valid too
        renew_at = None
        expires_in = payload.get("expires_in")
        if isinstance(expires_in, (int, float, str)):
            try:
                lifetime = float(expires_in)
            except ValueError:
                lifetime = -1.0
            if lifetime >= 0:
                renew_at = started + lifetime - min(EARLY_SECONDS, lifetime / 2)
        self.refreshes += 1
        log.info("oauth2: got an access token from %s (expires in %s s)", creds.token_url, expires_in)
        return AccessToken(value, renew_at)


async def _request_token(creds: OAuth2Credentials, refresh_token: str, timeout: float) -> dict[str, Any]:
    """One refresh_token grant through authlib; its failures become ours, naming the setting to check."""
    # Imported here: authlib and httpx2 cost ~0.1 s to import, and only OAuth2 configurations need them.
    import httpx2
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

    url = creds.token_url
    try:
        async with AsyncOAuth2Client(
            client_id=creds.client_id,
            client_secret=creds.client_secret,
            token_endpoint_auth_method="client_secret_post" if creds.client_secret else "none",
            scope=creds.scope,
            timeout=timeout,
            follow_redirects=False,
        ) as client:
            token = await client.refresh_token(url, refresh_token=refresh_token)
    except OAuthError as exc:
        error = _clean(str(exc.error or "error"), creds, refresh_token)
        raise AuthenticationError(f"the token endpoint {url} refused the refresh: {error}{_hint(error)}") from None
    except httpx2.HTTPStatusError as exc:
        raise ConnectionFailedError(
            f"the token endpoint {url} answered HTTP {exc.response.status_code}; will try again"
        ) from None
    except httpx2.HTTPError as exc:
        raise ConnectionFailedError(f"the token endpoint {url} could not be reached ({type(exc).__name__})") from None
    except ValueError:  # not JSON (a proxy's error page)
        raise ConnectionFailedError(f"the token endpoint {url} did not answer with a JSON token") from None
    except DeliveryError:
        raise
    return dict(token)


def _hint(error: str) -> str:
    if error == "invalid_grant":
        return ": MAIL_OAUTH2_REFRESH_TOKEN was revoked or has expired; get a new one"
    if error in ("invalid_client", "unauthorized_client"):
        return ": check MAIL_OAUTH2_CLIENT_ID and MAIL_OAUTH2_CLIENT_SECRET"
    if error == "invalid_scope":
        return ": check MAIL_OAUTH2_SCOPE"
    return ""


def _clean(text: str, creds: OAuth2Credentials, refresh_token: str) -> str:
    """An error code from the endpoint, cut short and with any secret it echoes blanked out."""
    text = text[:100]
    for secret in (creds.client_secret, creds.refresh_token, refresh_token):
        if secret:
            text = text.replace(secret, "***")
    return text


_sources: dict[OAuth2Credentials, TokenSource] = {}
_sources_guard = threading.Lock()


def token_source(credentials: OAuth2Credentials, *, timeout: float = 30.0) -> TokenSource:
    """The process's one :class:`TokenSource` for these credentials (every connection of every pool)."""
    with _sources_guard:
        source = _sources.get(credentials)
        if source is None:
            source = _sources[credentials] = TokenSource(credentials, timeout=timeout)
        return source


def xoauth2_response(username: str, token: AccessToken) -> bytes:
    """Google's and Microsoft's XOAUTH2 initial response, base64'd.

    >>> base64.b64decode(xoauth2_response("me@example.com", AccessToken("ya29")))
    b'user=me@example.com\\x01auth=Bearer ya29\\x01\\x01'
    """
    return base64.b64encode(f"user={username}\x01auth=Bearer {token.value}\x01\x01".encode())


def oauthbearer_response(username: str, token: AccessToken, host: str, port: int) -> bytes:
    """RFC 7628's OAUTHBEARER initial response (GS2 header with the authzid, then key=value pairs), base64'd.

    >>> base64.b64decode(oauthbearer_response("a,b=c@example.com", AccessToken("t"), "mx.test", 587))
    b'n,a=a=2Cb=3Dc@example.com,\\x01host=mx.test\\x01port=587\\x01auth=Bearer t\\x01\\x01'
    """
    authzid = username.replace("=", "=3D").replace(",", "=2C")  # RFC 5801 saslname
    text = f"n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token.value}\x01\x01"
    return base64.b64encode(text.encode())
