"""Several relays (MAILSVC_RELAYS_FILE): failover, throttling, rate and daily limits, against real aiosmtpd relays.

Every message is counted by Message-ID on both servers (exactly once), and the relay recorded for each
recipient is the one whose server holds it. SQLite and PostgreSQL. Waits are liveness bounds; the one
timing figure (the per-second limit) is a lower bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as SMTPServerProtocol

from mailsvc import MailConfig
from mailsvc.config import ServiceConfig
from mailsvc.errors import ConfigError
from mailsvc.outbox import Outbox
from mailsvc.outbox.base import Labels
from mailsvc.relayconfig import RelaysConfig, load_relays, parse_relays
from mailsvc.relays import next_utc_midnight
from mailsvc.worker import WorkerGroup
from tests.outbox_impls import IMPLEMENTATIONS
from tests.servers import RecordingHandler
from tests.test_worker import FAST, bulk, message_ids


@pytest.fixture(params=["sqlite", "postgres"])
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outbox]:
    ob = await IMPLEMENTATIONS[request.param](tmp_path)
    try:
        yield ob
    finally:
        await ob.close()


class Relay:
    """An aiosmtpd relay that can be killed (listener and every open connection) and brought back."""

    def __init__(self, handler: RecordingHandler) -> None:
        self.handler = handler
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: list[SMTPServerProtocol] = []

    async def start(self) -> Relay:
        loop = asyncio.get_running_loop()

        def factory() -> SMTPServerProtocol:
            p = SMTPServerProtocol(self.handler, hostname="mx.test", loop=loop)
            self._conns.append(p)
            return p

        self._server = await loop.create_server(factory, host="127.0.0.1", port=self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def kill(self) -> None:
        assert self._server is not None
        self._server.close()
        for p in self._conns:
            if p.transport is not None:
                p.transport.close()  # flushes a 250 already written: what was recorded was acknowledged
        self._conns.clear()

    async def stop(self) -> None:
        if self._server is not None:
            self.kill()
            await self._server.wait_closed()
            self._server = None


@asynccontextmanager
async def relays(*handlers: RecordingHandler) -> AsyncIterator[list[Relay]]:
    started = [await Relay(h).start() for h in handlers]
    try:
        yield started
    finally:
        for r in started:
            await r.stop()


def relays_file(tmp_path: Path, relays: dict[str, Any], routes: dict[str, list[str]]) -> Path:
    path = tmp_path / "relays.json"
    path.write_text(json.dumps({"relays": relays, "routes": routes}))
    return path


def smtp(port: int, **more: Any) -> dict[str, Any]:
    return {"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": port, "MAIL_TIMEOUT": 2, "MAIL_POOL_SIZE": 4, **more}


@asynccontextmanager
async def group(outbox: Outbox, path: Path, **service: Any) -> AsyncIterator[WorkerGroup]:
    g = WorkerGroup.from_service(outbox, MailConfig(), ServiceConfig(**{**FAST, "relays_file": path, **service}))
    await g.start()
    try:
        yield g
    finally:
        await g.stop()


async def enqueue(outbox: Outbox, n: int, route: str = "transactional", prefix: str = "m") -> list[str]:
    envs = bulk(n)
    envs = [
        e.__class__(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "message_id": f"<{prefix}{i}@t>"})
        for i, e in enumerate(envs)
    ]
    envs = [
        e.__class__(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "data": e.data.replace(b, a)})
        for e, a, b in ((e, f"<{prefix}{i}@t>".encode(), f"<bulk{i}@test>".encode()) for i, e in enumerate(envs))
    ]
    return (await outbox.enqueue(envs, batch=True, labels=Labels(route=route))).ids


async def all_final(outbox: Outbox, ids: list[str], within: float = 60.0, state: str = "delivered") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        states = [(await outbox.status(i)).state for i in ids]
        if all(s == state for s in states):
            return
        if loop.time() > deadline:
            pytest.fail(f"not all {state}: {sorted(set(states))}")
        await asyncio.sleep(0.05)


async def relay_of(outbox: Outbox, ids: list[str]) -> dict[str, str | None]:
    """Message-ID -> the relay recorded for its (one) recipient."""
    out = {}
    for i in ids:
        st = await outbox.status(i)
        out[st.message_id] = st.recipients[0].relay
    return out


def exactly_once(ids: Iterator[str] | list[str], *handlers: RecordingHandler) -> None:
    seen = [m for h in handlers for m in message_ids(h)]
    assert sorted(seen) == sorted(ids), "a message lost or sent twice"


# -- the file ----------------------------------------------------------------------


def test_without_a_file_there_is_one_default_relay() -> None:
    cfg = load_relays(None, MailConfig(server="relay.test"))
    assert cfg.names == ("default",) and cfg.route("transactional") == ("default",)
    assert cfg.relays["default"].mail.server == "relay.test"


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ([], "(top)"),
        ({"relays": {}}, "relays"),
        ({"relays": {"a": {"MAIL_PORT": 99999}}, "routes": {"default": ["a"]}}, "relays.a.MAIL_PORT"),
        ({"relays": {"a": {"MAIL_SERVR": "x"}}, "routes": {"default": ["a"]}}, "relays.a.MAIL_SERVR"),
        ({"relays": {"a": {"rate": {"per_second": -1}}}, "routes": {"default": ["a"]}}, "relays.a.rate.per_second"),
        ({"relays": {"a": {"rate": {"per_day": 1.5}}}, "routes": {"default": ["a"]}}, "relays.a.rate.per_day"),
        ({"relays": {"a": {}}, "routes": {"default": ["b"]}}, "routes.default[0]"),
        ({"relays": {"a": {}}, "routes": {"bulk": ["a"]}}, "routes.default"),
        ({"relays": {"a": {}}, "routes": {"default": ["a", "a"]}}, "routes.default"),
        ({"relays": {"a b": {}}, "routes": {"default": ["a b"]}}, "relays."),
        ({"relays": {"a": {"MAIL_USE_TLS": True, "MAIL_USE_SSL": True}}, "routes": {"default": ["a"]}}, "relays.a"),
    ],
)
def test_a_bad_file_is_refused_naming_the_json_path(doc: Any, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_relays(doc)
    assert err.value.setting == "MAILSVC_RELAYS_FILE"
    assert str(err.value).startswith(f"MAILSVC_RELAYS_FILE: {path}")
    assert "\n" not in str(err.value)


def test_unreadable_or_not_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_relays(tmp_path / "none.json", MailConfig())
    (tmp_path / "bad.json").write_text("[" * 100_000)
    with pytest.raises(ConfigError, match="not JSON"):
        load_relays(tmp_path / "bad.json", MailConfig())


def test_unknown_stream_takes_the_default_route() -> None:
    cfg = parse_relays({"relays": {"p": {}, "f": {}}, "routes": {"bulk": ["f"], "default": ["p", "f"]}})
    assert isinstance(cfg, RelaysConfig)
    assert cfg.route("bulk") == ("f",) and cfg.route("newsletter") == ("p", "f") and cfg.route(None) == ("p", "f")


# -- failover ------------------------------------------------------------------------


async def test_primary_down_at_start_then_back(outbox: Outbox, tmp_path: Path) -> None:
    primary, fallback = RecordingHandler(), RecordingHandler()
    async with relays(primary, fallback) as (p, f):
        await p.stop()  # down before the first message; its port stays ours to come back on
        path = relays_file(
            tmp_path, {"primary": smtp(p.port), "fallback": smtp(f.port)}, {"default": ["primary", "fallback"]}
        )
        async with group(outbox, path, relay_backoff=0.3, relay_backoff_max=0.3) as g:
            ids = await enqueue(outbox, 30, prefix="a")
            await all_final(outbox, ids)
            assert set((await relay_of(outbox, ids)).values()) == {"fallback"}
            assert not primary.received
            await p.start()  # back on the same port
            await asyncio.sleep(0.4)  # past its backoff
            later = await enqueue(outbox, 10, prefix="b")
            await all_final(outbox, later)
            assert set((await relay_of(outbox, later)).values()) == {"primary"}
            assert g.relays is not None and g.relays.describe()["primary"]["state"] == "up"
        exactly_once([f"<a{i}@t>" for i in range(30)] + [f"<b{i}@t>" for i in range(10)], primary, fallback)


class DyingHandler(RecordingHandler):
    """Kills its relay (listener and connections) right after it accepted its ``after``-th message."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.relay: Relay | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.received) == self.after and self.relay is not None:
            asyncio.get_running_loop().call_soon(self.relay.kill)
        return reply


