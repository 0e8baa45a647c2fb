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
when the connection fails awaiting a content's final reply, that message failed (as
the lock-step exchange would have failed it, :attr:`Stream.written`); any other
message in flight had only its commands on the wire, so the server cannot have
taken it, and the caller may send it again on another connection (:attr:`Stream.in_flight`).

The outcome of each message is ``pipelining.sendmail``'s, return value or
exception, from the same replies through the same ``pipelining.outcome``: a refusal
of message k is k's alone. A 421 (the server is closing) ends the stream after that
message's outcome, and the connection is closed as aiosmtplib closes it; a 421 to
MAIL or RCPT ends that message's reading there too, as aiosmtplib asks nothing after
it (``pipelining.closed_outcome``), so a server that hangs up after it costs no more. A
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
from aiosmtplib import SMTPResponse, SMTPServerDisconnected

from .pipelining import Replies, ReplyReader, closed_outcome, commands, envelope_replies, outcome

__all__ = ["Outcome", "Report", "Stream", "Take", "Transaction"]

_OK = 250
_WILL_FORWARD = 251
_START_INPUT = 354
_DOMAIN_UNAVAILABLE = 421
_RSET = b"RSET\r\n"
_EMPTY_CONTENT = b".\r\n"

# What ``pipelining.sendmail`` returns for one message, or the exception it would raise; one not from the
# server's replies (``ValueError``, ``SMTPNotSupported``, any other) was raised while building the commands,
# before anything of the message was written, or is ``SMTPServerDisconnected`` after a 421 (closed_outcome).
Outcome = tuple[dict[str, SMTPResponse], str] | Exception


Report = Callable[["Transaction", Outcome], None]  # called once per transaction, in the order they were taken
Take = Callable[[], "Transaction | None"]  # the next transaction to send, or None to end the stream


@dataclass(slots=True, eq=False)
class Transaction:
    """One message for a stream; ``key`` is the caller's (its position in a bulk send).

    Not frozen: a frozen dataclass sets each field through ``object.__setattr__``,
    and its ``__init__`` cost four times as much, once per message. Nothing changes one.
    """

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
    transactions still in :attr:`in_flight` got no outcome: the failure belongs to the
    first if it is :attr:`written`, else none of them had its content sent. After a 421 ``run``
    returns with the connection closed and the transaction behind it in :attr:`in_flight`.
    """

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self._smtp = smtp
        self.in_flight: list[Transaction] = []  # oldest first; at most two
        # in_flight[0] from the write that carried its content until its final reply: a failure then is its own.
        # Before that write, a failure cannot have delivered it (the caller may send it again).
        self.written: Transaction | None = None
        self._tail = b""  # goes in front of the next commands: the last content (or a bare dot), or RSET
        self._final_due: tuple[Transaction, Replies] | None = None  # its content is in _tail or written
        self._discard_due = False  # a reply to RSET or to a bare dot is due: read, and ignored unless 421

    async def run(self, take: Take, report: Report, timeout: float) -> None:
        protocol = self._smtp.protocol
        lock = protocol._command_lock if protocol is not None else None
        if protocol is None or lock is None:
            raise SMTPServerDisconnected("Server not connected")
        loop = asyncio.get_running_loop()
        async with lock, asyncio.timeout_at(loop.time() + timeout) as deadline:
            with ReplyReader(protocol) as replies:
                while (written := self._write(protocol, take, report)) is not None:
                    if not await self._read(replies, *written, report):
                        self._smtp.close()  # as aiosmtplib does on 421; what is still in flight was not taken
                        return
                    now = loop.time()  # a round trip's replies came: progress, so move the deadline
                    if (when := deadline.when()) is not None and when - now < 0.9 * timeout:
                        deadline.reschedule(now + timeout)  # rarely: not a timer per message

    def _write(
        self,
        protocol: aiosmtplib.protocol.SMTPProtocol,
        take: Take,
        report: Report,
    ) -> tuple[Transaction | None, bytes] | None:
        """Write what is due and the next transaction's commands, in one write.

        Returns (that transaction or None, its content), or None when nothing was due and nothing is left.
        """
        tail, self._tail = self._tail, b""
        nxt = self._next(take, report)
        if nxt is not None:
            self.in_flight.append(nxt[0])
            protocol.write(tail + nxt[1] if tail else nxt[1])
        elif tail:
            protocol.write(tail)
        else:
            return None
        if self._final_due is not None:
            self.written = self._final_due[0]  # its content was in this write
        return (nxt[0], nxt[2]) if nxt is not None else (None, b"")

    async def _read(self, replies: ReplyReader, tx: Transaction | None, content: bytes, report: Report) -> bool:
        """Read the answers to one write, oldest first; False when the server is closing the connection.

        A reply already read is taken without awaiting (``ready``): usually all of a write's replies came at once.
        """
        if self._final_due is not None:
            done, sent = self._final_due
            final = replies.ready() or await replies.next()
            self._final_due = self.written = None
            if self._finish(done, Replies(sent.mail, sent.rcpts, sent.data, final), report):
                return False
        if self._discard_due:
            self._discard_due = False
            if (replies.ready() or await replies.next()).code == _DOMAIN_UNAVAILABLE:
                return False
        if tx is None:
            return True
        mail, rcpts, closing = await envelope_replies(replies, len(tx.recipients))
        if closing:
            # aiosmtplib closes on a 421 and reads nothing more: report what lock-step sending makes of it.
            self._report(tx, closed_outcome(mail, rcpts, tx.sender, tx.recipients), report)
            return False
        sent = Replies(mail, rcpts, replies.ready() or await replies.next(), None)
        if sent.data.code != _START_INPUT:
            self._tail, self._discard_due = _RSET, True  # as sendmail resets after a refused transaction
            return not self._finish(tx, sent, report)
        if mail.code == _OK and any(r.code in (_OK, _WILL_FORWARD) for r in rcpts):
            self._tail = content
            self._final_due = (tx, sent)
            return True
        # RFC 2920: DATA accepted but nobody to deliver to: end the content at once. The outcome (a refusal)
        # is known without the dot's reply, so it is reported now, as lock-step sending (no DATA) reports it.
        self._tail, self._discard_due = _EMPTY_CONTENT, True
        return not self._finish(tx, sent, report)

    def _next(self, take: Take, report: Report) -> tuple[Transaction, bytes, bytes] | None:
        """The next transaction with its commands and content; one that cannot be encoded is reported at once."""
        while (tx := take()) is not None:
            try:
                group, content = commands(
                    self._smtp, tx.sender, tx.recipients, tx.message, tx.mail_options, tx.rcpt_options
                )
            except Exception as exc:  # nothing of it was written: it alone fails, and the stream goes on
                report(tx, exc)
                continue
            return tx, group, content
        return None

    def _finish(self, tx: Transaction, replies: Replies, report: Report) -> bool:
        """Report ``tx``'s outcome; True if the server is closing (421)."""
        self._report(tx, outcome(replies, tx.sender, tx.recipients), report)
        return replies.closing

    def _report(self, tx: Transaction, answer: Outcome, report: Report) -> None:
        assert self.in_flight[0] is tx  # outcomes come in the order the transactions were written
        del self.in_flight[0]
        report(tx, answer)
