"""``mailsvc db``: create or upgrade the outbox schema, and apply the retention policy.

Why a command when nodes also migrate on start-up: operators upgrade the schema
once, deliberately, before rolling out new code (``db upgrade``), and run
retention from cron or a timer (``db purge``) if they prefer that to the
workers doing it. Both are safe to run from several machines at once: upgrades
serialise on an advisory lock, and purges skip rows someone else holds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from ..dburl import parse_database_url
from ..errors import MailError

if TYPE_CHECKING:
    from ..config import ServiceConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="outbox schema and retention", description="Manage the outbox database.")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dbsub.add_parser(
        "upgrade",
        help="create or upgrade the outbox schema (safe to run on several nodes at once)",
        description="Apply every missing schema migration to MAILSVC_DATABASE_URL.",
    )
    up.set_defaults(handler=run_upgrade)
    purge = dbsub.add_parser(
        "purge",
        help="delete delivered/failed messages older than N days (PostgreSQL)",
        description="Delete final messages (and their bodies) older than --days, in small batches.",
    )
    purge.add_argument(
        "--days",
        type=float,
        default=None,
        help="keep final messages younger than this many days (default MAILSVC_RETENTION_DAYS)",
    )
    purge.add_argument("--batch-size", type=int, default=500, help="rows per DELETE transaction (default 500)")
    purge.set_defaults(handler=run_purge)


def _service() -> ServiceConfig:
    """The service config, on the configured MAILSVC_DATABASE_URL even without MAIL_SERVER.

    Why not dev mode's own outbox: ``db`` commands are an operator's, run by a deploy job that
    may not set the relay; dev mode's outbox is upgraded whenever dev mode opens it.
    """
    from ..cli import load_project_settings

    settings = load_project_settings()
    service: ServiceConfig = settings.service_config()
    return service.model_copy(update={"database_url": settings.MAILSVC_DATABASE_URL})


def run_upgrade(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_OK
    from ..outbox import upgrade_database

    url = _service().database_url
    try:
        where = parse_database_url(url).where
        applied = asyncio.run(upgrade_database(url))
    except MailError as exc:
        print(f"mailsvc: db upgrade failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if applied:
        print(f"outbox schema at {where}: applied {', '.join(m.label for m in applied)}")
    else:
        print(f"outbox schema at {where} is up to date")
    return EXIT_OK


def run_purge(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE

    service = _service()
    url = service.database_url
    days = args.days if args.days is not None else service.retention_days
    if args.days is None and not days:
        print("mailsvc: db purge: give --days N or set MAILSVC_RETENTION_DAYS", file=sys.stderr)
        return EXIT_USAGE
    try:
        kind = parse_database_url(url).kind
    except MailError as exc:
        print(f"mailsvc: db purge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if kind != "postgresql":
        print("mailsvc: db purge: retention is implemented for the PostgreSQL outbox only", file=sys.stderr)
        return EXIT_USAGE
    if days < 0 or args.batch_size < 1:
        print("mailsvc: db purge: --days must be >= 0 and --batch-size >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        deleted = asyncio.run(_purge(url, days, args.batch_size))
    except MailError as exc:
        print(f"mailsvc: db purge failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"deleted {deleted} delivered/failed messages older than {days:g} days")
    return EXIT_OK


async def _purge(url: str, days: float, batch_size: int) -> int:
    from ..outbox.postgres import PostgresOutbox

    outbox = PostgresOutbox(url, migrate=False, pool_size=1)
    await outbox.open()
    try:
        return await outbox.purge(days, batch_size=batch_size)
    finally:
        await outbox.close()
