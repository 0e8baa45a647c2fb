"""Template and JSON bombs (issue 13, findings 1-6) thrown at ``hypercorn asgi:app``: peak RSS and /healthz.

    .venv/bin/python bench/hostile.py [--tree before=/path/to/old/checkout] [--parallel 3]

For each bomb, ``--parallel`` copies are posted at once to the bulk route while a
client asks ``/healthz`` every 20 ms; the report gives each bomb's answers, the
slowest ``/healthz`` answer meanwhile, and the peak RSS of the server's process
group (hypercorn and its worker child, read from /proc). Each server runs in a new
session and is killed as a group. Only 127.0.0.1 is ever a target.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from post_wrk import free_port, wait_up  # noqa: E402
from sinks import AiosmtpdSink  # noqa: E402


def _bulk(text: str) -> str:
    return json.dumps({"subject": "s", "text": text, "recipients": [{"to": "a@example.com"}]})


_RECIPIENT = '{"subject":"s","text":"{{x}}","recipients":[{"to":"a@example.com","context":%s}]}'
BOMBS: dict[str, str] = {
    "lone surrogate in context": _RECIPIENT % '{"x":"\\ud800"}',
    "context nested 300 deep": _RECIPIENT % ('{"a":' * 300 + "1" + "}" * 300),
    "25 nested for": _bulk("{% for a in [1] %}" * 25 + "x" + "{% endfor %}" * 25),
    "lipsum(3000, False, 1000, 1001)": _bulk("{{ lipsum(3000, False, 1000, 1001) }}"),
    "'x'|center(10**9)": _bulk("{{ 'x'|center(10**9) }}"),
    "range(10000)|join('x'*99999)": _bulk("{{ range(10000)|join('x'*99999) }}"),
    "'%*d' % (10**9, 1)": _bulk("{{ '%*d' % (10**9, 1) }}"),
    "420 KB template": _bulk("{% if x %}{{ y }}{% endif %}" * 15000),
}


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the group, summed (MB)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError):
            continue
    return total / 1024


def post(url: str, body: str) -> tuple[int, float]:
    req = urllib.request.Request(
        url, body.encode("utf-8", "surrogatepass"), {"Content-Type": "application/json", "Authorization": "Bearer k"}
    )
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, time.perf_counter() - t
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - t
    except (urllib.error.URLError, OSError):
        return 0, time.perf_counter() - t


def _watch(base: str, pgid: int, stop: threading.Event, worst: list[float], peak: list[float]) -> None:
    """Ask /healthz every 20 ms until stopped; keep the slowest answer and the group's peak RSS."""
    while not stop.is_set():
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=30):
                pass
        except (urllib.error.URLError, OSError):
            pass
        worst[0] = max(worst[0], time.perf_counter() - t)
        peak[0] = max(peak[0], group_rss_mb(pgid))
        time.sleep(0.02)


def run_tree(
    name: str, root: Path, parallel: int, sink_port: int, tmp: Path
) -> list[tuple[str, str, float, float, float]]:
    python = str(root / ".venv/bin/python") if (root / ".venv/bin/python").exists() else sys.executable
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(sink_port),
        "MAIL_DEFAULT_SENDER": "bench@example.com",
        "MAILSVC_API_KEYS": "k",
        "MAILSVC_RATE_LIMIT": "0",
        "MAILSVC_DATABASE_URL": f"sqlite:///{tmp}/{name}.sqlite3",
    }
    proc = subprocess.Popen(
        [python, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_up(base + "/healthz", proc)
        for label, body in BOMBS.items():
            stop = threading.Event()
            worst, peak = [0.0], [group_rss_mb(proc.pid)]
            watcher = threading.Thread(target=_watch, args=(base, proc.pid, stop, worst, peak))
            watcher.start()
            with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                answers = list(pool.map(post, [base + "/api/messages/bulk"] * parallel, [body] * parallel))
            stop.set()
            watcher.join()
            codes = ",".join(sorted({str(c) for c, _ in answers}))
            rows.append((label, codes, max(t for _, t in answers), worst[0], peak[0]))
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(10)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout to compare")
    parser.add_argument("--parallel", type=int, default=3)
    args = parser.parse_args()
    trees = [("this checkout", HERE.parent)] + [(t.split("=", 1)[0], Path(t.split("=", 1)[1])) for t in args.tree]
    with tempfile.TemporaryDirectory() as tmp, AiosmtpdSink() as sink:
        for name, root in trees:
            print(f"\n### {name} ({root}), {args.parallel} copies of each bomb at once\n")
            print("| bomb | answers | slowest answer s | worst /healthz s | peak RSS MB |")
            print("|---|---|---:|---:|---:|")
            for label, codes, slowest, worst, peak in run_tree(
                name.replace(" ", "_"), root, args.parallel, sink.port, Path(tmp)
            ):
                cell = label.replace("|", "\\|")  # a Markdown table cell
                print(f"| {cell} | {codes} | {slowest:.2f} | {worst:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
