"""Builders for the web tests: the real app on a tmp SQLite outbox, pointed at a real aiosmtpd sink."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from quart import Quart
from quart.typing import TestClientProtocol

from mailsvc.app import create_app
from mailsvc.config import MailConfig, ServiceConfig, WebConfig
from mailsvc.outbox import Outbox
from mailsvc.services import services
from tests.servers import RecordingHandler

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
SENDER = "svc@example.com"


@dataclass
class Svc:
    app: Quart
    client: TestClientProtocol
    handler: RecordingHandler

    @property
    def outbox(self) -> Outbox:
        return services(self.app).open_outbox()

    async def pending(self) -> int:
        return await self.outbox.pending_count()

    async def delivered(self, n: int, timeout: float = 15.0) -> list[Any]:
        """Wait until the sink holds ``n`` messages (a guard against hanging, not a timed assertion)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.handler.received) < n and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return self.handler.received

    async def settle(self) -> None:
        """Wait until the outbox has nothing pending (workers done)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        while await self.pending() and loop.time() < deadline:
            await asyncio.sleep(0.02)


def service_config(
    tmp_path: Path, *, workers: int = 1, dev_mode: bool = False, service: dict[str, Any] | None = None, **web: Any
) -> ServiceConfig:
    web.setdefault("api_keys", (SecretStr(KEY),))
    web.setdefault("secure_cookies", False)
    defaults = {"database_url": f"sqlite:///{tmp_path}/outbox.sqlite3", "poll_interval": 0.02}
    return ServiceConfig(
        dev_mode=dev_mode,
        workers=workers,
        templates=TEMPLATES,
        web=WebConfig(**web),
        **{**defaults, "retry_first": 0.05, "retry_max": 0.1, **(service or {})},
    )


@asynccontextmanager
async def running(port: int, handler: RecordingHandler, tmp_path: Path, **kwargs: Any) -> AsyncIterator[Svc]:
    """The app with its lifespan running (outbox open, workers started) and a test client."""
    app = create_app(
        MailConfig(server="127.0.0.1", port=port, default_sender=SENDER, timeout=5.0),
        service_config(tmp_path, **kwargs),
    )
    async with app.test_app() as test_app:
        yield Svc(app, test_app.test_client(), handler)


def hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden field {name}"
    return m.group(1)
