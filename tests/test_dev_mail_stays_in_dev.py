"""Issue 14, friction 5: mail accepted in dev mode is never handed to a real relay."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsvc.app import create_app
from mailsvc.message import Message
from mailsvc.outbox import SqliteOutbox
from mailsvc.services import services
from tests.servers import RecordingHandler


def settings_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> object:
    monkeypatch.chdir(tmp_path)
    for k in ("MAIL_SERVER", "MAIL_PORT", "MAIL_DEFAULT_SENDER", "MAILSVC_API_KEYS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MAILSVC_DATABASE_URL", f"sqlite:///{tmp_path}/mailsvc.sqlite3")
    monkeypatch.setenv("MAILSVC_WORKERS", "0")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from settings import load_settings

    return load_settings()


async def test_dev_mode_queues_into_its_own_outbox_and_production_leaves_it_alone(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    smtp_port: int,
    handler: RecordingHandler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dev = settings_for(monkeypatch, tmp_path)
    dev_service = dev.service_config()  # type: ignore[attr-defined]
    assert dev_service.database_url == f"sqlite:///{tmp_path}/mailsvc.dev.sqlite3"
    async with SqliteOutbox(tmp_path / "mailsvc.dev.sqlite3") as outbox:  # what the dev service accepted
        env = Message("dev only", recipients=["tester@example.com"], body="x", sender="dev@localhost").build()
        await outbox.enqueue([env])

    prod = settings_for(
        monkeypatch,
        tmp_path,
        MAIL_SERVER="127.0.0.1",
        MAIL_PORT=str(smtp_port),
        MAIL_DEFAULT_SENDER="shop@example.com",
        MAILSVC_API_KEYS="k",
        MAILSVC_WORKERS="1",
        MAILSVC_POLL_INTERVAL="0.05",
    )
    service = prod.service_config()  # type: ignore[attr-defined]
    assert service.database_url == f"sqlite:///{tmp_path}/mailsvc.sqlite3"
    app = create_app(prod.mail_config(), service)  # type: ignore[attr-defined]
    with caplog.at_level("WARNING", logger="mailsvc"):
        async with app.test_app():
            outbox = services(app).open_outbox()
            assert await outbox.pending_count() == 0
    assert "1 message(s) accepted in dev mode remain undelivered" in caplog.text
    assert "mailsvc.dev.sqlite3" in caplog.text
    assert handler.received == []  # the real relay never saw the dev message
