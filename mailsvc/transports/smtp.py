"""SMTP over aiosmtplib: the only module that imports it.

Why here and nowhere else: aiosmtplib's exceptions are translated into ours at
this boundary, TLS policy is enforced here (STARTTLS mandatory when configured,
certificates verified, no AUTH before TLS), and every network await runs under an
overall deadline from ``MAIL_TIMEOUT`` rather than only per-socket timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
from typing import Literal

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPException,
    SMTPNotSupported,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
)

from ..config import MailConfig, is_loopback
from ..errors import AuthenticationError, ConnectionFailedError, DeliveryError, TransportSecurityError
from ..message import Envelope, default_msgid_domain
from ..oauth2 import AccessToken, Mechanism, TokenSource, oauthbearer_response, token_source, xoauth2_response
from ..results import RecipientResult, SendResult
from .base import SendQueue, Transport
from .pipelining import offered as pipelining_offered
from .pipelining import sendmail as pipelined_sendmail  # RFC 2920 when offered, else smtp.sendmail
from .pipestream import Outcome, Stream, Transaction  # RFC 2920 across messages, for send_batch

__all__ = ["SMTPTransport"]

log = logging.getLogger("mailsvc.smtp")

# What a server answered about one transaction, as aiosmtplib raises it (SMTPNotSupported: before MAIL FROM).
_ANSWERED = (SMTPRecipientsRefused, SMTPNotSupported, SMTPSenderRefused, SMTPDataError)


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _plain_text_answer(err: ssl.SSLError) -> bool:
    """OpenSSL's words for "the peer sent something that is not TLS" (a plain SMTP greeting)."""
    text = f"{err.reason} {err}".lower()
    return any(
        w in text for w in ("wrong version number", "record layer failure", "packet length too long", "http request")
    )


async def _until_closed(protocol: aiosmtplib.protocol.SMTPProtocol | None, seconds: float = 1.0) -> None:
    """Wait until the socket is really closed, aborting it after ``seconds``.

    Why: a TLS transport's ``close()`` only starts the TLS shutdown exchange; its socket
    closes a round trip later. A loop that ends right after (``asyncio.run`` in
    ``mail.send_sync``) would otherwise leave the socket open until garbage collection
    (a ``ResourceWarning``). The protocol forgets its transport in ``connection_lost``.
    """
    if protocol is None:
        return
    try:
        async with asyncio.timeout(seconds):
            while protocol.transport is not None:
                await asyncio.sleep(0.005)
    except TimeoutError:
        if isinstance(protocol.transport, asyncio.Transport):
            protocol.transport.abort()


async def _drop(smtp: aiosmtplib.SMTP, *, wait: bool = True) -> None:
    """Close without QUIT; wait for the socket to go unless the task is being cancelled."""
    protocol = smtp.protocol
    smtp.close()
    if wait:
        await _until_closed(protocol)


