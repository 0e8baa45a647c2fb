"""Slow and abusive clients against a real ``mailsvc serve`` (hypercorn in-process), over raw sockets.

Issue 13, finding 9: slow request bodies were held for ever, a flood of them ran the process out of file
descriptors, and asyncio then logged a traceback per failed accept(). Finding 10 (part): a keep-alive request
sent after a POST answered 401 before its body was read got no answer at all.

Each server runs in a new session and is stopped as a group; its socket is bound here to port 0 and handed
over (``--bind fd://N``). Numbers are kept small for CI; the only time bounds are generous "within" bounds.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.procs import stop_group

ROOT = Path(__file__).resolve().parent.parent
KEY = "slow-clients-key"
BODY = b'{"to": "ann@example.com", "subject": "s", "text": "t"}'


@dataclass
class Served:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _env(tmp: Path, overrides: dict[str, str]) -> dict[str, str]:
    """A real relay address that nothing listens on, a key, no in-process workers: nothing is ever sent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    env |= {
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": "9",
        "MAIL_DEFAULT_SENDER": "svc@example.com",
        "MAILSVC_DATABASE_URL": f"sqlite:///{tmp}/outbox.sqlite3",
        "MAILSVC_API_KEYS": KEY,
        "MAILSVC_WORKERS": "0",
        "MAILSVC_RATE_LIMIT": "0",
    }
    return env | overrides


def _command(open_files: int | None, args: Sequence[str]) -> list[str]:
    """``python -m mailsvc.cli ...`` (or hypercorn's CLI), with the open-file limit lowered first when asked."""
    if args[0] == "hypercorn":
        return [sys.executable, "-m", *args]
    if open_files is None:
        return [sys.executable, "-m", "mailsvc.cli", *args]
    code = (
        "import resource, runpy, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({open_files}, {open_files}))\n"
        f"sys.argv = ['mailsvc', *{list(args)!r}]\n"
        "runpy.run_module('mailsvc.cli', run_name='__main__')\n"
    )
    return [sys.executable, "-c", code]


