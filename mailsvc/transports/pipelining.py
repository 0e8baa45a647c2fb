"""SMTP PIPELINING (RFC 2920) on aiosmtplib's own connection: MAIL, RCPT and DATA in one write.

Why: a plain ``sendmail`` waits a round trip for each of MAIL, every RCPT, DATA
and the message, so a small message spends most of its time waiting. When the
server advertises PIPELINING we write ``MAIL FROM``, every ``RCPT TO`` and
``DATA`` together, read their replies in order, and only then send the content
(RFC 2920 §3.1: the client must see DATA's 354 before sending it): two round
trips per message instead of three plus one per recipient. TLS, STARTTLS and
AUTH stay aiosmtplib's, because this runs on its connection after it set them up.

The results are the plain path's, exception for exception: ``send`` raises
aiosmtplib's ``SMTPSenderRefused``, ``SMTPRecipientsRefused`` and
``SMTPDataError`` in the same cases as ``SMTP.sendmail`` and returns the same
``(refused recipients, DATA reply)`` tuple, so the transport maps both alike.
A server that does not advertise PIPELINING gets ``SMTP.sendmail`` itself.

Why it takes over the protocol's ``data_received`` while the batch is in flight:
aiosmtplib's protocol parses one reply per command and drops bytes that arrive
while no command is waiting, which is right for lock-step SMTP but would lose
replies that a pipelining server sends back to back. During the exchange (under
the protocol's command lock, so nothing else talks on the connection) every byte
goes into aiosmtplib's own buffer and is parsed by its own reply parser.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from aiosmtplib import (
    SMTPDataError,
    SMTPException,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_LINE_LENGTH,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)

__all__ = [
    "PIPELINING_ENABLED",
    "ReplyReader",
    "Replies",
    "closed_outcome",
    "commands",
    "envelope_replies",
    "offered",
    "outcome",
    "sendmail",
]

# Kill switch for a relay that advertises PIPELINING but mishandles it (and for the
# benchmark's before/after). True: pipeline whenever the server offers it.
PIPELINING_ENABLED = True

_OK = 250
_WILL_FORWARD = 251
_START_INPUT = 354
_DOMAIN_UNAVAILABLE = 421


async def sendmail(
    smtp: aiosmtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    /,
    *,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
) -> tuple[dict[str, SMTPResponse], str]:
    """``smtp.sendmail(...)``, pipelined when the server advertises PIPELINING.

    Returns ``(refused, data_reply)`` like :meth:`aiosmtplib.SMTP.sendmail`; raises
    what it raises. The caller's deadline (``asyncio.timeout``) bounds the whole exchange.
    """
    if not await offered(smtp) or smtp.protocol is None:
        return await smtp.sendmail(
            sender, list(recipients), message, mail_options=list(mail_options), rcpt_options=list(rcpt_options)
        )
    return await _pipelined(smtp, smtp.protocol, sender, recipients, message, mail_options, rcpt_options)


async def offered(smtp: aiosmtplib.SMTP) -> bool:
    """Whether to pipeline on this connection: the server advertises PIPELINING and the kill switch is on.

    Says EHLO first if the connection has not yet (what ``sendmail`` does first; we need the extensions).
    """
    if smtp.is_ehlo_or_helo_needed:
        await smtp._ehlo_or_helo_if_needed()
    return PIPELINING_ENABLED and smtp.supports_extension("pipelining")


# A dot-atom address with an ASCII domain: what our envelopes nearly always hold, and
# what aiosmtplib's quote_address returns unchanged in angle brackets.
_SIMPLE_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


def quote(address: str) -> str:
    """``aiosmtplib.email.quote_address``, without the stdlib address parser for plain addresses.

    Why: that parser costs more than the rest of the exchange for a one-recipient
    message; for a dot-atom address it returns the address itself.
    """
    if _SIMPLE_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def wire_content(message: bytes) -> tuple[bytes, int]:
    """(dot-stuffed content ending in ``.\\r\\n``, its size before stuffing), as aiosmtplib's ``data`` makes it.

    The regex passes are skipped when they would change nothing: every line
    already ends in CRLF (as every message we build does) and none starts with a dot.
    """
    n_crlf = message.count(b"\r\n")
    if message.count(b"\r") == n_crlf == message.count(b"\n") and message.endswith(b"\r\n"):
        normalized = message
    else:
        normalized = normalize_message_line_endings(message)
    stuffed = PERIOD_REGEX.sub(b"..", normalized) if normalized.startswith(b".") or b"\n." in normalized else normalized
    return stuffed + b".\r\n", len(normalized)


def _command(*args: bytes) -> bytes:
    # One search of the joined line: the space joining the arguments is not a control character.
    line = b" ".join(args)
    if COMMAND_INJECTION_REGEX.search(line):
        raise ValueError("Command arg contains a prohibited control character")
    return line + b"\r\n"


@dataclass(slots=True)
class Replies:
    """The server's answers to one pipelined transaction, in order; ``final`` only if DATA got its 354.

    Not frozen: a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) cost four times as much,
    and a stream makes two per message. Nothing changes one.
    """

    mail: SMTPResponse
    rcpts: list[SMTPResponse]
    data: SMTPResponse
    final: SMTPResponse | None

    @property
    def closing(self) -> bool:
        """Some reply was 421: the server is closing the connection (aiosmtplib closes it too)."""
        return (
            self.mail.code == _DOMAIN_UNAVAILABLE
            or self.data.code == _DOMAIN_UNAVAILABLE
            or any(r.code == _DOMAIN_UNAVAILABLE for r in self.rcpts)
            or (self.final is not None and self.final.code == _DOMAIN_UNAVAILABLE)
        )


async def _pipelined(
    smtp: aiosmtplib.SMTP,
    protocol: SMTPProtocol,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    mail_options: Sequence[str],
    rcpt_options: Sequence[str],
) -> tuple[dict[str, SMTPResponse], str]:
    group, content = commands(smtp, sender, recipients, message, mail_options, rcpt_options)
    replies = await _exchange(protocol, group, content, sender, recipients)
    if isinstance(replies, SMTPException):  # a 421 to MAIL or a RCPT: the server is closing, nothing more was read
        smtp.close()
        raise replies
    if replies.closing:
        smtp.close()  # as aiosmtplib does on 421: the server is going away
    result = outcome(replies, sender, recipients)
    if isinstance(result, SMTPException):
        await _reset(smtp)
        raise result
    return result


def outcome(
    replies: Replies, sender: str, recipients: Sequence[str]
) -> tuple[dict[str, SMTPResponse], str] | SMTPException:
    """What ``SMTP.sendmail`` returns for these replies, or the exception it raises (returned, not raised)."""
    refused = [
        SMTPRecipientRefused(r.code, r.message, rcpt)
        for rcpt, r in zip(recipients, replies.rcpts, strict=False)
        if r.code not in (_OK, _WILL_FORWARD)
    ]
    error = _error(replies, refused, sender, len(recipients))
    if error is not None:
        return error
    assert replies.final is not None  # no error: DATA got its 354 and the content its 250
    return {e.recipient: SMTPResponse(e.code, e.message) for e in refused}, replies.final.message


async def envelope_replies(replies: ReplyReader, n_rcpts: int) -> tuple[SMTPResponse, list[SMTPResponse], bool]:
    """MAIL's reply and the RCPTs', in order, and whether the server is closing (a 421 to either).

    A 421 ends the reading there: aiosmtplib closes on one and asks nothing more, and a server that
    says it usually hangs up. A reply that has already arrived is taken without awaiting (``ready``).
    """
    mail = replies.ready() or await replies.next()
    rcpts: list[SMTPResponse] = []
    while mail.code != _DOMAIN_UNAVAILABLE and len(rcpts) < n_rcpts:
        rcpts.append(reply := replies.ready() or await replies.next())
        if reply.code == _DOMAIN_UNAVAILABLE:
            return mail, rcpts, True
    return mail, rcpts, mail.code == _DOMAIN_UNAVAILABLE


def closed_outcome(
    mail: SMTPResponse, rcpts: Sequence[SMTPResponse], sender: str, recipients: Sequence[str]
) -> SMTPException:
    """What ``SMTP.sendmail`` raises when MAIL or the last of ``rcpts`` was answered 421 (the server is closing).

    aiosmtplib closes the connection on a 421 reply, so lock-step sending asks nothing
    more: a refused MAIL is the sender's refusal, a 421 to the last RCPT with every
    recipient refused is that refusal, and otherwise its next command finds the
    connection closed (``SMTPServerDisconnected``, a connection failure for this message).
    """
    if mail.code != _OK:
        return SMTPSenderRefused(mail.code, mail.message, sender)
    if len(rcpts) == len(recipients) and all(r.code not in (_OK, _WILL_FORWARD) for r in rcpts):
        return SMTPRecipientsRefused(
            [SMTPRecipientRefused(r.code, r.message, rcpt) for rcpt, r in zip(recipients, rcpts, strict=True)]
        )
    return SMTPServerDisconnected("Server not connected")


def commands(
    smtp: aiosmtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    mail_options: Sequence[str],
    rcpt_options: Sequence[str],
) -> tuple[bytes, bytes]:
    """(MAIL, every RCPT and DATA as one run of command lines, the dot-stuffed content), all encoded and checked.

    Everything is checked before the first byte is written: a bad address never
    leaves half an envelope on the server. Raises ``SMTPNotSupported`` (SMTPUTF8
    not offered) or ``ValueError`` (an injected option, a non-ASCII address) as ``sendmail`` does.
    """
    utf8 = any(o.lower() == "smtputf8" for o in mail_options)
    if utf8 and not smtp.supports_extension("smtputf8"):
        raise SMTPNotSupported("SMTPUTF8 is not supported by this server")
    encoding = "utf-8" if utf8 else "ascii"
    content, size = wire_content(message)
    mail_opts = [o.encode("ascii") for o in mail_options]
    if smtp.supports_extension("size"):
        # RFC 1870 counts the octets as transmitted, before dot-stuffing (as aiosmtplib does).
        mail_opts.insert(0, b"size=%d" % size)
    rcpt_opts = [o.encode("ascii") for o in rcpt_options]
    group = [_command(b"MAIL", b"FROM:" + quote(sender).encode(encoding), *mail_opts)]
    group += [_command(b"RCPT", b"TO:" + quote(r).encode(encoding), *rcpt_opts) for r in recipients]
    group.append(b"DATA\r\n")
    return b"".join(group), content


async def _exchange(
    protocol: SMTPProtocol, group: bytes, content: bytes, sender: str, recipients: Sequence[str]
) -> Replies | SMTPException:
    """Write the group at once, read its replies in order, then the content if DATA was accepted.

    After a 421 to MAIL or a RCPT nothing more is read (:func:`envelope_replies`): then the exception
    lock-step sending raises (:func:`closed_outcome`), returned for the caller to close and raise.
    """
    lock = protocol._command_lock
    if lock is None:
        raise SMTPServerDisconnected("Server not connected")
    async with lock:
        with ReplyReader(protocol) as replies:
            protocol.write(group)
            mail_reply, rcpt_replies, closing = await envelope_replies(replies, len(recipients))
            if closing:
                return closed_outcome(mail_reply, rcpt_replies, sender, recipients)
            data_reply = await replies.next()
            final: SMTPResponse | None = None
            if data_reply.code == _START_INPUT:
                accepted = any(r.code in (_OK, _WILL_FORWARD) for r in rcpt_replies)
                # RFC 2920: with DATA accepted but nobody to deliver to, end the content at once.
                protocol.write(content if mail_reply.code == _OK and accepted else b".\r\n")
                final = await replies.next()
    return Replies(mail_reply, rcpt_replies, data_reply, final)


def _error(replies: Replies, refused: list[SMTPRecipientRefused], sender: str, n_rcpts: int) -> SMTPException | None:
    """The exception ``SMTP.sendmail`` raises for these replies, or None when the message was accepted."""
    if replies.mail.code != _OK:
        return SMTPSenderRefused(replies.mail.code, replies.mail.message, sender)
    if len(refused) == n_rcpts:
        return SMTPRecipientsRefused(refused)
    if replies.data.code != _START_INPUT:
        return SMTPDataError(replies.data.code, replies.data.message)
    assert replies.final is not None  # DATA got its 354, so the content was sent and answered
    if replies.final.code != _OK:
        return SMTPDataError(replies.final.code, replies.final.message)
    return None


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    """RSET after a failed transaction, as ``sendmail`` does; a failing RSET is not the news."""
    if not smtp.is_connected:
        return
    try:
        await smtp.rset()
    except (ConnectionError, SMTPResponseException):
        pass


# Complete one-line replies, each within aiosmtplib's MAX_LINE_LENGTH (8192 bytes with its CRLF). Anything
# else (a continuation line, a partial reply, a bare LF, a longer line) goes to aiosmtplib's own parser.
_ONE_LINE_REPLIES = re.compile(rb"(?:[0-9]{3}(?: [^\r\n]{0,%d})?\r\n)+" % (MAX_LINE_LENGTH - 6))
_KNOWN_REPLIES_MAX = 256
_known_replies: dict[bytes, SMTPResponse] = {}  # reply line (without CRLF) -> the reply; immutable, so shared


def _one_line_reply(line: bytes) -> SMTPResponse:
    """A line ``_ONE_LINE_REPLIES`` matched (CRLF cut off), as aiosmtplib's ``_read_response_from_buffer`` reads it."""
    return SMTPResponse(int(line[:3]), line[4:].strip(b" \t").decode("utf-8", "surrogateescape"))


