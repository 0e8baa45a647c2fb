"""Real SMTP servers for tests: aiosmtpd bound to 127.0.0.1 port 0, read back.

Handlers record what they received (parsed back with the stdlib parser) and
inject faults on the *server* side, as aiosmtplib's own tests do.
"""

from __future__ import annotations

import asyncio
import email
import queue
import ssl
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from functools import cached_property
from typing import Any, cast

from aiosmtpd.smtp import SMTP as SMTPServerProtocol
from aiosmtpd.smtp import AuthResult, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @cached_property
    def message(self) -> EmailMessage:
        """Parsed once with the stdlib parser (policy.default), so assertions see real structure."""
        return email.message_from_bytes(self.data, policy=policy.default)


@dataclass
class RecordingHandler:
    """Accepts everything; ``refuse`` maps recipient -> reply for RCPT refusals."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None  # e.g. "554 rejected" after DATA
    drop_after_data: bool = False  # close the connection before replying to DATA
    stall_seconds: float = 0.0  # sleep before replying to DATA

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.stall_seconds:
            await asyncio.sleep(self.stall_seconds)
        if self.drop_after_data:
            server.transport.close()
            return "250 never seen"
        if self.data_reply:
            return self.data_reply
        # aiosmtpd fills these once DATA is reached; bytes because the server runs with decode_data=False.
        mail_from = cast(str, envelope.mail_from)
        data = cast(bytes, envelope.original_content or envelope.content)
        self.received.append(Received(mail_from, list(envelope.rcpt_tos), data))
        return "250 Message accepted"


@dataclass
class ConnectionCounter:
    """Counts TCP connections the server accepted (one SMTP session each)."""

    count: int = 0


class Authenticator:
    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username.encode(), password.encode()
        self.attempts = 0

    def __call__(self, server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        self.attempts += 1
        ok = (
            getattr(auth_data, "login", None) == self.username and getattr(auth_data, "password", None) == self.password
        )
        return AuthResult(success=ok, handled=False)  # handled=True would leave the client unanswered


@asynccontextmanager
async def smtp_server(
    handler: Any,
    *,
    ssl_context: ssl.SSLContext | None = None,  # implicit TLS
    tls_context: ssl.SSLContext | None = None,  # offered via STARTTLS
    require_starttls: bool = False,
    authenticator: Authenticator | None = None,
    auth_require_tls: bool = True,
    greeting_reply: str | None = None,
    connections: ConnectionCounter | None = None,
    smtputf8: bool = True,
    auth_required: bool | None = None,  # None: when there is an authenticator
    auth_exclude_mechanism: list[str] | None = None,  # e.g. ["LOGIN", "PLAIN"] for an OAuth2-only relay
) -> AsyncIterator[int]:
    """Serve ``handler`` on 127.0.0.1; yields the port the OS chose."""
    loop = asyncio.get_running_loop()

    def _protocol() -> SMTPServerProtocol:
        return SMTPServerProtocol(
            handler,
            hostname="mx.test",
            tls_context=tls_context,
            require_starttls=require_starttls,
            authenticator=authenticator,
            auth_required=authenticator is not None if auth_required is None else auth_required,
            auth_require_tls=auth_require_tls,
            auth_exclude_mechanism=auth_exclude_mechanism,
            enable_SMTPUTF8=smtputf8,
            loop=loop,
        )

    def factory() -> SMTPServerProtocol:
        if connections is not None:
            connections.count += 1
        with warnings.catch_warnings():
            # aiosmtpd warns when AUTH is allowed without TLS; tests do that on purpose
            # (implicit TLS, which aiosmtpd does not count as TLS, and stripped STARTTLS).
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            proto = _protocol()
        if greeting_reply is not None:

            async def _greet(*a: Any, **k: Any) -> None:
                proto._set_rset_state()  # type: ignore[no-untyped-call]
                await proto.push(greeting_reply)
                if proto.transport is not None:  # set once the connection is made, before this runs
                    proto.transport.close()

            proto._handle_client = _greet  # type: ignore[method-assign]
        return proto

    server = await loop.create_server(factory, host="127.0.0.1", port=0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


@contextmanager
def threaded_smtp_server(handler: Any, **options: Any) -> Iterator[int]:
    """:func:`smtp_server` on a loop of its own in a thread, for tests of synchronous sending."""
    ready: queue.Queue[int | BaseException] = queue.Queue()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        stop.append(asyncio.Event())
        try:
            async with smtp_server(handler, **options) as port:
                ready.put(port)
                await stop[0].wait()
        except BaseException as exc:
            ready.put(exc)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    got = ready.get(timeout=10)
    if isinstance(got, BaseException):
        raise got
    try:
        yield got
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()
