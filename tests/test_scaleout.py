"""Scale-out on real parts: one PostgreSQL database, two hypercorn nodes, three ``mailsvc worker`` processes.

A bulk campaign is posted through both service nodes; halfway through delivery
one worker is SIGKILLed. The SMTP sink (aiosmtpd, in this test) then must hold
every Message-ID the outbox minted (zero lost), and no more duplicates than the
messages the dead worker held leased at the moment it died (those it may have
sent without recording). Every message must read ``delivered`` through the API
of both nodes. The figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.pgtools import fresh_database
from tests.servers import smtp_server

pytestmark = pytest.mark.slow  # about 80 s on two cores; still part of the default run (and .ci/run)

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "scaleout-test-key"
BATCHES, PER_BATCH = 6, 500  # 3,000 messages, three batches through each node
TOTAL = BATCHES * PER_BATCH
LEASE_SECONDS = 10.0  # long enough that a live worker never loses a lease; the dead one's come back after it
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class MessageIdSink:
    """Accepts everything and keeps the Message-ID of every message received (duplicates included)."""

    seen: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or envelope.content
        head = data.split(b"\r\n\r\n", 1)[0]
        m = _MESSAGE_ID.search(head)
        self.seen.append(m.group(1).decode() if m else "<missing>")
        return "250 OK"


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.proc.returncode}) ---\n" + "\n".join(text.splitlines()[-lines:])


def service_env(db_url: str, smtp_port: int) -> dict[str, str]:
    """What every node and worker gets: one database, one relay, fast retries, no in-process workers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "MAILSVC_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        MAILSVC_DATABASE_URL=db_url,
        MAIL_SERVER="127.0.0.1",
        MAIL_PORT=str(smtp_port),
        MAIL_DEFAULT_SENDER="svc@example.com",
        MAIL_POOL_SIZE="4",
        MAIL_TIMEOUT="20",
        MAILSVC_WORKERS="0",
        MAILSVC_API_KEYS=API_KEY,
        MAILSVC_SECRET_KEY="scaleout-secret-key-for-tests-only",
        MAILSVC_RATE_LIMIT="100000",
        MAILSVC_RATE_BURST="100000",
        MAILSVC_LEASE_SECONDS=str(LEASE_SECONDS),
        MAILSVC_CLAIM_BATCH="50",
        MAILSVC_WORKER_CONCURRENCY="50",
        MAILSVC_POLL_INTERVAL="0.5",
        MAILSVC_RETRY_FIRST="0.2",
        MAILSVC_RETRY_MAX="1",
        MAILSVC_RELAY_BACKOFF="0.2",
        MAILSVC_RELAY_BACKOFF_MAX="1",
    )
    return env


async def spawn(name: str, args: list[str], env: dict[str, str], logs: Path, pass_fds: tuple[int, ...] = ()) -> Proc:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mailsvc.cli",
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            pass_fds=pass_fds,
        )
    return Proc(name, proc, log)