@asynccontextmanager
async def serve(
    tmp: Path, open_files: int | None = None, *, command: Sequence[str] = ("serve",), **overrides: str
) -> AsyncIterator[Served]:
    """``mailsvc serve`` (or ``command``, e.g. hypercorn's CLI) on a socket bound here and handed over."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _command(open_files, [*command, "--bind", f"fd://{sock.fileno()}"]),
            cwd=tmp,
            env=_env(tmp, overrides),
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
            start_new_session=True,
        )
    sock.close()
    served = Served(port, log, proc)
    try:
        await _wait_healthy(served)
        yield served
    finally:
        stop_group(proc)


async def _wait_healthy(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base, timeout=2) as client:
        for _ in range(600):  # start-up wait, not an assertion on time
            if served.proc.poll() is not None:
                pytest.fail(f"mailsvc serve exited ({served.proc.returncode}):\n{served.text()}")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    pytest.fail(f"mailsvc serve never answered /healthz:\n{served.text()}")


def _post_head(length: int, key: str = KEY, path: str = "/api/messages") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


async def _read_responses(
    reader: asyncio.StreamReader, n: int, timeout: float = 10
) -> list[tuple[int, dict[str, str]]]:
    """Up to ``n`` HTTP/1.1 responses (status, lower-cased headers), framed by Content-Length; fewer on EOF."""
    out: list[tuple[int, dict[str, str]]] = []
    async with asyncio.timeout(timeout):
        for _ in range(n):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
            await reader.readexactly(int(headers.get("content-length", "0")))
            out.append((status, headers))
    return out


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the server closes (EOF or reset) within ``seconds``, whatever it sent before."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


# --- finding 10: an early 401 on a keep-alive connection --------------------------------------------------


async def test_next_request_after_an_early_401_is_answered(tmp_path: Path) -> None:
    """The body arrives after the 401 was decided: it is drained and the connection serves the next request."""
    async with serve(tmp_path) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(_post_head(len(BODY), key="wrong"))
        await writer.drain()
        await asyncio.sleep(0.3)  # the 401 is decided before any of the body is read
        writer.write(BODY + HEALTHZ)
        await writer.drain()
        responses = await _read_responses(reader, 2)
        writer.close()
        assert await _pending(served) == 0
    assert [status for status, _ in responses] == [401, 200]
    assert "close" not in responses[0][1].get("connection", "")


async def test_early_401s_never_drop_the_next_request(tmp_path: Path) -> None:
    """The race of the finding (about 1-2 % dropped): headers and body in separate writes, the next at once.

    The failed-key limit per client address is raised here: 200 wrong keys from one address would
    otherwise (rightly) turn into 429s after the tenth, which is not what this test is about.
    """
    async with serve(tmp_path, MAILSVC_AUTH_FAILURE_LIMIT="1000") as served:
        statuses: list[int] = []
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(_post_head(len(BODY), key="wrong"))
            await writer.drain()
            writer.write(BODY)
            writer.write(HEALTHZ)
            await writer.drain()
            statuses += [status for status, _ in await _read_responses(reader, 2)]
            writer.close()
    assert statuses == [401, 200] * 200


async def test_a_large_unread_body_gets_connection_close(tmp_path: Path) -> None:
    """Too big to drain: the 401 says ``Connection: close`` and arrives whole; the connection then closes."""
    async with serve(tmp_path) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(_post_head(4 * 1024 * 1024, key="wrong") + b"x" * 65536)
        await writer.drain()
        [(status, headers)] = await _read_responses(reader, 1)
        assert status == 401 and headers["connection"] == "close"
        assert await _closed_within(reader, 15)
        writer.close()


async def test_413_from_the_content_length_alone_says_close(tmp_path: Path) -> None:
    async with serve(tmp_path, MAILSVC_MAX_REQUEST_BYTES="65536") as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(_post_head(10 * 1024 * 1024))
        await writer.drain()
        [(status, headers)] = await _read_responses(reader, 1)
        assert status == 413 and headers["connection"] == "close"
        assert await _closed_within(reader, 15)
        writer.close()


# --- finding 9: slow bodies, a connection cap, running out of descriptors -----------------------------------


async def _slow_client(port: int, dribble: bool, results: list[float]) -> None:
    """Headers, then the body never (or one byte at a time); records how long until the server closed."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post_head(1000))
    await writer.drain()
    closed = asyncio.create_task(_closed_within(reader, 30))
    try:
        while dribble and not closed.done():
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.3)
    except ConnectionError:
        pass
    if await closed:
        results.append(time.monotonic() - start)
    writer.close()


async def test_slow_bodies_are_closed_and_healthz_answers_meanwhile(tmp_path: Path) -> None:
    """Health probes are answered while the slow bodies are still held, and every slow body is closed.

    No timing is asserted: a probe must succeed (a generous timeout only stops a hang) at a moment when
    slow connections are still open, which proves they do not starve the server. The 200 connections are
    opened in steps so that the listen backlog of a loaded machine is not what the test measures.
    """
    async with serve(tmp_path, MAILSVC_BODY_TIMEOUT="2") as served:
        closed_after: list[float] = []
        clients: list[asyncio.Task[None]] = []
        try:
            for i in range(200):
                clients.append(asyncio.create_task(_slow_client(served.port, dribble=i % 2 == 1, results=closed_after)))
                if i % 20 == 19:
                    await asyncio.sleep(0.05)
            open_at_probe: list[int] = []
            async with httpx.AsyncClient(base_url=served.base, timeout=15) as client:
                while not all(c.done() for c in clients):
                    held = len(clients) - len(closed_after)
                    assert (await client.get("/healthz")).status_code == 200
                    open_at_probe.append(held)
                    await asyncio.sleep(0.2)
            await asyncio.gather(*clients)
        finally:
            for c in clients:
                c.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
        assert len(closed_after) == 200, f"{200 - len(closed_after)} slow connections still open after 30 s"
        assert max(open_at_probe) >= 100, f"no probe was answered while most slow bodies were held: {open_at_probe}"
        assert max(closed_after) < 25  # body timeout + drain + linger: a bound against "never", not a speed claim
        outbox = await _pending(served)
    assert outbox == 0


