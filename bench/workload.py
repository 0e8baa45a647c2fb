"""The one workload every benchmark sender sends, and the report it prints.

Why a stdlib-only module: the peers (Flask-Mail, fastapi-mail) run in their own
virtual environment without mailsvc, yet they must send exactly the same
personalised messages (same templates, same variables, same sizes) so that the
figures compare like with like. Each sender imports this file by path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# bench/run.py --inline-css points every sender at a copy whose HTML carries a stylesheet (and, for
# mailsvc, the inline-css marker): the peers send the same bytes un-inlined, mailsvc inlines per message.
TEMPLATES = Path(os.environ.get("MAILSVC_BENCH_TEMPLATES") or Path(__file__).resolve().parent / "templates") / "email"
TEMPLATE = "newsletter"
SENDER = "News <news@bench.example>"
SENDER_ADDR = "news@bench.example"


def recipient(i: int) -> str:
    return f"user{i}@bench.example"


def context(i: int) -> dict[str, Any]:
    """Per-recipient variables: every message differs, as in a real newsletter."""
    return {
        "name": f"Reader {i}",
        "since": 2010 + i % 15,
        "account": f"AC-{i:08d}",
        "unsubscribe": f"https://bench.example/unsubscribe?u={i}&t={(i * 2654435761) % 2**32:08x}",
        "items": [
            {
                "title": f"Item {(i + k) % 997} of the season",
                "price": f"{(i * 7 + k * 13) % 500 + 9}.99",
                "url": f"https://bench.example/p/{(i + k) % 997}?ref=nl&u={i}",
            }
            for k in range(5)
        ],
    }


def contexts(n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(n):
        yield recipient(i), context(i)


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--variant", default="", help="sender-specific mode")
    return p.parse_args()


class Clock:
    """Wall and CPU time of the sending itself (imports and setup excluded)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def report(self, sender: str, accepted: int, failed: int, **extra: Any) -> None:
        """One JSON line on stdout: what the harness reads."""
        out = {
            "sender": sender,
            "accepted": accepted,
            "failed": failed,
            "seconds": time.perf_counter() - self.wall,
            "cpu_seconds": time.process_time() - self.cpu,
            **extra,
        }
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
