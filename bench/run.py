"""Bulk-send benchmark: mailsvc against its peers and Postfix's ``smtp-source``, in one command.

    .venv/bin/python bench/run.py              # 5,000 messages, 3 interleaved rounds
    .venv/bin/python bench/run.py --n 500 --rounds 1 --senders mailsvc,smtp-source

Why it is shaped like this:
- every sender is its own process (its CPU time and peak RSS are its own, and a
  crash or leak cannot colour the next run), and rounds are interleaved so that
  a noisy minute hurts every sender alike;
- the sink counts what arrived, and a run that lost or failed messages is
  flagged and left out of the median;
- the peers live in ``bench/.venv-peers`` so they never become our dependencies.

It installs what it needs (Debian's ``postfix`` for ``smtp-sink``/``smtp-source``,
without starting the Postfix daemon; the peers' venv) unless ``--no-install``.
Senders whose tools are missing are skipped with a note, so the smoke test runs
it anywhere with ``--sink aiosmtpd``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from report import Run, markdown_table, summarise  # noqa: E402
from sinks import AiosmtpdSink, Sink, SmtpSink, smtp_sink_binary  # noqa: E402

PEERS_VENV = HERE / ".venv-peers"
PEERS_PY = PEERS_VENV / "bin" / "python"
SENDERS_DIR = HERE / "senders"
RUN_LIMIT = 900.0  # seconds before a sender is killed (and its run marked failed)


@dataclass(frozen=True)
class Sender:
    key: str
    label: str
    argv: Callable[[int, int], list[str]]  # (port, n) -> command line
    missing: Callable[[], str | None]  # why it cannot run here, or None
    reports: bool = True  # prints workload.Clock's JSON line


def _py(python: Path | str, script: str, variant: str = "") -> Callable[[int, int], list[str]]:
    def argv(port: int, n: int) -> list[str]:
        return [str(python), str(SENDERS_DIR / script), "--port", str(port), "--n", str(n), "--variant", variant]

    return argv


def _smtp_source(port: int, n: int) -> list[str]:
    binary = smtp_sink_binary("smtp-source") or "smtp-source"
    return [
        binary,
        "-s",
        "10",
        "-d",
        "-m",
        str(n),
        "-l",
        "2000",
        "-N",
        "-f",
        "news@bench.example",
        "-t",
        "user@bench.example",
        f"127.0.0.1:{port}",
    ]


def _need_peers() -> str | None:
    return None if PEERS_PY.exists() else f"no {PEERS_VENV.relative_to(ROOT)} (run without --no-install)"


def _need_smtp_source() -> str | None:
    return None if smtp_sink_binary("smtp-source") else "smtp-source not installed (Debian package postfix)"


SENDERS: list[Sender] = [
    Sender(
        "smtp-source", "Postfix smtp-source, 10 reused connections (C)", _smtp_source, _need_smtp_source, reports=False
    ),
    Sender(
        "flask-mail-threads",
        "Flask-Mail, a thread + connection per message (seed)",
        _py(PEERS_PY, "flask_mail_sender.py", "threads"),
        _need_peers,
    ),
    Sender(
        "flask-mail-connect",
        "Flask-Mail, one mail.connect() reused",
        _py(PEERS_PY, "flask_mail_sender.py", "connect"),
        _need_peers,
    ),
    Sender(
        "fastapi-mail",
        "fastapi-mail, list send over one connection",
        _py(PEERS_PY, "fastapi_mail_sender.py"),
        _need_peers,
    ),
    Sender(
        "mailsvc-stdlib-plain",
        "mailsvc send_many, 4 conns, stdlib MIME, no pipelining",
        _py(sys.executable, "mailsvc_sender.py", "plain,stdlib"),
        lambda: None,
    ),
    Sender(
        "mailsvc-stdlib",
        "mailsvc send_many, 4 conns, stdlib MIME, pipelining",
        _py(sys.executable, "mailsvc_sender.py", "stdlib"),
        lambda: None,
    ),
    Sender(
        "mailsvc",
        "mailsvc send_many, 4 conns, fastbuild + pipelining",
        _py(sys.executable, "mailsvc_sender.py"),
        lambda: None,
    ),
    Sender(
        "service",
        "mailsvc service: bulk POST -> outbox -> workers -> sink",
        _py(sys.executable, "service_sender.py"),
        lambda: None,
    ),
]


# -- installing -------------------------------------------------------------------
def ensure_postfix() -> None:
    """Debian's postfix brings smtp-sink/smtp-source; the debconf answer keeps the daemon unconfigured."""
    if smtp_sink_binary() and smtp_sink_binary("smtp-source"):
        return
    if os.geteuid() != 0:
        print("note: not root, cannot apt-get install postfix; smtp-sink/smtp-source runs are skipped", file=sys.stderr)
        return
    print("installing Debian's postfix for smtp-sink/smtp-source (daemon not started)...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=True,
        env=env,
    )
    subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_peers() -> None:
    """The peers get a venv of their own so Flask-Mail and fastapi-mail never enter our dependency tree."""
    if PEERS_PY.exists():
        return
    print(f"creating {PEERS_VENV} with the peers (Flask-Mail, fastapi-mail)...", file=sys.stderr)
    base = getattr(sys, "_base_executable", None) or "python3"
    subprocess.run([base, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run(
        [str(PEERS_PY), "-m", "pip", "install", "-q", "-r", str(HERE / "peers-requirements.txt")], check=True
    )


# -- running ----------------------------------------------------------------------
def run_one(sender: Sender, sink: Sink, n: int) -> Run:
    """Run one sender process to completion; wall/CPU/RSS from the process, arrivals from the sink."""
    before = sink.count()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(sender.argv(sink.port, n), stdout=out, stderr=err, cwd=ROOT)
        killer = threading.Timer(RUN_LIMIT, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    got = sink.wait_for(before + n, quiet=2.0) - before
    report: dict[str, Any] = {}
    if sender.reports:
        for line in reversed(stdout.splitlines()):
            if line.startswith("{"):
                report = json.loads(line)
                break
    if proc.returncode != 0 or (sender.reports and not report):
        print(f"  {sender.key} exited {proc.returncode}: {stderr.strip()[-600:]}", file=sys.stderr)
    return Run(
        sender=sender.key,
        n=n,
        seconds=float(report.get("seconds", wall)),
        # The service sender reports its server's figures: that is where the work happens.
        cpu_seconds=float(
            report.get("service_cpu_seconds", report.get("cpu_seconds", usage.ru_utime + usage.ru_stime))
        ),
        peak_rss_kb=int(report.get("service_peak_rss_kb", usage.ru_maxrss)),
        sink_delta=got,
        accepted=int(report.get("accepted", got)),
        failed=int(report.get("failed", 0 if proc.returncode == 0 else n)),
        exit_code=proc.returncode,
    )


def extra_table(script: str, *args: str) -> str:
    """A table from another benchmark of this folder (its own servers and sink), quoted as it prints."""
    command = f"bench/{script} {' '.join(args)}".strip()
    print(f"running {command} ...", file=sys.stderr)
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / script), *args],
            capture_output=True,
            text=True,
            timeout=RUN_LIMIT,
            cwd=ROOT,
        )
        out = proc.stdout.strip() or proc.stderr.strip()[-2000:]
    except subprocess.TimeoutExpired:
        out = f"timed out after {RUN_LIMIT:.0f} s"
    return f"`{command}`:\n\n{out}\n"


