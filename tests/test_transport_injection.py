"""The transport is injectable: ``Mail(app, transport=...)``, ``MAIL_TRANSPORT``, and the same for the worker.

No socket is opened in the happy paths here: the relay named in the config is a port nobody listens on, so
a test that reached SMTP would fail to connect instead of passing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from quart import Quart

from mailsvc import ConfigError, Envelope, Mail, MailConfig, Message
from mailsvc.config import ServiceConfig
from mailsvc.mailstate import MailState
from mailsvc.outbox import SqliteOutbox
from mailsvc.transports import MemoryTransport, SMTPTransport
from mailsvc.transports.factory import resolve
from mailsvc.worker import WorkerGroup
from tests.test_worker_process import bulk, cli_env

MEMORY = "mailsvc.transports.memory:MemoryTransport"
NOBODY = {"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": 9}  # discard port: nothing listens there in the test box


def make_app(**cfg: object) -> Quart:
    app = Quart(__name__)
    app.config.update(MAIL_DEFAULT_SENDER="shop@example.com", MAIL_SUPPRESS_SEND=False, **NOBODY, **cfg)
    return app


async def test_mail_transport_setting_plugs_in_a_transport_class() -> None:
    app = make_app(MAIL_TRANSPORT=MEMORY)
    mail = Mail(app)
    async with app.test_app():
        result = await mail.send(Message("Hi", recipients=["ann@example.com"], body="x"))
        results = await mail.send_many([Message("Hi", recipients=[f"u{i}@example.com"], body="x") for i in range(5)])
        async with mail.connect() as conn:
            await conn.send(Message("Hi", recipients=["bob@example.com"], body="x"))
    assert [(r.status, r.code) for r in result.recipients] == [("delivered", 250)]
    assert all(r.ok for r in results)
    assert isinstance(mail.state.transport(), MemoryTransport)


async def test_transport_argument_wins_over_the_setting_and_sees_the_config() -> None:
    sent: list[Envelope] = []
    configs: list[MailConfig] = []

    def factory(config: MailConfig) -> MemoryTransport:
        configs.append(config)
        return MemoryTransport(config, outbox=sent)

    app = make_app(MAIL_TRANSPORT="no.such.module:Nope")  # never imported: the argument comes first
    mail = Mail(app, transport=factory)
    async with app.test_app():
        await mail.send_many([Message("Hi", recipients=[f"u{i}@example.com"], body="x") for i in range(3)])
    assert sorted(e.recipients[0] for e in sent) == ["u0@example.com", "u1@example.com", "u2@example.com"]
    assert configs and all(c.default_sender == "shop@example.com" for c in configs)


async def test_standalone_mail_takes_a_transport_too() -> None:
    sent: list[Envelope] = []
    mail = Mail(config=MailConfig(default_sender="shop@example.com"), transport=lambda c: MemoryTransport(outbox=sent))
    await mail.send(Message("Hi", recipients=["ann@example.com"], body="x"))
    await mail.state.aclose()
    assert [e.recipients for e in sent] == [("ann@example.com",)]


def test_smtp_stays_the_default() -> None:
    assert isinstance(MailState(MailConfig()).transport(), SMTPTransport)


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("no.such.module:Nope", "cannot import module 'no.such.module'"),
        ("mailsvc.transports.memory:Nope", "has no attribute 'Nope'"),
        ("mailsvc.transports.memory:__all__", "is a list, not a transport class or factory"),
        ("mailsvc.transports.memory:MemoryTransport.nope", "has no attribute 'MemoryTransport.nope'"),
        ("mailsvc.transports.Nope", "has no attribute 'Nope'"),  # the dotted spelling: module, then attribute
    ],
)
def test_a_bad_dotted_path_is_a_config_error_naming_the_setting(path: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Mail(make_app(MAIL_TRANSPORT=path))
    assert caught.value.setting == "MAIL_TRANSPORT"
    assert hint in str(caught.value)
    assert str(caught.value).startswith("MAIL_TRANSPORT: ")


@pytest.mark.parametrize("path", ["not a path", "mailsvc/transports/memory.py", "mailsvc:", ":MemoryTransport"])
def test_a_misspelt_dotted_path_fails_when_the_config_loads(path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MailConfig.from_mapping({"MAIL_TRANSPORT": path})
    assert caught.value.setting == "MAIL_TRANSPORT"
    assert "package.module:Factory" in caught.value.reason


def test_both_spellings_resolve() -> None:
    assert resolve(MEMORY) is resolve("mailsvc.transports.memory.MemoryTransport") is MemoryTransport


async def test_worker_group_takes_a_transport(tmp_path: Path) -> None:
    sent: list[Envelope] = []
    service = ServiceConfig(workers=1, poll_interval=0.02)
    async with SqliteOutbox(tmp_path / "outbox.sqlite3") as outbox:
        ids = (await outbox.enqueue(bulk(20))).ids
        group = WorkerGroup.from_service(
            outbox, MailConfig(server="127.0.0.1", port=9), service, transport=lambda c: MemoryTransport(outbox=sent)
        )
        await group.start()
        while await outbox.pending_count() or any(w.busy for w in group.workers):
            await asyncio.sleep(0.02)
        await group.stop()
        assert {(await outbox.status(i)).state for i in ids} == {"delivered"}
    assert len(sent) == 20


# `mailsvc worker` in a process of its own: no Quart imported, the transport from the CLI or the setting.
_RUN_WORKER = """
import sys
from mailsvc.cli import main
code = main(sys.argv[1:])
quart = sorted(m for m in sys.modules if m == "quart" or m.startswith("quart."))
assert not quart, f"mailsvc worker imported {quart}"
sys.exit(code)
"""


def _run_worker(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _RUN_WORKER, "worker", "--until-empty", "--log-level", "WARNING", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("how", ["--transport", "MAIL_TRANSPORT"])
async def test_worker_process_delivers_through_the_plugged_transport_without_quart(tmp_path: Path, how: str) -> None:
    db = tmp_path / "outbox.sqlite3"
    async with SqliteOutbox(db) as outbox:
        ids = (await outbox.enqueue(bulk(10))).ids
    if how == "--transport":
        done = _run_worker(tmp_path, cli_env(tmp_path, db, 9), "--transport", MEMORY)
    else:
        done = _run_worker(tmp_path, cli_env(tmp_path, db, 9, MAIL_TRANSPORT=MEMORY))
    assert done.returncode == 0, done.stderr
    assert "delivering via MemoryTransport" in done.stderr
    async with SqliteOutbox(db) as outbox:
        assert {(await outbox.status(i)).state for i in ids} == {"delivered"}


def test_importing_the_worker_command_does_not_import_quart() -> None:
    code = "import sys, mailsvc.commands.worker, mailsvc.worker, mailsvc.mailstate; assert 'quart' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "settings", "expected"),
    [
        (("--transport", "no.such.module:Nope"), {}, "--transport: cannot import module 'no.such.module'"),
        ((), {"MAIL_TRANSPORT": "mailsvc.transports.memory:Nope"}, "MAIL_TRANSPORT: module 'mailsvc.transports"),
    ],
)
def test_worker_with_a_bad_transport_exits_2_naming_it(
    tmp_path: Path, args: tuple[str, ...], settings: dict[str, str], expected: str
) -> None:
    done = _run_worker(tmp_path, cli_env(tmp_path, tmp_path / "outbox.sqlite3", 9, **settings), *args)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
