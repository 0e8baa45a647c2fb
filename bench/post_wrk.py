"""Single JSON POSTs measured with ``wrk`` (a C client): the service against a bare Quart route, in one run.

    .venv/bin/python bench/post_wrk.py [--duration 10] [--connections 20] [--rounds 3] [--delivery none,process,...]
    .venv/bin/python bench/post_wrk.py --tree before=/path/to/old/checkout   # compare two checkouts too

Why wrk and not a Python loop: at these rates a Python load generator is itself the bottleneck and shares
the GIL-bound CPU with nothing but itself; wrk costs a fraction of a core. The bare route (parse the same
JSON, answer 202) runs on the same hypercorn in the same run, so every figure is a ratio to it. Rounds are
interleaved (bare, service, bare, service, ...) so a noisy minute hurts both alike; the median is reported.
``--delivery`` names how the service delivers meanwhile, each measured in the same run: ``none``
(``MAILSVC_WORKERS=0``), ``process`` (one worker in its own child process, the default of a 2-core machine with a
real relay) and ``in-process`` (one worker on the web process's event loop, ``MAILSVC_WORKER_PROCESS=0``). Then
every route runs once more *paced* at about half the bare route's median rate (wrk's per-connection
``delay()`` hook: each connection waits an exponentially distributed time, mean ``connections / rate``, between
a response and its next request, so the rate achieved is a little below the aim and is printed), for latency
at a load every route can carry: issue 18 asks for p99 under 25 ms there.

Each server runs in a new session and is killed as a group (hypercorn's worker child included). The
service gets a fresh SQLite outbox (durable commits); its worker, if any, delivers to a sink in its own
process (Postfix's ``smtp-sink`` when installed, else ``bench/aiosmtpd_sink.py``). ``--tree NAME=PATH``
adds another checkout's ``asgi:app`` (run with that checkout's ``.venv/bin/python`` when it has one), for
before/after figures of a change in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from sinks import AiosmtpdSink, Sink, SmtpSink, smtp_sink_binary  # noqa: E402

BARE_APP = """
from quart import Quart, request
app = Quart(__name__)

@app.post("/api/messages")
async def accept():
    data = await request.get_json()
    return {"id": "x", "status": "queued", "n": len(data)}, 202

@app.get("/healthz")
async def healthz():
    return {"status": "ok"}
"""
# The naive durable reference (issue 18): one sqlite3 INSERT per request with synchronous=FULL, in WAL mode,
# run on the event loop as a naive route would; the same key check and JSON parse as the service's first steps.
NAIVE_APP = """
import json, os, sqlite3, uuid
from quart import Quart, request
app = Quart(__name__)
db = sqlite3.connect(os.environ["NAIVE_DB"], isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = FULL")
db.execute("CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, body BLOB NOT NULL)")

@app.post("/api/messages")
async def accept():
    if request.headers.get("Authorization") != "Bearer bench-key":
        return {"title": "Unauthorized"}, 401
    data = await request.get_json()
    id_ = uuid.uuid4().hex
    db.execute("INSERT INTO messages (id, body) VALUES (?, ?)", (id_, json.dumps(data)))
    return {"id": id_, "status": "queued"}, 202

@app.get("/healthz")
async def healthz():
    return {"status": "ok"}
"""
BODY = {"to": "Ann <ann@example.com>", "subject": "Benchmark", "text": "Hello from the benchmark.\n" * 10}
LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
"""
# Exponential gaps (a Poisson stream per connection): a fixed delay lines the connections up into bursts of
# `connections` requests, and a burst's last request then waits for the whole burst (group commit or not).
PACED = """
function delay()
   return math.floor(-{delay_ms} * math.log(1 - math.random()))
end
"""


@dataclass(frozen=True)
class Target:
    name: str
    app: str  # hypercorn's APP argument
    root: Path  # where the app's code lives (PYTHONPATH, cwd for asgi:app)
    python: str
    env: tuple[tuple[str, str], ...] = ()  # the service's delivery settings (the reference apps have none)


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int


# --delivery: how the service delivers while it is measured (label, settings).
DELIVERY: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "none": ("no worker", (("MAILSVC_WORKERS", "0"),)),
    "process": ("1 worker in its own process", (("MAILSVC_WORKERS", "1"), ("MAILSVC_WORKER_PROCESS", "1"))),
    "in-process": ("1 in-process worker", (("MAILSVC_WORKERS", "1"), ("MAILSVC_WORKER_PROCESS", "0"))),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise SystemExit(f"server did not answer {url} within {limit} s")


def _find(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.M)
    if found is None:
        raise SystemExit(f"wrk printed no {pattern!r}:\n{text}")
    return found.group(1)


def _ms(text: str) -> float:
    value, unit = _find(r"^([\d.]+)(?:us|ms|s)$", text), _find(r"(us|ms|s)$", text)
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out: str) -> Result:
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", out))
    p50 = _ms(_find(r"^\s+50%\s+(\S+)", out))
    p99 = _ms(_find(r"^\s+99%\s+(\S+)", out))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Result(rps, p50, p99, int(bad.group(1)) if bad else 0)


