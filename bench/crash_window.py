"""Issue 18's crash window, one command: SIGKILL in the middle of a 5,000-message bulk, lost and sent twice.

    .venv/bin/python bench/crash_window.py [--rounds 1]

Why it runs the tests: the scenario (a real ``hypercorn asgi:app`` process group with its worker in process,
the same with its worker in a child process, and separately a ``mailsvc worker`` process, each SIGKILLed as a
group a third of the way through a bulk to Postfix's
``smtp-sink``, then restarted on the same SQLite outbox) is exactly what
``tests/test_service_crash.py`` and ``tests/test_worker_process.py`` build and assert; here they run with
their figures printed, and this prints them as a table. The tests' own asserts (0 lost, sent twice at most
``MAILSVC_WORKER_CONCURRENCY``) still apply: a failing round says so.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = (
    (
        "hypercorn asgi:app, its worker in process",
        "tests/test_service_crash.py::test_sigkill_mid_bulk_loses_nothing[in-process]",
    ),
    (
        "hypercorn asgi:app, its worker process (the default here)",
        "tests/test_service_crash.py::test_sigkill_mid_bulk_loses_nothing[worker-process]",
    ),
    ("mailsvc worker process", "tests/test_worker_process.py::test_sigkill_mid_batch_then_restart_loses_nothing"),
)
FIGURES = re.compile(r"(\d+) recorded delivered.*?lost (\d+), duplicated (\d+)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1, help="kills per case (default 1)")
    args = ap.parse_args()
    print("SIGKILL (of the process group) a third of the way through a 5,000-message bulk, restart, wait until done;")
    print("worker concurrency 100 (the most it may have sent and not recorded), claim batch 100.\n")
    print("| process killed | round | recorded delivered at the kill | lost | sent twice | tests' asserts |")
    print("|---|---|---|---|---|---|")
    for name, test in CASES:
        for rnd in range(1, args.rounds + 1):
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", test, "-q", "-s", "-p", "no:cacheprovider"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            found = FIGURES.search(proc.stdout)
            figures = f"{found[1]} | {found[2]} | {found[3]}" if found else "– | – | –"
            print(f"| {name} | {rnd} | {figures} | {'pass' if proc.returncode == 0 else 'FAIL'} |")


if __name__ == "__main__":
    main()