async def test_primary_dying_mid_batch(outbox: Outbox, tmp_path: Path) -> None:
    primary, fallback = DyingHandler(after=40), RecordingHandler()
    async with relays(primary, fallback) as (p, f):
        primary.relay = p
        path = relays_file(
            tmp_path,
            {"primary": smtp(p.port), "fallback": smtp(f.port)},
            {"transactional": ["primary", "fallback"], "default": ["fallback"]},
        )
        async with group(outbox, path, relay_backoff=5.0, relay_backoff_max=5.0):
            ids = await enqueue(outbox, 200, prefix="d")
            await all_final(outbox, ids)
            recorded = await relay_of(outbox, ids)
    exactly_once([f"<d{i}@t>" for i in range(200)], primary, fallback)
    assert primary.received and fallback.received
    assert {m for m, r in recorded.items() if r == "primary"} == set(message_ids(primary))
    assert {m for m, r in recorded.items() if r == "fallback"} == set(message_ids(fallback))


class ThrottlingHandler(RecordingHandler):
    """Answers ``421 4.7.0`` to the first ``times`` recipients, then accepts."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.times > 0:
            self.times -= 1
            return "421 4.7.0 Try again later, too many messages"
        return await super().handle_RCPT(server, session, envelope, address, options)


async def test_primary_throttling_slows_it_instead_of_failing_over(outbox: Outbox, tmp_path: Path) -> None:
    primary, fallback = ThrottlingHandler(times=5), RecordingHandler()
    async with relays(primary, fallback) as (p, f):
        path = relays_file(
            tmp_path,
            {"primary": {**smtp(p.port), "rate": {"per_second": 400}}, "fallback": smtp(f.port)},
            {"default": ["primary", "fallback"]},
        )
        async with group(outbox, path, relay_backoff=30.0) as g:
            ids = await enqueue(outbox, 40, prefix="t")
            await all_final(outbox, ids)
            assert g.relays is not None
            state = g.relays.describe()["primary"]
            assert state["state"] == "up" and state["rate_per_second"] < 400 and state["slowed_until"]
            assert set((await relay_of(outbox, ids)).values()) == {"primary"}
    exactly_once([f"<t{i}@t>" for i in range(40)], primary, fallback)
    assert not fallback.received


# -- rate limits -------------------------------------------------------------------------


async def test_per_second_limit_paces_and_refuses_nothing(outbox: Outbox, tmp_path: Path) -> None:
    handler = RecordingHandler()
    async with relays(handler) as (r,):
        path = relays_file(tmp_path, {"only": {**smtp(r.port), "rate": {"per_second": 50}}}, {"default": ["only"]})
        ids = await enqueue(outbox, 300, prefix="r")
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with group(outbox, path):
            await all_final(outbox, ids)
        took = loop.time() - started
    exactly_once([f"<r{i}@t>" for i in range(300)], handler)
    # A lower bound only: 250 messages past a one-second burst at 50/s (the shared windows of PostgreSQL
    # may start late in a second: 6 windows of 50 span a little more than 4 s).
    assert took >= 4.0


async def test_daily_limit_defers_the_rest_to_the_next_utc_day(outbox: Outbox, tmp_path: Path) -> None:
    handler = RecordingHandler()
    async with relays(handler) as (r,):
        path = relays_file(tmp_path, {"only": {**smtp(r.port), "rate": {"per_day": 100}}}, {"default": ["only"]})
        ids = await enqueue(outbox, 130, route="bulk", prefix="q")
        async with group(outbox, path) as g:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while True:
                states = [(await outbox.status(i)) for i in ids]
                counts = {s: sum(1 for x in states if x.state == s) for s in {x.state for x in states}}
                if counts.get("delivered") == 100 and counts.get("deferred") == 30:
                    break
                assert loop.time() < deadline, counts
                await asyncio.sleep(0.05)
            assert g.relays is not None and g.relays.describe()["only"]["used_today"] == 100
    assert len(handler.received) == 100
    midnight = next_utc_midnight(datetime.now(UTC))
    for st in states:
        if st.state == "deferred":
            rc = st.recipients[0]
            assert "daily limit" in rc.last_reply and rc.relay is None
            assert rc.next_attempt_at is not None and abs((rc.next_attempt_at - midnight).total_seconds()) < 1


async def test_max_recipients_splits_a_message_into_transactions(outbox: Outbox, tmp_path: Path) -> None:
    handler = RecordingHandler()
    async with relays(handler) as (r,):
        path = relays_file(tmp_path, {"only": {**smtp(r.port), "rate": {"max_recipients": 2}}}, {"default": ["only"]})
        env = bulk(1)[0]
        env = env.__class__(
            **{
                **{f: getattr(env, f) for f in env.__dataclass_fields__},
                "recipients": tuple(f"x{i}@example.com" for i in range(5)),
            }
        )
        ids = (await outbox.enqueue([env])).ids
        async with group(outbox, path):
            await all_final(outbox, ids)
    assert sorted(len(x.rcpt_tos) for x in handler.received) == [1, 2, 2]
    assert {r.relay for r in (await outbox.status(ids[0])).recipients} == {"only"}


async def test_two_machines_share_the_daily_limit_on_postgres(tmp_path: Path) -> None:
    """Two worker groups (as two machines would) on one PostgreSQL outbox: 100 a day between them."""
    ob = await IMPLEMENTATIONS["postgres"](tmp_path)
    handler = RecordingHandler()
    try:
        async with relays(handler) as (r,):
            path = relays_file(tmp_path, {"only": {**smtp(r.port), "rate": {"per_day": 100}}}, {"default": ["only"]})
            ids = await enqueue(ob, 160, prefix="s")
            async with group(ob, path, claim_batch=10), group(ob, path, claim_batch=10):
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while True:
                    states = [(await ob.status(i)).state for i in ids]
                    if states.count("delivered") + states.count("deferred") == 160:
                        break
                    assert loop.time() < deadline
                    await asyncio.sleep(0.05)
        assert states.count("delivered") == 100 and len(handler.received) == 100
        assert await ob.relay_usage_today() == {"only": 100}  # what `mailsvc status --relays` shows
    finally:
        await ob.close()


# -- through the service -------------------------------------------------------------------


async def test_the_api_routes_by_stream_and_shows_each_recipients_relay(tmp_path: Path) -> None:
    from tests.webkit import AUTH, running

    tx, blk, news = RecordingHandler(), RecordingHandler(), RecordingHandler()
    async with relays(tx, blk, news) as (t, b, n):
        path = relays_file(
            tmp_path,
            {"tx": smtp(t.port), "bulk": smtp(b.port), "news": smtp(n.port)},
            {"transactional": ["tx"], "bulk": ["bulk"], "newsletter": ["news"], "default": ["tx"]},
        )
        async with running(t.port, tx, tmp_path, service={"relays_file": path, "retry_first": 0.05}) as svc:
            one = {"to": "ann@example.com", "subject": "One", "text": "hi"}
            r = await svc.client.post("/api/messages", json=one, headers=AUTH)
            assert r.status_code == 202, await r.get_data(as_text=True)
            single = (await r.get_json())["id"]
            batches = {}
            for stream in (None, "newsletter", "no-such-route"):
                body: dict[str, Any] = {
                    "subject": "Hi {{ n }}",
                    "text": "x",
                    "unsubscribe": False,
                    "recipients": [{"to": f"p{i}@example.com", "context": {"n": i}} for i in range(2)],
                }
                if stream:
                    body["stream"] = stream
                r = await svc.client.post("/api/messages/bulk", json=body, headers=AUTH)
                assert r.status_code == 202, await r.get_data(as_text=True)
                batches[stream] = (await r.get_json())["batch_id"]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while len(tx.received) < 3 or len(blk.received) < 2 or len(news.received) < 2:
                assert loop.time() < deadline, (len(tx.received), len(blk.received), len(news.received))
                await asyncio.sleep(0.05)

            async def relay_shown(id_: str) -> list[str | None]:
                for _ in range(200):
                    st = await (await svc.client.get(f"/api/messages/{id_}", headers=AUTH)).get_json()
                    if st["state"] == "delivered":
                        return [rc["relay"] for rc in st["recipients"]]
                    await asyncio.sleep(0.05)
                pytest.fail(f"{id_} not delivered")

            assert await relay_shown(single) == ["tx"]
            expect = {None: "bulk", "newsletter": "news", "no-such-route": "tx"}
            for stream, batch in batches.items():
                page = await (await svc.client.get(f"/api/batches/{batch}/messages", headers=AUTH)).get_json()
                assert len(page["items"]) == 2
                for item in page["items"]:
                    assert await relay_shown(item["id"]) == [expect[stream]]

            ready = await (await svc.client.get("/readyz", headers=AUTH)).get_json()
            assert set(ready["relays"]) == {"tx", "bulk", "news"}
            assert ready["relays"]["tx"]["state"] == "up" and ready["relays"]["tx"]["used_today"] == 3
            assert "relays" not in await (await svc.client.get("/readyz")).get_json()  # anonymous: status only
    assert len(tx.received) == 3 and len(blk.received) == 2 and len(news.received) == 2


# -- the command line ------------------------------------------------------------------------


# The test relay runs in a thread's loop: a probe's connection it is still closing when that loop stops is its
# teardown's warning, not the command's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_mailsvc_status_relays_and_a_bad_file_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from mailsvc.cli import main
    from tests.servers import threaded_smtp_server

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MAILSVC_DATABASE_URL", f"sqlite:///{tmp_path}/o.sqlite3")
    monkeypatch.delenv("MAIL_SERVER", raising=False)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down_port = closed.getsockname()[1]
    closed.close()  # nobody listens there
    with threaded_smtp_server(RecordingHandler()) as up_port:
        path = relays_file(
            tmp_path,
            {"primary": {**smtp(down_port), "rate": {"per_day": 500}}, "fallback": smtp(up_port)},
            {"default": ["primary", "fallback"]},
        )
        monkeypatch.setenv("MAILSVC_RELAYS_FILE", str(path))
        assert main(["status", "--relays"]) == 0
        out = capsys.readouterr().out
        assert "relay primary" in out and "down" in out.split("relay primary")[1].split("\n")[0]
        assert "per_day 500" in out and "route default          primary -> fallback" in out
        fallback_line = next(line for line in out.splitlines() if line.startswith("relay fallback"))
        assert f":{up_port}  up" in fallback_line
        assert main(["status", "--relays", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["relays"]["fallback"]["state"] == "up" and data["routes"]["default"] == ["primary", "fallback"]
        time.sleep(0.2)  # let the test relay finish the probes' sessions before its loop stops

    path.write_text(json.dumps({"relays": {"a": {"MAIL_PORT": "nope"}}, "routes": {"default": ["a"]}}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["status", "--relays"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err
    assert err.startswith("mailsvc: configuration error: MAILSVC_RELAYS_FILE: relays.a.MAIL_PORT: ")
