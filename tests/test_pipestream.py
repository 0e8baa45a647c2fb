"""Pipelining across messages (``transports/pipestream.py``): every message's result is the lock-step one.

Each scenario sends one batch through ``Mail.send_many`` twice against real
servers, pipelined and with ``PIPELINING_ENABLED`` off, and compares the results
and what the server received. The aiosmtpd handler notes whether the next
``MAIL FROM`` was already in its input when it read a message's final dot, which is
how we know the next transaction really went out in the same write as the content.
Postfix's ``smtp-sink`` adds its own fault injection (every command of a kind refused,
421 and hang-ups) and a volume run.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope as ServerEnvelope
from aiosmtpd.smtp import Session

from mailsvc import Mail, MailConfig, Message, SendResult
from mailsvc.transports import pipelining
from tests.servers import ConnectionCounter, RecordingHandler, smtp_server
from tests.smtp_sink import SMTPSink, smtp_sink_path


@dataclass
class StreamHandler(RecordingHandler):
    """Faults keyed by recipient, so that one message in the middle of a batch gets them."""

    advertise: bool = True
    data_refuse: dict[str, str] = field(default_factory=dict)  # recipient -> reply to its content
    drop_on: set[str] = field(default_factory=set)  # hang up (no reply) on this recipient's content
    bye_on: set[str] = field(default_factory=set)  # 421 and hang up on this recipient's content
    stall_on: set[str] = field(default_factory=set)  # no reply to this recipient's content for 3 s
    crossed: int = 0  # final dots read with the next MAIL FROM already waiting in the server's input
    rcpt_bye: set[str] = field(default_factory=set)  # 421 and hang up on this recipient's RCPT
    rset_drop: bool = False  # hang up (no reply) on RSET
    per_connection: int | None = None  # 421 and hang up on MAIL beyond this many per connection
    mails: dict[int, int] = field(default_factory=dict)  # MAIL commands per session, for per_connection

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: ServerEnvelope, address: str, mail_options: list[str]
    ) -> str:
        n = self.mails[id(session)] = self.mails.get(id(session), 0) + 1
        if self.per_connection is not None and n > self.per_connection:
            await server.push("421 4.7.0 too many messages on this connection")
            server.transport.close()
            return "250 never seen"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: ServerEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.rcpt_bye:
            await server.push("421 4.3.2 shutting down")
            server.transport.close()
            return "250 never seen"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_RSET(self, server: Any, session: Session, envelope: ServerEnvelope) -> str:
        if self.rset_drop:
            server.transport.close()
        return "250 OK"

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: ServerEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.advertise:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Session, envelope: ServerEnvelope) -> str:
        if b"MAIL FROM" in bytes(server._reader._buffer):
            self.crossed += 1
        rcpts = set(envelope.rcpt_tos)
        if rcpts & self.drop_on:
            server.transport.close()
            return "250 never seen"
        if rcpts & self.bye_on:
            await server.push("421 4.3.2 shutting down")
            server.transport.close()
            return "250 never seen"
        if rcpts & self.stall_on:
            await asyncio.sleep(3)
            return "250 too late"
        for r in rcpts & set(self.data_refuse):
            return self.data_refuse[r]
        return await super().handle_DATA(server, session, envelope)


def _batch(n: int, special: dict[int, list[str]] | None = None) -> list[Message]:
    """``n`` one-line messages to m<i>@example.com, or to the recipients ``special`` names for message i."""
    msgs = []
    for i in range(n):
        rcpts = (special or {}).get(i, [f"m{i}@example.com"])
        m = Message(f"message {i}", recipients=rcpts, body=f"body {i}\n.dot line\n", sender="s@example.com")
        m.msgId = f"<{i}.stream@example.com>"
        m.date = 0
        msgs.append(m)
    return msgs


async def _send_many(
    handler: StreamHandler, msgs: list[Message], *, enabled: bool, **config: Any
) -> tuple[list[SendResult], int]:
    """(results, connections the server accepted) for one ``send_many`` of ``msgs``."""
    pipelining.PIPELINING_ENABLED = enabled
    connections = ConnectionCounter()
    try:
        async with smtp_server(handler, connections=connections) as port:
            cfg = MailConfig(server="127.0.0.1", port=port, **{"pool_size": 1, "timeout": 10, **config})
            mail = Mail(config=cfg)
            results = await mail.send_many(msgs)
            await mail.state.aclose()
    finally:
        pipelining.PIPELINING_ENABLED = True
    return results, connections.count


def _statuses(results: list[SendResult]) -> list[list[tuple[str, str, int | None]]]:
    return [[(r.recipient, r.status, r.code) for r in res.recipients] for res in results]


async def test_many_messages_on_one_connection_arrive_in_order_each_behind_the_last_content() -> None:
    handler = StreamHandler()
    results, connections = await _send_many(handler, _batch(30), enabled=True)
    assert all(r.ok for r in results) and len(results) == 30
    assert [r.message["Subject"] for r in handler.received] == [f"message {i}" for i in range(30)]
    assert handler.received[7].data.endswith(b"body 7\r\n.dot line\r\n")  # dot-stuffing undone by the server
    assert connections == 1
    assert handler.crossed == 29  # every content but the last had the next transaction behind it


def _mixed_faults() -> tuple[dict[str, Any], dict[int, list[str]]]:
    handler_kw = {
        "refuse": {"gone@example.com": "550 5.1.1 gone", "later@example.com": "451 4.2.0 later"},
        "data_refuse": {"spam@example.com": "554 5.7.1 spam", "busy@example.com": "452 4.3.1 busy"},
    }
    special = {
        2: ["ok2@example.com", "gone@example.com"],  # one recipient refused: the others delivered
        4: ["gone@example.com", "later@example.com"],  # every recipient refused: no content, RSET
        5: ["after-rset@example.com"],
        7: ["spam@example.com"],  # the content refused (5xx)
        8: ["busy@example.com"],  # the content refused (4xx)
    }
    return handler_kw, special


async def test_refusals_in_the_middle_are_that_messages_alone_and_the_same_as_lock_step() -> None:
    handler_kw, special = _mixed_faults()
    piped_h, plain_h = StreamHandler(**handler_kw), StreamHandler(**handler_kw)
    piped, piped_conns = await _send_many(piped_h, _batch(12, special), enabled=True)
    plain, plain_conns = await _send_many(plain_h, _batch(12, special), enabled=False)
    assert piped == plain
    assert [(r.mail_from, r.rcpt_tos, r.data) for r in piped_h.received] == [
        (r.mail_from, r.rcpt_tos, r.data) for r in plain_h.received
    ]
    statuses = _statuses(piped)
    assert statuses[2] == [("ok2@example.com", "delivered", 250), ("gone@example.com", "refused", 550)]
    assert statuses[4] == [("gone@example.com", "refused", 550), ("later@example.com", "refused", 451)]
    assert statuses[7] == [("spam@example.com", "refused", 554)]
    assert statuses[8] == [("busy@example.com", "refused", 452)]
    assert all(piped[i].ok for i in range(12) if i not in (2, 4, 7, 8))
    assert piped_conns == plain_conns == 1
    assert piped_h.crossed > 0 and plain_h.crossed == 0


@pytest.mark.parametrize("fault", ["drop_on", "bye_on"])
async def test_a_connection_closing_mid_pipeline_fails_only_the_message_it_closed_on(fault: str) -> None:
    """Message 3's content ends the connection: 3 fails, 4 (only its commands were sent) goes on a new one."""
    special = {3: ["x@example.com"]}
    piped_h, plain_h = StreamHandler(**{fault: {"x@example.com"}}), StreamHandler(**{fault: {"x@example.com"}})
    piped, piped_conns = await _send_many(piped_h, _batch(8, special), enabled=True)
    plain, plain_conns = await _send_many(plain_h, _batch(8, special), enabled=False)
    assert _statuses(piped) == _statuses(plain)
    assert [r.message["Subject"] for r in piped_h.received] == [f"message {i}" for i in range(8) if i != 3]
    expected = ("x@example.com", "failed", None) if fault == "drop_on" else ("x@example.com", "refused", 421)
    assert _statuses(piped)[3] == [expected]
    assert all(piped[i].ok for i in range(8) if i != 3)
    assert piped_conns == plain_conns == 2


