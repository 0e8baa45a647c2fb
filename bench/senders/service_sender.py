"""The service end to end: one bulk POST of N recipients to a running hypercorn, timed until delivered.

hypercorn (``asgi:app``, configured only through its environment, as in
production) -> durable outbox (SQLite in a temporary folder) -> workers -> the
sink. The clock starts before the POST and stops when ``/api/batches/<id>``
counts every message as delivered; CPU and peak RSS are the service process's.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

import workload  # noqa: E402

KEY = "bench-key"
_TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """The process and its descendants: hypercorn serves from a worker process it spawns."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            pids += [int(c) for c in task.read_text().split()]
        i += 1
    return pids


def _cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / _TICK


def _peak_rss_kb(pid: int) -> int:
    """The largest process's high-water mark (the worker that renders and sends)."""
    peak = 0
    for p in _tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak


def _request(url: str, body: Any = None, timeout: float = 600) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method="POST" if data else "GET",
        headers={
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def main() -> None:
    args = workload.parse_args(__doc__ or "")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="mailsvc-bench-"))
    env = {
        **os.environ,
        "MAIL_SERVER": args.host,
        "MAIL_PORT": str(args.port),
        "MAIL_DEFAULT_SENDER": workload.SENDER,
        "MAILSVC_DATABASE_URL": f"sqlite:///{tmp}/outbox.sqlite3",
        "MAILSVC_TEMPLATES": str(workload.TEMPLATES.parent),
        "MAILSVC_API_KEYS": KEY,
        "MAILSVC_MAX_BATCH": str(max(args.n, 1)),
        "MAILSVC_MAX_REQUEST_BYTES": str(512 * 1024 * 1024),
        "MAILSVC_POLL_INTERVAL": "0.05",
        "MAILSVC_RATE_LIMIT": "100000",
        "MAILSVC_RATE_BURST": "100000",
    }
    # Its log (a line per message) goes to a file: an unread pipe would fill and stall the service.
    log = open(tmp / "service.log", "wb")
    # MAILSVC_BENCH_WRAP runs the service under a profiler, e.g. "py-spy record -o /tmp/p.svg --".
    wrap = shlex.split(os.environ.get("MAILSVC_BENCH_WRAP", ""))
    server = subprocess.Popen(
        [*wrap, sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{http_port}", "asgi:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _request(f"{base}/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                err = (tmp / "service.log").read_text(errors="replace")
                raise SystemExit(f"the service did not start: {err[-2000:]}")
            time.sleep(0.1)
        body = {
            "template": workload.TEMPLATE,
            "recipients": [{"to": [rcpt], "context": ctx} for rcpt, ctx in workload.contexts(args.n)],
        }
        cpu0 = _cpu_seconds(server.pid)
        clock = workload.Clock()
        status, accepted = _request(f"{base}/api/messages/bulk", body)
        if status != 202:
            raise SystemExit(f"bulk POST answered {status}: {str(accepted)[:2000]}")
        accepted_after = time.perf_counter() - clock.wall
        batch = accepted["batch_id"]
        counts: dict[str, int] = {}
        while time.monotonic() < deadline + 900:
            _, out = _request(f"{base}/api/batches/{batch}")
            counts = out.get("counts", {}) if isinstance(out, dict) else {}
            if sum(counts.get(k, 0) for k in ("delivered", "failed", "partial", "expired")) >= args.n:
                break
            # A batch's status counts its rows (and takes the outbox's lock while it does): poll a big one less.
            time.sleep(min(0.5, max(0.05, args.n / 200_000)))
        sent = counts.get("delivered", 0)
        service_cpu = _cpu_seconds(server.pid) - cpu0
        clock.report(
            "service bulk",
            sent,
            args.n - sent,
            service_cpu_seconds=service_cpu,
            service_peak_rss_kb=_peak_rss_kb(server.pid),
            counts=counts,
            accepted_seconds=round(accepted_after, 3),
        )
    finally:
        tree = _tree(server.pid) if server.poll() is None else []
        if wrap:  # a profiler writes its output on SIGINT; then stop what it ran
            server.send_signal(signal.SIGINT)
        else:
            server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for pid in tree[1:]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        log.close()


if __name__ == "__main__":
    main()
