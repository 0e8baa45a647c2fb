"""SMTP PIPELINING across messages (RFC 2920): the next transaction goes out in the same write as this content.

Why: pipelining one message at a time (``pipelining.sendmail``) still costs two
writes, two round trips and two event-loop wake-ups per message: MAIL, RCPT and
DATA, wait for 354, the content, wait for 250. RFC 2920 §3.1 lets the content be
the first "command" of a group, so a stream writes ``content(k) + MAIL/RCPT/DATA(k+1)``
at once and reads ``250(k), 250, 250, 354(k+1)`` together: one write, one
wake-up and one round trip per message.

In flight at any time: at most one message's content awaiting its final reply and
the next message's commands, never that message's content (RFC 2920: the client
waits for DATA's 354 first). That bounds memory, and it says what a failure costs:
when the connection fails, the oldest message in flight is the one that failed (as
the lock-step exchange would have failed it); a message behind it had only its
commands on the wire, so the server cannot have taken it, and the caller may send
it again on another connection (:attr:`Stream.in_flight`).

The outcome of each message is ``pipelining.sendmail``'s, return value or
exception, from the same replies through the same ``pipelining.outcome``: a refusal
of message k is k's alone. A 421 (the server is closing) ends the stream after that
message's outcome, and the connection is closed as aiosmtplib closes it. A
transaction that got no 354 is followed by RSET, as ``sendmail`` does, in front of
the next MAIL; a refused content needs none, the final dot ended that transaction
(RFC 5321 §4.1.1.4).

The deadline is one ``asyncio.timeout`` for the whole stream, moved forward as
messages complete (not one timer per message): a connection with no reply for
``timeout`` seconds (at least 90 % of it) fails with ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPNotSupported, SMTPResponse, SMTPServerDisconnected

from .pipelining import Replies, ReplyReader, commands, outcome

__all__ = ["Outcome", "Stream", "Transaction"]

_OK = 250
_WILL_FORWARD = 251
_START_INPUT = 354
_DOMAIN_UNAVAILABLE = 421
_RSET = b"RSET\r\n"
_EMPTY_CONTENT = b".\r\n"

# What ``pipelining.sendmail`` returns for one message, or the exception it would raise; a ``ValueError`` or
# ``SMTPNotSupported`` is one raised while building the commands, before anything of the message was written.
Outcome = tuple[dict[str, SMTPResponse], str] | Exception


@dataclass(frozen=True, slots=True, eq=False)
class Transaction:
    """One message for a stream; ``key`` is the caller's (its position in a bulk send)."""

    key: int
    sender: str
    recipients: Sequence[str]
    message: bytes
    mail_options: Sequence[str] = ()
    rcpt_options: Sequence[str] = ()


class Stream:
    """Transactions pipelined back to back on one aiosmtplib connection that offers PIPELINING.

    ``run(take, report, timeout)`` sends what ``take()`` gives until it gives None
    (or the server says 421) and calls ``report(tx, outcome)`` once per transaction,
    in order. If ``run`` raises (connection lost, deadline, a malformed reply), the
    transactions still in :attr:`in_flight` got no outcome: the first is the one the
    failure belongs to, any other never had its content sent. After a 421 ``run``
    returns with the connection closed and the transaction behind it in :attr:`in_flight`.
    """

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self._smtp = smtp
        self.in_flight: list[Transaction] = []  # oldest first; at most two

    async def run(
        self, take: Callable[[], Transaction | None], report: Callable[[Transaction, Outcome], None], timeout: float
    ) -> None:
        protocol = self._smtp.protocol
        lock = protocol._command_lock if protocol is not None else None
        if protocol is None or lock is None:
            raise SMTPServerDisconnected("Server not connected")
        loop = asyncio.get_running_loop()
        async with lock, asyncio.timeout_at(loop.time() + timeout) as deadline:
            with ReplyReader(protocol) as replies:
                tail = b""  # goes in front of the next commands: the previous content (or a bare dot), or RSET
                awaiting_final: tuple[Transaction, Replies] | None = None  # content written, final reply due
                awaiting_rset = closing = False
                while True:
                    now = loop.time()  # each pass follows a round trip's replies: progress, so move the deadline
                    if (when := deadline.when()) is not None and when - now < 0.9 * timeout:
                        deadline.reschedule(now + timeout)  # rarely: not a timer per message
                    tx = None if closing else self._next(take, report)
                    if tx is not None:
                        group, content = tx[1], tx[2]
                        self.in_flight.append(tx[0])
                        protocol.write(tail + group if tail else group)
                    elif tail:
                        protocol.write(tail)
                    elif awaiting_final is None and not awaiting_rset:
                        return
                    tail = b""
                    if awaiting_final is not None:
                        done, partial = awaiting_final
                        awaiting_final = None
                        final = await replies.next()
                        closing = self._finish(done, Replies(partial.mail, partial.rcpts, partial.data, final), report)
                    if awaiting_rset:
                        awaiting_rset = False
                        closing = (await replies.next()).code == _DOMAIN_UNAVAILABLE or closing
                    if closing:
                        self._smtp.close()  # as aiosmtplib does on 421; what is still in flight was not taken
                        return
                    if tx is None:
                        continue
                    mail = await replies.next()
                    rcpts = [await replies.next() for _ in tx[0].recipients]
                    data = await replies.next()
                    if data.code == _START_INPUT:
                        accepted = mail.code == _OK and any(r.code in (_OK, _WILL_FORWARD) for r in rcpts)
                        # RFC 2920: with DATA accepted but nobody to deliver to, end the content at once.
                        tail = content if accepted else _EMPTY_CONTENT
                        awaiting_final = (tx[0], Replies(mail, rcpts, data, None))
                    else:
                        if self._finish(tx[0], Replies(mail, rcpts, data, None), report):
                            self._smtp.close()
                            return
                        tail, awaiting_rset = _RSET, True  # as sendmail resets after a refused transaction

    def _next(
        self, take: Callable[[], Transaction | None], report: Callable[[Transaction, Outcome], None]
    ) -> tuple[Transaction, bytes, bytes] | None:
        """The next transaction with its commands and content; one that cannot be encoded is reported at once."""
        while (tx := take()) is not None:
            try:
                group, content = commands(
                    self._smtp, tx.sender, tx.recipients, tx.message, tx.mail_options, tx.rcpt_options
                )
            except (SMTPNotSupported, ValueError) as exc:  # nothing of it was written: the stream goes on
                report(tx, exc)
                continue
            return tx, group, content
        return None

    def _finish(self, tx: Transaction, replies: Replies, report: Callable[[Transaction, Outcome], None]) -> bool:
        """Report ``tx``'s outcome; True if the server is closing (421)."""
        assert self.in_flight[0] is tx  # outcomes come in the order the transactions were written
        del self.in_flight[0]
        report(tx, outcome(replies, tx.sender, tx.recipients))
        return replies.closing
