"""The README is checked against the code, so it cannot rot.

Every field of ``settings.Settings`` (and every ``MAIL_*`` key ``MailConfig``
reads from ``app.config``) must have a row; every row must name a real setting;
and where a row states a plain number or true/false as the default, it must be
the code's default. Its code blocks run as written: "Testing your app without a
socket" here, "Coming from Flask-Mail" here and in ``tests/test_flask_mail_port.py``.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from pathlib import Path

import pytest
from quart import Quart

from mailsvc import Mail, MailConfig
from mailsvc.config import MAIL_KEYS as MAIL_CONFIG_KEYS
from settings import Settings
from tests.readme import FLASK_MAIL_SECTION, flask_mail_blocks, import_module, section, write_contact_app
from tests.servers import Authenticator, RecordingHandler, threaded_smtp_server

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_SETTINGS_FIELDS = {"MAILSVC_SETTINGS_MODULE"}  # read by the CLI before settings.py exists


def settings_table() -> dict[str, str]:
    """``{name: default cell}`` from the table under ``## Settings`` (``A / B`` rows split in two)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        defaults = cells[1].split(" / ") if len(names) > 1 else [cells[1]]
        if len(defaults) != len(names):
            defaults = [cells[1]] * len(names)
        rows.update(zip(names, defaults, strict=True))
    return rows


def documented_default(cell: str) -> object:
    """A comparable default, or None when the cell is prose ("unset", "hostname", ...)."""
    if cell in ("true", "false"):
        return cell == "true"
    number = re.fullmatch(r"(\d+(?:\.\d+)?)( MiB)?(?: \(.*\))?", cell)
    if number is None:
        return None
    value = float(number.group(1))
    return value * 1024 * 1024 if number.group(2) else value


def test_every_setting_has_a_row() -> None:
    table = settings_table()
    missing = sorted((set(Settings.model_fields) | set(MAIL_CONFIG_KEYS)) - set(table))
    assert not missing, f"README.md settings table lacks: {', '.join(missing)}"


def test_every_row_names_a_real_setting() -> None:
    unknown = sorted(set(settings_table()) - set(Settings.model_fields) - set(MAIL_CONFIG_KEYS) - NOT_SETTINGS_FIELDS)
    assert not unknown, f"README.md documents settings the code does not have: {', '.join(unknown)}"


def test_documented_defaults_match_the_code() -> None:
    table, wrong, checked = settings_table(), [], 0
    for name, field in Settings.model_fields.items():
        expected = documented_default(table.get(name, ""))
        if expected is None:
            continue  # default described in words ("unset", "hostname", ...)
        checked += 1
        actual = field.default
        same = (
            actual is expected
            if isinstance(expected, bool)
            else (isinstance(actual, int | float) and not isinstance(actual, bool) and float(actual) == expected)
        )
        if not same:
            wrong.append(f"{name}: README says {table[name]!r}, code says {actual!r}")
    assert checked >= 20  # the parser still understands the table
    assert not wrong, "; ".join(wrong)