async def _pending(served: Served) -> int:
    async with httpx.AsyncClient(base_url=served.base) as client:
        r = await client.get("/readyz", headers={"Authorization": f"Bearer {KEY}"})
    return int(r.json()["pending"])


async def test_headers_past_the_limit_get_431(tmp_path: Path) -> None:
    """h11 counts what it buffers of an unfinished head, so the test sends more than one read (64 KiB)."""
    async with serve(tmp_path, MAILSVC_MAX_HEADER_BYTES="2048") as served, httpx.AsyncClient(base_url=served.base) as c:
        assert (await c.get("/healthz", headers={"X-Pad": "a" * 1000})).status_code == 200
        assert (await c.get("/healthz", headers={"X-Pad": "a" * 100_000})).status_code == 431


async def test_connections_beyond_the_cap_get_503_until_one_closes(tmp_path: Path) -> None:
    async with serve(tmp_path, MAILSVC_MAX_CONNECTIONS="20", MAILSVC_KEEP_ALIVE_TIMEOUT="3") as served:
        idle = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(20)]
        async with httpx.AsyncClient(base_url=served.base, timeout=5) as client:
            for _ in range(100):  # the 20 are accepted as soon as the server's loop runs
                r = await client.get("/healthz")
                if r.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            for _, writer in idle:
                writer.close()
            for _ in range(300):  # hypercorn holds a connection the client closed until its keep-alive timer ends
                if (await client.get("/healthz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the cap did not free up after the idle connections closed")
    assert len(re.findall(r"refused with 503", served.text())) >= 1


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts descriptors through /proc")
async def test_running_out_of_descriptors_logs_once_per_interval(tmp_path: Path) -> None:
    """No cap, an open-file limit a little above what the idle server uses, three times that many clients."""
    limit = 40
    async with serve(tmp_path, open_files=limit, MAILSVC_MAX_CONNECTIONS="0", MAILSVC_KEEP_ALIVE_TIMEOUT="2") as served:
        spare = limit - _open_files(served.proc.pid)
        assert 10 <= spare < 60, spare
        clients = []
        for _ in range(3 * limit):
            try:
                clients.append(await asyncio.open_connection("127.0.0.1", served.port))
            except OSError:
                break  # the listen backlog is full too
        await asyncio.sleep(4)  # four of asyncio's one-second accept retries
        text = served.text()
        for _, writer in clients:
            writer.close()
        async with httpx.AsyncClient(base_url=served.base, timeout=5) as client:
            for _ in range(100):  # it recovers once the descriptors are back
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"no /healthz after the clients left:\n{served.text()[-3000:]}")
    assert len(re.findall("cannot accept connections", text)) == 1, text[-3000:]
    assert "Traceback" not in text and "out of system resource" not in text


# --- hypercorn's own command line gets the same limits through hypercorn_config.py -------------------------

HYPERCORN = ("hypercorn", "--config", "python:hypercorn_config", "asgi:app")


async def test_hypercorn_config_module_applies_the_settings(tmp_path: Path) -> None:
    """An idle connection closes after MAILSVC_KEEP_ALIVE_TIMEOUT (1 s here, hypercorn's default is 5 s)."""
    async with serve(tmp_path, command=HYPERCORN, MAILSVC_KEEP_ALIVE_TIMEOUT="1") as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        assert await _closed_within(reader, 4)
        writer.close()


async def test_early_401_keeps_the_connection_under_hypercorn_asgi_app(tmp_path: Path) -> None:
    async with serve(tmp_path, command=HYPERCORN) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(_post_head(len(BODY), key="wrong"))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(BODY + HEALTHZ)
        await writer.drain()
        responses = await _read_responses(reader, 2)
        writer.close()
    assert [status for status, _ in responses] == [401, 200]