class ReplyReader:
    """Collects every reply the server sends while a pipelined group is in flight.

    Bytes go into aiosmtplib's own buffer and are parsed by its own parser
    (``_read_response_from_buffer``), so line limits and malformed-reply errors
    are exactly aiosmtplib's. On exit the protocol is handed back untouched.
    """

    def __init__(self, protocol: SMTPProtocol) -> None:
        self._protocol = protocol
        self._replies: collections.deque[SMTPResponse] = collections.deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __enter__(self) -> ReplyReader:
        p = self._protocol
        if p._buffer:  # a partial reply left over cannot belong to this group
            raise SMTPResponseException(-1, "unexpected data from the server before MAIL")
        self._orig_lost = p.connection_lost
        p.data_received = self._data_received  # type: ignore[method-assign]
        p.connection_lost = self._connection_lost  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        p = self._protocol
        # Drop the instance attributes so the class's methods are seen again.
        p.__dict__.pop("data_received", None)
        p.__dict__.pop("connection_lost", None)
        if self._replies or p._buffer:
            # The group ended early (an exception): leftovers would be mis-paired
            # with the next command, so this connection is finished.
            p._buffer.clear()
            if p.transport is not None:
                p.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _data_received(self, data: bytes) -> None:
        p = self._protocol
        if not p._buffer and _ONE_LINE_REPLIES.fullmatch(data):
            # Whole one-line replies only, what a pipelining server nearly always sends back, read as
            # aiosmtplib's parser reads them (_one_line_reply). A server repeats most of its lines word for
            # word ("250 2.1.0 Ok", "354 ..."): those are parsed once per process.
            append, known = self._replies.append, _known_replies
            for line in data.split(b"\r\n")[:-1]:
                if (reply := known.get(line)) is None:
                    reply = _one_line_reply(line)
                    if len(known) < _KNOWN_REPLIES_MAX:  # replies carrying queue ids never repeat: stop there
                        known[line] = reply
                append(reply)
            self._wake()
            return
        p._buffer.extend(data)
        try:
            while (reply := p._read_response_from_buffer()) is not None:
                self._replies.append(reply)
            if len(p._buffer) > MAX_RESPONSE_LENGTH:
                raise SMTPResponseException(-1, "Response too long")
        except Exception as exc:  # aiosmtplib's parser errors: malformed or oversized replies
            self._error = exc
        self._wake()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._orig_lost(exc)
        lost = SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._error = lost
        self._wake()

    def ready(self) -> SMTPResponse | None:
        """The next reply if it has already arrived (no coroutine to run), else None: then ``await next()``."""
        return self._replies.popleft() if self._replies else None

    async def next(self) -> SMTPResponse:
        while not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._replies.popleft()
