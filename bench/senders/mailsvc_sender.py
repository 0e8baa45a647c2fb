"""mailsvc's ``Mail.send_many`` of personalised text+HTML messages (the project's venv).

Each message is rendered from the same Jinja2 templates as the peers'
(``mail.render_message``), then the whole batch goes to ``send_many``, which
spreads it over ``MAIL_POOL_SIZE`` connections.

Variants (comma-separated) switch the fast paths off so that one run shows
what each is worth: ``plain`` (no SMTP PIPELINING), ``stdlib`` (every message
built by ``Message.build`` instead of ``mailsvc.fastbuild``), ``pool=N``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent.parent))  # the checkout, installed or not

import workload

from mailsvc import Mail, MailConfig


def _disable_pipelining() -> None:
    """Benchmark-only switch: route every send through aiosmtplib's plain ``sendmail``."""
    try:
        from mailsvc.transports import pipelining
    except ImportError:
        return
    pipelining.PIPELINING_ENABLED = False


def _disable_fastbuild() -> None:
    """Benchmark-only switch: build every message with the stdlib ``EmailMessage`` path."""
    from mailsvc.extension import MailState
    from mailsvc.message import Envelope, Message

    def build(self: MailState, msg: Message) -> Envelope:
        c = self.config
        return msg.build(
            default_sender=c.default_sender, msgid_domain=c.message_id_domain, ascii_attachments=c.ascii_attachments
        )

    MailState.build = build  # type: ignore[method-assign]


async def main() -> None:
    args = workload.parse_args(__doc__ or "")
    pool = 4
    for part in filter(None, args.variant.split(",")):
        if part == "plain":
            _disable_pipelining()
        elif part == "stdlib":
            _disable_fastbuild()
        elif part.startswith("pool="):
            pool = int(part.removeprefix("pool="))
    dkim = {  # bench/run.py --dkim: the service's settings, given to the library as MailConfig fields
        f"dkim_{name.lower()}": os.environ[f"MAILSVC_DKIM_{name}"]
        for name in ("DOMAIN", "SELECTOR", "KEY_FILE")
        if os.environ.get(f"MAILSVC_DKIM_{name}")
    }
    config = MailConfig(
        server=args.host, port=args.port, default_sender=workload.SENDER, pool_size=pool, timeout=60, **dkim
    )
    mail = Mail(config=config, templates=workload.TEMPLATES)
    clock = workload.Clock()
    msgs = [mail.render_message(workload.TEMPLATE, ctx, recipients=[rcpt]) for rcpt, ctx in workload.contexts(args.n)]
    results = await mail.send_many(msgs)
    await mail.state.aclose()
    ok = sum(1 for r in results if r.ok)
    clock.report(f"mailsvc send_many {args.variant}".strip(), ok, len(results) - ok)


if __name__ == "__main__":
    asyncio.run(main())
