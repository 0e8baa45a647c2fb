"""``mailsvc worker``: delivery workers as a process of their own (run several for more throughput).

Why a separate process: the service can run with ``MAILSVC_WORKERS=0`` and any
number of these beside it (or on other machines with PostgreSQL). SIGTERM or
SIGINT stops claiming, lets messages already on the wire finish, gives the rest
back to the outbox and exits 0; a SIGKILL leaves leases that simply expire.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import MailConfig, ServiceConfig
    from ..outbox import Outbox
    from ..transports.factory import TransportFactory
    from ..worker import WorkerGroup


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run delivery workers until SIGTERM/SIGINT",
        description="Claim due messages from the outbox and deliver them over SMTP.",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="claim loops in this process (default MAILSVC_WORKERS, at least 1)",
    )
    p.add_argument(
        "--until-empty",
        action="store_true",
        help="exit once no message is left undelivered "
        "(every one delivered, failed or expired; for batch jobs and benchmarks)",
    )
    p.add_argument(
        "--transport",
        metavar="MODULE:FACTORY",
        help="deliver through this transport factory instead of MAIL_TRANSPORT or SMTP, "
        "e.g. mailsvc.transports.memory:MemoryTransport (no socket: for tests and dry runs)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of mailsvc's own logs (default INFO); SQL drivers and SMTP libraries stay at WARNING",
    )
    p.add_argument(
        "--metrics-bind",
        metavar="HOST:PORT",
        help="serve this process's Prometheus metrics at http://HOST:PORT/metrics (no key: bind a private address)",
    )
    # The service's pipe when it runs this command as its worker process (mailsvc.workerprocess); not for users.
    p.add_argument("--wake-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_project_settings
    from ..errors import ConfigError, MailError
    from ..gctune import tune_for_service
    from ..logsetup import configure_logging
    from ..metricsserver import parse_bind
    from ..transports.factory import factory_for, resolve

    configure_logging(args.log_level)
    settings = load_project_settings()
    service = settings.service_config()
    configure_logging(args.log_level, fmt=service.log_format)
    mail_config = settings.mail_config()
    try:  # a bad --transport or MAIL_TRANSPORT is a usage error, reported before anything starts
        transport = factory_for(mail_config, resolve(args.transport) if args.transport else None)
    except ConfigError as exc:
        print(f"mailsvc worker: {'--transport: ' + exc.reason if args.transport else exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.metrics_bind is not None:
        try:
            parse_bind(args.metrics_bind, "--metrics-bind")
        except ConfigError as exc:
            print(f"mailsvc worker: {exc}", file=sys.stderr)
            return EXIT_USAGE
    tune_for_service()  # a process of its own from here on (mailsvc.gctune)
    try:
        asyncio.run(
            _main(mail_config, service, args.concurrency, args.until_empty, transport, args.metrics_bind, args.wake_fd)
        )
    except MailError as exc:
        print(f"mailsvc worker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _main(
    mail_config: MailConfig,
    service: ServiceConfig,
    count: int | None,
    until_empty: bool,
    transport: TransportFactory,
    metrics_bind: str | None = None,
    wake_fd: int | None = None,
) -> None:
    from ..metrics import Metrics
    from ..metricsserver import MetricsServer
    from ..serviceoutbox import service_outbox
    from ..worker import WorkerGroup

    outbox = service_outbox(service)
    await outbox.open()
    server: MetricsServer | None = None
    try:
        metrics = Metrics() if metrics_bind is not None else None
        group = WorkerGroup.from_service(
            outbox, mail_config, service, count=count, transport=transport, metrics=metrics
        )
        if metrics is not None and metrics_bind is not None:
            metrics.watch(outbox=outbox)
            server = MetricsServer(metrics, metrics_bind, "--metrics-bind")
            await server.start()
            print(f"mailsvc worker: metrics on http://{server.host}:{server.port}/metrics", file=sys.stderr, flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, group.request_stop)
        if wake_fd is not None:  # the service's child: Ctrl-C reaches the service, which closes the pipe
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        await group.start()
        if wake_fd is not None:
            _follow_service(wake_fd, outbox, group)
        print(
            f"mailsvc worker: {len(group.workers)} claim loop(s) delivering via {_via(mail_config, transport)}",
            file=sys.stderr,
            flush=True,
        )
        if until_empty:
            while not group.workers[0].stopping and await _work_left(outbox, group):
                await asyncio.sleep(service.poll_interval)
            group.request_stop()
        try:
            await group.wait()
        finally:
            await group.mail.aclose()
        s = group.stats
        print(
            f"mailsvc worker: stopped; delivered {s.delivered}, deferred {s.deferred}, failed {s.failed}, "
            f"expired {s.expired}, released {s.released}",
            file=sys.stderr,
            flush=True,
        )
    finally:
        if server is not None:
            await server.stop()
        await outbox.close()


def _follow_service(fd: int, outbox: Outbox, group: WorkerGroup) -> None:
    """The service's pipe: a byte is mail it just made due; the pipe's end is the service stopped or gone."""
    import os

    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            outbox.wake()
            return
        loop.remove_reader(fd)
        os.close(fd)
        group.request_stop()

    loop.add_reader(fd, readable)


async def _work_left(outbox: Outbox, group: WorkerGroup) -> bool:
    if any(w.busy for w in group.workers):
        return True
    return await outbox.pending_count() > 0


def _via(mail_config: MailConfig, transport: TransportFactory) -> str:
    """Where mail goes, for the start-up line: the relay, or the transport plugged in instead."""
    from ..transports.smtp import SMTPTransport

    if transport is SMTPTransport:
        return f"{mail_config.server}:{mail_config.port}"
    return getattr(transport, "__qualname__", type(transport).__name__)
