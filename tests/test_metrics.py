"""``GET /metrics`` through the real app and two real ``mailsvc worker`` processes, against a real relay.

The figures are checked against the outbox after a known workload: N messages accepted by the
app, k of them refused by the aiosmtpd relay with 550, delivered by two worker processes whose
own ``--metrics-bind`` endpoints are scraped. Counters are per process (summed here as Prometheus
would); the queue gauges are read from the outbox, so every process reports the same.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailsvc.app import create_app
from mailsvc.config import MailConfig, ServiceConfig
from mailsvc.metrics import Metrics
from mailsvc.metricsserver import MetricsServer
from mailsvc.outbox import SqliteOutbox
from mailsvc.outbox.base import RecipientOutcome
from tests.pgtools import fresh_schema
from tests.procs import stop_group
from tests.servers import RecordingHandler
from tests.test_worker_process import REPO, bulk
from tests.webkit import KEY, SENDER, service_config

ADMIN = "ops-admin-key"
SENDER_ONLY = "shop-sender-key"
TENANTS = {
    "shop": {"keys": [KEY, {"key": SENDER_ONLY, "scopes": ["send"]}]},
    "ops": {"keys": [{"key": ADMIN, "scopes": ["admin"]}]},
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels); parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def app_config(tmp_path: Path, database_url: str, workers: int = 0, **service: Any) -> ServiceConfig:
    keys = tmp_path / "tenants.json"
    keys.write_text(json.dumps(TENANTS), encoding="utf-8")
    return service_config(
        tmp_path,
        workers=workers,
        api_keys=(),
        api_keys_file=keys,
        service={"database_url": database_url, **service},
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("met") as url:
            yield url


def start_worker(tmp_path: Path, name: str, database_url: str, relay_port: int) -> subprocess.Popen[bytes]:
    """``mailsvc worker --metrics-bind 127.0.0.1:0`` in a session of its own (stopped as a group)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "MAILSVC_SETTINGS_MODULE": "settings",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(relay_port),
        "MAIL_DEFAULT_SENDER": SENDER,
        "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_POLL_INTERVAL": "0.05",
        "MAILSVC_API_KEYS": "unused-but-required",
        "MAILSVC_LOG_FORMAT": "json",
    }
    log = open(tmp_path / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailsvc.cli", "worker", "--metrics-bind", "127.0.0.1:0"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc


async def metrics_port(tmp_path: Path, name: str, proc: subprocess.Popen[bytes]) -> int:
    for _ in range(1500):
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", (tmp_path / f"{name}.log").read_text())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            pytest.fail(f"{name} exited: {(tmp_path / f'{name}.log').read_text()}")
        await asyncio.sleep(0.02)
    pytest.fail(f"{name} never said where its metrics are")


async def test_metrics_match_the_outbox_across_two_worker_processes(
    tmp_path: Path, smtp_port: int, handler: RecordingHandler, database_url: str
) -> None:
    n, refused = 12, 3
    handler.refuse = {f"bad{i}@example.com": "550 5.1.1 no such user" for i in range(refused)}
    app = create_app(
        MailConfig(server="127.0.0.1", port=smtp_port, default_sender=SENDER, timeout=5.0),
        app_config(tmp_path, database_url),
    )
    workers = []
    async with app.test_app() as test_app, httpx.AsyncClient(timeout=10) as http:
        client = test_app.test_client()
        ids = []
        for i in range(n):
            to = f"bad{i}@example.com" if i < refused else f"good{i}@example.com"
            resp = await client.post("/api/messages", json={"to": to, "subject": "s", "text": "t"}, headers=bearer(KEY))
            assert resp.status_code == 202, await resp.get_data()
            ids.append((await resp.get_json())["id"])
        before = samples((await (await client.get("/metrics", headers=bearer(ADMIN))).get_data()).decode())
        assert value(before, "mailsvc_messages_accepted_total") == n
        assert value(before, "mailsvc_outbox_messages", state="queued") == n
        assert value(before, "mailsvc_enqueue_seconds_count") == n
        try:
            workers = [start_worker(tmp_path, f"w{i}", database_url, smtp_port) for i in range(2)]
            ports = [await metrics_port(tmp_path, f"w{i}", w) for i, w in enumerate(workers)]
            outbox = app.extensions["mailsvc.services"].outbox
            for _ in range(1500):  # until both workers have recorded every outcome
                if sum((await outbox.queue_stats()).by_state.values()) == 0:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the workers did not finish")
            scrapes = [samples((await http.get(f"http://127.0.0.1:{p}/metrics")).text) for p in ports]
        finally:
            for w in workers:
                stop_group(w)
        after = samples((await (await client.get("/metrics", headers=bearer(ADMIN))).get_data()).decode())
        states = [(await outbox.status(i)).recipients[0] for i in ids]

    # What the outbox says, and what the metrics say, summed over the processes as Prometheus would.
    delivered = sum(1 for r in states if r.state == "delivered")
    failed = sum(1 for r in states if r.state == "failed" and r.last_code == 550)
    assert (delivered, failed) == (n - refused, refused)
    assert (
        sum(value(s, "mailsvc_recipients_total", outcome="delivered", reply_class="2xx") for s in scrapes) == delivered
    )
    assert sum(value(s, "mailsvc_recipients_total", outcome="failed", reply_class="5xx") for s in scrapes) == failed
    assert sum(value(s, "mailsvc_smtp_send_seconds_count") for s in scrapes) == n
    for s in [after, *scrapes]:  # the queue, read from the outbox: the same from every process
        assert value(s, "mailsvc_outbox_up") == 1
        for state in ("queued", "sending", "deferred"):
            assert (("mailsvc_outbox_messages", (("state", state),)) in s) and value(
                s, "mailsvc_outbox_messages", state=state
            ) == 0
        assert value(s, "mailsvc_outbox_oldest_due_seconds") == 0
    for s in scrapes:  # each worker's own: nothing in hand, the relay healthy
        assert value(s, "mailsvc_worker_inflight") == 0
        assert value(s, "mailsvc_relay_up") == 1
        assert value(s, "mailsvc_messages_accepted_total") == 0
    assert value(after, "mailsvc_messages_accepted_total") == n
    # The workers logged JSON (MAILSVC_LOG_FORMAT=json): one object per line, outcomes as fields.
    lines = [
        json.loads(line)
        for i in range(2)
        for line in (tmp_path / f"w{i}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    outcomes = [
        d for line in lines if line.get("fields", {}).get("event") == "delivery" for d in line["fields"]["deliveries"]
    ]
    assert sorted((d["outcome"], d["code"]) for d in outcomes) == sorted(
        [("delivered", 250)] * delivered + [("failed", 550)] * failed
    )


async def test_metrics_route_needs_an_admin_key(tmp_path: Path, smtp_port: int) -> None:
    app = create_app(
        MailConfig(server="127.0.0.1", port=smtp_port, default_sender=SENDER),
        app_config(tmp_path, f"sqlite:///{tmp_path / 'o.sqlite3'}"),
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer("wrong"))).status_code == 401
        assert (await client.get("/metrics", headers=bearer(SENDER_ONLY))).status_code == 403
        assert (await client.get("/metrics", headers=bearer(KEY))).status_code == 403  # send+read: not admin
        ok = await client.get("/metrics", headers=bearer(ADMIN))
        assert ok.status_code == 200 and ok.content_type.startswith("text/plain")
        assert value(samples((await ok.get_data()).decode()), "mailsvc_outbox_up") == 1


async def test_metrics_bind_serves_without_a_key_and_the_route_is_gone(tmp_path: Path, smtp_port: int) -> None:
    from tests.procs import free_port

    port = free_port()
    app = create_app(
        MailConfig(server="127.0.0.1", port=smtp_port, default_sender=SENDER),
        app_config(tmp_path, f"sqlite:///{tmp_path / 'o.sqlite3'}", metrics_bind=f"127.0.0.1:{port}"),
    )
    async with app.test_app() as test_app, httpx.AsyncClient(timeout=10) as http:
        client = test_app.test_client()
        assert (await client.get("/metrics", headers=bearer(ADMIN))).status_code == 404
        resp = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert resp.status_code == 200
        assert ("mailsvc_outbox_up", ()) in samples(resp.text)
        assert (await http.get(f"http://127.0.0.1:{port}/")).status_code == 404
        assert (await http.post(f"http://127.0.0.1:{port}/metrics")).status_code == 405


async def test_metrics_server_survives_hostile_clients(tmp_path: Path) -> None:
    """A head that never ends, an oversized head, garbage: each connection closed, the next scrape answered."""
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1:0")
    await server.start()
    try:
        for payload in (b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n", b"\xff\xfe\r\n\r\n", b""):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(payload)
            await writer.drain()
            if not payload:
                writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 10)
            assert b"200 OK" not in answer
            writer.close()
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{server.port}/metrics")).status_code == 200
    finally:
        await server.stop()


async def test_outcomes_are_counted_by_their_state_string(tmp_path: Path) -> None:
    """A state added later (bounced, complained) is counted without a change to the metrics."""
    metrics = Metrics()
    metrics.count_outcomes([RecipientOutcome("a@x", "bounced", 550), RecipientOutcome("b@x", "delivered", 250)])  # type: ignore[arg-type]
    metrics.count_suppressed(2)
    parsed = samples(metrics.render_cached().decode())
    assert value(parsed, "mailsvc_recipients_total", outcome="bounced", reply_class="5xx") == 1
    assert value(parsed, "mailsvc_recipients_total", outcome="delivered", reply_class="2xx") == 1
    assert value(parsed, "mailsvc_recipients_total", outcome="suppressed", reply_class="none") == 2


async def test_queue_stats_bounded_to_pending_and_oldest_due(tmp_path: Path) -> None:
    async with SqliteOutbox(tmp_path / "o.sqlite3") as outbox:
        assert (await outbox.queue_stats()).by_state == {}
        ids = (await outbox.enqueue(bulk(3))).ids
        [claimed] = await outbox.claim("w", 1, 60)
        await outbox.record(claimed.id, "w", [RecipientOutcome(claimed.envelope.recipients[0], "delivered", 250)])
        stats = await outbox.queue_stats()
        assert stats.by_state == {"queued": 2}  # the delivered one is final: not counted
        assert stats.oldest_due_seconds >= 0
        await outbox.store.db.execute("UPDATE messages SET due_at = due_at - 100 WHERE due_at IS NOT NULL")
        await outbox.store.db.commit()
        assert (await outbox.queue_stats()).oldest_due_seconds >= 100  # due for 100 s: the backlog shows
        await outbox.claim("w", 2, 60)
        stats = await outbox.queue_stats()
        assert stats.by_state == {"sending": 2} and stats.oldest_due_seconds == 0  # leased: due only when it lapses
        assert len(ids) == 3


def test_bad_settings_are_refused_naming_the_setting(tmp_path: Path) -> None:
    for name, bad in (
        ("MAILSVC_LOG_FORMAT", "xml"),
        ("MAILSVC_METRICS_BIND", "nope"),
        ("MAILSVC_METRICS_BIND", "h:99999"),
    ):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MAILSVC_SETTINGS_MODULE": "settings", name: bad}
        done = subprocess.run(
            [sys.executable, "-m", "mailsvc.cli", "worker"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0], done.stderr
    bad_flag = subprocess.run(
        [sys.executable, "-m", "mailsvc.cli", "worker", "--metrics-bind", "nowhere"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MAILSVC_SETTINGS_MODULE": "settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_flag.returncode == 2 and "--metrics-bind" in bad_flag.stderr


async def test_json_log_lines_parse_and_carry_no_body_or_key(tmp_path: Path, smtp_port: int) -> None:
    import io
    import logging

    from mailsvc.logsetup import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("mailsvc")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    body, subject = "BODY-TEXT-never-logged\nsecond line", "SUBJECT-never-logged"
    try:
        app = create_app(
            MailConfig(server="127.0.0.1", port=smtp_port, default_sender=SENDER, timeout=5.0),
            app_config(tmp_path, f"sqlite:///{tmp_path / 'o.sqlite3'}", workers=1),
        )
        async with app.test_app() as test_app:
            client = test_app.test_client()
            resp = await client.post(
                "/api/messages",
                json={"to": ["a@example.com", "b@example.com"], "subject": subject, "text": body},
                headers=bearer(KEY),
            )
            assert resp.status_code == 202
            id_ = (await resp.get_json())["id"]
            outbox = app.extensions["mailsvc.services"].outbox
            for _ in range(1500):
                if (await outbox.status(id_)).state == "delivered":
                    break
                await asyncio.sleep(0.02)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    accepted = [line["fields"] for line in lines if line.get("fields", {}).get("event") == "accepted"]
    assert accepted == [accepted[0]] and accepted[0]["id"] == id_ and accepted[0]["recipients"] == 2
    delivered = [
        d for line in lines if line.get("fields", {}).get("event") == "delivery" for d in line["fields"]["deliveries"]
    ]
    assert sorted((d["id"], d["recipient"], d["outcome"], d["code"]) for d in delivered) == [
        (id_, "a@example.com", "delivered", 250),
        (id_, "b@example.com", "delivered", 250),
    ]
    for secret in ("BODY-TEXT", "SUBJECT-never", KEY, ADMIN):
        assert secret not in text
