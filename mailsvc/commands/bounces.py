"""``mailsvc bounces --bind HOST:PORT``: the bounce listener as a process of its own.

Why a command: the bounce domain's MX must reach port 25 on some machine, which need not be (and
usually is not) the one serving the API. It needs the same ``MAILSVC_DATABASE_URL``,
``MAILSVC_BOUNCE_DOMAIN`` and ``MAILSVC_SECRET_KEY`` as the nodes that send. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ServiceConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bounces",
        help="receive bounces and complaints sent to the VERP return paths, until SIGTERM/SIGINT",
        description="An SMTP server for bounces+<token>@MAILSVC_BOUNCE_DOMAIN: it records DSNs, plain-text "
        "bounces and ARF complaints in the outbox (bounced/complained, and the suppression list) and refuses "
        "every other recipient.",
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1:2525",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:2525; the bounce domain's MX reaches port 25 of this machine)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of mailsvc's own logs (default INFO)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_project_settings
    from ..config import split_bind
    from ..errors import MailError
    from ..logsetup import configure_logging

    configure_logging(args.log_level)
    settings = load_project_settings()
    service = settings.service_config()
    if service.bounce_domain is None:
        print("mailsvc bounces: set MAILSVC_BOUNCE_DOMAIN (and MAILSVC_SECRET_KEY) first", file=sys.stderr)
        return EXIT_USAGE
    try:
        split_bind(args.bind, "--bind")
    except ValueError as exc:
        print(f"mailsvc bounces: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_main(service, args.bind))
    except MailError as exc:
        print(f"mailsvc bounces: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _main(service: ServiceConfig, bind: str) -> None:
    from ..bounces import server_for
    from ..serviceoutbox import service_outbox

    outbox = service_outbox(service)
    await outbox.open()
    try:
        server = server_for(outbox, service, bind, "--bind")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        port = await server.start()
        print(
            f"mailsvc bounces: listening on {server.host}:{port} for bounces+...@{service.bounce_domain}",
            file=sys.stderr,
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await server.stop()
        print("mailsvc bounces: stopped", file=sys.stderr, flush=True)
    finally:
        await outbox.close()
