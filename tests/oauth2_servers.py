"""Real servers for the OAuth2 tests: a token endpoint over HTTP, and an SMTP relay that takes only its tokens.

The token endpoint is a small HTTP/1.1 server on 127.0.0.1 (asyncio streams, one request per connection),
so authlib's client and httpx2 do real requests. It issues numbered access tokens, counts refreshes, can
hold its answers until a test lets them go, and can revoke tokens. The relay's handler implements
XOAUTH2 and OAUTHBEARER as Google and Microsoft answer them: a 334 error challenge (base64 JSON) and then
535, or a bare 535.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

from aiosmtpd.smtp import AuthResult

from tests.servers import ConnectionCounter, RecordingHandler, smtp_server

CLIENT_ID = "client-1234.apps.example"
CLIENT_SECRET = "GOCSPX-client-secret-7f3a"
REFRESH_TOKEN = "1//refresh-token-9c2e"
MAILBOX = "me@example.com"


@dataclass
class TokenServer:
    """The token endpoint. ``valid`` is what the relay accepts: revoke a token by removing it."""

    expires_in: int | None = 3600
    issued: list[str] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    hold: asyncio.Event | None = None  # answers wait until it is set
    error: tuple[int, dict[str, Any]] | None = None  # answer this instead of a token
    rotate: bool = False  # hand out a new refresh token with each access token
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def refreshes(self) -> int:
        return len(self.issued)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
            )
            body = await reader.readexactly(length)
            form = parse_qs(body.decode())
            self.requests.append(form)
            if self.hold is not None:
                await self.hold.wait()
            status, answer = self._answer(lines[0], form)
            data = json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        finally:
            writer.close()

    def _answer(self, request_line: str, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if self.error is not None:
            return self.error
        expected = {
            "grant_type": ["refresh_token"],
            "client_id": [CLIENT_ID],
            "client_secret": [CLIENT_SECRET],
        }
        if not request_line.startswith("POST /token ") or any(form.get(k) != v for k, v in expected.items()):
            return 401, {"error": "invalid_client"}
        allowed = {REFRESH_TOKEN} | {f"{REFRESH_TOKEN}-{n}" for n in range(len(self.issued) + 1)}
        if form.get("refresh_token", [""])[0] not in allowed:
            return 400, {"error": "invalid_grant"}
        token = f"ya29.access-{len(self.issued) + 1}-{'x' * 40}"
        self.issued.append(token)
        self.valid.add(token)
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "scope": "https://mail.google.com/"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        if self.rotate:
            answer["refresh_token"] = f"{REFRESH_TOKEN}-{len(self.issued)}"
        return 200, answer


@asynccontextmanager
async def token_server(server: TokenServer | None = None) -> AsyncIterator[TokenServer]:
    server = server or TokenServer()
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        if server.hold is not None:
            server.hold.set()
        listener.close()
        await listener.wait_closed()


@dataclass
class OAuthRelay(RecordingHandler):
    """An SMTP handler that logs in XOAUTH2/OAUTHBEARER against ``tokens.valid``.

    ``style``: "google" answers a refused token with a 334 error challenge, then 535;
    "microsoft" with a bare 535. ``challenge_status`` is the challenge's "status".
    """

    tokens: TokenServer = field(default_factory=TokenServer)
    style: Literal["google", "microsoft"] = "google"
    challenge_status: str | None = None  # None: "401" (XOAUTH2) / "invalid_token" (OAUTHBEARER)
    attempts: list[tuple[str, str, str]] = field(default_factory=list)  # (mechanism, user, token)
    after_challenge: list[bytes] = field(default_factory=list)  # what the client answered each challenge
    refuse_all: bool = False  # accept no token at all

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        text = await self._initial(server, args)
        parts = dict(p.split("=", 1) for p in text.split("\x01") if "=" in p)
        return await self._check(server, "XOAUTH2", parts.get("user", ""), parts.get("auth", ""))

    async def auth_OAUTHBEARER(self, server: Any, args: list[str]) -> AuthResult:
        text = await self._initial(server, args)
        gs2, _, rest = text.partition("\x01")
        user = gs2.split(",")[1].removeprefix("a=").replace("=2C", ",").replace("=3D", "=")
        parts = dict(p.split("=", 1) for p in rest.split("\x01") if "=" in p)
        assert parts.get("host") and parts.get("port"), text
        return await self._check(server, "OAUTHBEARER", user, parts.get("auth", ""))

    async def _initial(self, server: Any, args: list[str]) -> str:
        blob = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("")
        return bytes(blob).decode()

    async def _check(self, server: Any, mechanism: str, user: str, auth: str) -> AuthResult:
        token = auth.removeprefix("Bearer ")
        self.attempts.append((mechanism, user, token))
        if user == MAILBOX and token in self.tokens.valid and not self.refuse_all:
            return AuthResult(success=True, auth_data=user)
        if self.style == "google":
            status = self.challenge_status or ("401" if mechanism == "XOAUTH2" else "invalid_token")
            answer = await server.challenge_auth(json.dumps({"status": status, "schemes": "bearer", "scope": "x"}))
            self.after_challenge.append(bytes(answer) if isinstance(answer, bytes) else b"<missing>")
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")


@asynccontextmanager
async def oauth_relay(
    relay: OAuthRelay,
    server_ssl_context: ssl.SSLContext,
    *,
    mechanisms: tuple[str, ...] = ("XOAUTH2",),
    connections: ConnectionCounter | None = None,
) -> AsyncIterator[int]:
    """The relay over STARTTLS (AUTH offered only after it), offering only ``mechanisms``."""
    exclude = [m for m in ("LOGIN", "PLAIN", "XOAUTH2", "OAUTHBEARER") if m not in mechanisms]
    async with smtp_server(
        relay,
        tls_context=server_ssl_context,
        require_starttls=True,
        auth_required=True,
        auth_exclude_mechanism=exclude,
        connections=connections,
    ) as port:
        yield port


def oauth_settings(tokens: TokenServer, port: int, ca_file: str, **extra: Any) -> dict[str, Any]:
    """The ``MAIL_*`` settings for the relay on ``port`` (STARTTLS) with the token endpoint ``tokens``."""
    return {
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": port,
        "MAIL_USE_TLS": True,
        "MAIL_CA_FILE": ca_file,
        "MAIL_USERNAME": MAILBOX,
        "MAIL_DEFAULT_SENDER": MAILBOX,
        "MAIL_TIMEOUT": 10,
        "MAIL_OAUTH2_TOKEN_URL": tokens.url,
        "MAIL_OAUTH2_CLIENT_ID": CLIENT_ID,
        "MAIL_OAUTH2_CLIENT_SECRET": CLIENT_SECRET,
        "MAIL_OAUTH2_REFRESH_TOKEN": REFRESH_TOKEN,
        **extra,
    }