def run_one(target: Target, args: argparse.Namespace, sink: Sink, tmp: Path, lua: Path) -> Result:
    port = free_port()
    db = tmp / f"{target.name.replace(' ', '_')}-{time.monotonic_ns()}.sqlite3"
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp}{os.pathsep}{target.root}",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(sink.port),
        "MAIL_DEFAULT_SENDER": "bench@example.com",
        "MAILSVC_API_KEYS": "bench-key",
        "MAILSVC_RATE_LIMIT": "0",
        "MAILSVC_WORKERS": "0",
        "MAILSVC_DATABASE_URL": f"sqlite:///{db}",
        "MAILSVC_MAX_PENDING": "10000000",
        "NAIVE_DB": str(db),
        **dict(target.env),
    }
    proc = subprocess.Popen(
        [target.python, "-m", "hypercorn", target.app, "--bind", f"127.0.0.1:{port}"],
        cwd=target.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_up(f"http://127.0.0.1:{port}/healthz", proc)
        url = f"http://127.0.0.1:{port}/api/messages"
        warmup = tmp / "warmup.lua"
        if not warmup.exists():
            warmup.write_text(LUA.format(body=json.dumps(json.dumps(BODY))))
        subprocess.run(["wrk", "-t1", "-c10", "-d2s", "-s", str(warmup), url], capture_output=True, check=True)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "-s", str(lua), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return parse_wrk(out)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each wrk run (default 10)")
    ap.add_argument("--connections", type=int, default=20, help="wrk connections (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument(
        "--delivery",
        default="none,process,in-process",
        help="comma-separated: none (no workers), process (one worker in a child process), in-process (one on the "
        "web process's loop); default all three",
    )
    ap.add_argument("--no-paced", action="store_true", help="skip the paced run at half the bare route's rate")
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout to measure too")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        (tmp / "bare_app.py").write_text(BARE_APP)
        (tmp / "naive_app.py").write_text(NAIVE_APP)
        lua = tmp / "post.lua"
        lua.write_text(LUA.format(body=json.dumps(json.dumps(BODY))))
        targets = [Target("bare Quart route", "bare_app:app", ROOT, sys.executable)]
        targets.append(Target("naive durable route (one INSERT, FULL sync)", "naive_app:app", ROOT, sys.executable))
        trees = [("this checkout", ROOT, sys.executable)]
        for spec in args.tree:
            name, _, path = spec.partition("=")
            root = Path(path).resolve()
            py = root / ".venv" / "bin" / "python"
            trees.append((name, root, str(py if py.exists() else sys.executable)))
        for mode in args.delivery.split(","):
            if mode not in DELIVERY:
                ap.error(f"--delivery: {mode!r} is not one of {', '.join(DELIVERY)}")
            label, env = DELIVERY[mode]
            for name, root, py in trees:
                targets.append(Target(f"mailsvc ({name}), {label}", "asgi:app", root, py, env))
        sink = (SmtpSink() if smtp_sink_binary() else AiosmtpdSink()).start()
        runs: dict[str, list[Result]] = {t.name: [] for t in targets}
        paced: dict[str, Result] = {}
        try:
            for _ in range(args.rounds):
                for t in targets:
                    runs[t.name].append(run_one(t, args, sink, tmp, lua))
            bare = statistics.median(r.rps for r in runs[targets[0].name])
            if not args.no_paced:
                paced_lua = tmp / "paced.lua"
                delay_ms = round(args.connections * 1000 / (bare / 2))
                paced_lua.write_text(lua.read_text() + PACED.format(delay_ms=delay_ms))
                for t in targets:
                    paced[t.name] = run_one(t, args, sink, tmp, paced_lua)
        finally:
            sink.stop()
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds, median (range);")
    print("service: SQLite outbox (durable commits), its worker (if any) delivering to smtp-sink meanwhile\n")
    head = "| route | req/s | of bare | p50 ms | p99 ms | non-2xx |"
    if paced:
        head += f" paced at {bare / 2:,.0f}/s: req/s | p50 ms | p99 ms |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for t in targets:
        rs = runs[t.name]
        rps = [r.rps for r in rs]
        line = (
            f"| {t.name} | {statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) "
            f"| {statistics.median(rps) / bare:.0%} | {statistics.median(r.p50_ms for r in rs):.1f} "
            f"| {statistics.median(r.p99_ms for r in rs):.1f} | {sum(r.non_2xx for r in rs)} |"
        )
        if t.name in paced:
            p = paced[t.name]
            line += f" {p.rps:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} |"
        print(line)


if __name__ == "__main__":
    main()
