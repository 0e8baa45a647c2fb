"""SMTP PIPELINING fast path: the same outcome as aiosmtplib's plain ``sendmail``, in fewer round trips.

Every scenario runs twice against real aiosmtpd servers, once through the plain
path and once through the pipelined one, and compares what the client got back
(return value or exception, code, message, recipients) and what the server
received. The server reports whether RCPT TO was already waiting in its input
when it read MAIL FROM, which is how we know the commands really went together.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import Envelope as ServerEnvelope
from aiosmtpd.smtp import Session

from mailsvc import Attachment, Mail, MailConfig, Message, SendResult
from mailsvc.transports import pipelining
from tests.servers import Authenticator, RecordingHandler, smtp_server


@dataclass
class PipeliningHandler(RecordingHandler):
    """RecordingHandler that can advertise PIPELINING and notes how MAIL arrived."""

    advertise: bool = True
    refuse_sender: str | None = None
    pipelined_mails: int = 0
    lockstep_mails: int = 0

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: ServerEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.advertise:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: ServerEnvelope, address: str, mail_options: list[str]
    ) -> str:
        if b"RCPT TO" in bytes(server._reader._buffer):
            self.pipelined_mails += 1
        else:
            self.lockstep_mails += 1
        if self.refuse_sender:
            return self.refuse_sender
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: pipelined\r\n\r\n"
    b"first line\r\n.leading dot\r\n..two dots\r\nbare LF\nend"
)


def _outcome(result: Any) -> Any:
    """A comparable form of a return value or an aiosmtplib exception."""
    if isinstance(result, aiosmtplib.SMTPRecipientsRefused):
        return ("RecipientsRefused", [(e.code, e.message, e.recipient) for e in result.recipients])
    if isinstance(result, aiosmtplib.SMTPResponseException):
        return (type(result).__name__, result.code, result.message)
    if isinstance(result, BaseException):
        return (type(result).__name__,)
    refused, reply = result
    return ({k: tuple(v) for k, v in refused.items()}, reply)


async def _send(
    handler: PipeliningHandler,
    recipients: Sequence[str],
    *,
    enabled: bool,
    message: bytes = MESSAGE,
    sender: str = "a@example.com",
    mail_options: Sequence[str] = (),
    then_send_another: bool = True,
    **server: Any,
) -> tuple[Any, Any]:
    """Send once (and then once more on the same connection, to prove it stayed in step)."""
    pipelining.PIPELINING_ENABLED = enabled
    try:
        async with smtp_server(handler, **{k: v for k, v in server.items() if k not in ("client", "login")}) as port:
            client_kw = {"start_tls": False, "timeout": 10, **server.get("client", {})}
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, **client_kw)
            await smtp.connect()
            if "login" in server:
                await smtp.login(*server["login"])
            try:
                first: Any = await pipelining.sendmail(smtp, sender, recipients, message, mail_options=mail_options)
            except (aiosmtplib.SMTPException, ValueError) as exc:
                first = exc
            second: Any = None
            if then_send_another and smtp.is_connected:
                handler.refuse, handler.data_reply, handler.refuse_sender = {}, None, None
                second = await pipelining.sendmail(
                    smtp, "a@example.com", ["z@example.com"], b"Subject: 2\r\n\r\nagain\r\n"
                )
            smtp.close()
            return _outcome(first), second and _outcome(second)
    finally:
        pipelining.PIPELINING_ENABLED = True


SCENARIOS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "all accepted": ({}, ["b@example.com", "c@example.com"]),
    "one refused": (
        {"refuse": {"c@example.com": "550 5.1.1 no such user"}},
        ["b@example.com", "c@example.com", "d@example.com"],
    ),
    "all refused": (
        {"refuse": {"b@example.com": "550 no", "c@example.com": "451 try later"}},
        ["b@example.com", "c@example.com"],
    ),
    "data rejected": ({"data_reply": "554 5.7.1 spam"}, ["b@example.com"]),
    "sender refused": ({"refuse_sender": "553 5.7.1 not yours"}, ["b@example.com"]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_pipelined_outcome_equals_plain(name: str) -> None:
    handler_kw, recipients = SCENARIOS[name]
    plain_h, piped_h = PipeliningHandler(**handler_kw), PipeliningHandler(**handler_kw)
    plain = await _send(plain_h, recipients, enabled=False)
    piped = await _send(piped_h, recipients, enabled=True)
    assert piped == plain
    assert [(r.mail_from, r.rcpt_tos, r.data) for r in piped_h.received] == [
        (r.mail_from, r.rcpt_tos, r.data) for r in plain_h.received
    ]
    assert plain_h.pipelined_mails == 0 and plain_h.lockstep_mails == 2
    assert piped_h.pipelined_mails == 2 and piped_h.lockstep_mails == 0


async def test_dot_stuffing_and_line_endings_arrive_intact() -> None:
    handler = PipeliningHandler()
    await _send(handler, ["b@example.com"], enabled=True, then_send_another=False)
    (got,) = handler.received
    assert got.data == MESSAGE.replace(b"bare LF\n", b"bare LF\r\n") + b"\r\n"
    assert handler.pipelined_mails == 1


async def test_server_without_pipelining_gets_plain_sendmail() -> None:
    handler = PipeliningHandler(advertise=False, refuse={"c@example.com": "550 no"})
    without = await _send(handler, ["b@example.com", "c@example.com"], enabled=True)
    reference = await _send(
        PipeliningHandler(refuse={"c@example.com": "550 no"}), ["b@example.com", "c@example.com"], enabled=False
    )
    assert without == reference
    assert handler.pipelined_mails == 0 and handler.lockstep_mails == 2
    assert [r.rcpt_tos for r in handler.received] == [["b@example.com"], ["z@example.com"]]


async def test_smtputf8_envelope_is_pipelined() -> None:
    handler = PipeliningHandler()
    result = await _send(handler, ["zoë@example.com"], enabled=True, mail_options=["SMTPUTF8"], then_send_another=False)
    assert result[0] == ({}, "Message accepted")
    assert handler.received[0].rcpt_tos == ["zoë@example.com"]
    assert handler.pipelined_mails == 1


async def test_injected_option_is_refused_before_anything_is_written() -> None:
    plain_h, piped_h = PipeliningHandler(), PipeliningHandler()
    plain = await _send(plain_h, ["b@example.com"], enabled=False, mail_options=["BODY=7BIT\r\nRSET"])
    piped = await _send(piped_h, ["b@example.com"], enabled=True, mail_options=["BODY=7BIT\r\nRSET"])
    assert piped == plain
    assert piped[0] == ("ValueError",)
    # Only the follow-up message reached the server, and the connection stayed in step for it.
    assert [r.rcpt_tos for r in piped_h.received] == [["z@example.com"]]
    assert piped_h.pipelined_mails == 1 and piped_h.lockstep_mails == 0


async def test_address_rewriting_is_aiosmtplibs() -> None:
    """aiosmtplib reduces an address to what parseaddr finds; we quote it with its own function."""
    plain_h, piped_h = PipeliningHandler(), PipeliningHandler()
    plain = await _send(plain_h, ["Bee <b@example.com>"], enabled=False)
    piped = await _send(piped_h, ["Bee <b@example.com>"], enabled=True)
    assert piped == plain
    assert piped_h.received[0].rcpt_tos == plain_h.received[0].rcpt_tos == ["b@example.com"]


async def test_connection_dropped_after_data_is_the_same_error() -> None:
    plain = await _send(PipeliningHandler(drop_after_data=True), ["b@example.com"], enabled=False)
    piped = await _send(PipeliningHandler(drop_after_data=True), ["b@example.com"], enabled=True)
    assert piped == plain == (("SMTPServerDisconnected",), None)


async def test_pipelining_after_starttls_and_auth(server_ssl_context: ssl.SSLContext, ca: trustme.CA) -> None:
    """aiosmtplib's STARTTLS and AUTH stay in place: we pipeline on the upgraded connection."""
    handler = PipeliningHandler()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    result = await _send(
        handler,
        ["b@example.com", "c@example.com"],
        enabled=True,
        tls_context=server_ssl_context,
        require_starttls=True,
        authenticator=Authenticator("user", "pass"),
        client={"start_tls": True, "tls_context": client_ctx},
        login=("user", "pass"),
    )
    assert result == (({}, "Message accepted"), ({}, "Message accepted"))
    assert handler.pipelined_mails == 2
    assert handler.received[0].rcpt_tos == ["b@example.com", "c@example.com"]


