"""Small builders shared by the library tests (configs pointing at the test servers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mailsvc import Mail, MailConfig

SENDER = "shop@example.com"
USER, PASSWORD = "me@example.com", "app-password"


def config(port: int, **overrides: Any) -> MailConfig:
    """A MailConfig for a test server on 127.0.0.1 with a short overall deadline."""
    data: dict[str, Any] = {"server": "127.0.0.1", "port": port, "default_sender": SENDER, "timeout": 5.0}
    data.update(overrides)
    return MailConfig(**data)


@asynccontextmanager
async def standalone(cfg: MailConfig) -> AsyncIterator[Mail]:
    """A Mail without an app whose pool is closed at the end of the block."""
    mail = Mail(config=cfg)
    try:
        yield mail
    finally:
        await mail.state.aclose()
