"""A counting SMTP sink on aiosmtpd, for machines without Postfix's ``smtp-sink``.

Why: the smoke test (and anyone without root for ``apt-get``) still runs the
whole harness. It speaks like ``smtp-sink -c``: prints ``port=N`` once, then a
``mesg=N`` line after every accepted message, so the harness reads both sinks the
same way. ``--pipelining`` advertises RFC 2920 PIPELINING (aiosmtpd reads
commands in order from a stream, so pipelined clients work).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class CountingHandler:
    def __init__(self, pipelining: bool) -> None:
        self.count = 0
        self.pipelining = pipelining

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.count += 1
        sys.stdout.write(f"mesg={self.count}\n")
        sys.stdout.flush()
        return "250 OK"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pipelining", action="store_true")
    args = p.parse_args()
    handler = CountingHandler(args.pipelining)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.bench", enable_SMTPUTF8=True, loop=loop),
        host="127.0.0.1",
        port=0,
        backlog=1024,
    )
    sys.stdout.write(f"port={server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    asyncio.run(main())