# -- through the transport and Mail.send_many (the fast path as callers get it) -------
def _batch() -> list[Message]:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    msgs = [
        Message("text", recipients=["t@example.com"], body="plain\n.dot line\n"),
        Message("html", recipients=["h@example.com"], html="<p>hi</p>"),
        Message("both ✓", recipients=[("Zoë", "z@example.com")], body="Grüße\n" * 40, html="<p>Grüße</p>"),
        Message(
            "attachment",
            recipients=["a@example.com"],
            body="see",
            attachments=[Attachment("r.pdf", "application/pdf", b"%PDF")],
        ),
        Message(
            "inline",
            recipients=["i@example.com"],
            body="logo",
            html='<img src="cid:logo">',
            attachments=[Attachment("logo.png", "image/png", png, "inline", {"Content-ID": "<logo>"})],
        ),
        Message("partly refused", recipients=["ok@example.com", "gone@example.com"], cc=["cc@example.com"], body="x"),
        Message("all refused", recipients=["gone@example.com"], body="x"),
        Message("after refusals", recipients=["last@example.com"], body="still in step"),
    ]
    for i, m in enumerate(msgs):
        m.msgId = f"<{i}.batch@example.com>"
        m.date = 0
    return msgs


async def _send_many(advertise: bool) -> tuple[list[SendResult], PipeliningHandler]:
    handler = PipeliningHandler(advertise=advertise, refuse={"gone@example.com": "550 5.1.1 gone"})
    async with smtp_server(handler) as port:
        mail = Mail(
            config=MailConfig(server="127.0.0.1", port=port, default_sender="News <news@example.com>", pool_size=1)
        )
        random.seed(42)  # the MIME boundaries, so both runs build the same bytes
        results = await mail.send_many(_batch())
        await mail.state.aclose()
    return results, handler