async def start_node(name: str, env: dict[str, str], logs: Path) -> tuple[Proc, str]:
    """A hypercorn node on a socket bound here to port 0 and handed over (no free-port guessing)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    try:
        proc = await spawn(name, ["serve", "--bind", f"fd://{sock.fileno()}"], env, logs, (sock.fileno(),))
    finally:
        sock.close()
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(client: httpx.AsyncClient, base: str, proc: Proc) -> None:
    for _ in range(600):
        if proc.proc.returncode is not None:
            pytest.fail(f"{proc.name} exited during start-up\n{proc.tail()}")
        try:
            if (await client.get(f"{base}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"{proc.name} never answered /healthz\n{proc.tail()}")


async def stop_all(procs: list[Proc]) -> None:
    for p in procs:
        if p.proc.returncode is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.proc.wait(), 30)
        except TimeoutError:
            p.proc.kill()
            await p.proc.wait()


@pytest.fixture
async def db_url() -> AsyncIterator[str]:
    async with fresh_database("scaleout") as url:
        yield url


def bulk_body(batch: int) -> dict[str, Any]:
    return {
        "subject": "Campaign {{ n }}",
        "text": "Hello {{ name }}, this is message {{ n }}.",
        "recipients": [
            {"to": [f"user{batch}-{i}@example.com"], "context": {"n": batch * PER_BATCH + i, "name": f"User {i}"}}
            for i in range(PER_BATCH)
        ],
    }


async def test_two_nodes_three_workers_one_killed(db_url: str, tmp_path: Path) -> None:
    sink = MessageIdSink()
    procs: list[Proc] = []
    async with (
        smtp_server(sink) as smtp_port,
        httpx.AsyncClient(
            timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}, limits=httpx.Limits(max_connections=32)
        ) as client,
    ):
        env = service_env(db_url, smtp_port)
        try:
            # Both nodes start at once: each runs the migrations on open, serialised by the advisory lock.
            (node_a, url_a), (node_b, url_b) = await asyncio.gather(
                start_node("node-a", env, tmp_path), start_node("node-b", env, tmp_path)
            )
            procs += [node_a, node_b]
            await asyncio.gather(wait_ready(client, url_a, node_a), wait_ready(client, url_b, node_b))
            workers = [await spawn(f"worker-{i}", ["worker"], env, tmp_path) for i in range(3)]
            procs += workers

            nodes = [url_a, url_b]
            t0 = time.monotonic()
            replies = await asyncio.gather(
                *(client.post(f"{nodes[b % 2]}/api/messages/bulk", json=bulk_body(b)) for b in range(BATCHES))
            )
            for r in replies:
                assert r.status_code == 202, r.text
            batch_ids = [r.json()["batch_id"] for r in replies]
            t_enqueued = time.monotonic() - t0

            # Halfway through delivery, kill one worker outright.
            victim = workers[0]
            for _ in range(6000):
                if len(set(sink.seen)) >= TOTAL // 2 or victim.proc.returncode is not None:
                    break
                await asyncio.sleep(0.01)
            assert victim.proc.returncode is None, victim.tail()
            victim.proc.send_signal(signal.SIGKILL)
            await victim.proc.wait()
            at_kill = len(set(sink.seen))
            conn = await asyncpg.connect(db_url)
            try:
                # Leases are owned "host:pid:suffix": what the dead worker held is what it may have sent unrecorded.
                in_flight = await conn.fetchval(
                    "SELECT count(*) FROM mailsvc_message WHERE due_at IS NOT NULL AND lease_owner LIKE $1",
                    f"%:{victim.proc.pid}:%",
                )
                for _ in range(3000):  # the dead worker's leases expire, the others take its messages
                    if await conn.fetchval("SELECT count(*) FROM mailsvc_message WHERE due_at IS NOT NULL") == 0:
                        break
                    await asyncio.sleep(0.1)
                t_done = time.monotonic() - t0
                minted = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM mailsvc_message")}
                ids = [r["id"] for r in await conn.fetch("SELECT id FROM mailsvc_message")]
                by_state = dict(await conn.fetch("SELECT state, count(*) FROM mailsvc_message GROUP BY state"))
            finally:
                await conn.close()
            for w in workers[1:]:
                assert w.proc.returncode is None, w.tail()

            received = Counter(sink.seen)
            lost = len(minted - set(received))
            duplicates = sum(n - 1 for n in received.values())
            print(
                f"\nscale-out: {TOTAL} messages via 2 nodes, 3 workers, one SIGKILLed after {at_kill} delivered: "
                f"lost={lost} duplicates={duplicates} in_flight_at_kill={in_flight} "
                f"received={len(sink.seen)} distinct={len(received)} states={by_state}; "
                f"enqueued in {t_enqueued:.1f}s, all final after {t_done:.1f}s"
            )
            assert len(minted) == TOTAL
            assert by_state == {"delivered": TOTAL}
            assert lost == 0
            assert set(received) == minted  # nothing the outbox did not mint
            assert duplicates <= in_flight

            # Both nodes count every message delivered, and each message reads delivered on its own.
            for base in nodes:
                for batch_id in batch_ids:
                    r = await client.get(f"{base}/api/batches/{batch_id}")
                    assert r.status_code == 200, r.text
                    assert r.json()["counts"] == {"delivered": PER_BATCH}
            sem = asyncio.Semaphore(32)

            async def state_of(n: int, id_: str) -> str:
                async with sem:
                    r = await client.get(f"{nodes[n % 2]}/api/messages/{id_}")
                assert r.status_code == 200, r.text
                body = r.json()
                assert {x["state"] for x in body["recipients"]} == {"delivered"}
                return str(body["state"])

            states = await asyncio.gather(*(state_of(n, i) for n, i in enumerate(ids)))
            assert Counter(states) == {"delivered": TOTAL}
            print(f"scale-out: every message read delivered through both nodes after {time.monotonic() - t0:.1f}s")
        except BaseException:
            for p in procs:
                print(p.tail())
            raise
        finally:
            await stop_all(procs)


async def test_same_idempotency_key_posted_to_both_nodes_at_once_gives_one_message(db_url: str, tmp_path: Path) -> None:
    procs: list[Proc] = []
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        env = service_env(db_url, 9)  # no workers: the relay is never contacted
        try:
            (node_a, url_a), (node_b, url_b) = await asyncio.gather(
                start_node("node-a", env, tmp_path), start_node("node-b", env, tmp_path)
            )
            procs += [node_a, node_b]
            await asyncio.gather(wait_ready(client, url_a, node_a), wait_ready(client, url_b, node_b))
            body = {"to": ["ann@example.com"], "subject": "Order 42", "text": "Thanks for your order."}
            for round_ in range(3):
                key = f"order-42-{round_}"
                replies = await asyncio.gather(
                    *(
                        client.post(
                            f"{(url_a, url_b)[i % 2]}/api/messages", json=body, headers={"Idempotency-Key": key}
                        )
                        for i in range(10)
                    )
                )
                assert [r.status_code for r in replies] == [202] * 10, [r.text for r in replies]
                assert len({r.json()["id"] for r in replies}) == 1
                assert sum("Idempotent-Replayed" not in r.headers for r in replies) == 1
            conn = await asyncpg.connect(db_url)
            try:
                assert await conn.fetchval("SELECT count(*) FROM mailsvc_message") == 3
            finally:
                await conn.close()
        except BaseException:
            for p in procs:
                print(p.tail())
            raise
        finally:
            await stop_all(procs)
