"""``mailsvc status ID``: a message's (or with ``--batch``, a batch's) delivery state from the outbox."""

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
    p.add_argument("id", help="message id (as returned on enqueue) or, with --batch, a batch id")
    p.add_argument("--batch", action="store_true", help="ID is a batch id: print counts per state")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, load_project_settings
    from ..errors import NotFoundError, OutboxError

    service = load_project_settings().service_config()
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
