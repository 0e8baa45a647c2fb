"""``GET /metrics`` on an address of its own, without a key (``MAILSVC_METRICS_BIND``, ``worker --metrics-bind``).

Why a tiny asyncio server and not prometheus_client's ``start_http_server``: that one runs
in a thread and calls collectors synchronously, but the queue gauges are an async read of
the outbox in the process's own loop. This server answers one request per connection,
``GET /metrics`` only (anything else: 404, 405), with a deadline and a size cap on the
request head, so a port left open to a hostile network costs nothing but a short read.
Bind it to a private address: the figures are the operator's.
"""

from __future__ import annotations

import asyncio
import logging

from .errors import ConfigError
from .metrics import CONTENT_TYPE, Metrics

__all__ = ["MetricsServer", "parse_bind"]

log = logging.getLogger("mailsvc.metrics")
_HEAD_LIMIT = 8192
_HEAD_SECONDS = 5.0


def parse_bind(value: str, setting: str = "MAILSVC_METRICS_BIND") -> tuple[str, int]:
    """``host:port`` (``[::1]:9100`` for IPv6; port 0 picks a free one) or a :class:`ConfigError` naming ``setting``.

    >>> parse_bind("127.0.0.1:9100"), parse_bind("[::1]:0")
    (('127.0.0.1', 9100), ('::1', 0))
    """
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(setting, f"{value!r} is not host:port (e.g. 127.0.0.1:9100)")
    return host, int(port)


class MetricsServer:
    """Serve ``metrics`` at ``http://host:port/metrics`` while started; :attr:`port` is the bound port."""

    def __init__(self, metrics: Metrics, bind: str, setting: str = "MAILSVC_METRICS_BIND") -> None:
        self.metrics = metrics
        self.host, self.port = parse_bind(bind, setting)
        self.setting = setting
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=_HEAD_LIMIT)
        except OSError as exc:
            raise ConfigError(self.setting, f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_SECONDS)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            method, _, rest = head.partition(b" ")
            target = rest.partition(b" ")[0].partition(b"?")[0]
            if target != b"/metrics":
                status, body, ctype = b"404 Not Found", b"not found\n", b"text/plain"
            elif method not in (b"GET", b"HEAD"):
                status, body, ctype = b"405 Method Not Allowed", b"GET only\n", b"text/plain"
            else:
                status, body, ctype = b"200 OK", await self.metrics.render(), CONTENT_TYPE.encode()
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + (body if method != b"HEAD" else b"")
            )
            await asyncio.wait_for(writer.drain(), _HEAD_SECONDS)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
