"""``mailsvc suppress add|remove|list``: a tenant's suppression list, straight in the outbox database.

Like ``mailsvc send`` and ``status``, it opens the outbox named by ``MAILSVC_DATABASE_URL`` (no
running service needed). ``--tenant`` names the tenant (as in ``MAILSVC_API_KEYS_FILE``, or a key
id for a key of its own); without it, the open service's list (tenant ``''``). Where an entry
holds is :mod:`mailsvc.outbox.suppressions`' rule: ``unsubscribe`` on its stream, the other reasons
on ``--stream`` when given, else on every stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

REASONS = ("hard_bounce", "unsubscribe", "complaint", "manual")
_STREAM = re.compile(r"^(\*|[A-Za-z0-9._-]{1,64})$")  # the API's rule (web/suppression_schemas.LIST_PATTERN)


def _stream(value: str) -> str:
    if not _STREAM.fullmatch(value):
        raise argparse.ArgumentTypeError("1-64 letters, digits, '.', '_' or '-' (or '*' for every stream)")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "suppress",
        help="add to, remove from or list a tenant's suppression list",
        description="A tenant's suppression list: addresses its mail is never sent to. unsubscribe entries hold "
        "for their stream; hard_bounce, complaint and manual ones for --stream, or every stream without it.",
        epilog="Exit codes: 0 done, 1 the outbox failed, 2 bad usage or input (nothing changed), 3 not on the list.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="add|remove|list")
    tenant = argparse.ArgumentParser(add_help=False)
    tenant.add_argument("--tenant", default=None, help="the tenant (default: the open service's list)")

    add = verbs.add_parser("add", parents=[tenant], help="put addresses on the list")
    add.add_argument("addresses", nargs="+", metavar="ADDRESS")
    add.add_argument("--reason", choices=REASONS, default="manual", help="why (default manual)")
    add.add_argument("--stream", type=_stream, help="only this stream (unsubscribe: default 'default')")

    remove = verbs.add_parser("remove", parents=[tenant], help="take an address off the list")
    remove.add_argument("address", metavar="ADDRESS")
    remove.add_argument("--stream", type=_stream, help="only its entry on this stream ('*': the every-stream one)")

    ls = verbs.add_parser("list", parents=[tenant], help="print the list, in (stream, address) order")
    ls.add_argument("--reason", choices=REASONS)
    ls.add_argument("--stream", type=_stream)
    ls.add_argument("--address")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, load_project_settings
    from ..errors import MailError, OutboxError
    from ..outbox.suppressions import parse_key

    settings = load_project_settings()
    try:
        if args.verb == "add":
            keys = [parse_key(a) for a in args.addresses]
        else:
            keys = [parse_key(args.address)] if args.address else []
    except ValueError as exc:
        print(f"mailsvc suppress: address: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        code: int = asyncio.run(_run(settings, args, keys))
    except OutboxError as exc:
        print(f"mailsvc suppress: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except MailError as exc:  # a bad MAILSVC_DATABASE_URL
        print(f"mailsvc suppress: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return {0: EXIT_OK, 3: EXIT_NOT_FOUND}[code]


async def _run(settings: Any, args: argparse.Namespace, keys: list[str]) -> int:
    from ..outbox.suppressions import stream_for
    from .send import outbox_from

    async with outbox_from(settings) as outbox:
        if args.verb == "add":
            stream = stream_for(args.reason, args.stream)
            added = await outbox.suppress(args.tenant, keys, stream, reason=args.reason, source="cli")
            print(f"{added} added, {len(set(keys)) - added} already there (stream {stream}, {args.reason})")
            return 0
        if args.verb == "remove":
            removed = await outbox.unsuppress(args.tenant, keys[0], args.stream)
            if not removed:
                print(f"mailsvc suppress: {keys[0]} is not on the list", file=sys.stderr)
                return 3
            print(f"{removed} removed")
            return 0
        after = None
        while True:
            page = await outbox.list_suppressions(
                args.tenant, reason=args.reason, stream=args.stream, address=keys[0] if keys else None, after=after
            )
            for s in page:
                when = s.created_at.isoformat()
                if args.json:
                    row = {"address": s.address, "stream": s.stream, "reason": s.reason, "source": s.source}
                    print(json.dumps({**row, "created_at": when}))
                else:
                    print(f"{s.address}\t{s.stream}\t{s.reason}\t{when}\t{s.source}")
            if len(page) < 100:
                return 0
            after = (page[-1].stream, page[-1].address)
