"""Postfix's ``smtp-sink`` as a fast, real SMTP server for volume tests and benchmarks.

It binds 127.0.0.1 port 0; the port it got is read back from ``/proc`` (the
socket inode in the process's fds, matched in ``/proc/net/tcp``), so there is
no pick-a-port-then-bind race. Each message is dumped to a file of its own
(``-d``), which is what lets a test count distinct Message-IDs after the fact.
Only ``smtp-sink`` runs, never the postfix daemon. Where Postfix is not
installed, the same class runs an aiosmtpd sink in a subprocess instead
(``python -m tests.smtp_sink DIR``), which prints the port it bound.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType

__all__ = ["SMTPSink", "smtp_sink_path"]

_MSGID = re.compile(rb"^Message-ID:\s*(\S+)", re.I | re.M)


def smtp_sink_path() -> str | None:
    return shutil.which("smtp-sink") or next(
        (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink") if os.path.exists(p)), None
    )


def _listening_port(pid: int) -> int | None:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields[9] in inodes and fields[3] == "0A":  # LISTEN
            return int(fields[1].rsplit(":", 1)[1], 16)
    return None


class SMTPSink:
    """``with SMTPSink(dump_dir) as sink: sink.port ... sink.message_ids()``."""

    def __init__(self, dump_dir: Path, *extra_args: str) -> None:
        self.dump_dir = dump_dir
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> SMTPSink:
        exe = smtp_sink_path()
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        if exe is None:
            return self._start_fallback()
        self.proc = subprocess.Popen(
            [exe, "-u", getpass.getuser(), *self.extra_args, "-d", f"{self.dump_dir}/%H%M%S.", "127.0.0.1:0", "1024"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while (port := _listening_port(self.proc.pid)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.__exit__(None, None, None)
                raise RuntimeError(f"smtp-sink did not start: {err}")
            time.sleep(0.01)
        self.port = port
        return self

    def _start_fallback(self) -> SMTPSink:
        repo = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": repo}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.smtp_sink", str(self.dump_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=repo,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.__exit__(None, None, None)
            raise RuntimeError("the aiosmtpd sink did not start")
        self.port = int(line)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()

    def message_ids(self) -> Counter[str]:
        """How many times each Message-ID arrived."""
        seen: Counter[str] = Counter()
        for f in self.dump_dir.iterdir():
            m = _MSGID.search(f.read_bytes())
            if m:
                seen[m.group(1).decode()] += 1
        return seen

    def count(self) -> int:
        return sum(1 for _ in self.dump_dir.iterdir())


def _serve_fallback(dump_dir: str) -> None:
    """An aiosmtpd sink writing one file per message; prints its port, runs until SIGTERM."""
    import asyncio
    import uuid

    from aiosmtpd.smtp import SMTP

    class Dump:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            data = envelope.original_content or envelope.content  # type: ignore[attr-defined]
            Path(dump_dir, uuid.uuid4().hex).write_bytes(data)
            return "250 2.0.0 Ok: queued"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(Dump(), hostname="sink.test", loop=loop), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(main())


if __name__ == "__main__":
    _serve_fallback(sys.argv[1])
