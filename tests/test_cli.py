"""``mailsvc send`` and ``mailsvc bulk`` against a real SQLite outbox (and, end to end, real delivery)."""

from __future__ import annotations

import asyncio
import email
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest

from mailsvc.app import create_app
from mailsvc.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from mailsvc.config import MailConfig, ServiceConfig
from mailsvc.dburl import dev_outbox_url
from mailsvc.gctune import YOUNG_THRESHOLD
from mailsvc.outbox import open_outbox

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The outbox the CLI queues into; the CLI reads the project's settings.py from the repo root.

    No MAIL_SERVER: dev mode, whose mail goes to an outbox of its own beside the configured one.
    """
    url = f"sqlite:///{tmp_path}/o.sqlite3"
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MAILSVC_DATABASE_URL", url)
    monkeypatch.delenv("MAIL_SERVER", raising=False)
    yield dev_outbox_url(url)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def outbox_call(url: str, method: str, *args: Any) -> Any:
    async def go() -> Any:
        async with open_outbox(url) as outbox:
            return await getattr(outbox, method)(*args)

    return asyncio.run(go())


def claimed(url: str) -> list[Any]:
    """Everything queued, read back through the outbox contract (claim leases it to this test)."""
    return outbox_call(url, "claim", "test", 10_000, 60.0)  # type: ignore[no-any-return]


def test_send_queues_one_message_with_attachment(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4 fake")
    code, out, err = run_cli(
        capsys,
        "send",
        "Ann <ann@example.com>",
        "bob@example.com",
        "--subject",
        "Quarterly",
        "--body",
        "See attached.",
        "--cc",
        "cc@example.com",
        "--bcc",
        "hidden@example.com",
        "--attach",
        str(report),
        "--header",
        "X-Campaign: q3",
    )
    assert code == EXIT_OK, err
    message_id = out.strip()
    status = outbox_call(db, "status", message_id)
    assert sorted(r.recipient for r in status.recipients) == [
        "ann@example.com",
        "bob@example.com",
        "cc@example.com",
        "hidden@example.com",
    ]
    assert {r.state for r in status.recipients} == {"queued"}

    [item] = claimed(db)
    msg = email.message_from_bytes(item.envelope.data, policy=policy.default)
    assert msg["Subject"] == "Quarterly" and msg["X-Campaign"] == "q3" and msg["Bcc"] is None
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "report.pdf" and attachment.get_content() == b"%PDF-1.4 fake"


def test_send_renders_a_template_with_context(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "ctx.json"
    context.write_text(json.dumps({"name": "Zoë", "url": "https://example.com/in"}))
    code, out, err = run_cli(capsys, "send", "zoe@example.com", "--template", "welcome", "--context", f"@{context}")
    assert code == EXIT_OK, err
    [item] = claimed(db)
    msg = email.message_from_bytes(item.envelope.data, policy=policy.default)
    assert msg["Subject"] == "Welcome aboard, Zoë!"
    assert "Sign in at https://example.com/in." in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert item.id == out.strip()


@pytest.mark.parametrize(
    "argv, says",
    [
        (["send", "not-an-address", "-s", "Hi", "-b", "x"], "recipients[0]"),
        (["send", "a@example.com", "-b", "x"], "--subject"),
        (["send", "a@example.com", "-s", "Hi"], "--body"),
        (["send", "a@example.com", "-s", "Hi", "-b", "x", "--attach", "/nonexistent/file.pdf"], "--attach"),
        (["send", "a@example.com", "-t", "welcome", "-c", '{"name": "Ann"}'], "'url' is undefined"),
        (["send", "a@example.com", "-t", "welcome", "-c", "[1, 2]"], "--context: must be a JSON object"),
        (["send", "a@example.com", "-t", "welcome", "-c", "{oops"], "--context: not valid JSON"),
        (["send", "a@example.com", "-t", "nope"], "unknown template"),
        (["send", "a@example.com", "-t", "welcome", "-b", "x"], "not both"),
        (["send", "a@example.com", "-s", "Hi\r\nBcc: victim@example.com", "-b", "x"], "subject"),
        (["send", "a@example.com", "-s", "Hi", "-b", "x", "--header", "no colon"], "--header"),
    ],
)
def test_send_bad_input_exits_2_and_queues_nothing(
    db: str, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == EXIT_USAGE and out == ""
    assert says in err and err.startswith("mailsvc: ")
    assert outbox_call(db, "pending_count") == 0


def test_send_exits_1_when_the_outbox_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MAILSVC_DATABASE_URL", f"sqlite:///{blocker}/o.sqlite3")
    code, out, err = run_cli(capsys, "send", "a@example.com", "-s", "Hi", "-b", "x")
    assert code == EXIT_FAILED and out == "" and "not queued" in err


def test_send_exits_1_under_backpressure(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAILSVC_MAX_PENDING", "1")
    assert run_cli(capsys, "send", "a@example.com", "-s", "Hi", "-b", "x")[0] == EXIT_OK
    code, out, err = run_cli(capsys, "send", "a@example.com", "-s", "Hi", "-b", "x")
    assert code == EXIT_FAILED and "MAILSVC_MAX_PENDING" in err
    assert outbox_call(db, "pending_count") == 1


def test_send_idempotency_key_queues_once(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["send", "a@example.com", "-s", "Hi", "-b", "x", "--idempotency-key", "k-1"]
    first, second = run_cli(capsys, *argv), run_cli(capsys, *argv)
    assert first[0] == second[0] == EXIT_OK and first[1] == second[1]
    assert outbox_call(db, "pending_count") == 1


def test_bulk_csv_is_one_batch(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "people.csv"
    rows.write_text("email,name,url\n" + "".join(f"user{i}@example.com,User {i},https://x/{i}\n" for i in range(120)))
    code, out, err = run_cli(capsys, "bulk", str(rows), "--template", "welcome")
    assert code == EXIT_OK, err
    batch_id = out.strip()
    assert outbox_call(db, "batch_status", batch_id) == {"queued": 120}
    assert "Preparing [" in err and "120/120" in err  # the progress bar
    items = claimed(db)
    subjects = {email.message_from_bytes(i.envelope.data, policy=policy.default)["Subject"] for i in items}
    assert subjects == {f"Welcome aboard, User {i}!" for i in range(120)}
    assert all(len(i.envelope.recipients) == 1 for i in items)  # no one sees another's address


def test_bulk_jsonl_both_shapes(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "people.jsonl"
    rows.write_text(
        json.dumps({"to": "Ann <ann@example.com>", "context": {"name": "Ann", "url": "u"}})
        + "\n\n"
        + json.dumps({"email": "bob@example.com", "name": "Bob", "url": "u"})
        + "\n"
    )
    code, out, err = run_cli(capsys, "bulk", str(rows), "-t", "welcome", "--subject", "Hello!")
    assert code == EXIT_OK, err
    assert outbox_call(db, "batch_status", out.strip()) == {"queued": 2}
    recipients = sorted(r for i in claimed(db) for r in i.envelope.recipients)
    assert recipients == ["ann@example.com", "bob@example.com"]


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("bad.csv", "email,name,url\nann@example.com,Ann,u\nnot-an-address,Bob,u\n", "line 3: recipients[0]"),
        ("bad.csv", "email,name\nann@example.com,Ann\n", "line 2: variable missing from context: 'url'"),
        ("bad.csv", "name,url\nAnn,u\n", "needs an 'email' (or 'to') column"),
        ("bad.csv", "email,name,url\nann@example.com,Ann,u,extra\n", "line 2: more values"),
        (
            "bad.jsonl",
            '{"to": "a@example.com", "context": {"name": "A", "url": "u"}}\n{"to": \n',
            "line 2: not valid JSON",
        ),
        ("bad.jsonl", '{"context": {"name": "A"}}\n', "line 1: to: needs an address"),
        ("bad.txt", "email\na@example.com\n", "--format"),
        ("empty.csv", "email,name,url\n", "no recipient rows"),
    ],
)
def test_bulk_bad_rows_exit_2_and_queue_nothing(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, says: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    code, out, err = run_cli(capsys, "bulk", str(path), "-t", "welcome")
    assert code == EXIT_USAGE and out == ""
    assert says in err
    assert outbox_call(db, "pending_count") == 0


def test_every_subcommand_has_help() -> None:
    for command in ("send", "bulk"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0


async def test_bulk_wait_follows_real_delivery_to_the_dev_inbox(tmp_path: Path) -> None:
    """A real ``mailsvc bulk --wait`` process while the service's worker delivers to its dev inbox."""
    url = f"sqlite:///{tmp_path}/o.sqlite3"
    rows = tmp_path / "people.csv"
    rows.write_text("email,name,url\n" + "".join(f"user{i}@example.com,User {i},https://x/{i}\n" for i in range(25)))
    app = create_app(
        MailConfig(default_sender="app@example.com"),
        ServiceConfig(
            database_url=dev_outbox_url(url),  # the dev service's own outbox, as settings.py gives it
            dev_smtp_port=0,
            workers=1,
            poll_interval=0.05,
            templates=REPO / "templates",
        ),
    )
    async with app.test_app() as served:
        env = os.environ | {"MAILSVC_DATABASE_URL": url}
        env.pop("MAIL_SERVER", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mailsvc.cli",
            "bulk",
            str(rows),
            "-t",
            "welcome",
            "--wait",
            "--poll",
            "0.05",
            "--timeout",
            "120",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == EXIT_OK, err.decode()
        assert "Delivering [" in err.decode() and "all 25 delivered" in err.decode()
        listing = await (await served.test_client().get("/api/inbox?limit=100")).get_json()
    assert listing["total"] == 25
    assert {m["subject"] for m in listing["messages"]} == {f"Welcome aboard, User {i}!" for i in range(25)}


HEAVY = ("quart", "hypercorn", "pydantic", "aiosmtplib", "aiosqlite", "asyncpg", "jinja2", "email_validator")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["send", "--help"],
        ["bulk", "--help"],
        ["db", "--help"],
        ["serve", "--help"],
        ["status", "--help"],
        ["worker", "--help"],
    ],
)
def test_help_imports_no_heavy_library(argv: list[str]) -> None:
    """``mailsvc --help`` only parses arguments: Quart, pydantic and the drivers load inside the commands.

    Checked by what is imported (sys.modules in a fresh interpreter), not by timing it.
    """
    code = (
        "import sys\n"
        "from mailsvc.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_public_names_load_lazily_and_stay_the_same_objects() -> None:
    code = (
        "import sys, mailsvc\n"
        "assert 'quart' not in sys.modules, 'import mailsvc loaded quart'\n"
        "from mailsvc import Mail, Message, Attachment, BadHeaderError, MailConfig\n"
        "import mailsvc.extension, mailsvc.message, mailsvc.config\n"
        "assert Mail is mailsvc.extension.Mail and Message is mailsvc.message.Message\n"
        "assert MailConfig is mailsvc.config.MailConfig and 'quart' in sys.modules\n"
        "assert set(mailsvc.__all__) <= set(dir(mailsvc))\n"
        "try:\n"
        "    mailsvc.NoSuchName\n"
        "except AttributeError:\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from mailsvc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mailsvc {version('mailsvc')}"


def test_send_and_bulk_take_tags_meta_and_at(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--tag/--meta/--at reach the outbox as the API's fields; a bad one is exit 2 naming the option, nothing queued."""
    from datetime import UTC, datetime, timedelta

    at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    stamp = at.isoformat().replace("+00:00", "Z")
    label = ["--tag", "welcome", "--tag", "vip", "--meta", "order=42", "--meta", "note=a=b", "--at", stamp]
    code, out, err = run_cli(capsys, "send", "ann@example.com", "-s", "Hi", "-b", "x", *label)
    assert code == EXIT_OK, err
    status = outbox_call(db, "status", out.strip())
    assert (status.state, status.tags, status.metadata, status.send_at) == (
        "scheduled",
        ("welcome", "vip"),
        {"order": "42", "note": "a=b"},
        at,
    )
    rows = tmp_path / "people.csv"
    rows.write_text("email,name,url\na@example.com,A,https://x\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "bulk", str(rows), "--template", "welcome", *label)
    assert code == EXIT_OK, err
    assert outbox_call(db, "batch_status", out.strip()) == {"scheduled": 1}
    for bad, option in (
        (["--tag", "a b"], "--tag"),
        (["--meta", "novalue"], "--meta"),
        (["--meta", "k=\n"], "--meta"),
        (["--at", "2030-01-01T00:00:00"], "--at"),
        (["--at", "2999-01-01T00:00:00Z"], "--at"),
    ):
        code, _, err = run_cli(capsys, "send", "ann@example.com", "-s", "Hi", "-b", "x", *bad)
        assert code == EXIT_USAGE and option in err, (bad, err)
    assert outbox_call(db, "pending_count") == 2


def test_service_processes_keep_the_collector_off_what_startup_built(tmp_path: Path) -> None:
    """``asgi.py`` (as ``mailsvc serve`` and ``worker``) freezes what startup built and collects less often."""
    probe = "import gc, asgi; print(gc.get_threshold()[0], gc.get_freeze_count() > 10_000)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    env.update(PYTHONPATH=str(REPO), MAILSVC_DATABASE_URL=f"sqlite:///{tmp_path / 'outbox.sqlite3'}")
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == [str(YOUNG_THRESHOLD), "True"], out.stderr[-2000:]
