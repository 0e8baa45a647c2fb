"""The SMTP sinks the senders talk to, each able to say how many messages it took.

Why count at the sink: a sender's own tally can lie (Flask-Mail's threads
swallow errors, a pipelined client could misread a reply); the sink's counter is
what actually arrived, so a run whose sink count falls short is marked as lossy.

``SmtpSink`` is Postfix's ``smtp-sink -c`` (C, the fast reference server; it
advertises PIPELINING). ``AiosmtpdSink`` is a Python stand-in for machines
without Postfix, used by the smoke test.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["AiosmtpdSink", "Sink", "SmtpSink", "smtp_sink_binary"]

HERE = Path(__file__).resolve().parent
_MESG = re.compile(rb"mesg=(\d+)")


def smtp_sink_binary(name: str = "smtp-sink") -> str | None:
    """Debian installs Postfix's test tools in /usr/sbin, often not on a user's PATH."""
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}",) if os.access(p, os.X_OK)), None)


class Sink:
    """A sink process whose stdout carries ``mesg=N`` counters (as ``smtp-sink -c`` prints)."""

    name = "sink"
    pipelining = False

    def __init__(self) -> None:
        self.port = 0
        self._count = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Sink:
        self._proc = subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._start_reader()
        return self

    def _start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        buf = b""
        while chunk := os.read(self._proc.stdout.fileno(), 65536):
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            self._consume(done)
        with self._changed:
            self._changed.notify_all()

    def _consume(self, lines: list[bytes]) -> None:
        for line in reversed(lines):
            if m := _MESG.search(line):
                with self._changed:
                    self._count = int(m.group(1))
                    self._changed.notify_all()
                return

    def count(self) -> int:
        with self._changed:
            return self._count

    def wait_for(self, target: int, quiet: float = 2.0, limit: float = 30.0) -> int:
        """Wait until the counter reaches ``target`` or stops moving for ``quiet`` seconds."""
        deadline = time.monotonic() + limit
        with self._changed:
            last, last_change = self._count, time.monotonic()
            while self._count < target and time.monotonic() < deadline:
                self._changed.wait(0.1)
                if self._count != last:
                    last, last_change = self._count, time.monotonic()
                elif time.monotonic() - last_change > quiet:
                    break
            return self._count

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SmtpSink(Sink):
    """Postfix's ``smtp-sink`` on 127.0.0.1; it takes a port number, so we find a free one and retry."""

    name = "postfix smtp-sink"
    pipelining = True

    def _argv(self) -> list[str]:
        binary = smtp_sink_binary()
        if binary is None:
            raise RuntimeError("smtp-sink not found: install Debian's postfix package (bench/run.py does)")
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [binary, "-c", *user, "-m", "1024", f"127.0.0.1:{self.port}", "1024"]

    def start(self) -> Sink:
        for _ in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            super().start()
            if _listening(self.port, 5.0):
                return self
            self.stop()
        raise RuntimeError("smtp-sink did not start listening on 127.0.0.1")


class AiosmtpdSink(Sink):
    """``bench/aiosmtpd_sink.py`` on port 0; it prints the port it got."""

    name = "aiosmtpd sink"

    def __init__(self, pipelining: bool = True) -> None:
        super().__init__()
        self.pipelining = pipelining

    def _argv(self) -> list[str]:
        return [sys.executable, str(HERE / "aiosmtpd_sink.py"), *(["--pipelining"] if self.pipelining else [])]

    def start(self) -> Sink:
        self._proc = subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith(b"port="):
            self.stop()
            raise RuntimeError(f"aiosmtpd sink did not start: {line!r}")
        self.port = int(line.split(b"=")[1])
        self._start_reader()
        return self


def _listening(port: int, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.recv(100)  # the greeting; smtp-sink counts this as a session, not a message
                return True
        except OSError:
            time.sleep(0.05)
    return False