# The other tables of a full run (issue 18's targets), each its own one-command benchmark.
EXTRA_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("post_wrk.py", ("--duration", "8")),  # single POSTs (wrk): bare, naive; no worker, child, in-process; paced
    ("bulk_stall.py", ()),  # single POSTs while a 100,000-recipient bulk is stored
    ("crash_window.py", ()),  # SIGKILL mid-bulk: lost and sent twice, in-process worker and `mailsvc worker`
)


def machine() -> str:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip() or "?"
        except (OSError, subprocess.SubprocessError):
            return "not installed"

    from importlib.metadata import version as pkg

    cpu = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else "?"
    )
    peers = (
        version(
            [
                str(PEERS_PY),
                "-c",
                "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' "
                "for p in ('Flask-Mail', 'fastapi-mail', 'aiosmtplib', 'Flask', 'Jinja2')))",
            ]
        )
        if PEERS_PY.exists()
        else "not installed"
    )
    return "\n".join(
        [
            f"- machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}",
            f"- python: {platform.python_version()} ({sys.executable})",
            f"- mailsvc commit: {version(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'])}; "
            f"aiosmtplib {pkg('aiosmtplib')}, Jinja2 {pkg('jinja2')}, aiosmtpd {pkg('aiosmtpd')}",
            f"- peers venv: {peers}",
            f"- postfix: {version(['dpkg-query', '-W', '-f=${Version}', 'postfix'])}",
            f"- load average at the end of the run (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}",
        ]
    )


def dkim_key(algorithm: str) -> None:
    """A fresh key for the workload's From domain, named in the environment the senders inherit."""
    import tempfile

    from mailsvc.dkimsign import generate_key

    pem, _ = generate_key("rsa" if algorithm == "rsa" else "ed25519")
    path = Path(tempfile.mkdtemp(prefix="mailsvc-bench-dkim-")) / "bench.pem"
    path.write_bytes(pem)
    os.environ.update(
        MAILSVC_DKIM_DOMAIN="bench.example", MAILSVC_DKIM_SELECTOR="bench", MAILSVC_DKIM_KEY_FILE=str(path)
    )
    print(f"DKIM: signing with a {algorithm} key ({path})", file=sys.stderr)


STYLESHEET = """<style>
body { font-family: Helvetica, Arial, sans-serif; color: #222; background: #fafafa }
p { margin: 0 0 12px; line-height: 1.5 } ul { padding-left: 18px } li { margin-bottom: 6px }
a { color: #0b57d0; text-decoration: underline } b { color: #111 }
@media (max-width: 600px) { body { font-size: 16px } }
</style>"""