async def test_a_hang_up_on_rset_fails_no_message_the_next_goes_on_a_new_connection() -> None:
    """Message 2 is refused, the server hangs up on the RSET in front of message 3's commands.

    Lock-step sending gets message 2's refusal, finds the connection gone and sends 3
    on a new one; so must the stream, although 3's MAIL was in flight when it broke.
    """
    special = {2: ["gone@example.com"]}
    kw: dict[str, Any] = {"refuse": {"gone@example.com": "550 5.1.1 gone"}, "rset_drop": True}
    piped_h, plain_h = StreamHandler(**kw), StreamHandler(**kw)
    piped, piped_conns = await _send_many(piped_h, _batch(6, special), enabled=True)
    plain, plain_conns = await _send_many(plain_h, _batch(6, special), enabled=False)
    assert _statuses(piped) == _statuses(plain)
    assert _statuses(piped)[2] == [("gone@example.com", "refused", 550)]
    assert all(piped[i].ok for i in (0, 1, 3, 4, 5))
    assert [r.message["Subject"] for r in piped_h.received] == [f"message {i}" for i in (0, 1, 3, 4, 5)]
    assert piped_conns == plain_conns == 2


async def test_a_per_connection_message_limit_sends_the_rest_on_new_connections() -> None:
    """The relay answers 421 and hangs up at the 4th MAIL of a connection: the result is lock-step's."""
    piped_h, plain_h = StreamHandler(per_connection=3), StreamHandler(per_connection=3)
    piped, piped_conns = await _send_many(piped_h, _batch(10), enabled=True)
    plain, plain_conns = await _send_many(plain_h, _batch(10), enabled=False)
    assert _statuses(piped) == _statuses(plain)
    assert [r.message["Subject"] for r in piped_h.received] == [r.message["Subject"] for r in plain_h.received]
    assert piped_conns == plain_conns


