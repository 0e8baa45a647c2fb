"""Peak memory of the service for one very large bulk batch (issue 6: 100,000 recipients under 300 MB).

    .venv/bin/python bench/bulk_memory.py              # 100,000 recipients
    .venv/bin/python bench/bulk_memory.py --n 20000

It starts Postfix's ``smtp-sink`` on 127.0.0.1, runs ``senders/service_sender.py``
(hypercorn ``asgi:app`` -> SQLite outbox -> in-process workers -> the sink; one
bulk POST of N personalised ~2 KB newsletters, timed until all are delivered) and
prints the service process's peak RSS (``VmHWM``) with the timings.

Limits raised for the run, through the environment as in production (the
defaults refuse such a batch on purpose): ``MAILSVC_MAX_BATCH`` = N,
``MAILSVC_MAX_REQUEST_BYTES`` = 512 MiB (the 100,000-recipient body is ~74 MB;
the default is 25 MiB) and ``MAILSVC_MAX_PENDING`` = max(N, 100,000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sinks import SmtpSink  # noqa: E402

TARGET_MB = 300


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    args = p.parse_args()
    env = {**os.environ, "MAILSVC_MAX_PENDING": str(max(args.n, 100_000))}
    with SmtpSink() as sink:
        out = subprocess.run(
            [sys.executable, str(HERE / "senders" / "service_sender.py"), "--port", str(sink.port), "--n", str(args.n)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        report = json.loads(out.strip().splitlines()[-1])
        at_sink = sink.wait_for(args.n)
    peak_mb = report["service_peak_rss_kb"] / 1024
    print(
        f"{args.n:,} recipients: accepted (202) after {report['accepted_seconds']:.1f} s, all delivered after "
        f"{report['seconds']:.1f} s ({report['accepted'] / report['seconds']:,.0f} msg/s); sink counted {at_sink:,}"
    )
    print(
        f"service CPU {report['service_cpu_seconds']:.1f} s "
        f"({1000 * report['service_cpu_seconds'] / args.n:.3f} ms/msg); "
        f"peak RSS {peak_mb:.0f} MB (target < {TARGET_MB} MB: {'met' if peak_mb < TARGET_MB else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
