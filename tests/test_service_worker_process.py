"""The service's delivery workers as a process of their own (mailsvc/workerprocess.py), on real parts.

``hypercorn asgi:app`` in a session of its own with ``MAILSVC_WORKER_PROCESS=1`` (what a real relay on a
machine with a second core gets by default), delivering to Postfix's smtp-sink (or the aiosmtpd stand-in).
The poll interval is two minutes in every test here: whatever arrives within the tests' (generous) bounds
came from the service's wake-up, not from a poll.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from mailsvc.config import ServiceConfig
from mailsvc.workerprocess import decide
from tests.procs import free_port
from tests.smtp_sink import SMTPSink
from tests.test_service_crash import AUTH, Service, ready, service, service_env, wait_for

pytestmark = pytest.mark.slow

_STARTED = re.compile(r"started the delivery worker process \(pid (\d+)\)")


def env_for(tmp_path: Path, sink_port: int, **settings: str) -> dict[str, str]:
    return service_env(tmp_path, sink_port, MAILSVC_WORKER_PROCESS="1", MAILSVC_POLL_INTERVAL="120", **settings)


def worker_pids(svc: Service) -> list[int]:
    return [int(p) for p in _STARTED.findall(svc.log.read_text(errors="replace"))]


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def post_one(client: httpx.AsyncClient, svc: Service, n: int) -> str:
    r = await client.post(
        f"{svc.base}/api/messages", json={"to": f"u{n}@example.com", "subject": f"s{n}", "text": "t"}, headers=AUTH
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def delivered(client: httpx.AsyncClient, svc: Service, msg: str, what: str) -> None:
    """Wait for ``msg`` to be delivered: within a minute, half the poll interval (a bound against hanging)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (state := (await client.get(f"{svc.base}/api/messages/{msg}", headers=AUTH)).json()["state"]) != "delivered":
        if loop.time() > deadline or svc.proc.poll() is not None:
            pytest.fail(f"{what}: still {state} after a minute; the poll would take 120 s\n{svc.tail()}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(tmp_path: Path, **settings: str) -> AsyncIterator[tuple[Service, httpx.AsyncClient, SMTPSink, int]]:
    """The service, ready, a client, its sink, and the pid of its one worker process once it has started."""
    with (
        SMTPSink(tmp_path / "sink") as sink,
        service(tmp_path, env_for(tmp_path, sink.port, **settings), "svc") as svc,
    ):
        async with httpx.AsyncClient(timeout=30) as client:
            await ready(client, svc)
            await wait_for(lambda: bool(worker_pids(svc)), 60, svc, "the worker process to start")
            (pid,) = worker_pids(svc)
            yield svc, client, sink, pid


async def test_the_service_wakes_its_worker_process_on_each_accepted_message(tmp_path: Path) -> None:
    async with running(tmp_path) as (svc, client, sink, pid):
        assert os.getpgid(pid) == svc.proc.pid, "the worker process must die with the service's group"
        for n in range(3):  # idle between them: each is delivered because the service woke the worker
            msg = await post_one(client, svc, n)
            await delivered(client, svc, msg, f"message {n}")
            assert sink.count() == n + 1
            await asyncio.sleep(0.3)
        assert worker_pids(svc) == [pid], "one worker process all along"


async def test_the_worker_process_stops_when_the_web_process_dies(tmp_path: Path) -> None:
    async with running(tmp_path) as (svc, _, _, pid):
        web = parent_of(pid)  # hypercorn's worker child, which runs the app
        os.kill(web, signal.SIGKILL)  # that process alone, not its group: its pipe to the worker closes
        await wait_for(lambda: not alive(pid), 60, None, "the orphaned worker process to stop")


async def test_a_worker_process_that_dies_is_started_again(tmp_path: Path) -> None:
    async with running(tmp_path) as (svc, client, sink, first):
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: len(worker_pids(svc)) == 2, 60, svc, "a second worker process")
        log = svc.log.read_text(errors="replace")
        assert f"the delivery worker process (pid {first}) exited with -9; starting another" in log
        second = worker_pids(svc)[1]
        assert second != first and alive(second)
        ready_now = (await client.get(f"{svc.base}/readyz", headers=AUTH)).json()
        assert ready_now["worker_process"] == {"pid": second, "state": "running", "restarts": 1}
        anonymous = (await client.get(f"{svc.base}/readyz")).json()
        assert "worker_process" not in anonymous, "an anonymous caller learns nothing of the process"
        msg = await post_one(client, svc, 0)
        await delivered(client, svc, msg, "the message after the restart")
        assert sink.count() == 1


async def test_the_worker_process_serves_its_own_metrics_where_told(tmp_path: Path) -> None:
    """The web process's /metrics has no worker figures then: the child's are at MAILSVC_WORKER_METRICS_BIND."""
    port = free_port()
    async with running(tmp_path, MAILSVC_WORKER_METRICS_BIND=f"127.0.0.1:{port}") as (svc, client, _, _):
        msg = await post_one(client, svc, 0)
        await delivered(client, svc, msg, "the message")
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'mailsvc_recipients_total{outcome="delivered",reply_class="2xx"} 1.0' in text
        assert "mailsvc_worker_inflight" in text


@pytest.mark.parametrize(
    ("given", "cores", "expected"),
    [
        ({}, 2, True),  # a real relay, a core to spare
        ({}, 1, False),  # one core: the second process would only take turns with the first
        ({"dev_mode": True}, 8, False),  # dev mode delivers to the dev inbox in the same process
        ({"workers": 0}, 8, False),  # no workers at all (they run elsewhere)
        ({"worker_process": False}, 8, False),  # the operator's choice stands
        ({"worker_process": True}, 1, True),
    ],
)
def test_where_the_service_runs_its_workers(
    given: dict[str, object], cores: int, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mailsvc.workerprocess.usable_cores", lambda: cores)
    service = ServiceConfig(**{"dev_mode": False, **given})  # type: ignore[arg-type]
    assert decide(service).worker_process is expected
    assert ServiceConfig(dev_mode=False).worker_process is None, "only the entry points decide"


async def test_ctrl_c_stops_the_service_and_its_worker_process_cleanly(tmp_path: Path) -> None:
    """SIGINT to the whole foreground group, as a terminal sends it: the child leaves stopping to the service."""
    async with running(tmp_path) as (svc, client, _, pid):
        msg = await post_one(client, svc, 0)
        await delivered(client, svc, msg, "the message")
        os.killpg(svc.proc.pid, signal.SIGINT)
        await asyncio.to_thread(svc.proc.wait, 60)
        await wait_for(lambda: not alive(pid), 60, None, "the worker process to stop")
        log = svc.log.read_text(errors="replace")
        assert "exited with" not in log, "the service took its own stop for a crash of its worker"
        assert "mailsvc worker: stopped; delivered 1," in log
