"""The app's parts on one typed object, started and stopped as ``while_serving`` generators."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from quart import Quart

from mailsvc import MailConfig, Message
from mailsvc.app import create_app
from mailsvc.config import ServiceConfig
from mailsvc.services import OutboxNotOpenError, services


def dev_app(tmp_path: Path) -> Quart:
    return create_app(
        MailConfig(server="127.0.0.1", port=8025, default_sender="app@example.com"),
        ServiceConfig(  # type: ignore[call-arg]
            database_url=f"sqlite:///{tmp_path}/o.sqlite3",
            templates=Path("templates"),
            dev_mode=True,
            dev_smtp_port=0,
            workers=1,
            poll_interval=0.05,
        ),
    )


def test_an_app_not_built_by_create_app_says_so() -> None:
    with pytest.raises(RuntimeError, match="create_app"):
        services(Quart(__name__))


async def test_the_outbox_exists_only_while_the_app_serves(tmp_path: Path) -> None:
    app = dev_app(tmp_path)
    with pytest.raises(OutboxNotOpenError, match="while the app serves"):
        services(app).open_outbox()
    async with app.test_app():
        assert services(app).open_outbox() is services(app).outbox
    with pytest.raises(OutboxNotOpenError):
        services(app).open_outbox()


async def test_parts_are_wired_while_serving_and_cleared_after(tmp_path: Path) -> None:
    """The workers deliver to the port the dev inbox published; no part edits Quart's hook lists by hand."""
    app = dev_app(tmp_path)
    parts = services(app)
    assert parts.dev_inbox is not None and parts.web is not None and parts.previews is not None
    assert not app.after_serving_funcs or all("devinbox" not in f.__module__ for f in app.after_serving_funcs)
    async with app.test_app():
        assert parts.mail.config.port == parts.dev_inbox.address[1] != 8025
        assert parts.workers is not None
        env = Message("last one", recipients=["ann@example.com"], body="x", sender="app@example.com").build()
        [id_] = (await parts.open_outbox().enqueue([env])).ids
        for _ in range(200):
            if (await parts.open_outbox().status(id_)).state == "delivered":
                break
            await asyncio.sleep(0.02)
        assert (await parts.open_outbox().status(id_)).state == "delivered"
        total, listed = await parts.dev_inbox.store.search()
    assert total == 1 and [m.subject for m in listed] == ["last one"]
    assert parts.outbox is None and parts.workers is None