def styled_templates() -> None:
    """A copy of bench/templates whose newsletter carries a stylesheet and the inline-css marker."""
    import shutil
    import tempfile

    from mailsvc.cssinline import MARKER

    root = Path(tempfile.mkdtemp(prefix="mailsvc-bench-css-")) / "templates"
    shutil.copytree(HERE / "templates", root)
    html = root / "email" / "newsletter.html"
    html.write_text(MARKER + html.read_text().replace("<html><body>", f"<html><head>{STYLESHEET}</head><body>", 1))
    os.environ["MAILSVC_BENCH_TEMPLATES"] = str(root)
    print(f"CSS: the newsletter carries a stylesheet; mailsvc inlines it per message ({root})", file=sys.stderr)


def webhook_sink(mode: str) -> None:
    """A local endpoint answering 204 to every POST (``dead``: a port nobody listens on); every event goes there."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    if mode == "dead":
        server.shutdown()
        server.server_close()  # nothing listens there now: every POST is refused and retried with backoff
    os.environ["MAILSVC_WEBHOOKS"] = json.dumps([{"name": "bench", "url": url, "secret": secret, "batch": 100}])
    print(f"webhooks: every event POSTed to {url} (batches of up to 100)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="mailsvc bulk-send benchmark")
    p.add_argument("--n", type=int, default=5000, help="messages per run (default 5000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    p.add_argument("--senders", default="", help="comma-separated keys: " + ", ".join(s.key for s in SENDERS))
    p.add_argument("--sink", choices=("auto", "smtp-sink", "aiosmtpd"), default="auto")
    p.add_argument("--no-install", action="store_true", help="do not apt-get postfix or create the peers' venv")
    p.add_argument(
        "--no-extra-tables",
        "--no-post-latency",  # its name before the other tables joined the single-POST one
        dest="no_extra_tables",
        action="store_true",
        help="skip the other tables (bench/post_wrk.py, bulk_stall.py, crash_window.py: single POSTs, big-bulk stall,"
        " crash window)",
    )
    p.add_argument(
        "--dkim",
        choices=("off", "rsa", "ed25519"),
        default="off",
        help="sign every message with a fresh DKIM key of this type (MAILSVC_DKIM_* for both mailsvc senders)",
    )
    p.add_argument(
        "--inline-css",
        action="store_true",
        help="the newsletter carries a stylesheet, inlined per message by mailsvc (the peers send it as is)",
    )
    p.add_argument(
        "--webhook",
        choices=("off", "live", "dead"),
        default="off",
        help="the service POSTs every event to a local endpoint (live: answers 204; dead: refuses connections)",
    )
    p.add_argument("--json", type=Path, help="also write every run as JSON here")
    p.add_argument("--output", type=Path, help="also write the Markdown report here")
    p.add_argument("--from-json", type=Path, help="only print the table of runs saved earlier with --json")
    args = p.parse_args(argv)
    labels = {s.key: s.label for s in SENDERS}
    if args.from_json:
        saved = [Run(**r) for r in json.loads(args.from_json.read_text())]
        print(markdown_table(summarise(saved, labels)))
        return 0

    if not args.no_install:
        ensure_postfix()
        ensure_peers()
    wanted = set(filter(None, args.senders.split(","))) or {s.key for s in SENDERS}
    unknown = wanted - {s.key for s in SENDERS}
    if unknown:
        p.error(f"--senders: unknown {', '.join(sorted(unknown))}")
    senders = []
    for s in SENDERS:
        if s.key in wanted:
            if (why := s.missing()) is not None:
                print(f"skipping {s.key}: {why}", file=sys.stderr)
            else:
                senders.append(s)
    if args.dkim != "off":
        dkim_key(args.dkim)
    if args.inline_css:
        styled_templates()
    if args.webhook != "off":
        webhook_sink(args.webhook)
    use_postfix = args.sink == "smtp-sink" or (args.sink == "auto" and smtp_sink_binary() is not None)
    sink: Sink = SmtpSink() if use_postfix else AiosmtpdSink()

    runs: list[Run] = []
    with sink:
        print(f"sink: {sink.name} on 127.0.0.1:{sink.port}; {args.n} messages x {args.rounds} rounds", file=sys.stderr)
        for rnd in range(args.rounds):
            k = rnd % max(1, len(senders))
            for s in senders[k:] + senders[:k]:
                run = run_one(s, sink, args.n)
                runs.append(run)
                if args.json:  # after every run, so an interrupted benchmark still leaves its data
                    args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
                flag = "" if run.ok else f"  (lost {run.lost}, failed {run.failed}, exit {run.exit_code})"
                print(f"  round {rnd + 1} {s.key:20} {run.rate:9,.0f} msg/s{flag}", file=sys.stderr)

    table = markdown_table(summarise(runs, labels))
    text = (
        f"{args.n} messages of ~2 KB per run, one recipient each, to {sink.name} on 127.0.0.1; "
        f"median of {args.rounds} interleaved rounds.\n\n{machine()}\n\n{table}\n"
    )
    print(text)
    if not args.no_extra_tables and not args.senders:
        for script, extra in EXTRA_TABLES:
            rounds = ("--rounds", str(args.rounds)) if script == "post_wrk.py" else ()
            more = extra_table(script, *extra, *rounds)
            print(more)
            text += "\n" + more
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