class SMTPTransport(Transport):
    """One SMTP connection configured by a :class:`MailConfig`."""

    def __init__(self, config: MailConfig) -> None:
        self.config = config
        self._smtp: aiosmtplib.SMTP | None = None
        self.sent = 0
        credentials = config.oauth2()
        # Shared by every connection with these credentials: one token, one refresh at a time.
        self._tokens: TokenSource | None = (
            token_source(credentials, timeout=config.timeout) if credentials is not None else None
        )

    @property
    def is_open(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    def _client(self) -> aiosmtplib.SMTP:
        c = self.config
        tls_context = None
        if c.encrypted and c.validate_certs:
            tls_context = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        return aiosmtplib.SMTP(
            hostname=c.server,
            port=c.port,
            use_tls=c.use_ssl,
            # True: STARTTLS is mandatory and fails if not offered; False: never, so a
            # plaintext config never silently depends on the server's offer.
            start_tls=True if c.use_tls else False,
            validate_certs=c.validate_certs,
            tls_context=tls_context,
            timeout=c.timeout,
            local_hostname=c.local_hostname or default_msgid_domain(),
        )

    async def open(self) -> None:
        c = self.config
        smtp = self._client()
        try:
            async with asyncio.timeout(c.timeout):
                await smtp.connect()
                if c.username is not None and self._tokens is not None:
                    await self._oauth2_login(smtp, c.username, self._tokens)
                elif c.username is not None and c.password is not None:
                    await self._login(smtp, c.username, c.password.get_secret_value())
        except DeliveryError:
            await _drop(smtp)
            raise
        except BaseException as exc:
            await _drop(smtp, wait=not isinstance(exc, asyncio.CancelledError))
            raise self._translate(exc, "connect") from exc
        self._smtp = smtp
        self.sent = 0
        if c.debug:
            tls = "TLS" if smtp.get_transport_info("sslcontext") is not None else "no TLS"
            extensions = ", ".join(sorted(smtp.esmtp_extensions)) or "none"
            log.info("smtp: connected to %s:%d (%s); extensions: %s", c.server, c.port, tls, extensions)

    async def _login(self, smtp: aiosmtplib.SMTP, username: str, password: str) -> None:
        """AUTH, only over TLS (or to loopback), and only if the relay offers it: each refusal says which."""
        c = self.config
        tls = smtp.get_transport_info("sslcontext") is not None
        if not tls and not is_loopback(c.server) and not c.allow_plaintext_auth:
            raise TransportSecurityError(
                f"refusing to send the password to {c.server} without TLS; set MAIL_USE_TLS or MAIL_USE_SSL"
            )
        if smtp.last_ehlo_response is None:
            await smtp.ehlo()
        if not smtp.supports_extension("auth"):
            hint = "" if tls else ", or set MAIL_USE_TLS if it offers AUTH only after STARTTLS"
            raise DeliveryError(
                f"{c.server}:{c.port} does not offer AUTH: unset MAIL_USERNAME and MAIL_PASSWORD "
                f"if this relay needs no login{hint}"
            )
        await smtp.login(username, password)

    async def _oauth2_login(self, smtp: aiosmtplib.SMTP, username: str, tokens: TokenSource) -> None:
        """AUTH XOAUTH2 or OAUTHBEARER with the shared access token; a refused token is refreshed once and retried.

        The relay says a token is no longer good with a 334 error challenge (base64 JSON, "status" 401 or
        "invalid_token") before its 535, or with a bare 535 (Microsoft); both get one retry with a fresh
        token, since a token can be revoked or expire early on the provider's side. A challenge naming
        another status (a scope the token lacks) does not: a new token would be refused the same way.
        """
        c = self.config
        if smtp.get_transport_info("sslcontext") is None:  # MailConfig requires TLS; this is the belt to its braces
            raise TransportSecurityError(f"refusing to send an OAuth2 access token to {c.server} without TLS")
        if smtp.last_ehlo_response is None:
            await smtp.ehlo()
        mechanism = self._oauth2_mechanism(smtp)
        for attempt in (1, 2):
            token = await tokens.token()
            code, message, status = await self._oauth2_auth(smtp, mechanism, username, token)
            if code == 235:
                return
            if attempt == 1 and status in (None, "401", "invalid_token"):
                tokens.invalidate(token)
                log.info("smtp: %s:%d refused the access token (%d); refreshing it once", c.server, c.port, code)
                continue
            hint = (
                f"; the relay said {status!r}: check MAIL_OAUTH2_SCOPE (Gmail: https://mail.google.com/, "
                "Microsoft 365: https://outlook.office.com/SMTP.Send offline_access)"
                if status not in (None, "401", "invalid_token")
                else "; check that MAIL_USERNAME is the mailbox that granted MAIL_OAUTH2_REFRESH_TOKEN and that "
                "SMTP AUTH is enabled for it"
            )
            raise AuthenticationError(
                f"{c.server}:{c.port} refused the OAuth2 access token ({mechanism}) for {username}{hint}",
                code=code,
                reply=message,
            )

    def _oauth2_mechanism(self, smtp: aiosmtplib.SMTP) -> Mechanism:
        c = self.config
        offered = {m.upper() for m in smtp.server_auth_methods}
        if c.oauth2_mechanism is not None:
            if c.oauth2_mechanism not in offered:
                raise DeliveryError(
                    f"{c.server}:{c.port} does not offer AUTH {c.oauth2_mechanism} (MAIL_OAUTH2_MECHANISM); "
                    f"it offers: {', '.join(sorted(offered)) or 'no AUTH'}"
                )
            return c.oauth2_mechanism
        if "XOAUTH2" in offered:
            return "XOAUTH2"
        if "OAUTHBEARER" in offered:
            return "OAUTHBEARER"
        raise DeliveryError(
            f"{c.server}:{c.port} offers neither XOAUTH2 nor OAUTHBEARER (it offers: "
            f"{', '.join(sorted(offered)) or 'no AUTH'}), so MAIL_OAUTH2_* cannot log in there"
        )

    async def _oauth2_auth(
        self, smtp: aiosmtplib.SMTP, mechanism: Mechanism, username: str, token: AccessToken
    ) -> tuple[int, str, str | None]:
        """One AUTH exchange: the final code and text, and the error challenge's "status" if it had a readable one.

        aiosmtplib's ``auth_xoauth2`` drops the challenge, which says whether the token was the problem,
        and has no OAUTHBEARER; so the exchange is sent here with ``execute_command``.
        """
        if mechanism == "XOAUTH2":
            initial, after_challenge = xoauth2_response(username, token), b""  # Google: an empty line
        else:
            initial = oauthbearer_response(username, token, self.config.server, self.config.port)
            after_challenge = b"AQ=="  # RFC 7628 3.2.3: the client answers an error with %x01
        reply = await smtp.execute_command(b"AUTH", mechanism.encode(), initial)
        status = None
        if reply.code == 334:
            status = _challenge_status(reply.message)
            reply = await smtp.execute_command(after_challenge)
        return reply.code, reply.message, status

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        protocol = smtp.protocol  # quit() forgets it; we wait on it below
        if smtp.is_connected:
            try:
                async with asyncio.timeout(min(self.config.timeout, 5.0)):
                    await smtp.quit()
            except (SMTPException, OSError, TimeoutError):
                pass
        smtp.close()
        await _until_closed(protocol)

    async def _abort(self, *, wait: bool) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            await _drop(smtp, wait=wait)

    async def send(self, envelope: Envelope) -> SendResult:
        if self._smtp is None or not self._smtp.is_connected:
            await self.open()
        smtp = self._smtp
        assert smtp is not None
        try:
            async with asyncio.timeout(self.config.timeout):
                answer: Outcome = await pipelined_sendmail(
                    smtp,
                    envelope.sender,
                    list(envelope.recipients),
                    envelope.data,
                    mail_options=list(envelope.mail_options),
                    rcpt_options=list(envelope.rcpt_options),
                )
        except _ANSWERED as exc:
            answer = exc
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            await self._abort(wait=not cancelled)  # mid-transaction the protocol state is unknown: no QUIT
            if cancelled:
                raise
            raise self._translate(exc, "send") from exc
        result, closing = self._answered(envelope, answer)
        if closing:
            await self.close()
        return result

    def _answered(self, envelope: Envelope, answer: Outcome) -> tuple[SendResult, bool]:
        """The result of a transaction the server answered, and whether it is closing the connection (421)."""
        self.sent += 1
        if isinstance(answer, _ANSWERED):
            return _refusal(envelope, answer)
        if isinstance(answer, BaseException):  # pragma: no cover - pipestream reports only the kinds above
            raise answer
        errors, _reply = answer
        result = _per_recipient(envelope, errors, accepted="delivered")
        if self.config.debug:
            for r in result.recipients:
                log.info(
                    "smtp: %s -> %s: %s %s %s", envelope.message_id, r.recipient, r.status, r.code or "", r.reply or ""
                )
        return result, any(e.code == 421 for e in errors.values())

    async def send_batch(self, queue: SendQueue, first: int, limit: int | None = None) -> None:
        """Messages back to back on this connection (pipestream) when it offers PIPELINING, else one at a time.

        Per message the result is :meth:`send`'s. When the connection fails, the
        message whose final reply it was awaiting gets a failed result (as :meth:`send`
        would raise for it) and a message whose content was never sent goes back to
        ``queue`` (the oldest of them at most once: :meth:`_failed`).
        """
        if self._smtp is None or not self._smtp.is_connected:
            try:
                await self.open()
            except DeliveryError as exc:
                queue.fail(first, exc)
                raise
        smtp = self._smtp
        assert smtp is not None
        try:
            async with asyncio.timeout(self.config.timeout):
                pipelined = await pipelining_offered(smtp)
        except BaseException as exc:
            raise await self._failed(exc, queue, [first]) from exc
        if not pipelined:
            return await super().send_batch(queue, first, limit)
        stream = Stream(smtp)
        pending: int | None = first

        def take() -> Transaction | None:
            nonlocal pending
            i, pending = pending, None
            if i is None and (limit is None or self.sent + len(stream.in_flight) < limit):
                i = queue.take()
            if i is None:
                return None
            e = queue.envelope(i)
            return Transaction(i, e.sender, e.recipients, e.data, e.mail_options, e.rcpt_options)

        def report(tx: Transaction, answer: Outcome) -> None:
            if isinstance(answer, Exception) and not isinstance(answer, _ANSWERED):
                # Its commands could not be built, or the server closed (421) in a way send() raises for.
                queue.fail(tx.key, self._translate(answer, "send"))
            else:
                queue.put(tx.key, self._answered(queue.envelope(tx.key), answer)[0])

        try:
            await stream.run(take, report, self.config.timeout)
        except BaseException as exc:
            unanswered = ([] if pending is None else [pending]) + [tx.key for tx in stream.in_flight]
            raise await self._failed(exc, queue, unanswered, written=stream.written is not None) from exc
        for tx in reversed(stream.in_flight):  # stopped by a 421: the server never got their content
            queue.give_back(tx.key)
        if not smtp.is_connected:
            await self.close()

    async def _failed(
        self, exc: BaseException, queue: SendQueue, unanswered: list[int], *, written: bool = True
    ) -> DeliveryError:
        """The connection failed: drop it; the first unanswered message failed, the others go back to ``queue``.

        The first fails only if ``written`` (its content reached the wire, as in lock-step
        sending when the connection fails awaiting its final reply). If not, the server
        cannot have taken it and lock-step sending would often have found the broken
        connection before it (a hang-up on RSET): it goes back too, once; a message
        that breaks the connection again fails then, so it cannot loop forever.
        """
        cancelled = isinstance(exc, asyncio.CancelledError)
        await self._abort(wait=not cancelled)  # mid-transaction the protocol state is unknown: no QUIT
        if cancelled:
            raise exc
        error = self._translate(exc, "send")
        if unanswered:
            for i in reversed(unanswered[1:]):
                queue.give_back(i)
            if written or not queue.retry(unanswered[0]):
                queue.fail(unanswered[0], error)
        return error

    def _translate(self, exc: BaseException, stage: str) -> DeliveryError:
        where = f"{self.config.server}:{self.config.port}"
        if isinstance(exc, DeliveryError):
            return exc
        if isinstance(exc, TimeoutError):
            hint = ""
            if stage == "connect" and not self.config.use_ssl:
                hint = (
                    f"; no SMTP greeting came: if {self.config.port} is an implicit-TLS port (usually 465), "
                    "set MAIL_USE_SSL=true (and MAIL_USE_TLS=false)"
                )
            return ConnectionFailedError(
                f"SMTP {stage} to {where} exceeded MAIL_TIMEOUT ({self.config.timeout}s){hint}"
            )
        if (sslerr := _ssl_cause(exc)) is not None:
            hint = ""
            if self.config.use_ssl and _plain_text_answer(sslerr):
                hint = (
                    f"; the server answered in plain text, so {self.config.port} is not an implicit-TLS port: "
                    "set MAIL_USE_TLS=true (STARTTLS, usually port 587) and MAIL_USE_SSL=false"
                )
            return TransportSecurityError(f"TLS with {where} failed: {sslerr}{hint}")
        if isinstance(exc, SMTPException) and self.config.use_tls and "starttls" in str(exc).lower():
            return TransportSecurityError(
                f"{where} does not offer STARTTLS but MAIL_USE_TLS requires it; nothing was sent"
            )
        if isinstance(exc, SMTPAuthenticationError):
            return AuthenticationError(
                f"{where} rejected MAIL_USERNAME/MAIL_PASSWORD", code=exc.code, reply=exc.message
            )
        if isinstance(exc, SMTPConnectResponseError):
            return ConnectionFailedError(f"{where} refused the connection", code=exc.code, reply=exc.message)
        if isinstance(exc, SMTPResponseException):
            return ConnectionFailedError(f"SMTP {stage} to {where} failed", code=exc.code, reply=exc.message)
        if isinstance(exc, (SMTPException, OSError)):
            return ConnectionFailedError(f"SMTP {stage} to {where} failed: {exc}")
        return ConnectionFailedError(f"SMTP {stage} to {where} failed: {type(exc).__name__}: {exc}")


def _challenge_status(challenge: str) -> str | None:
    """The "status" of an XOAUTH2/OAUTHBEARER error challenge ("401", "invalid_token", ...); None if unreadable."""
    try:
        data = json.loads(base64.b64decode(challenge.strip(), validate=True))
    except (ValueError, binascii.Error):
        return None
    status = data.get("status") if isinstance(data, dict) else None
    return str(status)[:40] if status is not None else None


def _per_recipient(
    envelope: Envelope, refused: dict[str, SMTPResponse], *, accepted: Literal["delivered", "failed"]
) -> SendResult:
    """One result per envelope recipient: the server's refusal where it refused, else ``accepted``.

    ``accepted`` is "failed" (no reply, "not attempted") when every recipient was refused as a whole.
    """
    ok = (250, "OK") if accepted == "delivered" else (None, "not attempted")
    return SendResult(
        envelope.message_id,
        tuple(
            RecipientResult(r, "refused", refused[r].code, refused[r].message)
            if r in refused
            else RecipientResult(r, accepted, *ok)
            for r in envelope.recipients
        ),
    )


def _refusal(
    envelope: Envelope, exc: SMTPRecipientsRefused | SMTPNotSupported | SMTPSenderRefused | SMTPDataError
) -> tuple[SendResult, bool]:
    """The result of a transaction the server refused, and whether it is closing the connection (421)."""
    if isinstance(exc, SMTPRecipientsRefused):
        by_rcpt = {e.recipient: SMTPResponse(e.code, e.message) for e in exc.recipients}
        return _per_recipient(envelope, by_rcpt, accepted="failed"), any(e.code == 421 for e in exc.recipients)
    if isinstance(exc, SMTPNotSupported):
        # Raised before MAIL FROM: the connection is fine, the message can never go this way.
        reason = f"5.6.7 {exc.message}; non-ASCII addresses need it"
        return SendResult.all_failed(envelope.message_id, envelope.recipients, reason, 553), False
    return SendResult.all_failed(envelope.message_id, envelope.recipients, exc.message, exc.code), exc.code == 421
