"""The benchmark harness still runs: every sender, tiny N, against the aiosmtpd sink.

No figures are asserted (machines are noisy); what must hold is that each
installed sender delivers every message, that the sink's count agrees, and that
a run which lost messages is flagged rather than reported as fast. Needs no
Postfix and no network: senders whose tools are missing are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_harness_runs_every_available_sender(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--n",
            "6",
            "--rounds",
            "1",
            "--no-install",
            "--sink",
            "aiosmtpd",
            "--no-post-latency",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())
    by_sender = {r["sender"]: r for r in runs}
    # Ours always run; the peers and smtp-source only where installed.
    assert {"mailsvc", "mailsvc-stdlib", "mailsvc-stdlib-plain", "service"} <= set(by_sender)
    for r in runs:
        assert r["exit_code"] == 0, r
        assert r["sink_delta"] == 6, r
        assert r["failed"] == 0 and r["accepted"] == 6, r
    assert "| mailsvc send_many, 4 conns, fastbuild + pipelining |" in proc.stdout
    assert "⚠" not in proc.stdout


def test_lossy_runs_are_flagged_and_left_out_of_the_median() -> None:
    report = _load("report")
    good = report.Run(
        "mailsvc", n=100, seconds=1.0, cpu_seconds=0.1, peak_rss_kb=1024, sink_delta=100, accepted=100, failed=0
    )
    lossy = report.Run(
        "mailsvc", n=100, seconds=0.1, cpu_seconds=0.1, peak_rss_kb=1024, sink_delta=90, accepted=100, failed=0
    )
    (summary,) = report.summarise([good, lossy], {"mailsvc": "ours"})
    assert summary.rate == 100.0  # the "fast" lossy run is not the median
    table = report.markdown_table([summary])
    assert "| ours | 100 (100–100) |" in table
    assert "1/2 ⚠ lost 10, failed 0" in table


def test_sink_counts_what_arrived() -> None:
    sinks = _load("sinks")
    import smtplib

    with sinks.AiosmtpdSink() as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as s:
            for i in range(3):
                s.sendmail("a@bench.example", [f"u{i}@bench.example"], b"Subject: x\r\n\r\nhi\r\n")
        assert sink.wait_for(3, quiet=5.0) == 3
