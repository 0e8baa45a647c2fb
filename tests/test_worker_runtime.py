"""In-process workers started and stopped with the Quart app's lifespan (``runtime.register``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mailsvc import MailConfig, Message
from mailsvc.app import create_app
from mailsvc.config import ServiceConfig, WebConfig
from mailsvc.outbox import Outbox
from mailsvc.services import services
from tests.servers import RecordingHandler

FAST: dict[str, Any] = dict(
    retry_first=0.05,
    retry_max=0.2,
    relay_backoff=0.05,
    relay_backoff_max=0.2,
    poll_interval=0.02,
    dev_mode=False,
    web=WebConfig(allow_anonymous=True),
)


def app_for(tmp_path: Path, port: int, **service: Any) -> Any:
    return create_app(
        MailConfig(server="127.0.0.1", port=port, default_sender="shop@example.com", timeout=5),
        ServiceConfig(database_url=f"sqlite:///{tmp_path / 'outbox.sqlite3'}", **{**FAST, **service}),
    )


async def wait_delivered(outbox: Outbox, id_: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while (status := await outbox.status(id_)).state != "delivered":
        if loop.time() > deadline:
            pytest.fail(f"not delivered: {status}")
        await asyncio.sleep(0.02)


async def test_app_lifespan_opens_outbox_and_runs_workers(
    tmp_path: Path, smtp_port: int, handler: RecordingHandler
) -> None:
    app = app_for(tmp_path, smtp_port, workers=2)
    async with app.test_app():
        outbox: Outbox = services(app).open_outbox()
        env = Message("Hi", recipients=["ann@example.com"], body="x", sender="shop@example.com").build()
        [id_] = (await outbox.enqueue([env])).ids
        await wait_delivered(outbox, id_)
        group = services(app).workers
        assert group is not None and len(group.workers) == 2
    assert services(app).outbox is None and services(app).workers is None
    assert [str(r.message["Message-ID"]) for r in handler.received] == [env.message_id]


async def test_workers_setting_zero_runs_none(tmp_path: Path, smtp_port: int, handler: RecordingHandler) -> None:
    app = app_for(tmp_path, smtp_port, workers=0)
    async with app.test_app():
        outbox: Outbox = services(app).open_outbox()
        env = Message("Hi", recipients=["ann@example.com"], body="x", sender="shop@example.com").build()
        [id_] = (await outbox.enqueue([env])).ids
        assert services(app).workers is None
        await asyncio.sleep(0.2)
        assert (await outbox.status(id_)).state == "queued"
    assert handler.received == []


async def test_workers_use_the_mail_config_as_it_is_at_start(
    tmp_path: Path, smtp_port: int, handler: RecordingHandler
) -> None:
    """A hook that runs before the workers start (as the dev inbox's wiring does) may repoint the Mail state."""
    app = app_for(tmp_path, 1, workers=1)  # port 1: nothing listens there
    state = app.extensions["mailsvc"]

    async def repoint() -> None:
        state.config = state.config.model_copy(update={"port": smtp_port})

    app.before_serving_funcs.insert(0, repoint)
    async with app.test_app():
        outbox: Outbox = services(app).open_outbox()
        env = Message("Hi", recipients=["ann@example.com"], body="x", sender="shop@example.com").build()
        [id_] = (await outbox.enqueue([env])).ids
        await wait_delivered(outbox, id_)
    assert len(handler.received) == 1