async def test_send_many_same_results_and_bytes_with_and_without_pipelining() -> None:
    piped, piped_h = await _send_many(advertise=True)
    plain, plain_h = await _send_many(advertise=False)
    assert piped == plain
    assert [(r.mail_from, r.rcpt_tos, r.data) for r in piped_h.received] == [
        (r.mail_from, r.rcpt_tos, r.data) for r in plain_h.received
    ]
    statuses = [[(r.recipient, r.status, r.code) for r in res.recipients] for res in piped]
    assert statuses[5] == [
        ("ok@example.com", "delivered", 250),
        ("gone@example.com", "refused", 550),
        ("cc@example.com", "delivered", 250),
    ]
    assert statuses[6] == [("gone@example.com", "refused", 550)]
    assert statuses[7] == [("last@example.com", "delivered", 250)]
    assert len(piped_h.received) == 7
    assert piped_h.pipelined_mails == 8 and piped_h.lockstep_mails == 0
    assert plain_h.pipelined_mails == 0 and plain_h.lockstep_mails == 8


# -- replies split or merged on the wire -------------------------------------------------
async def _scripted_server(chunking: str) -> tuple[asyncio.base_events.Server, int, list[bytes]]:
    """A tiny real SMTP server that answers a pipelined group in one write, or a byte at a time."""
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(data: bytes) -> None:
            if chunking == "bytewise":
                for i in range(len(data)):
                    writer.write(data[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(data)
                await writer.drain()

        await reply(b"220 scripted ESMTP\r\n")
        await reader.readline()  # EHLO
        await reply(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        while True:
            line = await reader.readline()
            if not line or line.startswith(b"QUIT"):
                await reply(b"221 bye\r\n")
                break
            assert line.startswith(b"MAIL FROM:")
            rcpt1, rcpt2, data = await reader.readline(), await reader.readline(), await reader.readline()
            assert (rcpt1[:8], rcpt2[:8], data) == (b"RCPT TO:", b"RCPT TO:", b"DATA\r\n")
            # Multi-line reply in the middle, as some servers send.
            await reply(b"250 sender ok\r\n250-first\r\n250 recipient ok\r\n550 5.1.1 no\r\n354 go ahead\r\n")
            got.append(await reader.readuntil(b"\r\n.\r\n"))
            await reply(b"250 2.0.0 queued as X\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], got


@pytest.mark.parametrize("chunking", ["merged", "bytewise"])
async def test_replies_merged_or_split_are_read_in_order(chunking: str) -> None:
    server, port, got = await _scripted_server(chunking)
    async with server:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
        await smtp.connect()
        for _ in range(3):
            async with asyncio.timeout(10):  # a lost reply would otherwise wait forever (callers set MAIL_TIMEOUT)
                refused, reply = await pipelining.sendmail(
                    smtp, "a@example.com", ["b@example.com", "c@example.com"], b"Subject: x\r\n\r\nhi"
                )
            assert reply == "2.0.0 queued as X"
            assert {k: tuple(v) for k, v in refused.items()} == {"c@example.com": (550, "5.1.1 no")}
        await smtp.quit()
    assert got == [b"Subject: x\r\n\r\nhi\r\n.\r\n"] * 3


# -- the shortcuts on the pipelined path give aiosmtplib's own answers --------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.from_regex(pipelining._SIMPLE_ADDRESS, fullmatch=True),
        st.emails(),
        st.text(st.sampled_from('ab.@<> "\\()-=?,;:'), max_size=20),
    )
)
def test_quote_is_aiosmtplibs_quote_address(address: str) -> None:
    from aiosmtplib.email import quote_address

    try:
        expected: object = quote_address(address)
    except ValueError as exc:
        expected = (ValueError, str(exc))
    try:
        got: object = pipelining.quote(address)
    except ValueError as exc:
        got = (ValueError, str(exc))
    assert got == expected


@pytest.mark.parametrize(
    "message",
    [
        MESSAGE,
        b"",
        b".",
        b"a\r\n",
        b"a\r\n.b\r\n",
        b".a\r\n",
        b"a\rb\r\n",
        b"a\nb\r\n",
        b"a\r\n\r",
        b"no end",
        b"\r\n.\r\n",
    ],
)
def test_wire_content_is_aiosmtplibs(message: bytes) -> None:
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    normalized = normalize_message_line_endings(message)
    assert pipelining.wire_content(message) == (PERIOD_REGEX.sub(b"..", normalized) + b".\r\n", len(normalized))


@settings(max_examples=300, deadline=None)
@given(st.binary().map(lambda b: bytes(b"\r\n.a"[x % 4] for x in b)))
def test_wire_content_is_aiosmtplibs_for_any_line_endings(message: bytes) -> None:
    test_wire_content_is_aiosmtplibs(message)


_reply_line = st.tuples(
    st.sampled_from([b"250", b"354", b"421", b"550", b"007", b"25", b"2500"]),
    st.sampled_from([b" ", b"", b"-", b"\t"]),
    st.one_of(
        st.sampled_from([b"", b" ", b"  2.0.0 Ok \t", b"\xc3\xa9t\xc3\xa9", b"\xff", b"a" * 8186, b"a" * 8187]),
        st.binary(max_size=12),
    ),
    st.sampled_from([b"\r\n", b"\r\n", b"\n", b""]),
).map(b"".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_reply_line, min_size=1, max_size=5).map(b"".join))
def test_reply_reader_reads_what_aiosmtplibs_parser_reads(data: bytes) -> None:
    """Whole one-line replies take a shortcut in ReplyReader; the replies (or the error) are aiosmtplib's."""
    from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol

    def read(parse: Any) -> tuple[list[aiosmtplib.SMTPResponse], bytes, str | None]:
        loop = asyncio.new_event_loop()  # the protocol wants one; nothing runs in it
        protocol = SMTPProtocol(loop=loop)
        replies: list[aiosmtplib.SMTPResponse] = []
        try:
            parse(protocol, replies)
        except aiosmtplib.SMTPResponseException as exc:
            return replies, b"", exc.message
        finally:
            loop.close()
        return replies, bytes(protocol._buffer), None

    def theirs(protocol: Any, replies: list[aiosmtplib.SMTPResponse]) -> None:
        # aiosmtplib's parser, then the reader's own limit on what is left unparsed.
        protocol._buffer.extend(data)
        while (reply := protocol._read_response_from_buffer()) is not None:
            replies.append(reply)
        if len(protocol._buffer) > MAX_RESPONSE_LENGTH:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")

    def ours(protocol: Any, replies: list[aiosmtplib.SMTPResponse]) -> None:
        reader = pipelining.ReplyReader(protocol)
        reader._data_received(data)
        replies.extend(reader._replies)
        if reader._error is not None:
            raise reader._error

    assert read(ours) == read(theirs)


@dataclass
class ClosingHandler(PipeliningHandler):
    """Answers 421 and hangs up on MAIL (``bye_on_mail``) or on one recipient's RCPT (``bye_on``)."""

    bye_on: str | None = None
    bye_on_mail: bool = False

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: ServerEnvelope, address: str, mail_options: list[str]
    ) -> str:
        if self.bye_on_mail:
            await server.push("421 4.3.2 shutting down")
            server.transport.close()
            return "250 never seen"
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: ServerEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address == self.bye_on:
            await server.push("421 4.3.2 shutting down")
            server.transport.close()
            return "250 never seen"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.mark.parametrize(
    ("handler_kw", "recipients"),
    [
        ({"bye_on_mail": True}, ["b@example.com"]),
        ({"bye_on": "b@example.com"}, ["b@example.com"]),  # every recipient refused: that refusal
        ({"bye_on": "c@example.com"}, ["b@example.com", "c@example.com", "d@example.com"]),  # closed mid-envelope
    ],
)
async def test_a_421_to_mail_or_rcpt_ends_the_exchange_as_lock_step_sending_does(
    handler_kw: dict[str, Any], recipients: list[str]
) -> None:
    """aiosmtplib closes on a 421 and asks nothing more; the pipelined exchange must not read past it."""
    plain = await _send(ClosingHandler(**handler_kw), recipients, enabled=False)
    piped = await _send(ClosingHandler(**handler_kw), recipients, enabled=True)
    assert piped == plain
    assert plain[1] is None  # the connection is closed: no second message
