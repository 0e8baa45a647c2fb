"""``mailsvc status ID``: a message's (or with ``--batch``, a batch's) delivery state from the outbox.

``mailsvc status --relays``: each relay of ``MAILSVC_RELAYS_FILE`` (or the one MAIL_* relay): whether it
accepts a connection now, its limits, and (PostgreSQL) the messages it took today on every machine.
A worker's own view (down until when, the throttled pace) is in ``GET /readyz`` with a key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="show a message's or batch's delivery status",
        description="Print the delivery state of a queued message (or batch) and each recipient.",
    )
    p.add_argument("id", nargs="?", help="message id (as returned on enqueue) or, with --batch, a batch id")
    p.add_argument("--relays", action="store_true", help="show each relay: reachable now, limits, used today")
    p.add_argument("--batch", action="store_true", help="ID is a batch id: print counts per state")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, load_project_settings
    from ..errors import NotFoundError, OutboxError

    settings = load_project_settings()
    service = settings.service_config()
    if args.relays:
        return _relays(settings, service, args.json)
    if args.id is None:
        print("mailsvc status: give a message id (or --batch ID, or --relays)", file=sys.stderr)
        return 2
    try:
        data = asyncio.run(_fetch(service.database_url, args.id, args.batch))
    except NotFoundError as exc:
        print(f"mailsvc status: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OutboxError as exc:
        print(f"mailsvc status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.batch:
        _print_batch(args.id, data)
    else:
        _print_message(data)
    return EXIT_OK


def _print_batch(batch_id: str, data: dict[str, Any]) -> None:
    print(f"batch {batch_id}")
    for state, n in sorted(data["counts"].items()):
        print(f"  {state:<10} {n}")


def _print_message(data: dict[str, Any]) -> None:
    print(f"message {data['id']}  {data['state']}  Message-ID {data['message_id']}  queued {data['created_at']}")
    for r in data["recipients"]:
        code = "" if r["last_code"] is None else f" {r['last_code']}"
        retry = f" next attempt {r['next_attempt_at']}" if r["next_attempt_at"] else ""
        retry += f" via {r['relay']}" if r.get("relay") else ""
        print(f"  {r['recipient']:<40} {r['state']:<9} attempts {r['attempts']}  updated {r['updated_at']}{retry}")
        if r["last_reply"] or code:
            print(f"      last reply:{code} {r['last_reply']}")


async def _fetch(url: str, ident: str, batch: bool) -> dict[str, Any]:
    from ..outbox import open_outbox

    async with open_outbox(url) as outbox:
        if batch:
            return {"batch_id": ident, "counts": await outbox.batch_status(ident)}
        st = await outbox.status(ident)
    return {
        "id": st.id,
        "message_id": st.message_id,
        "batch_id": st.batch_id,
        "state": st.state,
        "created_at": st.created_at.isoformat(),
        "recipients": [
            {
                "recipient": r.recipient,
                "state": r.state,
                "attempts": r.attempts,
                "last_code": r.last_code,
                "last_reply": r.last_reply,
                "updated_at": r.updated_at.isoformat(),
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "relay": r.relay,
            }
            for r in st.recipients
        ],
    }


def _relays(settings: Any, service: Any, as_json: bool) -> int:
    from ..cli import EXIT_FAILED, EXIT_OK
    from ..errors import ConfigError, OutboxError
    from ..relayconfig import load_relays

    try:
        config = load_relays(service.relays_file, settings.mail_config())
    except ConfigError as exc:
        print(f"mailsvc status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        data = asyncio.run(_relay_states(service.database_url, config))
    except OutboxError as exc:
        print(f"mailsvc status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    for name, r in data["relays"].items():
        limits = ", ".join(f"{k} {v}" for k, v in r["rate"].items() if v is not None) or "no limits"
        used = "" if r["used_today"] is None else f"  used today {r['used_today']}"
        print(f"relay {name:<16} {r['server']}:{r['port']}  {r['state']}  {limits}{used}")
    for route, names in data["routes"].items():
        print(f"route {route:<16} {' -> '.join(names)}")
    return EXIT_OK


async def _relay_states(url: str, config: Any) -> dict[str, Any]:
    from ..outbox import Outbox, open_outbox

    async with open_outbox(url) as outbox:
        used = await outbox.relay_usage_today()
        shared = type(outbox).relay_usage_today is not Outbox.relay_usage_today
    states = await asyncio.gather(
        *(
            _reachable(s.mail.server, s.mail.port) if s.mail.transport is None else _not_probed(s.mail.transport)
            for s in config.relays.values()
        )
    )
    return {
        "relays": {
            name: {
                "server": spec.mail.server,
                "port": spec.mail.port,
                "transport": spec.mail.transport or "smtp",
                "state": state,
                "rate": {
                    "per_second": spec.rate.per_second,
                    "per_day": spec.rate.per_day,
                    "max_recipients": spec.rate.max_recipients,
                },
                "pool_size": spec.mail.pool_size,
                "used_today": used.get(name, 0) if shared else None,
            }
            for (name, spec), state in zip(config.relays.items(), states, strict=True)
        },
        "routes": {k: list(v) for k, v in config.routes.items()},
    }


async def _reachable(host: str, port: int) -> str:
    """``up`` when the relay accepts a TCP connection within 2 s, else ``down`` and why."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, TimeoutError) as exc:
        return f"down ({type(exc).__name__})"
    writer.close()
    return "up"


async def _not_probed(transport: str) -> str:
    return f"not probed ({transport})"