@pytest.mark.parametrize(
    "rcpts",
    [["x@example.com"], ["ok@example.com", "x@example.com"], ["x@example.com", "ok@example.com"]],
    ids=["only", "last", "first"],
)
async def test_a_421_to_rcpt_gives_the_lock_step_result_and_the_next_message_goes_on(rcpts: list[str]) -> None:
    """421 and a hang-up at one RCPT of message 2: its result is lock-step's (aiosmtplib reads nothing after
    a 421), and message 3, whose commands were not yet answered, goes on a new connection."""
    special = {2: rcpts}
    piped_h, plain_h = StreamHandler(rcpt_bye={"x@example.com"}), StreamHandler(rcpt_bye={"x@example.com"})
    piped, piped_conns = await _send_many(piped_h, _batch(6, special), enabled=True)
    plain, plain_conns = await _send_many(plain_h, _batch(6, special), enabled=False)
    assert _statuses(piped) == _statuses(plain)
    if rcpts == ["x@example.com"]:
        assert _statuses(piped)[2] == [("x@example.com", "refused", 421)]
    else:
        assert {s for _, s, _ in _statuses(piped)[2]} == {"failed"}  # its next command found the connection closed
    assert all(piped[i].ok for i in (0, 1, 3, 4, 5))
    assert [r.message["Subject"] for r in piped_h.received] == [f"message {i}" for i in (0, 1, 3, 4, 5)]
    assert piped_conns == plain_conns == 2