def test_testing_without_a_socket_runs_as_written() -> None:
    """The README's "Testing your app without a socket" block, executed as it stands, then its test run."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Testing your app without a socket\n", 1)[1].split("\n#", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    test = namespace["test_signup_sends_a_welcome"]
    assert callable(test)
    asyncio.run(test())
    assert len(namespace["sent"]) == 1  # type: ignore[arg-type]


def test_settings_from_the_environment_reach_mail_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The advice in the plaintext-AUTH error (set MAIL_ALLOW_PLAINTEXT_AUTH) works from the environment."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {
        "MAIL_SERVER": "smtp.example.com",
        "MAIL_DEFAULT_SENDER": "shop@example.com",
        "MAIL_PASSWORD": "pw",
        "MAIL_ALLOW_PLAINTEXT_AUTH": "true",
        "MAIL_LOCAL_HOSTNAME": "client.example.com",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = Settings().mail_config()
    assert cfg.allow_plaintext_auth and cfg.local_hostname == "client.example.com"


# -- "Coming from Flask-Mail" ------------------------------------------------------------------------

FLASK_MAIL_KEYS = {  # Flask-Mail's own settings (flask_mail.Mail.init_mail)
    "MAIL_SERVER",
    "MAIL_PORT",
    "MAIL_USE_TLS",
    "MAIL_USE_SSL",
    "MAIL_USERNAME",
    "MAIL_PASSWORD",
    "MAIL_DEFAULT_SENDER",
    "MAIL_DEBUG",
    "MAIL_MAX_EMAILS",
    "MAIL_SUPPRESS_SEND",
    "MAIL_ASCII_ATTACHMENTS",
}


def test_every_flask_mail_code_block_is_run() -> None:
    """Block 0 (contact.py) is run by tests/test_flask_mail_port.py, block 1 (the Celery task) below.

    A new block in the section fails here until a test runs it.
    """
    blocks = flask_mail_blocks()
    assert len(blocks) == 2
    assert "app = Quart(__name__)" in blocks[0] and "def send_report(" in blocks[1]


def test_settings_flask_mail_lacks_are_listed_with_their_defaults() -> None:
    text = section(FLASK_MAIL_SECTION)
    paragraph = text.split("Settings Flask-Mail does not have", 1)[1].split("\n\n", 1)[0]
    listed = dict(re.findall(r"`(MAIL_[A-Z0-9_]+)` \(([^)]*)\)", paragraph))
    assert set(listed) == (set(MAIL_CONFIG_KEYS) - FLASK_MAIL_KEYS) | {"MAIL_TEMPLATE_FOLDER"}
    defaults = {key: MailConfig.model_fields[field].default for key, field in MAIL_CONFIG_KEYS.items()}
    for name, cell in listed.items():
        expected = documented_default(cell)
        if expected is not None:
            assert defaults[name] == expected, f"{name}: README says {cell}, code says {defaults[name]!r}"
    same = set(re.findall(r"`(MAIL_[A-Z0-9_]+)`", text.split("The same as Flask-Mail:", 1)[1].split("\n\n", 1)[0]))
    assert same and same <= FLASK_MAIL_KEYS


def test_mail_debug_does_not_follow_app_debug() -> None:
    """The table says so: Flask-Mail's MAIL_DEBUG defaults to app.debug, ours to false."""
    app = Quart(__name__)
    app.debug = True
    Mail(app)
    assert app.extensions["mailsvc"].config.debug is False


def test_celery_block_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    """The Celery/cron block, importing ``mail`` from the README's contact.py, over implicit TLS with AUTH.

    Synchronous on purpose: ``send_sync`` is for code with no event loop.
    """
    contact = import_module(write_contact_app(tmp_path), monkeypatch)
    (tmp_path / "report.py").write_text(flask_mail_blocks()[1], encoding="utf-8")
    report = import_module(tmp_path / "report.py", monkeypatch)
    handler, auth = RecordingHandler(), Authenticator("sender_id@gmail.com", "app-password")
    with threaded_smtp_server(
        handler, ssl_context=server_ssl_context, authenticator=auth, auth_require_tls=False
    ) as port:
        contact.app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_CA_FILE=ca_file)
        contact.mail.init_app(contact.app)
        assert report.send_report(["ann@example.com", "bob@example.com"]) == []
        handler.refuse["bob@example.com"] = "550 5.1.1 no such user"
        assert report.send_report(["ann@example.com", "bob@example.com"]) == ["bob@example.com"]
        handler.refuse["ann@example.com"] = "550 5.1.1 no such user"
        assert report.send_report(["ann@example.com", "bob@example.com"]) == ["ann@example.com", "bob@example.com"]
        auth.password = b"rotated"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            report.send_report(["carol@example.com"])
    assert [r.rcpt_tos for r in handler.received] == [["ann@example.com", "bob@example.com"], ["ann@example.com"]]
    assert all(str(r.message["Subject"]) == "Nightly report" for r in handler.received)
