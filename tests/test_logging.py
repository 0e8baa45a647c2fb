"""Secrets and bodies never reach the log, even with our level at DEBUG.

A real delivery: a message queued in a real SQLite outbox, taken by a real
worker and sent over STARTTLS with AUTH to an aiosmtpd server (trustme
certificate), with the logging set up exactly as ``mailsvc serve`` and
``mailsvc worker`` set it up, at DEBUG. Every record pytest captured is then
searched for the password (plain and as the client puts it on the wire) and for
the body.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsvc import MailConfig, Message
from mailsvc.config import ServiceConfig
from mailsvc.logsetup import FORMAT, QUIET_LOGGERS, TextFormatter, configure_logging
from mailsvc.outbox import Outbox, SqliteOutbox
from mailsvc.worker import WorkerGroup
from tests.servers import Authenticator, RecordingHandler, smtp_server

USER, PASSWORD = "relay-user", "s3cret-Pa55word-for-logs"
BODY_MARKER = "confidential-body-7f3a9c"
FAST = dict(
    retry_first=0.05,
    retry_max=0.2,
    relay_backoff=0.05,
    relay_backoff_max=0.2,
    poll_interval=0.02,
    workers=1,
    dev_mode=False,
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ["", "mailsvc", *QUIET_LOGGERS]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for n, (level, handlers) in saved.items():
        logging.getLogger(n).setLevel(level)
        logging.getLogger(n).handlers[:] = handlers


def password_forms() -> list[str]:
    """The password as given, and base64 as AUTH LOGIN and AUTH PLAIN put it on the wire."""
    return [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
    ]


async def test_debug_logging_of_a_real_authenticated_send_shows_no_password_or_body(
    restore_logging: None,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    server_ssl_context: ssl.SSLContext,
    ca_file: str,
) -> None:
    caplog.set_level(logging.DEBUG)  # root at DEBUG: everything not held back by our setup is captured
    configure_logging("DEBUG")
    assert logging.getLogger("mailsvc").getEffectiveLevel() == logging.DEBUG

    handler, authenticator = RecordingHandler(), Authenticator(USER, PASSWORD)
    async with smtp_server(
        handler, tls_context=server_ssl_context, require_starttls=True, authenticator=authenticator
    ) as port:
        config = MailConfig(
            server="127.0.0.1",
            port=port,
            use_tls=True,
            ca_file=Path(ca_file),
            username=USER,
            password=PASSWORD,
            timeout=10,
        )  # type: ignore[arg-type]
        async with SqliteOutbox(tmp_path / "outbox.sqlite3") as outbox:
            envelope = Message(
                "Quarterly", recipients=["ann@example.com"], sender="shop@example.com", body=f"Dear Ann, {BODY_MARKER}"
            ).build()
            [id_] = (await outbox.enqueue([envelope])).ids
            group = WorkerGroup.from_service(outbox, config, ServiceConfig(**FAST))  # type: ignore[arg-type]
            await group.start()
            try:
                for _ in range(1000):  # a liveness bound (20 s), not a timing assertion
                    if (await outbox.status(id_)).state == "delivered":
                        break
                    await asyncio.sleep(0.02)
            finally:
                await group.stop()
            assert (await outbox.status(id_)).state == "delivered"

    assert authenticator.attempts == 1 and len(handler.received) == 1
    assert BODY_MARKER in handler.received[0].message.get_content()
    assert any(r.name.startswith("mailsvc") for r in caplog.records)  # the capture did see our logs
    for record in caplog.records:
        text = f"{record.name} {record.getMessage()} {record.exc_text or ''}"
        for secret in [*password_forms(), BODY_MARKER]:
            assert secret not in text, f"{secret!r} logged by {record.name} at {record.levelname}: {text[:300]}"
    noisy = sorted(
        {
            r.name
            for r in caplog.records
            if r.name.split(".")[0] in {"aiosqlite", "asyncpg", "mail"} and r.levelno < logging.WARNING
        }
    )
    assert not noisy, f"third-party DEBUG/INFO records got through: {noisy}"


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING"])
def test_third_party_loggers_stay_at_warning(restore_logging: None, level: str) -> None:
    configure_logging(level)
    assert logging.getLogger("mailsvc").level == logging.getLevelName(level)
    for name in ("aiosqlite", "asyncpg", "aiosmtplib", "hpack", "mail.log"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name


async def _deliver_batch(outbox: Outbox, config: MailConfig, n: int) -> list[str]:
    """Queue ``n`` one-recipient messages (r{i}@example.com) and run a worker group until none is pending."""
    envelopes = [
        Message(f"n{i}", recipients=[f"r{i}@example.com"], sender="shop@example.com", body="hi").build()
        for i in range(n)
    ]
    ids = (await outbox.enqueue(envelopes, batch=True)).ids
    group = WorkerGroup.from_service(outbox, config, ServiceConfig(**FAST))  # type: ignore[arg-type]
    await group.start()
    try:
        for _ in range(1000):  # a liveness bound (20 s), not a timing assertion
            if await outbox.pending_count() == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        await group.stop()
    return ids


def _logged_ids(lines: list[str]) -> list[str]:
    """The message ids named by "delivery id rcpt=state/code; id ..." lines."""
    return [entry.split(" ")[0] for line in lines for entry in line[len("delivery ") :].split("; ")]


async def test_delivery_log_names_every_message_once_in_lines_of_at_most_fifty(
    restore_logging: None,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """Outcomes are logged a group at a time (one record per flush, split at 50), never losing one."""
    caplog.set_level(logging.INFO, logger="mailsvc.worker")
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        config = MailConfig(server="127.0.0.1", port=port, timeout=10)
        async with SqliteOutbox(tmp_path / "outbox.sqlite3") as outbox:
            ids = await _deliver_batch(outbox, config, 120)
    lines = [
        r.getMessage() for r in caplog.records if r.name == "mailsvc.worker" and r.getMessage().startswith("delivery ")
    ]
    assert lines
    named = _logged_ids(lines)
    assert sorted(named) == sorted(ids)
    assert all(line.count("; ") < 50 for line in lines)
    for i, id_ in enumerate(ids):
        assert any(f"{id_} r{i}@example.com=delivered/250" in line for line in lines)


def test_a_big_group_of_outcomes_is_split_into_lines_of_fifty(caplog: pytest.LogCaptureFixture) -> None:
    from mailsvc.extension import MailState
    from mailsvc.outbox.base import RecipientOutcome
    from mailsvc.worker import Worker

    caplog.set_level(logging.INFO, logger="mailsvc.worker")
    worker = Worker(None, MailState(MailConfig()))  # type: ignore[arg-type]  # logging needs no outbox
    worker._to_log = [(f"id{i}", [RecipientOutcome(f"r{i}@example.com", "deferred", 451, "later")]) for i in range(120)]
    worker._log_outcomes()
    lines = [r.getMessage() for r in caplog.records if r.name == "mailsvc.worker"]
    assert [line.count("; ") + 1 for line in lines] == [50, 50, 20]
    assert "id119 r119@example.com=deferred/451" in lines[-1] and not worker._to_log


class _FlakyRecordOutbox(SqliteOutbox):
    """A real SQLite outbox whose first record_many fails with a bug (not an OutboxError)."""

    failed = False

    def _bug_once(self) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug in recording")

    async def record_many(self, owner, items):  # type: ignore[no-untyped-def]
        self._bug_once()
        return await super().record_many(owner, items)


async def test_a_bug_while_recording_loses_no_log_line_and_no_record(
    restore_logging: None,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="mailsvc.worker")
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        config = MailConfig(server="127.0.0.1", port=port, timeout=10)
        flaky = _FlakyRecordOutbox(tmp_path / "outbox.sqlite3")
        async with flaky as outbox:
            ids = await _deliver_batch(outbox, config, 30)
            states = {(await outbox.status(i)).state for i in ids}
    assert flaky.failed and states == {"delivered"}
    assert len(handler.received) == 30
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("delivery ")]
    named = _logged_ids(lines)
    assert sorted(named) == sorted(ids)
    assert any("unexpected error recording" in r.getMessage() for r in caplog.records)


def test_text_lines_are_the_standard_formatter_s_across_seconds_and_milliseconds() -> None:
    """The text format formats its time once a second; every line still reads as ``logging.Formatter(FORMAT)``."""
    ours, standard = TextFormatter(), logging.Formatter(FORMAT)
    for i in range(2000):
        created = 1_700_000_000 + i * 0.0137  # many lines per second, seconds going by, 0 and 999 ms included
        record = logging.LogRecord("mailsvc.web", logging.INFO, "", 0, "accepted id=%s", (f"a{i}",), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == standard.format(record)