class _Unencodable(str):
    """An ESMTP option that passes the message's checks but fails to encode (not a ValueError)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        raise LookupError(f"no codec for {encoding}")


async def test_commands_that_fail_to_build_fail_that_message_alone() -> None:
    msgs = _batch(5)
    msgs[2].mail_options = [_Unencodable("BODY=8BITMIME")]
    piped_h, plain_h = StreamHandler(), StreamHandler()
    piped, piped_conns = await _send_many(piped_h, msgs, enabled=True)
    plain, _ = await _send_many(plain_h, msgs, enabled=False)
    assert _statuses(piped) == _statuses(plain)
    assert _statuses(piped)[2] == [("m2@example.com", "failed", None)]
    assert "no codec" in piped[2].recipients[0].reply
    assert [r.message["Subject"] for r in piped_h.received] == [f"message {i}" for i in (0, 1, 3, 4)]
    assert piped_conns == 1  # nothing of it was written, so the connection stayed in step


async def test_a_stalled_reply_fails_that_message_by_the_deadline_and_the_rest_go_on() -> None:
    handler = StreamHandler(stall_on={"x@example.com"})
    results, connections = await _send_many(handler, _batch(5, {2: ["x@example.com"]}), enabled=True, timeout=1)
    assert _statuses(results)[2] == [("x@example.com", "failed", None)]
    assert "exceeded MAIL_TIMEOUT" in results[2].recipients[0].reply
    assert all(results[i].ok for i in (0, 1, 3, 4))
    assert connections == 2


async def test_server_without_pipelining_is_sent_lock_step() -> None:
    handler_kw, special = _mixed_faults()
    handler = StreamHandler(advertise=False, **handler_kw)
    without, _ = await _send_many(handler, _batch(12, special), enabled=True)
    reference, _ = await _send_many(StreamHandler(**handler_kw), _batch(12, special), enabled=False)
    assert without == reference
    assert handler.crossed == 0 and len(handler.received) == 9


async def test_bad_option_in_the_middle_fails_that_message_without_writing_it() -> None:
    msgs = _batch(5)
    msgs[2].mail_options = ["BODY=7BIT\r\nRSET"]
    piped_h, plain_h = StreamHandler(), StreamHandler()
    piped, piped_conns = await _send_many(piped_h, msgs, enabled=True)
    plain, _ = await _send_many(plain_h, msgs, enabled=False)
    assert piped == plain
    assert _statuses(piped)[2] == [("m2@example.com", "failed", None)]
    assert [r.message["Subject"] for r in piped_h.received] == [f"message {i}" for i in (0, 1, 3, 4)]
    assert piped_conns == 1  # nothing of it was written, so the connection stayed in step


async def test_max_emails_per_connection_holds_when_pipelining() -> None:
    handler = StreamHandler()
    results, connections = await _send_many(handler, _batch(10), enabled=True, max_emails=3)
    assert all(r.ok for r in results)
    assert connections == 4
    assert [r.message["Subject"] for r in handler.received] == [f"message {i}" for i in range(10)]


# -- Postfix's smtp-sink: volume, and its faults for every command of a kind ------------------------------------

needs_sink = pytest.mark.skipif(smtp_sink_path() is None, reason="Postfix's smtp-sink is not installed")


async def _sink_run(tmp_path: Path, args: tuple[str, ...], n: int, *, enabled: bool) -> tuple[list[Any], Counter[str]]:
    pipelining.PIPELINING_ENABLED = enabled
    try:
        with SMTPSink(tmp_path, *args) as sink:
            mail = Mail(config=MailConfig(server="127.0.0.1", port=sink.port, pool_size=2, timeout=10))
            results = await mail.send_many(_batch(n))
            await mail.state.aclose()
            await asyncio.sleep(0.2)  # smtp-sink writes its dump files as it goes; let the last one land
            ids = sink.message_ids()
    finally:
        pipelining.PIPELINING_ENABLED = True
    return _statuses(results), ids


@needs_sink
async def test_smtp_sink_volume_every_message_once(tmp_path: Path) -> None:
    statuses, ids = await _sink_run(tmp_path, (), 300, enabled=True)
    assert all(s == [(f"m{i}@example.com", "delivered", 250)] for i, s in enumerate(statuses))
    assert ids == Counter({f"<{i}.stream@example.com>": 1 for i in range(300)})


@needs_sink
@pytest.mark.parametrize(
    "args",
    [
        ("-p",),
        ("-r", "RCPT"),
        ("-f", "MAIL"),
        ("-f", "DATA"),
        ("-f", "."),
        ("-r", "."),
        ("-Q", "."),
        ("-q", "."),
        ("-q", "MAIL"),  # every connection lost at MAIL: each message given back once, then failed
        ("-Q", "MAIL"),
        ("-Q", "RCPT"),
    ],
    ids=" ".join,
)
async def test_smtp_sink_faults_give_the_lock_step_results(tmp_path: Path, args: tuple[str, ...]) -> None:
    piped, piped_ids = await _sink_run(tmp_path / "piped", args, 12, enabled=True)
    plain, plain_ids = await _sink_run(tmp_path / "plain", args, 12, enabled=False)
    assert piped == plain
    assert piped_ids == plain_ids
