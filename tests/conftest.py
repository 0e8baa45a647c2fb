"""Shared fixtures: trustme certificates and SMTP servers on port 0."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trustme

from tests.servers import RecordingHandler, smtp_server


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ssl_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
async def smtp_port(handler: RecordingHandler) -> AsyncIterator[int]:
    async with smtp_server(handler) as port:
        yield port
